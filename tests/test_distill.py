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
    assert stage.load_distilled(sft_run) == {r["sample_id"]: r["target_text"] for r in rows}
    assert not (sft_run / stage.PARTS).exists()

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
