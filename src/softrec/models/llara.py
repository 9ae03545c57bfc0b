"""LLaRA backbone (LLaRA, Liao et al. 2024; the reference's train_llara.py and inference_llara.py): each history title is followed by an item token whose INPUT
embedding is MLP(e_item), e_item the frozen 64-d SASRec embedding of that item.

How the item reaches the model: the tokenizer gets one added special token per catalogue item,
`[HistoryEmb_<id>]`, with ids past the model's vocabulary (offset + item id). The prompt builders put
it after each history title when the tokenizer carries them (`data.prompts.item_suffixes`), so every
path that turns prompt TEXT into ids -- training batches, beam search with its prefilled cache,
self-distillation, the SOFT probe, evaluation -- carries the item ids without any side channel. Two
hooks on the input embedding layer do the rest: the pre-hook records where item tokens are and
replaces them by a valid id for the lookup; the forward hook scatters MLP(e_item) into those rows.
The LM head never sees the item tokens (they are not in the vocabulary), so they cannot be generated,
and titles (grounding) tokenize exactly as on the plain base model.

The projector (`ItemProjector`: the frozen item table as a buffer + Linear(64, H), GELU, Linear(H, H))
is a submodule `llara_projector` of the causal LM. Under LoRA it is a peft `modules_to_save` module,
so it trains with the adapter and travels in every Trainer checkpoint (exact --resume); the best
epoch's projector is also written as `llara.safetensors` beside the adapter (or full weights), which
`load_run_model` reads to rebuild the backbone before loading the adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softrec.data.prompts import ITEM_TOKEN_ATTR
from softrec.errors import UserError
from softrec.models.wrappers import causal_lm_of

log = logging.getLogger(__name__)

ITEM_TOKEN = "[HistoryEmb_{}]"
PROJECTOR = "llara_projector"
WEIGHTS_FILE = "llara.safetensors"


class ItemProjector(nn.Module):
    """MLP(e_item): Linear(d, H), GELU, Linear(H, H) over a frozen item table (a buffer, not trained)."""

    def __init__(self, items: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("items", items.detach().float().clone())
        self.mlp = nn.Sequential(nn.Linear(items.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden))

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.items[item_ids].to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------- wiring
def projector_of(model: Any) -> ItemProjector | None:
    """The projector that forwards use now (the trained peft copy when the adapter is active)."""
    module = getattr(causal_lm_of(model), PROJECTOR, None)
    if module is None:
        return None
    if isinstance(module, ItemProjector):
        return module
    copies = getattr(module, "modules_to_save", None)  # peft ModulesToSaveWrapper
    if copies is not None and len(copies):
        active = getattr(module, "active_adapter", None)
        name = active[0] if isinstance(active, list | tuple) else active
        return copies[name] if name in copies else next(iter(copies.values()))
    return getattr(module, "original_module", None)


def add_item_tokens(tokenizer: Any, n_items: int) -> int:
    """Add `[HistoryEmb_i]` for every item; returns the id of item 0 (ids are offset + item id)."""
    tokens = [ITEM_TOKEN.format(i) for i in range(n_items)]
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids([tokens[0], tokens[-1]])
    if ids[1] - ids[0] != n_items - 1:
        raise UserError(f"tokenizer: the {n_items} LLaRA item tokens did not get consecutive ids")
    setattr(tokenizer, ITEM_TOKEN_ATTR, ITEM_TOKEN)
    return int(ids[0])


def _install_hooks(lm: Any, offset: int) -> None:
    """Pre-hook: item token ids -> id 0 for the lookup (remembering where they were and which item);
    forward hook: those rows <- projector(item). Works for any call that goes through the embedding
    layer with ids (training forward, prefill, generate), under autograd or inference mode."""
    embedding = lm.get_input_embeddings()
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        pending.clear()
        ids = args[0] if args else kwargs["input"]
        where = ids >= offset
        if not bool(where.any()):
            return None
        pending.append((where, ids[where] - offset))
        ids = ids.masked_fill(where, 0)
        return ((ids, *args[1:]), kwargs) if args else (args, {**kwargs, "input": ids})

    def after(module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        if not pending:
            return output
        where, items = pending.pop()
        vectors = getattr(lm, PROJECTOR)(items).to(output.dtype)
        return output.masked_scatter(where.unsqueeze(-1), vectors)

    embedding.register_forward_pre_hook(before, with_kwargs=True)
    embedding.register_forward_hook(after, with_kwargs=True)


def attach(model: Any, tokenizer: Any, items: torch.Tensor, *, mlp_state: dict[str, torch.Tensor] | None = None
           ) -> tuple[Any, Any]:
    """Make a plain (not yet peft-wrapped) causal LM a LLaRA backbone: item tokens in the tokenizer,
    the projector as `model.llara_projector`, the embedding hooks. Returns (model, tokenizer)."""
    lm = causal_lm_of(model)
    if getattr(lm, PROJECTOR, None) is not None:
        raise ValueError("this model already has a LLaRA projector")
    embedding = lm.get_input_embeddings()
    offset = add_item_tokens(tokenizer, int(items.shape[0]))
    if offset < embedding.num_embeddings:
        log.warning("LLaRA item tokens start at id %d, inside the %d-row embedding: those rows are replaced",
                    offset, embedding.num_embeddings)
    projector = ItemProjector(items, embedding.embedding_dim)
    if mlp_state is not None:
        projector.mlp.load_state_dict(mlp_state)
    lm.add_module(PROJECTOR, projector.to(device=embedding.weight.device, dtype=embedding.weight.dtype))
    _install_hooks(lm, offset)
    return model, tokenizer


def trainable_modules(model: Any) -> list[str] | None:
    """peft `modules_to_save` for this backbone: the projector trains (and is checkpointed) with LoRA."""
    return [PROJECTOR] if getattr(causal_lm_of(model), PROJECTOR, None) is not None else None


# ---------------------------------------------------------------- saving and loading
def save_projector(model: Any, folder: str | Path) -> Path | None:
    """Write the active projector (item table + MLP) as FOLDER/llara.safetensors; no-op without one."""
    from safetensors.torch import save_file

    projector = projector_of(model)
    if projector is None:
        return None
    state = {"items": projector.items, **{f"mlp.{k}": v for k, v in projector.mlp.state_dict().items()}}
    path = Path(folder) / WEIGHTS_FILE
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(path),
              metadata={"item_token": ITEM_TOKEN, "n_items": str(projector.n_items)})
    return path


def attach_saved(model: Any, tokenizer: Any, folder: str | Path) -> tuple[Any, Any]:
    """Rebuild the LLaRA backbone from FOLDER/llara.safetensors (as written by `save_projector`)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{path}: not a readable LLaRA projector ({exc.__class__.__name__})") from None
    if "items" not in state:
        raise UserError(f"{path}: field 'items' (the item embedding table) missing")
    mlp = {k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")}
    return attach(model, tokenizer, state["items"], mlp_state=mlp)


def has_projector(folder: str | Path) -> bool:
    return (Path(folder) / WEIGHTS_FILE).exists()
