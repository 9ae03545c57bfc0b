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
- constrained decoding masks the rows after the log-normaliser, as a logits processor does;
- finished prompts' slots are refilled with new prompts, each prompt keeping its own step count
  (its scores, length penalty and stopping are those of a batch of its own).

No maintained library offers this on a CPU: vLLM and TGI need a GPU for beam search with LoRA, and
transformers' own loop is the reference we replicate (`tests/test_inference_engine.py` compares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

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
    """One prompt's finished beams, best first: token ids up to and including the stop token;
    `steps`: the decoding steps the prompt took (its beams stopping or max_new_tokens), its cost."""

    token_ids: list[list[int]]
    scores: list[float]
    steps: int = 0


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


# Prefills up to this many more prompts, appends their rows (num_beams each) after the batch's
# current rows in the KV cache and returns their last prompt hidden states [prompts, hidden]; None
# when no prompt is left (or the cache cannot take more).
AdmitFn = Callable[[int], "torch.Tensor | None"]
# Called with each prompt's admission index (first batch 0..B-1, then admitted prompts in order)
# and its result, as soon as the prompt is final.
RecordFn = Callable[[int, BeamResult], None]


@dataclass
class _Prompts:
    """The beam-search state of every prompt in the batch (prompt-major; k beams each)."""

    ids: torch.Tensor  # admission index
    steps: torch.Tensor  # tokens generated so far: prompts admitted later are behind
    running_scores: torch.Tensor  # [P, k]
    running_tokens: torch.Tensor  # [P, k, max_new]
    done_scores: torch.Tensor  # [P, k]
    done_tokens: torch.Tensor  # [P, k, max_new]
    done_lengths: torch.Tensor  # [P, k]
    done_flags: torch.Tensor  # [P, k]
    improvable: torch.Tensor  # [P]: a running beam could still beat a finished one
    pending: torch.Tensor  # [P]: result not yet recorded

    @classmethod
    def fresh(cls, ids: torch.Tensor, settings: BeamSettings) -> _Prompts:
        p, k, max_new = ids.numel(), settings.num_beams, settings.max_new_tokens
        scores = torch.full((p, k), NEG, device=ids.device)
        running = scores.clone()
        running[:, 0] = 0.0
        tokens = torch.full((p, k, max_new), settings.pad_id, dtype=torch.long, device=ids.device)
        flags = torch.zeros((p, k), dtype=torch.bool, device=ids.device)
        alive = torch.ones(p, dtype=torch.bool, device=ids.device)
        return cls(ids, torch.zeros_like(ids), running, tokens, scores, tokens.clone(),
                   torch.zeros((p, k), dtype=torch.long, device=ids.device), flags, alive, alive.clone())

    def select(self, kept: torch.Tensor) -> _Prompts:
        return _Prompts(*(getattr(self, f.name)[kept] for f in fields(self)))

    def extend(self, other: _Prompts) -> _Prompts:
        return _Prompts(*(torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)))


def beam_search(first_hidden: torch.Tensor, step: StepFn, candidates: CandidateFn, settings: BeamSettings, *,
                reorder: ReorderFn, keep: KeepFn, record: RecordFn, admit: AdmitFn | None = None) -> int:
    """Beam search for a batch of prompts whose last prompt token has been run; returns how many
    prompts it decoded (the first batch and every admitted one).

    `first_hidden` [prompts, hidden] are the prefill's hidden states at each prompt's last position;
    `step` runs one decoding step for every row (prompts x beams, prompt-major) still in the batch.
    With `admit`, finished prompts' slots are refilled with new prompts, so the batch stays full
    until the queue is empty instead of shrinking to a few rows; each prompt keeps its own step
    count, so its beams, scores and stopping are those it would have had alone (`candidates` then
    ignores the `generated` tokens, which are aligned only within a prompt).
    """
    device = first_hidden.device
    k, n, max_new = settings.num_beams, settings.beams_to_keep, settings.max_new_tokens
    capacity = first_hidden.shape[0]
    stops = torch.tensor(settings.stop_ids, device=device)
    eligible_rank = torch.arange(n, device=device) < k
    state = _Prompts.fresh(torch.arange(capacity, device=device), settings)
    admitted = capacity
    hidden = first_hidden.repeat_interleave(k, dim=0)
    while True:
        # a finished prompt riding along until the next compaction may pass max_new: its state is unused
        rows, t = state.ids.numel(), state.steps.clamp(max=max_new - 1)
        width = int(t.max())
        generated = state.running_tokens[:, :, :width].reshape(rows * k, width)
        values, tokens = candidates(generated, hidden)
        values = values + state.running_scores.reshape(-1, 1)
        # the prompt's top n over its k rows' top-n lists = its top n over k x vocabulary
        scores, flat = values.reshape(rows, -1).topk(n, dim=-1)
        source = torch.div(flat, values.shape[-1], rounding_mode="floor")  # beam within the prompt
        token = tokens.reshape(rows, -1).gather(1, flat)
        last = (t + 1 >= max_new)[:, None]
        hits = torch.isin(token, stops) | last
        extended = state.running_tokens.gather(1, source[:, :, None].expand(-1, -1, max_new)).clone()
        extended.scatter_(2, t[:, None, None].expand(-1, n, 1), token[:, :, None])
        penalty = (t + 1).float()[:, None] ** settings.length_penalty

        # finished: only the first k candidates may finish; then keep the best k finished overall
        finishing = hits & eligible_rank
        finished_scores = scores / penalty
        finished_scores = finished_scores + (~state.improvable[:, None]).float() * NEG + (~finishing).float() * NEG
        merged = torch.cat([state.done_scores, finished_scores], dim=1).topk(k, dim=1).indices
        done_scores = torch.cat([state.done_scores, finished_scores], dim=1).gather(1, merged)
        done_tokens = torch.cat([state.done_tokens, extended], dim=1).gather(1, merged[:, :, None].expand(-1, -1, max_new))
        new_lengths = (t + 1)[:, None].expand_as(source)
        done_lengths = torch.cat([state.done_lengths, new_lengths], dim=1).gather(1, merged)
        done_flags = torch.cat([state.done_flags, finishing], dim=1).gather(1, merged)

        # running: the best k candidates that did not stop
        chosen = (scores + hits.float() * NEG).topk(k, dim=1)
        running_tokens = extended.gather(1, chosen.indices[:, :, None].expand(-1, -1, max_new))
        beam_source = source.gather(1, chosen.indices)

        # transformers' early_stopping=False heuristic, at each prompt's new length t + 1
        best_possible = chosen.values[:, :1] / penalty
        worst_done = torch.where(done_flags, done_scores.min(dim=1, keepdim=True).values, torch.full_like(done_scores, NEG))
        improvable = state.improvable & (best_possible > worst_done).any(dim=1) & ~last[:, 0]
        state = _Prompts(state.ids, t + 1, chosen.values, running_tokens, done_scores, done_tokens, done_lengths,
                         done_flags, improvable, state.pending)

        for position in (~improvable & state.pending).nonzero().flatten().tolist():
            record(int(state.ids[position]), _result(done_tokens[position], done_lengths[position], done_scores[position],
                                                     int(state.steps[position])))
        state.pending = state.pending & improvable
        if not bool(state.pending.any()):
            return admitted
        reorder((beam_source + torch.arange(rows, device=device)[:, None] * k).reshape(-1))
        # Finished prompts keep riding along until enough of them have gathered to pay for a compaction
        # (it copies the whole KV cache); their finished beams cannot change any more.
        if int((~state.pending).sum()) * 4 >= rows:
            kept = state.pending.nonzero().flatten()
            keep(kept)
            state = state.select(kept)
        fed = state.running_tokens.gather(2, (state.steps - 1)[:, None, None].expand(-1, k, 1))
        hidden = step(fed.reshape(-1))
        free = capacity - state.ids.numel()
        if admit is not None and free * 4 >= capacity:  # a refill is a prefill and a cache copy: batch it
            first = admit(free)
            if first is None:
                admit = None
            else:
                ids = torch.arange(admitted, admitted + first.shape[0], device=device)
                admitted += first.shape[0]
                state = state.extend(_Prompts.fresh(ids, settings))
                hidden = torch.cat([hidden, first.repeat_interleave(k, dim=0)])


def _result(tokens: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor, steps: int) -> BeamResult:
    rows = tokens.tolist()
    return BeamResult([row[:length] for row, length in zip(rows, lengths.tolist(), strict=True)], scores.tolist(),
                      steps)
