"""`softrec export`: a tiny run becomes a plain transformers directory that decodes like softrec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from softrec.cli import main

FAST = ["--micro-batch", "8", "--effective-batch", "8", "--set", "train.validate_every_epoch=false",
        "--set", "train.bf16=off", "--set", "train.learning_rate=0.01"]


@pytest.fixture()
def tiny_run(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--method", "sft", "--data", str(tiny_dataset.path), "--model", "tiny",
                 "--out", str(out), "--epochs", "1", *FAST]) == 0
    return out


def test_export_loads_with_plain_transformers_and_gives_softrec_top_beam(tiny_run, tiny_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from softrec.data.prompts import build_prompt
    from softrec.inference.generate import generate_beams
    from softrec.models.registry import load_run_model

    out = tmp_path / "exported"
    assert main(["export", "--run-dir", str(tiny_run), "--out", str(out)]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "prompt_template.json", "README.md"):
        assert (out / name).exists(), name

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())

    sample = tiny_dataset.split("test")[0]
    titles = [tiny_dataset.titles[i] for i in sample.history]
    prompt = build_prompt(titles, tiny_dataset.domain, "alpaca")
    template = json.loads((out / "prompt_template.json").read_text())
    assert template["format"].format(history=", ".join(f'"{t}"' for t in titles)) == prompt

    run_model, run_tokenizer = load_run_model(tiny_run)
    ours = generate_beams(run_model, run_tokenizer, [prompt], num_beams=4, max_new_tokens=12)[0][0]

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        sequences = model.generate(**inputs, max_new_tokens=12)  # beams etc. from generation_config.json
    theirs = tokenizer.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert model.generation_config.num_beams == 4
    assert ours.strip() and theirs.strip() == ours.strip()

    # and in a process that never imports softrec
    script = (
        "import sys, json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "d, prompt = sys.argv[1], sys.argv[2]\n"
        "m, t = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)\n"
        "x = t(prompt, return_tensors='pt')\n"
        "y = m.generate(**x, max_new_tokens=12)\n"
        "print(json.dumps([t.decode(y[0, x['input_ids'].shape[1]:], skip_special_tokens=True),"
        " any(k.startswith('softrec') for k in sys.modules)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, str(out), prompt], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=True)
    text, imported_softrec = json.loads(done.stdout.strip().splitlines()[-1])
    assert not imported_softrec and text.strip() == ours.strip()


def test_adapter_is_self_describing(tiny_run):
    adapter = tiny_run / "adapter"
    card = (adapter / "README.md").read_text()
    assert "## How to load and prompt it" in card and "tiny" in card
    assert json.loads((adapter / "softrec_base_model.json").read_text())["name"] == "tiny"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert (adapter / "tokenizer.json").exists() and (adapter / "prompt_template.json").exists()


def test_export_refuses_a_classic_or_missing_run(tmp_path, capsys):
    assert main(["export", "--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_llara_export_carries_its_projector_and_says_how_to_use_it(tiny_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "llara"
    assert main(["train", "--method", "sft", "--backbone", "llara", "--data", str(tiny_dataset.path), "--model", "tiny",
                 "--out", str(run), "--epochs", "1", *FAST, "--set", "classic.epochs=1"]) == 0
    out = tmp_path / "exported"
    assert main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    assert (out / "llara.safetensors").exists() and "attach_saved" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert not any("llara" in name or "lora" in name for name, _ in model.named_parameters())


def test_push_to_hub_without_the_hub_is_one_line_and_keeps_the_export(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "exported"
    assert main(["export", "--run-dir", str(tiny_run), "--out", str(out), "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE" in err
    assert (out / "config.json").exists()


def test_full_fine_tuning_run_is_a_plain_model_dir_and_exports(tiny_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "full"
    assert main(["train", "--method", "sft", "--full", "--data", str(tiny_dataset.path), "--model", "tiny",
                 "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert "AutoModelForCausalLM" in (run / "model" / "README.md").read_text()
    assert (run / "model" / "prompt_template.json").exists()
    out = tmp_path / "exported"
    assert main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
