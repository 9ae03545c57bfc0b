"""The prepared dataset: the one on-disk contract between the data layer and every later stage.

Layout of a prepared-dataset directory::

    dataset.json      name, domain words, settings and source checksums that produced it
    catalogue.jsonl   {"item_id": int, "title": str, ...}     one line per item, ids 0..n-1
    train.jsonl       {"sample_id", "user_id", "history": [item_id...], "target": item_id, "timestamp"}
    valid.jsonl       same, sampled
    test.jsonl        same, sampled
    train_full.jsonl  every training window before sampling (classic recommenders train on it)
    stats.json        counts before/after filtering, history-length distribution

Stages read it by path through `PreparedDataset.load`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.runs import read_jsonl

SPLITS = ("train", "valid", "test")
# every file write_prepared writes: re-preparing replaces exactly these, never a file the user added
FILES = ("dataset.json", "catalogue.jsonl", *(f"{s}.jsonl" for s in (*SPLITS, "train_full")), "stats.json")


@dataclass(frozen=True)
class Domain:
    """Words that make the prompt fit the dataset: "video game"/"video games"/"played"."""

    item: str = "item"
    items: str = "items"
    verb: str = "interacted with"


@dataclass(frozen=True)
class Item:
    item_id: int
    title: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_row(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, **self.extra}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Item:
        extra = {k: v for k, v in row.items() if k not in ("item_id", "title")}
        return cls(int(row["item_id"]), str(row["title"]), extra)


@dataclass(frozen=True)
class Sample:
    sample_id: str
    user_id: str
    history: tuple[int, ...]
    target: int
    timestamp: float | None = None

    def to_row(self) -> dict[str, Any]:
        # built by hand: dataclasses.asdict deep-copies and dominates writing 100k samples
        return {"sample_id": self.sample_id, "user_id": self.user_id, "history": list(self.history),
                "target": self.target, "timestamp": self.timestamp}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        return cls(
            sample_id=str(row["sample_id"]),
            user_id=str(row["user_id"]),
            history=tuple(int(i) for i in row["history"]),
            target=int(row["target"]),
            timestamp=row.get("timestamp"),
        )


class PreparedDataset:
    """Read access to a prepared-dataset directory (see module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "dataset.json"
        if not meta_path.exists():
            raise UserError(
                f"{self.path}: not a prepared dataset (no dataset.json); "
                "create one with `softrec data prepare --dataset NAME --out DIR`"
            )
        from softrec.runs import read_json_object

        self.meta: dict[str, Any] = read_json_object(
            meta_path, "rebuild the dataset with `softrec data prepare ... --force`")
        self._splits: dict[str, list[Sample]] = {}

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        return cls(path)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def domain(self) -> Domain:
        return Domain(**self.meta.get("domain", {}))

    @property
    def checksum(self) -> str:
        """Identity of the prepared data (stable across reruns with the same inputs/settings)."""
        return self.meta["key"]

    def _verified(self, filename: str) -> Path:
        """The path of `filename` after checking its bytes against dataset.json's `files` checksums
        (written since those were added; older datasets are checked whole, once, by `intact`)."""
        path = self.path / filename
        expected = self.meta.get("files", {}).get(filename)
        if expected is not None:
            from softrec.runs import file_sha256

            ok = path.exists() and file_sha256(path) == expected
        else:
            ok = not path.exists() or self._intact
        if not ok:
            raise UserError(
                f"{path}: corrupted (its checksum differs from {self.path / 'dataset.json'}); "
                "rebuild the dataset with `softrec data prepare ... --force`"
            )
        return path

    @cached_property
    def _intact(self) -> bool:
        return self.intact()

    @cached_property
    def catalogue(self) -> list[Item]:
        items = [Item.from_row(r) for r in read_jsonl(self._verified("catalogue.jsonl"))]
        for index, item in enumerate(items):
            if item.item_id != index:
                raise UserError(f"{self.path / 'catalogue.jsonl'}:{index + 1}: expected item_id {index}")
        return items

    @cached_property
    def titles(self) -> list[str]:
        return [item.title for item in self.catalogue]

    def split(self, name: str) -> list[Sample]:
        if name not in (*SPLITS, "train_full"):
            raise UserError(f"unknown split '{name}': expected one of train, valid, test, train_full")
        if name not in self._splits:
            path = self.path / f"{name}.jsonl"
            if not path.exists():
                raise UserError(f"{path}: split file missing from the prepared dataset")
            self._splits[name] = [Sample.from_row(r) for r in read_jsonl(self._verified(path.name))]
        return self._splits[name]

    def stats(self) -> dict[str, Any]:
        return json.loads((self.path / "stats.json").read_text(encoding="utf-8"))

    def intact(self) -> bool:
        """True when the files on disk still hash to the key `write_prepared` recorded."""
        from softrec.runs import content_key

        names = ["catalogue.jsonl", *(f"{s}.jsonl" for s in (*SPLITS, "train_full")), "stats.json"]
        try:
            files = {n: (self.path / n).read_text(encoding="utf-8") for n in names if (self.path / n).exists()}
        except (OSError, UnicodeDecodeError):
            return False
        return content_key(files) == self.meta.get("key")


def write_prepared(
    path: str | Path,
    *,
    name: str,
    domain: Domain,
    catalogue: list[Item],
    splits: dict[str, list[Sample]],
    stats: dict[str, Any],
    settings: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> PreparedDataset:
    """Write a prepared dataset atomically (all files appear together or not at all).

    `splits` must hold train, valid and test, and may hold train_full. The dataset key hashes the
    content, so equal inputs and settings give an equal key and byte-identical files.
    """
    from softrec.runs import atomic_dir, content_key, dumps_json

    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"splits missing: {missing}")

    def jsonl(rows: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)

    files = {"catalogue.jsonl": jsonl([item.to_row() for item in catalogue])}
    for split_name, samples in splits.items():
        files[f"{split_name}.jsonl"] = jsonl([s.to_row() for s in samples])
    files["stats.json"] = dumps_json(stats)
    key = content_key(files)
    meta = {
        "name": name,
        "domain": asdict(domain),
        "settings": settings or {},
        "sources": sources or {},
        "key": key,
        # per-file checksums: a stage checks only the files it reads (PreparedDataset._verified)
        "files": {n: hashlib.sha256(text.encode("utf-8")).hexdigest() for n, text in sorted(files.items())},
    }
    files["dataset.json"] = dumps_json(meta)
    with atomic_dir(path, "dataset", legacy=FILES) as tmp:
        for filename, text in files.items():
            (tmp / filename).write_text(text, encoding="utf-8")
    return PreparedDataset(path)
