"""Per-epoch weights of a training run (issue #15).

A LoRA training keeps every epoch's adapter in RUN_DIR/epochs/epoch-N (the trainer's
`EpochWeightsCallback` writes them; `epoch_weights` names the folder), the teachers of the "when does
SOFT help" study, which checkpoints/ (the last `train.save_total_limit`) does not keep.
"""

from __future__ import annotations

from pathlib import Path

EPOCHS = "epochs"


def epoch_weights(epoch: int) -> str:
    """The run-relative name of epoch `epoch`'s kept weights (also their manifest entry)."""
    return f"{EPOCHS}/epoch-{epoch}"


def kept_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose weights RUN_DIR/epochs holds, in order."""
    folders = [p for p in (Path(run_dir) / EPOCHS).glob("epoch-*") if p.is_dir()]
    return sorted(int(n) for n in (p.name.removeprefix("epoch-") for p in folders) if n.isdigit())
