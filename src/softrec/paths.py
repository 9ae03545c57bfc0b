"""Where softrec keeps files outside run directories: one cache root (`SOFTREC_CACHE` overrides).

Under it: `checkpoints/` and `gguf/` (converted backbones, models/gguf.py), `embeddings/` (catalogue
embeddings, inference/grounding.py), `datasets/` (downloads, data/download.py).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*, create: bool = True) -> Path:
    """The cache root, created unless `create` is false."""
    path = Path(os.environ.get("SOFTREC_CACHE") or Path.home() / ".cache" / "softrec")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
