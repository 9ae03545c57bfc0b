"""`export_run(run_dir, out)`: a merged, plain transformers model directory (weights, tokenizer,
generation config, prompt template, model card) that `AutoModelForCausalLM.from_pretrained(out)`
loads and that decodes the same top beam as softrec for the same prompt (`softrec export`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from softrec.errors import UserError
from softrec.methods import is_classic
from softrec.models.card import BASE_FILE, base_identity, model_card, run_facts, write_prompt
from softrec.models.wrappers import causal_lm_of


def export_run(run_dir: str | Path, out: str | Path, *, push_to_hub: str | None = None) -> Path:
    """Merge RUN_DIR's weights into its base and write a plain transformers model directory."""
    import torch
    from transformers import GenerationConfig

    from softrec.inference.generate import stop_token_ids
    from softrec.models.registry import load_run_model
    from softrec.runs import atomic_dir

    run_dir, out = Path(run_dir), Path(out)
    facts = run_facts(run_dir)
    info, config = facts["info"], facts["config"]
    if is_classic(info.get("method")):
        raise UserError(f"{run_dir}: a {info['method']} run has no language model to export")
    if not ((run_dir / "adapter").is_dir() or (run_dir / "model").is_dir()):
        raise UserError(f"{run_dir}: no trained weights (adapter/ or model/); finish `softrec train` first")
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise UserError(f"{out}: exists, is not empty and is not a model directory; choose another --out")
    model, tokenizer = load_run_model(run_dir)
    from softrec.models import llara

    projector = llara.projector_of(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to("cpu", torch.float32).eval()
    eval_cfg = config.eval if config is not None else None
    num_beams = eval_cfg.num_beams if eval_cfg else 4
    generation = GenerationConfig(
        num_beams=num_beams, num_return_sequences=1, do_sample=False, early_stopping=False,
        max_new_tokens=eval_cfg.max_new_tokens if eval_cfg else 64,
        length_penalty=eval_cfg.length_penalty if eval_cfg else 1.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer),
        bos_token_id=tokenizer.bos_token_id,
    )
    lm = causal_lm_of(model)
    if projector is not None and hasattr(lm, llara.PROJECTOR):
        delattr(lm, llara.PROJECTOR)  # the projector is saved on its own below, not in the LM weights
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a sub-second write of one shard needs no bar
    command = f"softrec export --run-dir {shlex.quote(str(run_dir))} --out {shlex.quote(str(out))}"
    with atomic_dir(out) as tmp:
        lm.generation_config = generation
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        if projector is not None:
            setattr(lm, llara.PROJECTOR, projector)
            llara.save_projector(model, tmp)
        write_prompt(tmp, run_dir, facts, tokenizer)
        base = base_identity(str(info.get("base_model", "")))
        (tmp / BASE_FILE).write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(run_dir, kind="merged", command=command), encoding="utf-8")
    if push_to_hub:
        _push(out, push_to_hub)
    return out


def _push(folder: Path, repo_id: str) -> None:
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"--push-to-hub {repo_id}: the Hub is off (HF_HUB_OFFLINE=1); unset it where the Hub is "
                        f"reachable, or upload {folder} yourself (huggingface-cli upload {repo_id} {folder})")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:  # network, auth: say so in one line
        raise UserError(f"--push-to-hub {repo_id}: upload failed ({exc.__class__.__name__}: {exc}); "
                        f"{folder} is written and can be uploaded later") from None
