"""Grounding: exact titles ground to themselves, the embedding cache is reused, adapters are off."""

from __future__ import annotations

import pytest
import torch

from softrec.inference import grounding


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(grounding, "_MEMORY", {})
    return tmp_path / "cache" / "embeddings"


def test_exact_title_grounds_to_itself_at_rank_zero(tiny_backbone, tiny_dataset, cache):
    model, tokenizer = tiny_backbone
    titles = tiny_dataset.titles
    items = grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="tiny")
    queries = grounding.embed_texts(model, tokenizer, grounding.top_titles([f'"{t}"' for t in titles]), batch_size=7)
    ranking = grounding.rank_by_distance(queries, items)
    for item_id, title in enumerate(titles):
        first = titles.index(title)  # "Emma" appears twice: the lower id comes first
        assert ranking[item_id, 0].item() == first


def test_catalogue_embeddings_are_cached_on_disk_and_reused(tiny_backbone, tiny_dataset, cache, monkeypatch):
    model, tokenizer = tiny_backbone
    first = grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="tiny")
    files = list(cache.glob("tiny-*.pt"))
    assert len(files) == 1 and first.shape == (len(tiny_dataset.titles), model.config.hidden_size)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of reusing the cache")

    monkeypatch.setattr(grounding, "embed_texts", fail)
    monkeypatch.setattr(grounding, "_MEMORY", {})  # force the disk path
    assert torch.equal(grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="tiny"), first)
    # another model name is another key; no key means memory only
    with pytest.raises(AssertionError, match="recomputed"):
        grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="other-model")
    monkeypatch.undo()
    monkeypatch.setenv("SOFTREC_CACHE", str(cache.parent))
    grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key=None)
    assert len(list(cache.glob("*.pt"))) == 1


def test_embedding_is_batch_invariant_and_uses_the_frozen_base(tiny_backbone):
    from peft import LoraConfig, get_peft_model

    from softrec.models.registry import load_backbone

    model, tokenizer = tiny_backbone
    texts = ["Dune", "The Two Towers", "Emma", "A much longer title than the others"]
    base = grounding.embed_texts(model, tokenizer, texts, batch_size=4)
    single = torch.cat([grounding.embed_texts(model, tokenizer, [t]) for t in texts])
    assert torch.allclose(base, single, atol=1e-5)

    fresh, _ = load_backbone("tiny")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(fresh, lora).eval()
    enc = tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        tuned = peft_model(**enc, output_hidden_states=True).hidden_states[-1][0, -1]
    assert not torch.allclose(tuned, base[0], atol=1e-4)  # the adapter does change the model...
    assert torch.allclose(grounding.embed_texts(peft_model, tokenizer, texts), base, atol=1e-5)  # ...not grounding


def test_merge_rankings_keeps_head_order_and_drops_repeats():
    assert grounding.merge_rankings([4, 2, 4, 7], [0, 2, 7, 4, 1, 3]) == [4, 2, 7, 0, 1, 3]


def test_minilm_grounds_exact_titles(tiny_dataset, cache):
    titles = tiny_dataset.titles
    items = grounding.minilm_catalogue(tiny_dataset)
    ranking = grounding.rank_by_distance(grounding.minilm_embed(["Dune Messiah", "Hamlet"]), items)
    assert ranking[:, 0].tolist() == [titles.index("Dune Messiah"), titles.index("Hamlet")]
    assert list(cache.glob("all-MiniLM-L6-v2-*.pt"))


def test_catalogue_cache_is_not_reused_by_other_weights_under_the_same_name(tiny_dataset, tmp_path, monkeypatch):
    """The cache key holds the model's identity, not only its name: other weights recompute."""
    import copy

    import torch

    from softrec.inference import grounding
    from softrec.models.registry import load_backbone

    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path))
    model, tokenizer = load_backbone("tiny")
    first = grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="tiny")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(2)
    second = grounding.catalogue_embeddings(other, tokenizer, tiny_dataset, cache_key="tiny")
    assert not torch.equal(first, second)
    again = grounding.catalogue_embeddings(model, tokenizer, tiny_dataset, cache_key="tiny")
    assert torch.equal(first, again)
    assert len(list((tmp_path / "embeddings").iterdir())) == 2
