"""The transformers model inside the wrappers training and inference put around it."""

from __future__ import annotations

from typing import Any


def causal_lm_of(model: Any) -> Any:
    """The transformers *ForCausalLM inside DDP / peft wrappers (LoRA layers stay injected)."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DistributedDataParallel and friends
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # peft PeftModel
    return model
