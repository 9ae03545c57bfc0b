"""The decoding loop: transformers' beam search, step for step, with the work it does not need cut out.

Why not `model.generate`: it copies every prompt `num_beams` times before its prefill, runs a
log-softmax and a top-k over `num_beams x vocabulary` scores per prompt per step (262k columns for
Gemma), keeps decoding prompts whose result is already final until the whole batch is done, and
goes through several layers of Python per step. None of that changes which beams win. This loop
keeps transformers' selection rules exactly (`GenerationMixin._beam_search` in transformers 5.x:
`beams_to_keep` candidates, the first `num_beams` of them eligible to finish, the length-penalised
finished scores, the `early_stopping=False` heuristic) and changes only how they are computed:

- prompts are prefilled once, not once per beam (`cache.PromptSharedCache`);
- per step, each row's log-normaliser and its top `beams_to_keep` tokens come from a fused pass
  over the vocabulary (`head.ChunkedHead`): the union of the rows' top-k lists holds the prompt's
  global top-k, so the selection is the same as over the flattened `num_beams x vocabulary` scores;
- a prompt leaves the batch as soon as transformers' stopping heuristic says its finished beams
  can no longer change (they cannot: every later candidate is pushed below them by -1e9);
- constrained decoding masks the rows after the log-normaliser, as a logits processor does.

No maintained library offers this on a CPU: vLLM and TGI need a GPU for beam search with LoRA, and
transformers' own loop is the reference we replicate (`tests/test_inference_engine.py` compares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NEG = -1.0e9  # transformers' "never pick this" score, kept so ties resolve as they do there


@dataclass(frozen=True)
class BeamSettings:
    num_beams: int
    max_new_tokens: int
    length_penalty: float
    stop_ids: tuple[int, ...]
    pad_id: int

    @property
    def beams_to_keep(self) -> int:
        return max(2, 1 + len(self.stop_ids)) * self.num_beams


@dataclass
class BeamResult:
    """One prompt's finished beams, best first: token ids up to and including the stop token."""

    token_ids: list[list[int]]
    scores: list[float]


# A step function: token ids [rows] fed at this step -> last hidden states [rows, hidden].
StepFn = Callable[[torch.Tensor], torch.Tensor]
# (generated token ids [rows, t], hidden states [rows, hidden]) -> each row's best allowed next-token
# log-probabilities (normalised over the whole vocabulary, as transformers applies logits processors
# to log-softmax output) and their token ids, [rows, m] each, best first (m >= beams_to_keep; -inf
# pads rows with fewer allowed tokens).
CandidateFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# Called with the kept prompt positions (into the current batch) whenever prompts leave it.
KeepFn = Callable[[torch.Tensor], None]
# Called with the flat source row of every new running beam (reorders the KV cache).
ReorderFn = Callable[[torch.Tensor], None]


def beam_search(first_hidden: torch.Tensor, step: StepFn, candidates: CandidateFn, settings: BeamSettings, *,
                reorder: ReorderFn, keep: KeepFn) -> list[BeamResult]:
    """Beam search for a batch of prompts whose last prompt token has been run.

    `first_hidden` [prompts, hidden] are the prefill's hidden states at each prompt's last position;
    `step` runs one decoding step for every row (prompts x beams, prompt-major) still in the batch.
    """
    device = first_hidden.device
    k, n, max_new = settings.num_beams, settings.beams_to_keep, settings.max_new_tokens
    batch = first_hidden.shape[0]
    stops = torch.tensor(settings.stop_ids, device=device)
    results: list[BeamResult | None] = [None] * batch
    alive = torch.arange(batch, device=device)  # original prompt index of each batch position

    running_scores = torch.full((batch, k), NEG, device=device)
    running_scores[:, 0] = 0.0
    running_tokens = torch.full((batch, k, max_new), settings.pad_id, dtype=torch.long, device=device)
    done_scores = torch.full((batch, k), NEG, device=device)
    done_tokens = running_tokens.clone()
    done_lengths = torch.zeros((batch, k), dtype=torch.long, device=device)
    done_flags = torch.zeros((batch, k), dtype=torch.bool, device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)
    pending = improvable.clone()  # result not yet recorded
    eligible_rank = torch.arange(n, device=device) < k

    hidden = first_hidden.repeat_interleave(k, dim=0)
    for t in range(max_new):
        rows = alive.numel()
        generated = running_tokens[:, :, :t].reshape(rows * k, t)
        values, tokens = candidates(generated, hidden)
        values = values + running_scores.reshape(-1, 1)
        # the prompt's top n over its k rows' top-n lists = its top n over k x vocabulary
        scores, flat = values.reshape(rows, -1).topk(n, dim=-1)
        source = torch.div(flat, values.shape[-1], rounding_mode="floor")  # beam within the prompt
        token = tokens.reshape(rows, -1).gather(1, flat)
        hits = torch.isin(token, stops) | (t + 1 >= max_new)
        extended = running_tokens.gather(1, source[:, :, None].expand(-1, -1, max_new)).clone()
        extended[:, :, t] = token

        # finished: only the first k candidates may finish; then keep the best k finished overall
        finishing = hits & eligible_rank
        finished_scores = scores / float(t + 1) ** settings.length_penalty
        finished_scores = finished_scores + (~improvable[:, None]).float() * NEG + (~finishing).float() * NEG
        merged = torch.cat([done_scores, finished_scores], dim=1).topk(k, dim=1).indices
        done_scores = torch.cat([done_scores, finished_scores], dim=1).gather(1, merged)
        done_tokens = torch.cat([done_tokens, extended], dim=1).gather(1, merged[:, :, None].expand(-1, -1, max_new))
        new_lengths = torch.full_like(source, t + 1)
        done_lengths = torch.cat([done_lengths, new_lengths], dim=1).gather(1, merged)
        done_flags = torch.cat([done_flags, finishing], dim=1).gather(1, merged)

        # running: the best k candidates that did not stop
        chosen = (scores + hits.float() * NEG).topk(k, dim=1)
        running_scores = chosen.values
        running_tokens = extended.gather(1, chosen.indices[:, :, None].expand(-1, -1, max_new))
        beam_source = source.gather(1, chosen.indices)

        # transformers' early_stopping=False heuristic, at the new length t + 1
        best_possible = running_scores[:, 0] / float(t + 1) ** settings.length_penalty
        worst_done = torch.where(done_flags, done_scores.min(dim=1, keepdim=True).values, torch.full_like(done_scores, NEG))
        improvable = improvable & (best_possible[:, None] > worst_done).any(dim=1)
        if t + 1 >= max_new:
            improvable = torch.zeros_like(improvable)

        newly = (~improvable & pending).nonzero().flatten()
        for position in newly.tolist():
            results[int(alive[position])] = _result(done_tokens[position], done_lengths[position], done_scores[position])
        pending = pending & improvable
        if not bool(pending.any()):
            break
        reorder((beam_source + torch.arange(rows, device=device)[:, None] * k).reshape(-1))
        # Finished prompts keep riding along until enough of them have gathered to pay for a compaction
        # (it copies the whole KV cache); their finished beams cannot change any more.
        if int((~pending).sum()) * 4 >= rows:
            kept = pending.nonzero().flatten()
            keep(kept)
            alive, pending, improvable = alive[kept], pending[kept], improvable[kept]
            running_scores, running_tokens = running_scores[kept], running_tokens[kept]
            done_scores, done_tokens = done_scores[kept], done_tokens[kept]
            done_lengths, done_flags = done_lengths[kept], done_flags[kept]
        hidden = step(running_tokens[:, :, t].reshape(-1))
    return results  # type: ignore[return-value]


def _result(tokens: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor) -> BeamResult:
    rows = tokens.tolist()
    return BeamResult([row[:length] for row, length in zip(rows, lengths.tolist(), strict=True)], scores.tolist())

