"""Model FLOPs of a training step (`FLOP_FORMULA`, `FlopShape`) and the machine's matmul peak, for MFU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from softrec.bench.timing import series, stopwatch


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 3, min_seconds: float = 0.3,
                device: torch.device | None = None) -> dict[str, Any]:
    """GFLOP/s of `size`^2 square matmuls in `dtype` on `device` (default: default_device()), one
    value per repeat; each repeat runs enough matmuls to last about `min_seconds`."""
    from softrec.models.registry import default_device

    device = device or default_device()
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    with stopwatch() as one:
        a @ b  # warm-up, and a first guess of one matmul's time
    count = max(1, math.ceil(min_seconds / max(one[0], 1e-6)))
    rates = []
    for _ in range(repeats):
        with stopwatch() as t:
            for _ in range(count):
                a @ b
        rates.append(2 * size**3 * count / t[0] / 1e9)
    return {**series(rates), "size": size, "matmuls_per_repeat": count, "dtype": str(dtype).removeprefix("torch.")}


FLOP_FORMULA = (
    "model FLOPs per step = (4+2f)*N*T + 6*N_lora*T + (4+2f)*V*d*T_lab + 6*L*d_attn*sum(len^2); "
    "f = 0 with LoRA (frozen weights get activation gradients only), 1 for full fine-tuning; "
    "N = weights of the decoder layers' linear maps (attention q/k/v/o and MLP; no embeddings, "
    "norms or LM head); N_lora = LoRA adapter weights; V*d = LM head weights; T = non-padding tokens; "
    "T_lab = labelled positions (the head is counted only there: the useful work, whatever a setup "
    "executes); L*d_attn = layers x heads x head_dim; len = each row's non-padding length (causal "
    "attention, QK^T and AV, forward 2*L*d_attn*len^2, backward twice that)"
)


@dataclass(frozen=True)
class FlopShape:
    """What the FLOP formula needs from a (LoRA-wrapped) causal LM; see FLOP_FORMULA."""

    body: int
    lora: int
    head: int
    attention: int  # layers x heads x head_dim
    full_finetune: bool

    @classmethod
    def of(cls, model: Any) -> FlopShape:
        from softrec.models.wrappers import causal_lm_of

        lm = causal_lm_of(model)
        head = lm.get_output_embeddings()
        body = lora = 0
        for name, module in lm.named_modules():
            if not isinstance(module, torch.nn.Linear) or module is head:
                continue
            if "lora_" in name:
                lora += module.weight.numel()
            else:
                body += module.weight.numel()
        config = lm.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(body, lora, head.weight.numel(), config.num_hidden_layers * heads * head_dim, lora == 0)

    def step_flops(self, tokens: int, labelled: int, squares: int) -> float:
        f = 1 if self.full_finetune else 0
        return ((4 + 2 * f) * self.body * tokens + 6 * self.lora * tokens
                + (4 + 2 * f) * self.head * labelled + 6 * self.attention * squares)
