"""Shared fixtures: the tiny model/tokenizer and a small prepared dataset written in code."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# fp32 everywhere, as on a CPU without bf16 hardware: the golden values and exact-parity checks are
# fp32 ones, and "auto" would decode in bf16 on an AMX CPU (subprocesses inherit this)
os.environ["SOFTREC_CPU_BF16"] = "0"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TITLES = [
    "The Hobbit", "Dune", "Emma", "Dracula", "Ulysses", "Beloved", "Persuasion", "Middlemarch",
    "The Road", "Rebecca", "Ivanhoe", "Walden", "Hamlet", "Macbeth", "Othello", "King Lear",
    "The Trial", "The Castle", "Nostromo", "Kim", "Lolita", "Ubik", "Solaris", "Neuromancer",
    "Foundation", "Hyperion", "Dune Messiah", "Children of Dune", "The Two Towers", "Emma",
]


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def make_tiny_dataset(path: Path, n_train: int = 24, n_valid: int = 8, n_test: int = 8, seed: int = 0):
    """A prepared dataset with 30 titles (one duplicate title on purpose) and random windows."""
    from softrec.data.dataset import Domain, Item, Sample, write_prepared

    rng = random.Random(seed)
    catalogue = [Item(i, t) for i, t in enumerate(TITLES)]

    def samples(prefix: str, n: int) -> list[Sample]:
        out = []
        for index in range(n):
            length = rng.randint(1, 5)
            items = rng.sample(range(len(TITLES)), length + 1)
            out.append(Sample(f"{prefix}-{index}", f"u{index % 7}", tuple(items[:-1]), items[-1], float(index)))
        return out

    splits = {"train": samples("train", n_train), "valid": samples("valid", n_valid), "test": samples("test", n_test)}
    splits["train_full"] = splits["train"]
    stats = {"users": 7, "items": len(TITLES), "interactions": 100, "train": n_train, "valid": n_valid, "test": n_test}
    return write_prepared(
        path, name="tiny-books", domain=Domain("book", "books", "read"),
        catalogue=catalogue, splits=splits, stats=stats,
    )


@pytest.fixture(scope="session")
def tiny_backbone():
    from softrec.models.registry import load_backbone

    return load_backbone("tiny")


@pytest.fixture()
def tiny_dataset(tmp_path):
    return make_tiny_dataset(tmp_path / "prepared")


@pytest.fixture()
def sft_run(tmp_path):
    """A run directory holding a fresh (untrained) LoRA adapter on the tiny model: what distillation
    and SOFT read from an SFT run."""
    from peft import LoraConfig, get_peft_model

    from softrec.models.registry import load_backbone
    from softrec.runs import RunDir

    model, _ = load_backbone("tiny")
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    run_dir = tmp_path / "sft"
    peft_model.save_pretrained(run_dir / "adapter")
    RunDir(run_dir).update_info(base_model="tiny", method="sft")
    return run_dir


@pytest.fixture()
def bench_steps_in_process(monkeypatch):
    """`bench quality` runs each step's `softrec` command in this process (seconds, not a Python start per
    step); the list the fixture returns collects every step's argv."""
    import contextlib
    import subprocess
    import types

    from softrec.bench.quality import execution
    from softrec.cli import main as cli_main

    calls: list[list[str]] = []

    def run(argv, env, stdout, stderr):
        calls.append(argv[argv.index("softrec") + 1:])
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
            return types.SimpleNamespace(returncode=cli_main(argv[argv.index("softrec") + 1:]))

    monkeypatch.setattr(execution, "subprocess", types.SimpleNamespace(run=run, STDOUT=subprocess.STDOUT))
    return calls
