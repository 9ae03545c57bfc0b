"""The catalogue trie and the constrained decoder: real titles only, duplicates, tokenisation, EOS."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from softrec.data.prompts import build_prompt, response_text
from softrec.inference.generate import generate_baseline, generate_beam_ids
from softrec.inference.trie import (
    DEAD,
    DictTrie,
    TitleTrie,
    TrieLogitsProcessor,
    tokenize_responses,
)

TITLES = ["Dune", "Dune Messiah", "Emma", ",Kim", "Emma", "The Road"]


@pytest.fixture(scope="module")
def tokenizer():
    from softrec.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_duplicate_titles_share_one_path_with_both_ids(tokenizer):
    trie = TitleTrie.from_titles(tokenizer, TITLES)
    path = _ids(tokenizer, '"Emma"') + [tokenizer.eos_token_id]
    assert trie.items_for(path) == [2, 4]
    assert len(trie.items) == 5  # six titles, five distinct paths


def test_title_is_tokenized_as_a_whole_response(tokenizer):
    # the tiny BPE merges the quote with a comma: '",' is one token
    whole = _ids(tokenizer, response_text(",Kim"))
    pieces = _ids(tokenizer, '"') + _ids(tokenizer, ",Kim") + _ids(tokenizer, '"')
    assert whole != pieces
    trie = TitleTrie.from_titles(tokenizer, TITLES)
    eos = tokenizer.eos_token_id
    assert trie.items_for(whole + [eos]) == [3]
    assert trie.walk(pieces) == DEAD


def test_eos_ends_a_title_and_nothing_follows_it(tokenizer):
    trie = TitleTrie.from_titles(tokenizer, TITLES)
    eos = tokenizer.eos_token_id
    dune = _ids(tokenizer, '"Dune"')
    assert trie.allowed(dune) == [eos]  # "Dune" is complete: only EOS
    assert trie.items_for(dune) == []  # without EOS it is not an item yet
    prefix = _ids(tokenizer, '"Dune')
    messiah = _ids(tokenizer, '"Dune Messiah"')
    assert set(trie.allowed(prefix)) == {dune[len(prefix)], messiah[len(prefix)]}
    assert trie.walk(dune + [eos]) != DEAD and trie.allowed(dune + [eos]) == [eos]
    assert trie.walk(dune + [eos, eos]) == DEAD


def test_vectorised_states_match_the_dict_trie(tokenizer):
    sequences = tokenize_responses(tokenizer, TITLES)
    trie = TitleTrie.from_titles(tokenizer, TITLES)
    baseline = DictTrie.from_titles(tokenizer, TITLES).prefix_allowed_tokens_fn(0)
    rng = random.Random(0)
    prefixes = [seq[:cut] for seq in sequences for cut in range(len(seq) + 1)]
    prefixes += [[rng.randrange(len(tokenizer)) for _ in range(3)] for _ in range(20)]
    for prefix in prefixes:
        rows = torch.tensor([prefix]) if prefix else torch.zeros((1, 0), dtype=torch.long)
        node = trie.states(rows)
        _, tokens = trie.allowed_pairs(node)
        assert sorted(tokens.tolist()) == sorted(baseline(0, torch.tensor(prefix, dtype=torch.long)))


def test_processor_equals_prefix_allowed_tokens_baseline(tokenizer):
    trie = TitleTrie.from_titles(tokenizer, TITLES)
    dict_trie = DictTrie.from_titles(tokenizer, TITLES)
    prompt = torch.randint(0, 50, (6, 4))
    generated = [_ids(tokenizer, '"Du'), _ids(tokenizer, '"Em'), [7, 9], _ids(tokenizer, '"'), _ids(tokenizer, '"Du'), [1, 1]]
    width = max(len(g) for g in generated)
    generated = [g + [tokenizer.eos_token_id] * (width - len(g)) if len(g) < width else g for g in generated]
    input_ids = torch.cat([prompt, torch.tensor(generated)], dim=1)
    scores = torch.randn(6, len(tokenizer))
    fast = TrieLogitsProcessor(trie, 4)(input_ids, scores.clone())  # works in place
    slow = PrefixConstrainedLogitsProcessor(dict_trie.prefix_allowed_tokens_fn(4), num_beams=3)(input_ids, scores.clone())
    assert torch.equal(fast, slow)


def test_every_constrained_beam_is_a_real_title_and_matches_the_baseline(tiny_backbone, tiny_dataset):
    model, tokenizer = tiny_backbone
    titles = tiny_dataset.titles
    prompts = [build_prompt([titles[i] for i in s.history], tiny_dataset.domain) for s in tiny_dataset.split("test")[:4]]
    trie = TitleTrie.from_titles(tokenizer, titles)
    fast = generate_beam_ids(model, tokenizer, prompts, num_beams=4, max_new_tokens=24, batch_size=4, constrain_to=trie)
    slow = generate_baseline(model, tokenizer, prompts, num_beams=4, max_new_tokens=24, batch_size=4,
                             trie=DictTrie.from_titles(tokenizer, titles))
    for beams, reference in zip(fast, slow, strict=True):
        assert beams.token_ids == reference.token_ids
        assert len(beams.texts) == 4
        for ids, text in zip(beams.token_ids, beams.texts, strict=True):
            items = trie.items_for(ids)
            assert items, f"beam {text!r} is not a catalogue title"
            assert text == response_text(titles[items[0]])


@pytest.mark.slow
def test_decoding_benchmark_smoke_run():
    import subprocess
    import sys
    from pathlib import Path

    from conftest import shared_dataset

    shared_dataset("amazon-books")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decoding.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--model", "tiny", "--prompts", "4", "--beams", "3", "--batch-size", "2",
         "--max-new-tokens", "12"], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "identical ranked outputs: 4/4 prompts" in proc.stdout
    # the speedup is the ratio of the two rates it prints (the old check was only `speedup > 0`)
    rates = {line.split(":")[0]: float(line.split()[2]) for line in lines if line.startswith(("softrec:", "baseline:"))}
    assert lines[-1].startswith("speedup: ")
    assert float(lines[-1].split()[1]) == pytest.approx(rates["softrec"] / rates["baseline"], abs=0.006)
    # every prompt returns its 3 beams, and some are complete catalogue titles (12 new tokens cut others)
    [complete] = [line for line in lines if line.startswith("complete catalogue titles")]
    valid, total = map(int, complete.rsplit(" ", 1)[1].split("/"))
    assert total == 4 * 3 and 0 < valid <= total
