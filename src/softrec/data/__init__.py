"""The data layer: readers -> protocol -> a prepared dataset on disk (see `protocol.py`).

Public API (imported lazily, so `import softrec` does not pay for pandas):

- `prepare_dataset(data_config, out)`: NAME_OR_DIR -> prepared-dataset directory (reused when
  inputs and settings are unchanged);
- `PreparedDataset`, `Item`, `Sample`, `Domain`, `write_prepared`: the on-disk contract;
- `read_source`, `detect_format`, `locate`, `SourceData`: the readers' common in-memory form;
- `fetch`: download a public dataset by name; `load_demo`: the built-in demo source.
"""

from __future__ import annotations

import importlib
from typing import Any

from softrec.data.dataset import Domain, Item, PreparedDataset, Sample, write_prepared

_LAZY = {
    "prepare_dataset": "softrec.data.protocol",
    "normalise_title": "softrec.data.titles",
    "read_source": "softrec.data.readers",
    "detect_format": "softrec.data.readers",
    "locate": "softrec.data.readers",
    "SourceData": "softrec.data.readers",
    "fetch": "softrec.data.download",
    "load_demo": "softrec.data.demo",
}

__all__ = ["Domain", "Item", "PreparedDataset", "Sample", "write_prepared", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'softrec.data' has no attribute {name!r}")
