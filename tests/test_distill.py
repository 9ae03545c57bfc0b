"""SOFT stage 2: self-distilled targets for every training input, resumable and reused when valid."""

from __future__ import annotations

import json

import pytest

from softrec.config import load_config


def _config():
    return load_config(None, ["soft.distill_max_new_tokens=6", "soft.distill_beams=2", "eval.batch_size=4"])


def test_distill_covers_every_training_sample_and_is_reused(sft_run, tiny_dataset, monkeypatch):
    from softrec.inference import distill as stage

    path = stage.distill(sft_run, tiny_dataset, _config(), progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [s.sample_id for s in tiny_dataset.split("train")]
    assert all(isinstance(r["target_text"], str) for r in rows)
    assert stage.load_distilled(sft_run, tiny_dataset) == {r["sample_id"]: r["target_text"] for r in rows}
    assert not (sft_run / stage.PARTS).exists()
    from conftest import make_tiny_dataset

    from softrec.errors import UserError

    other = make_tiny_dataset(sft_run.parent / "other-data", seed=1)  # another dataset: not this teacher's
    with pytest.raises(UserError, match="distilled from other data"):
        stage.load_distilled(sft_run, other)

    # a second call with the same adapter, data and settings generates nothing
    monkeypatch.setattr(stage, "_generate_targets", lambda *a, **k: pytest.fail("regenerated"))
    assert stage.distill(sft_run, tiny_dataset, _config(), progress=False) == path


def test_distill_resumes_from_finished_chunks(sft_run, tiny_dataset, monkeypatch):
    from softrec.inference import distill as stage

    monkeypatch.setattr(stage, "CHUNK", 8)
    real = stage._generate_targets
    calls = []

    def crash_on_second_chunk(model, tokenizer, samples, *args):
        calls.append(samples[0].sample_id)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(model, tokenizer, samples, *args)

    monkeypatch.setattr(stage, "_generate_targets", crash_on_second_chunk)
    with pytest.raises(RuntimeError):
        stage.distill(sft_run, tiny_dataset, _config(), progress=False)
    assert not (sft_run / stage.DISTILLED).exists()  # nothing half-written

    calls.clear()
    monkeypatch.setattr(stage, "_generate_targets", lambda m, t, samples, *a: calls.append(1) or real(m, t, samples, *a))
    stage.distill(sft_run, tiny_dataset, _config(), progress=False)
    assert len(calls) == 2  # 24 samples in chunks of 8: the finished first chunk was kept


def test_missing_distilled_targets_is_a_user_error(tmp_path):
    from softrec.errors import UserError
    from softrec.inference.distill import load_distilled

    with pytest.raises(UserError, match="softrec distill"):
        load_distilled(tmp_path)


def test_distill_covers_only_the_training_subset(sft_run, tiny_dataset):
    """SFT on `train.train_samples` of the split: distilling the rest would be wasted generation."""
    from softrec.data.subsets import subset
    from softrec.inference import distill as stage

    config = load_config(None, ["soft.distill_max_new_tokens=4", "soft.distill_beams=1", "train.train_samples=3"])
    path = stage.distill(sft_run, tiny_dataset, config, progress=False)
    ids = [json.loads(line)["sample_id"] for line in path.read_text().splitlines()]
    expected = [s.sample_id for s in subset(tiny_dataset.split("train"), 3, config.data.seed)]
    assert ids == expected and len(ids) == 3 < len(tiny_dataset.split("train"))


@pytest.mark.parametrize(("text", "cut"), [
    ('"Dune"\n"Dune Messiah"\n"', '"Dune"'),  # the run-on of an undertrained teacher
    ('"Dune"', '"Dune"'),
    ('"Dune" and "Emma"', '"Dune"'),
    (' "Dune"\n"Emma"', ' "Dune"'),  # leading spaces are no title
    ('Dune"\n"Emma"', 'Dune"'),  # no opening quote: the first quote closes
    ('"Dune Messiah', '"Dune Messiah'),  # no closing quote: as generated
    ("", ""),
    ('""\n"Emma"', '""'),
    ('"Dune", "Emma"', '"Dune"'),  # amazon-industrial's teacher runs on like this
    # a quote followed by a word belongs to the title: inch marks, quoted words
    ('"Anytime Tools 5 Piece 3/8" MINI LATHE BIT SET", "Loctite 243"', '"Anytime Tools 5 Piece 3/8" MINI LATHE BIT SET"'),
    ('"3/8" and 1/2" Housings"\n"Emma"', '"3/8" and 1/2" Housings"'),
    ('"The "Dune" Poster"', '"The "Dune" Poster"'),
    ('"Rod, 0.5""\n"Emma"', '"Rod, 0.5""'),  # a title ending in an inch mark, then its closing quote
])
def test_first_quoted_cuts_after_the_first_closing_quote(text, cut):
    from softrec.data.prompts import first_quoted

    assert first_quoted(text) == cut
    assert first_quoted(cut) == cut


def test_quoted_mode_keeps_one_quoted_title_per_target(sft_run, tiny_dataset, monkeypatch):
    """`--mode quoted`: the raw top beams, cut; another key than raw's, so a switch regenerates."""
    from softrec.inference import distill as stage
    from softrec.inference import generate

    raw = ['"Dune"\n"Emma"\n"', '"Hamlet, Prince', 'Kim"\n"Ubik"']
    monkeypatch.setattr(generate, "generate_beams", lambda model, tokenizer, prompts, **kw: [
        [raw[i % len(raw)], "other beam"] for i in range(len(prompts))])
    config = load_config(None, ["soft.distill_mode=quoted", "soft.distill_beams=2", "eval.batch_size=4"])
    path = stage.distill(sft_run, tiny_dataset, config, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["target_text"] for r in rows} == {'"Dune"', '"Hamlet, Prince', 'Kim"'}
    assert all(r["target_text"].lstrip().lstrip('"').count('"') <= 1 for r in rows)  # at most one closing quote
    # the run-ons became catalogue titles (raw's whole-text rule reads them as one long non-title)
    assert [r["exact_title"] for r in rows] == [r["target_text"] != '"Hamlet, Prince' for r in rows]
    assert stage.distill_key(sft_run, tiny_dataset, config) != stage.distill_key(sft_run, tiny_dataset, _config())
    # targets cut by another version of the rule are not reused; raw's key does not depend on it
    before = stage.distill_key(sft_run, tiny_dataset, config), stage.distill_key(sft_run, tiny_dataset, _config())
    monkeypatch.setattr(stage, "QUOTED_RULE", "closing-quote-v3")
    assert stage.distill_key(sft_run, tiny_dataset, config) != before[0]
    assert stage.distill_key(sft_run, tiny_dataset, _config()) == before[1]


def test_the_schema_and_the_cli_accept_exactly_the_distill_modes():
    """config.DISTILL_MODES is the one list: soft.distill_mode and `softrec distill --mode` follow it."""
    from typing import get_args

    from softrec.cli import build_parser
    from softrec.config import DISTILL_MODES, SoftConfig

    assert get_args(SoftConfig.model_fields["distill_mode"].annotation) == tuple(DISTILL_MODES)
    distill = build_parser()._subparsers._group_actions[0].choices["distill"]
    mode = next(a for a in distill._actions if "--mode" in a.option_strings)
    assert list(mode.choices) == list(DISTILL_MODES) and "quoted" in DISTILL_MODES


def test_the_manifest_records_how_often_the_teacher_names_the_true_next_item(sft_run, tiny_dataset, monkeypatch):
    from softrec.data.prompts import response_text
    from softrec.data.subsets import training_samples
    from softrec.inference import distill as stage
    from softrec.inference import generate
    from softrec.runs import RunDir

    config = load_config(None, ["soft.distill_beams=1", "eval.batch_size=4"])
    samples = training_samples(tiny_dataset, config)
    answer = tiny_dataset.titles[samples[0].target]  # the teacher answers one title to every prompt
    monkeypatch.setattr(generate, "generate_beams", lambda model, tokenizer, prompts, **kw: [
        [response_text(answer)] for _ in prompts])
    stage.distill(sft_run, tiny_dataset, config, progress=False)
    entry = RunDir(sft_run).manifest()["artefacts"]["distilled.jsonl"]
    hits = sum(tiny_dataset.titles[s.target] == answer for s in samples) / len(samples)
    assert entry["exact_title_share"] == 1.0 and entry["target_hit_share"] == pytest.approx(hits) and 0 < hits < 1


def test_grounded_mode_maps_every_target_to_its_nearest_title_embedding_the_catalogue_once(
        sft_run, tiny_dataset, monkeypatch, tmp_path):
    """`--mode grounded`: every target is a catalogue title (a generated title grounds to itself), and
    the catalogue is embedded once per run, not once per chunk, then read from the disk cache."""
    from softrec.data.prompts import response_text
    from softrec.inference import distill as stage
    from softrec.inference import generate, grounding

    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stage, "CHUNK", 8)
    titles = tiny_dataset.titles
    samples = tiny_dataset.split("train")
    monkeypatch.setattr(generate, "generate_beams", lambda model, tokenizer, prompts, **kw: [
        [response_text(titles[i % len(titles)])] for i in range(len(prompts))])
    embedded = []
    real_embed = grounding.embed_texts
    monkeypatch.setattr(grounding, "embed_texts", lambda m, t, texts, **kw: embedded.append(list(texts)) or real_embed(m, t, texts, **kw))
    config = load_config(None, ["soft.distill_mode=grounded", "soft.distill_beams=1", "eval.batch_size=4"])
    path = stage.distill(sft_run, tiny_dataset, config, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(samples) > stage.CHUNK and len(rows) == len(samples)
    assert [r["target_text"] for r in rows] == [response_text(titles[i % stage.CHUNK % len(titles)]) for i in range(len(rows))]
    assert all(r["exact_title"] for r in rows)
    assert sum(texts == list(titles) for texts in embedded) == 1  # three chunks, one catalogue embedding
    assert list((tmp_path / "cache" / "embeddings").glob("*.pt"))
