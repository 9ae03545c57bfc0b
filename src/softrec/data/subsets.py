"""The seeded sample subsets a run trains and validates on (train.train_samples, train.valid_samples).

Training, self-distillation (only trained samples need a target), the SOFT probe (drawn from the
trained samples) and validation all take their samples from here, so they always agree.
"""

from __future__ import annotations

import random
from typing import Any

from softrec.data.dataset import PreparedDataset, Sample


def subset(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    """A seeded subset of `size` samples in their original order (all of them when size is None)."""
    if size is None or size >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), size))
    return [samples[i] for i in keep]


def training_samples(dataset: PreparedDataset, config: Any) -> list[Sample]:
    """The samples SFT/SOFT train on (train.train_samples subset of the train split)."""
    return subset(dataset.split("train"), config.train.train_samples, config.data.seed)


def validation_samples(dataset: PreparedDataset, config: Any) -> list[Sample]:
    """The samples each epoch is validated on (train.valid_samples subset of the valid split)."""
    return subset(dataset.split("valid"), config.train.valid_samples, config.data.seed)
