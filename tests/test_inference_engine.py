"""The generation engine against transformers' own beam search, on a model with a trained-looking
LoRA adapter: same beams (ids and order), whatever the batching, and the caller's weights untouched."""

from __future__ import annotations

import pytest
import torch

from softrec.data.prompts import build_prompt
from softrec.inference.generate import decoding_model, generate_beam_ids, generate_plain


@pytest.fixture(scope="module")
def adapted(tiny_backbone):
    """The tiny model under a LoRA adapter whose B matrices are non-zero (a fresh one is a no-op),
    its EOS made likely enough that beams end at many different steps (the untuned tiny model never
    stops, which would leave the early exit untested)."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_backbone
    model = copy.deepcopy(model)
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.clone())
        head.weight[tokenizer.eos_token_id] = head.weight.mean(0) + 2.8 * head.weight.std(0)
    torch.manual_seed(0)  # peft draws lora_A from the global generator
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return peft_model.eval(), tokenizer


def _prompts(dataset, n):
    titles = dataset.titles
    samples = dataset.split("train")[:n]
    return [build_prompt([titles[i] for i in s.history], dataset.domain) for s in samples]


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_same_beams_as_plain_generate_under_lora(adapted, tiny_dataset, length_penalty):
    model, tokenizer = adapted
    prompts = _prompts(tiny_dataset, 12)
    kwargs = {"num_beams": 4, "max_new_tokens": 20, "length_penalty": length_penalty}
    plain = generate_plain(model, tokenizer, prompts, batch_size=3, **kwargs)
    for batch_size in (1, 5, 12):  # prompts leave the batch at different steps in each
        ours = generate_beam_ids(model, tokenizer, prompts, batch_size=batch_size, dtype="float32", **kwargs)
        assert [b.token_ids for b in ours] == [b.token_ids for b in plain]
        assert [b.texts for b in ours] == [b.texts for b in plain]


def test_some_prompts_finish_early_and_some_run_to_the_limit(adapted, tiny_dataset):
    """The case the early exit must get right: beams of one batch ending at different steps."""
    model, tokenizer = adapted
    beams = generate_beam_ids(model, tokenizer, _prompts(tiny_dataset, 12), num_beams=4, max_new_tokens=20)
    lengths = {len(ids) for b in beams for ids in b.token_ids}
    assert min(lengths) < 20 and max(lengths) == 20


def test_each_prompt_reports_its_own_decoding_steps_whatever_the_batch(adapted, tiny_dataset):
    """`Beams.steps` (what evaluation records as a prompt's cost): at least its longest beam, at most
    max_new_tokens, and the same whether the prompt decodes alone or in a refilled batch."""
    model, tokenizer = adapted
    prompts = _prompts(tiny_dataset, 12)
    steps = {}
    for length_penalty in (0.0, 1.0):
        runs = [generate_beam_ids(model, tokenizer, prompts, num_beams=4, max_new_tokens=20, batch_size=size,
                                  length_penalty=length_penalty) for size in (1, 5, 12)]
        steps[length_penalty] = [b.steps for b in runs[0]]
        assert all([b.steps for b in run] == steps[length_penalty] for run in runs[1:])
        assert all(max(map(len, b.token_ids)) <= b.steps <= 20 for b in runs[0])
    # Without a length penalty a prompt stops once its ended beams cannot be beaten. With the
    # reference's penalty 1 this model's prompts all decode to the limit, beams ended or not: a running
    # beam's per-token score can still beat them (why generation costs max_new_tokens steps).
    assert min(steps[0.0]) < 20 == max(steps[0.0])
    assert steps[1.0] == [20] * len(prompts)


def test_decoding_leaves_the_adapted_weights_bit_identical(adapted, tiny_dataset):
    model, tokenizer = adapted
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with decoding_model(model, torch.float32) as decoder:
        assert decoder is model
        merged = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert any(not torch.equal(before[n], merged[n]) for n in before)  # the merge did change them
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    generate_beam_ids(model, tokenizer, _prompts(tiny_dataset, 2), num_beams=2, max_new_tokens=4)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))


def test_a_bf16_copy_decodes_and_the_model_stays_fp32(adapted, tiny_dataset):
    model, tokenizer = adapted
    with decoding_model(model, torch.bfloat16) as decoder:
        assert decoder is not model and next(decoder.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    beams = generate_beam_ids(model, tokenizer, _prompts(tiny_dataset, 2), num_beams=2, max_new_tokens=4,
                              dtype="bfloat16")
    assert all(len(b.token_ids) == 2 for b in beams)



def test_the_bf16_copy_is_the_merged_model_cast_without_a_full_precision_copy(adapted, tiny_backbone):
    """The copy is made parameter by parameter in bf16 from the model merged in place: the same
    tensors as copying the fp32 model, merging and casting (what decoding did before, at +1 GiB of
    peak memory for Gemma 3 270M), tied weights still one tensor, and the model untouched."""
    import copy

    from peft import LoraConfig, get_peft_model

    tied_base = copy.deepcopy(tiny_backbone[0])
    tied_base.get_output_embeddings().weight = tied_base.get_input_embeddings().weight  # as Gemma's are
    torch.manual_seed(1)
    tied = get_peft_model(tied_base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in tied.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    full = copy.deepcopy(tiny_backbone[0])  # full fine-tuning: no adapter to fold
    for model, is_tied in ((adapted[0], False), (tied, True), (full, False)):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        reference = copy.deepcopy(model)
        if hasattr(reference, "merge_and_unload"):
            reference = reference.merge_and_unload()
        expected = reference.to(torch.bfloat16).state_dict()
        with decoding_model(model, torch.bfloat16) as decoder:
            got = decoder.state_dict()
            assert (decoder.get_input_embeddings().weight is decoder.get_output_embeddings().weight) == is_tied
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in expected)
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        assert not any(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))


@pytest.mark.parametrize("cap", [None, 30.0])
def test_chunked_head_equals_log_softmax_top_k(cap):
    """The fused chunked head gives log_softmax's values and its top-k, soft-capping included."""
    from types import SimpleNamespace

    from softrec.inference.head import ChunkedHead

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 16, generator=generator)
    hidden = torch.randn(6, 16, generator=generator) * 3
    linear = torch.nn.Linear(16, 1000, bias=True)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.randn(1000, generator=generator))
    model = SimpleNamespace(get_output_embeddings=lambda: linear,
                            config=SimpleNamespace(final_logit_softcapping=cap))
    logits = linear(hidden)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    expected = torch.log_softmax(logits, dim=-1)
    head = ChunkedHead(model, chunk=128)  # several chunks, the last one short
    values, ids = head.top(hidden, 8)
    top = expected.topk(8, dim=-1)
    torch.testing.assert_close(values, top.values, rtol=0, atol=1e-5)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(head.log_probs(hidden), expected, rtol=0, atol=1e-5)


def test_shared_prefix_length_of_a_left_padded_batch():
    from softrec.inference.generate import shared_prefix_length

    pad = 0
    rows = [[5, 6, 7, 8, 9], [5, 6, 7, 3], [5, 6, 7, 8, 1, 2]]
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    assert shared_prefix_length(ids, mask) == 3  # 5 6 7, then 8 / 3 differ
    assert shared_prefix_length(ids[[0, 2]], mask[[0, 2]]) == 4  # 5 6 7 8
    same = torch.tensor([[1, 2, 3], [1, 2, 3]])
    assert shared_prefix_length(same, torch.ones_like(same)) == 2  # each prompt keeps its last token
    assert shared_prefix_length(ids[:1], mask[:1]) == 0  # one prompt: nothing to share


@pytest.mark.parametrize("window", [512, 24])
def test_shared_prefix_prefill_on_a_sliding_window_model(tiny_backbone, tiny_dataset, window):
    """Gemma 3's layout (sliding-window and full layers): with a window the batch fits in, the
    template's prefix is prefilled once and shared; with a short one the engine falls back to the
    plain prefill. Same beams as transformers either way."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from softrec.inference import generate as engine

    _, tokenizer = tiny_backbone
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # make EOS likely enough that top beams end at 8 to 12 tokens (checked below)
        head = model.get_output_embeddings()
        head.weight[tokenizer.eos_token_id] = head.weight.mean(0) + 3.0 * head.weight.std(0)
    prompts = _prompts(tiny_dataset, 6)
    encoded = engine.encode_prompts(tokenizer, prompts)
    assert engine.shared_prefix_length(encoded["input_ids"], encoded["attention_mask"]) > engine.MIN_SHARED_PREFIX
    kwargs = {"num_beams": 3, "max_new_tokens": 12}
    plain = generate_plain(model, tokenizer, prompts, batch_size=6, **kwargs)
    calls = []
    original = engine.PromptSharedCache.repeat_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.PromptSharedCache, "repeat_rows",
                      lambda self, rows: (calls.append(rows), original(self, rows))[1])
        ours = generate_beam_ids(model, tokenizer, prompts, batch_size=6, dtype="float32", **kwargs)
    assert [b.token_ids for b in ours] == [b.token_ids for b in plain]
    if window == 512:  # prompts finish at different steps, so the refill below has slots to fill
        assert len({len(b.token_ids[0]) for b in plain}) > 1
    assert calls == ([6] if window == 512 else [])  # shared only when the sequence fits the window
    with pytest.MonkeyPatch.context() as patch:  # refilled batches of 2: merged only inside the window
        admitted = _count_admissions(patch, engine)
        refilled = generate_beam_ids(model, tokenizer, prompts, batch_size=2, dtype="float32", **kwargs)
    assert [b.token_ids for b in refilled] == [b.token_ids for b in plain]
    assert bool(admitted) == (window == 512)


def _count_admissions(patch, engine) -> list[int]:
    """Record how many prompts each successful refill admitted."""
    admitted: list[int] = []
    original = engine._Batch.admit

    def counting(self, encoded):
        first = original(self, encoded)
        if first is not None:
            admitted.append(int(first.shape[0]))
        return first

    patch.setattr(engine._Batch, "admit", counting)
    return admitted


@pytest.mark.parametrize("batch_size", [3, 5])
def test_refilled_batches_give_the_same_beams(adapted, tiny_dataset, batch_size):
    """Prompts admitted into a running batch (their own step counts, cache rows right-aligned with
    the others') get the beams transformers gives them, and refilling really happens."""
    from softrec.inference import generate as engine

    model, tokenizer = adapted
    prompts = _prompts(tiny_dataset, 12)
    # 2 beams: this model's prompts then finish at different steps (with 4, whole batches run to the limit)
    kwargs = {"num_beams": 2, "max_new_tokens": 20, "length_penalty": 1.0}
    plain = generate_plain(model, tokenizer, prompts, batch_size=4, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        admitted = _count_admissions(patch, engine)
        ours = generate_beam_ids(model, tokenizer, prompts, batch_size=batch_size, dtype="float32", **kwargs)
    assert admitted and sum(admitted) <= len(prompts) - batch_size
    assert [b.token_ids for b in ours] == [b.token_ids for b in plain]
    unrefilled = generate_beam_ids(model, tokenizer, prompts, batch_size=batch_size, dtype="float32", refill=False,
                                   **kwargs)
    assert [b.token_ids for b in unrefilled] == [b.token_ids for b in plain]
    # this tiny model's choices hardly depend on the context: its beam scores do, to every position
    scores = {refill: _beam_scores(model, tokenizer, prompts, batch_size, refill, **kwargs) for refill in (True, False)}
    assert scores[True] == pytest.approx(scores[False], rel=1e-5, abs=1e-5)


def _beam_scores(model, tokenizer, prompts, batch_size, refill, *, num_beams, max_new_tokens, length_penalty):
    from softrec.inference import generate as engine
    from softrec.inference.beam import BeamSettings
    from softrec.models.wrappers import causal_lm_of

    stops = tuple(engine.stop_token_ids(model, tokenizer))
    settings = BeamSettings(num_beams, max_new_tokens, length_penalty, stops, tokenizer.pad_token_id)
    found = {}
    with torch.inference_mode(), decoding_model(model, torch.float32) as decoder:
        engine._decode(causal_lm_of(decoder), prompts, tokenizer, settings, batch_size, None,
                       lambda index, result: found.__setitem__(index, result.scores), refill)
    return [score for index in sorted(found) for score in found[index]]


def test_refill_schedule_with_a_finished_prompt_riding_past_the_limit():
    """beam_search alone, over a scripted model whose rows are (prompt, step): prompts finish at
    chosen steps, slots are refilled, and prompt 0 finishes at the token limit while 7 others keep
    running, so it rides along (no compaction) past the limit. Every prompt gets its own result."""
    from softrec.inference.beam import BeamSettings, beam_search

    k, limit, eos = 2, 4, 0
    # the step at which each prompt's beams emit EOS (from step 2: a prompt is final once k beams are)
    finish = [limit, 2, 2, 2, 2, 3, 3, 3] + [limit] * 7
    settings = BeamSettings(num_beams=k, max_new_tokens=limit, length_penalty=1.0, stop_ids=(eos,), pad_id=1)
    queue = list(range(8, len(finish)))
    rows = torch.tensor([[p, 0] for p in range(8) for _ in range(k)])  # the scripted model's cache
    admitted: list[int] = []

    def candidates(generated, hidden):
        ends = torch.tensor([finish[int(p)] - 1 == int(t) for p, t in hidden.long().tolist()])[:, None]
        stop_first = torch.tensor([[-0.1, -5.0, -6.0, -7.0]]), torch.tensor([[eos, 5, 6, 7]])
        go_on = torch.tensor([[-0.1, -0.2, -0.3, -10.0]]), torch.tensor([[5, 6, 7, eos]])
        return (torch.where(ends, stop_first[0], go_on[0]), torch.where(ends, stop_first[1], go_on[1]))

    def step(tokens):
        rows[:, 1] += 1
        return rows.float()

    def reorder(beam_idx):
        rows.copy_(rows[beam_idx])

    def keep(prompts):
        nonlocal rows
        rows = rows.view(-1, k, 2)[prompts].reshape(-1, 2)

    def admit(count):
        nonlocal rows
        chosen = [queue.pop(0) for _ in range(min(count, len(queue)))]
        if not chosen:
            return None
        admitted.append(len(chosen))
        rows = torch.cat([rows, torch.tensor([[p, 0] for p in chosen for _ in range(k)])])
        return torch.tensor([[p, 0] for p in chosen], dtype=torch.float)

    results = {}
    decoded = beam_search(rows.view(-1, k, 2)[:, 0].float(), step, candidates, settings, reorder=reorder, keep=keep,
                          record=results.__setitem__, admit=admit)
    assert decoded == len(finish) == len(results) and admitted == [4, 3]
    order = range(len(finish))  # admission order is queue order here
    for index, prompt in enumerate(order):
        assert [len(ids) for ids in results[index].token_ids] == [finish[prompt]] * k
        assert all(ids[-1] == eos for ids in results[index].token_ids)


def test_a_batch_prefilled_in_length_groups_gives_the_same_beams(adapted, tiny_dataset, monkeypatch):
    """A batch's prompts are prefilled in groups of PREFILL_GROUP (each padded to its own longest) and
    joined into one cache: the beams must not change, constrained to titles or not."""
    from softrec.inference import generate as engine
    from softrec.inference.generate import generate_baseline
    from softrec.inference.trie import DictTrie, TitleTrie

    model, tokenizer = adapted
    prompts = _prompts(tiny_dataset, 10)
    kwargs = {"num_beams": 4, "max_new_tokens": 16}
    groups = []
    start = engine._Batch.start
    monkeypatch.setattr(engine._Batch, "start", lambda self, encoded: groups.append(len(encoded["input_ids"]))
                        or start(self, encoded))
    monkeypatch.setattr(engine, "PREFILL_GROUP", 3)
    ours = generate_beam_ids(model, tokenizer, prompts, batch_size=10, dtype="float32", refill=False, **kwargs)
    assert groups == [3]  # the first group starts the batch, the other three join it
    plain = generate_plain(model, tokenizer, prompts, batch_size=10, **kwargs)
    assert [b.token_ids for b in ours] == [b.token_ids for b in plain]

    trie = TitleTrie.from_titles(tokenizer, tiny_dataset.titles)
    constrained = generate_beam_ids(model, tokenizer, prompts, batch_size=10, dtype="float32", constrain_to=trie,
                                    **kwargs)
    reference = generate_baseline(model, tokenizer, prompts, batch_size=10,
                                  trie=DictTrie.from_titles(tokenizer, tiny_dataset.titles), **kwargs)
    assert [b.token_ids for b in constrained] == [b.token_ids for b in reference]
