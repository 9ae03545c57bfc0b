"""Crash safety: SIGKILL a real `softrec` process mid-stage, rerun, and get the uninterrupted result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softrec.cli import main
from softrec.runs import read_jsonl


def _env() -> dict[str, str]:
    """The environment at call time: a test's monkeypatched SOFTREC_CACHE must reach the child too (a
    module-level copy sent it to the user's cache, whose stale embeddings made it disagree)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SOFTREC_NO_PREFLIGHT": "1"}

# Runs `softrec` with every optimizer step / generation chunk slowed down, so the test can kill it
# at a chosen point instead of racing a 1-second training. Nothing else changes.
SLOW_DRIVER = """
import sys, time
import torch
torch.set_num_threads(1)
from transformers import Trainer
step = Trainer.training_step
def slow_step(self, *a, **k):
    out = step(self, *a, **k)
    time.sleep(0.3)
    return out
Trainer.training_step = slow_step
import softrec.inference.distill as distill
distill.CHUNK = 4
generate = distill._generate_targets
def slow_generate(*a, **k):
    time.sleep(0.3)
    return generate(*a, **k)
distill._generate_targets = slow_generate
from softrec.cli import main
sys.exit(main(sys.argv[1:]))
"""

TRAIN = ["--model", "tiny", "--epochs", "2", "--micro-batch", "4", "--effective-batch", "4", "--valid-samples", "4",
         "--set", "train.bf16=off", "--set", "train.warmup_steps=0", "--set", "train.learning_rate=5e-3",
         "--set", "eval.num_beams=2", "--set", "eval.max_new_tokens=6", "--set", "train.checkpoint_every=1"]
STEPS = 12  # 24 samples / micro-batch 4, 2 epochs, one optimizer step per micro-batch


def _start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    driver = tmp_path / "slow_driver.py"
    driver.write_text(SLOW_DRIVER)
    return subprocess.Popen([sys.executable, str(driver), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the process finished before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _logged_step(run: Path) -> int:
    path = run / "logs" / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass
    return max(steps, default=0)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in history]


# seed 0 picks the kill step in the default run; more kill points in the slow suite
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_during_training_then_resume_matches_uninterrupted(tiny_dataset, tmp_path, seed, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    data = ["train", "--data", str(tiny_dataset.path)]
    assert main([*data, "--out", str(tmp_path / "straight"), *TRAIN]) == 0

    kill_after = random.Random(seed).randint(1, STEPS - 1)  # any step, incl. epoch ends and mid-checkpoint
    crashed = tmp_path / "crashed"
    proc = _start(tmp_path, [*data, "--out", str(crashed), *TRAIN])
    _kill_when(proc, lambda: _logged_step(crashed) >= kill_after)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((crashed / "run.json").read_text())["status"] == "training"

    assert main([*data, "--out", str(crashed), *TRAIN, "--resume"]) == 0
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # same batches, dropout masks, optimizer and RNG state: equal up to float noise
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    ha = json.loads((tmp_path / "straight" / "history.json").read_text())
    hb = json.loads((crashed / "history.json").read_text())
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(_comparable(ha), _comparable(hb), strict=True):
        # losses up to float noise (an AVX-512 CPU's reductions differed in the 8th digit), the rest exactly
        noisy = ("train_loss", "loss_real", "loss_distilled")
        for key in noisy:
            assert (rb.get(key) is None) == (ra.get(key) is None) and rb.get(key) == pytest.approx(ra.get(key), abs=1e-6)
        assert rb["valid"] == pytest.approx(ra["valid"], abs=1e-9)
        assert {k: v for k, v in rb.items() if k not in (*noisy, "valid")} == \
               {k: v for k, v in ra.items() if k not in (*noisy, "valid")}
    steps = [json.loads(line)["step"] for line in (crashed / "logs" / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in read_jsonl(crashed / "logs" / "metrics.jsonl") if "loss" in r]
    assert loss_steps == list(range(1, STEPS + 1)), "a step was lost or logged twice"
    assert steps == sorted(steps)


DISTILL = ["--beams", "2", "--max-new-tokens", "6", "--set", "eval.batch_size=4"]


def test_sigkill_during_distillation_keeps_finished_chunks(sft_run, tiny_dataset, tmp_path, monkeypatch):
    import shutil

    from softrec.inference import distill as stage

    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    monkeypatch.setattr(stage, "CHUNK", 4)
    straight = tmp_path / "straight"
    shutil.copytree(sft_run, straight)
    assert main(["distill", "--run", str(straight), "--data", str(tiny_dataset.path), *DISTILL]) == 0

    parts_dir = sft_run / stage.PARTS
    proc = _start(tmp_path, ["distill", "--run", str(sft_run), "--data", str(tiny_dataset.path), *DISTILL])
    _kill_when(proc, lambda: len(list(parts_dir.glob("*/*.jsonl"))) >= 2)
    assert not (sft_run / stage.DISTILLED).exists()  # nothing half-written is published
    kept = {p.name: p.read_bytes() for p in parts_dir.glob("*/*.jsonl")}
    assert all(not name.startswith(".") for name in kept)  # no temp file mistaken for a part

    generated = []
    real = stage._generate_targets
    monkeypatch.setattr(stage, "_generate_targets",
                        lambda m, t, samples, *a: generated.extend(s.sample_id for s in samples) or real(m, t, samples, *a))
    assert main(["distill", "--run", str(sft_run), "--data", str(tiny_dataset.path), *DISTILL]) == 0
    assert len(generated) == 24 - 4 * len(kept) and len(set(generated)) == len(generated)  # only the rest
    assert (sft_run / stage.DISTILLED).read_bytes() == (straight / stage.DISTILLED).read_bytes()


def test_evaluation_resumes_from_finished_chunks(tmp_path, tiny_dataset, monkeypatch):
    """A crash mid-evaluation keeps the finished chunks; the rerun computes only the rest and the
    result equals a one-pass evaluation (chunks are multiples of the generation batch)."""
    import softrec.evaluation.evaluate as evaluation
    import softrec.evaluation.stage as stage

    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    args = ["evaluate", "--split", "test", "--grounding", "l2", "--num-beams", "2", "--max-new-tokens", "6",
            "--batch-size", "2", "--quiet"]
    runs = {}
    for name in ("one", "chunked"):
        run = tmp_path / name
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"base_model": "tiny", "method": "sft", "template": "alpaca",
                                                  "dataset": str(tiny_dataset.path)}))
        runs[name] = run
    assert main([*args, "--run", str(runs["one"])]) == 0

    monkeypatch.setattr(stage, "EVAL_CHUNK", 2)
    real = evaluation.evaluate_model
    seen: list[str] = []

    def crash_on_third_chunk(model, tokenizer, dataset, samples, *a, **k):
        if len(seen) == 4:
            raise KeyboardInterrupt("killed")
        seen.extend(s.sample_id for s in samples)
        return real(model, tokenizer, dataset, samples, *a, **k)

    monkeypatch.setattr(evaluation, "evaluate_model", crash_on_third_chunk)
    assert main([*args, "--run", str(runs["chunked"])]) == 130
    assert not (runs["chunked"] / "metrics.json").exists()
    assert len(list((runs["chunked"] / "eval").glob("test-l2.parts/*/*.jsonl"))) == 2

    seen.clear()
    monkeypatch.setattr(evaluation, "evaluate_model", lambda m, t, d, samples, *a, **k:
                        seen.extend(s.sample_id for s in samples) or real(m, t, d, samples, *a, **k))
    assert main([*args, "--run", str(runs["chunked"])]) == 0
    assert seen == [f"test-{i}" for i in range(4, 8)]  # the finished chunks were not redone
    assert not (runs["chunked"] / "eval" / "test-l2.parts").exists()
    one, chunked = (read_jsonl(runs[n] / "predictions.jsonl") for n in ("one", "chunked"))
    assert chunked == one
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in ("one", "chunked")]
    assert metrics[0] == metrics[1]
