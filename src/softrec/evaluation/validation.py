"""The validator training is given (RecBole style: the trainer never imports the evaluation).

`validator(config, dataset)` -> (model, tokenizer) -> metrics: `evaluate_model` on the
train.valid_samples subset of the valid split with config.eval, as the test evaluation decodes.
"""

from __future__ import annotations

from typing import Any

from softrec.config import Config
from softrec.data.dataset import PreparedDataset
from softrec.data.subsets import validation_samples


def validator(config: Config, dataset: PreparedDataset) -> Any:
    """A `training.selection.Validator` for `train_llm(..., validator=...)`."""

    def validate(model: Any, tokenizer: Any) -> dict[str, float]:
        from softrec.evaluation.evaluate import evaluate_model

        result = evaluate_model(
            model, tokenizer, dataset, validation_samples(dataset, config), config.eval,
            template=config.model.template, base_model_name=config.model.name,
        )
        return result.metrics

    return validate


def validator_for(config: Config, dataset: PreparedDataset) -> Any:
    """`validator(config, dataset)` when config.train.validate_every_epoch, else None (the last epoch is kept)."""
    return validator(config, dataset) if config.train.validate_every_epoch else None
