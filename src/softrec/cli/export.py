"""`softrec export --run-dir RUN --out DIR`: a merged, plain transformers model directory.

    softrec export --run-dir runs/demo/soft --out exported/soft
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported/soft')"

The directory holds the merged weights, the tokenizer, generation_config.json (the run's beam
search), prompt_template.json and a model card; LLaRA runs add llara.safetensors (their projector).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a run as a merged transformers model directory (loads without softrec)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", "--run", dest="run", required=True, type=Path, metavar="RUN_DIR",
                        help="trained run directory (softrec train --out)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="model directory to write")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="also upload DIR to this Hugging Face Hub repository (needs the Hub and a login)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softrec.export import export_run

    out = export_run(args.run, args.out, push_to_hub=args.push_to_hub)
    print(f"exported: {out} (load with AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained)")
    return 0
