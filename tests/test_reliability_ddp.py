"""Scale-out changes nothing but speed: 2 CPU processes (gloo DDP) and 1 process with the same
effective batch give the same losses and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_tiny_dataset
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from softrec.config import load_config
    from softrec.data.dataset import PreparedDataset
    from softrec.training.trainer import train_llm

    root, out = Path(sys.argv[1]), sys.argv[2]
    # effective batch 8 = micro-batch 4 x 2 accumulation (1 process) = 4 x 2 processes (DDP).
    # LoRA dropout off: each process draws its own masks, so with dropout the runs differ by design.
    config = load_config(values={
        "model.name": "tiny", "train.micro_batch": 4, "train.effective_batch": 8, "train.epochs": 2,
        "train.bf16": "off", "train.warmup_steps": 0, "train.learning_rate": 1e-2,
        "train.lora.dropout": 0.0, "train.validate_every_epoch": False, "train.checkpoint_every": 0,
    })
    train_llm(config, PreparedDataset(root / "prepared"), root / out, progress=False)
    """
)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_effective_batch(tmp_path):
    make_tiny_dataset(tmp_path / "prepared")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOFTREC_NO_PREFLIGHT": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    one = subprocess.run([sys.executable, str(script), str(tmp_path), "one"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                          str(tmp_path), "two"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("one", "two")]
    assert [r["step"] for r in histories[0]] == [r["step"] for r in histories[1]] == [3, 6]
    for a, b in zip(*histories, strict=True):  # mean micro-batch loss over the same 6 micro-batches
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    a, b = (load_file(str(tmp_path / run / "adapter" / "adapter_model.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys()
    for key in a:  # gradients averaged by all-reduce instead of accumulation: float-rounding apart
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
