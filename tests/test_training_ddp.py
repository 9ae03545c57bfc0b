"""train_llm runs unchanged under torchrun: 2 CPU processes (gloo DDP) share the data and agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import make_tiny_dataset

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from softrec.config import load_config
    from softrec.data.dataset import PreparedDataset
    from softrec.training.trainer import train_llm

    root = Path(sys.argv[1])
    config = load_config(values={
        "model.name": "tiny", "train.micro_batch": 4, "train.effective_batch": 8, "train.epochs": 2,
        "train.bf16": "off", "train.warmup_steps": 0, "train.learning_rate": 1e-2,
    })

    def validator(model, tokenizer):  # a weights checksum: equal on every rank iff gradients are synced
        total = sum(float(p.double().abs().sum()) for n, p in model.named_parameters() if "lora_" in n)
        return {"HR@10": total}

    result = train_llm(config, PreparedDataset(root / "prepared"), root / "run", validator=validator, progress=False)
    rank = os.environ["RANK"]
    (root / f"rank{rank}.json").write_text(json.dumps(
        {"steps": result.global_step, "valid": [r["valid"]["HR@10"] for r in result.history]}))
    """
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    make_tiny_dataset(tmp_path / "prepared")
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 24 samples / (4 per process x 2 processes) = 3 optimizer steps per epoch: the data is split, not repeated
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    assert ranks[0]["valid"] == ranks[1]["valid"]  # identical weights on both ranks after each epoch
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
