"""`RunDir`: a run directory with an exclusive lock and a manifest of its artefacts.

Each artefact is recorded in `manifest.json` with a key (a hash of whatever it was computed from)
and a checksum of its bytes; `RunDir.valid(...)` says whether an artefact can be reused: it
exists, its key matches and its bytes are intact.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softrec.errors import UserError
from softrec.runs.files import (
    atomic_write_json,
    atomic_write_text,
    clean_leftovers,
    read_json_object,
)
from softrec.runs.ownership import LOCK, acquire_lock, claim_dir
from softrec.runs.provenance import environment, path_sha256

MANIFEST = "manifest.json"


class RunDir:
    """A run directory with a manifest and an exclusive lock.

    Use as a context manager to hold the lock; a second process on the same directory gets a
    UserError naming the directory instead of corrupting it. Entering claims the directory
    (`claim_dir`: a foreign non-empty directory is refused untouched), removes what killed atomic
    writes left behind, and refuses symbolic links that lead out of it.
    """

    KIND = "run"
    LEGACY = ("run.json", MANIFEST)  # what a run made before the .softrec marker existed holds

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    # locking ------------------------------------------------------------
    def __enter__(self) -> RunDir:
        claim_dir(self.path, self.KIND, legacy=self.LEGACY)
        self._lock = acquire_lock(
            self.path / LOCK,
            f"{self.path}: another softrec process is using this run directory; "
            "wait for it to finish or choose another --out",
        )
        try:
            self.check_links()
            clean_leftovers(self.path, recursive=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_links(self) -> None:
        """UserError for a symbolic link inside the run directory that leads out of it: softrec
        would otherwise write (and replace files) wherever it points."""
        root = self.path.resolve()
        for folder, dirs, files in os.walk(self.path):
            for name in [*dirs, *files]:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                    raise UserError(f"{entry}: a symbolic link out of the run directory; softrec writes "
                                    "only inside it (replace the link with a real file or directory)")

    # manifest -----------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        if not path.exists():
            return {"artefacts": {}}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            # A manifest is only ever replaced atomically; if it is unreadable, trust nothing.
            return {"artefacts": {}}

    def record(self, name: str, key: str, **info: Any) -> None:
        """Register artefact `name` (a path relative to the run dir) as built from `key`. Pass
        `inputs={...}` with the keys of what it was computed from (weights, dataset, decoding)."""
        self.record_many({name: info}, key)

    def record_many(self, entries: dict[str, dict[str, Any]], key: str) -> None:
        """Register several artefacts built from one `key` in one manifest write, so a kill never
        leaves some of them recorded from one computation and the rest from another."""
        manifest = self.manifest()
        for name, info in entries.items():
            target = self.path / name
            if not target.resolve().is_relative_to(self.path.resolve()):
                raise UserError(f"{target}: leads out of the run directory {self.path}; not recorded")
            manifest["artefacts"][name] = {
                "key": key,
                "sha256": path_sha256(target),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                **info,
            }
        atomic_write_json(self.path / MANIFEST, manifest)

    def valid(self, name: str, key: str | None = None) -> bool:
        """True if artefact `name` exists, was built from `key` (if given) and is intact."""
        entry = self.manifest()["artefacts"].get(name)
        target = self.path / name
        if entry is None or not target.exists():
            return False
        if key is not None and entry.get("key") != key:
            return False
        return path_sha256(target) == entry.get("sha256")

    def check(self, name: str, rebuild: str) -> None:
        """UserError when artefact `name` is recorded but its bytes changed (truncated, edited,
        half-copied): it must be rebuilt (`rebuild` says how), never used. Unrecorded artefacts
        (made by hand or by an older softrec) pass."""
        entry = self.manifest()["artefacts"].get(name)
        target = self.path / name
        if entry is None or not target.exists():
            return
        if path_sha256(target) != entry.get("sha256"):
            raise UserError(f"{target}: corrupted (checksum differs from {self.path / MANIFEST}); {rebuild}")

    # weights ------------------------------------------------------------
    WEIGHTS = ("adapter", "model", "classic.safetensors")

    def weights_sha(self) -> str | None:
        """Checksum of the run's trained weights as they are now (adapter/, model/ or the classic
        recommender's file); None when it has none. Artefacts computed from the weights record it
        under inputs.weights, and readers compare the two."""
        for name in self.WEIGHTS:
            if (self.path / name).exists():
                return path_sha256(self.path / name)
        return None

    def record_inputs(self, name: str) -> dict[str, Any]:
        entry = self.manifest()["artefacts"].get(name) or {}
        return entry.get("inputs") or {}

    def check_inputs(self, name: str, rebuild: str, *, weights: str | None = None) -> None:
        """UserError when artefact `name` was computed from weights other than the run's current
        ones (the run was retrained since): a stale result is never used. A run with no weights
        passes. `weights` overrides the
        current checksum (when the caller has it already)."""
        recorded = self.record_inputs(name).get("weights")
        if recorded is None:
            return
        current = weights if weights is not None else self.weights_sha()
        # no weights at all (a run restored without them, `bench quality --restore`): nothing contradicts
        # the record, and the artefact's own bytes are still checked by `check`
        if current is not None and recorded != current:
            raise UserError(f"{self.path / name}: computed from other weights than the run's current ones "
                            f"(retrained since?); {rebuild}")

    def invalidate(self, name: str) -> None:
        manifest = self.manifest()
        if manifest["artefacts"].pop(name, None) is not None:
            atomic_write_json(self.path / MANIFEST, manifest)

    def save_config(self, config: Any, inputs: dict[str, str] | None = None) -> None:
        """Save the resolved config with environment and input checksums (`config.yaml`, `run.json`)."""
        text = config.to_yaml() if hasattr(config, "to_yaml") else str(config)
        atomic_write_text(self.path / "config.yaml", text)
        info = self.info()
        info.update({"environment": environment(), "inputs": inputs or {}})
        atomic_write_json(self.path / "run.json", info)

    def update_info(self, **fields: Any) -> None:
        info = self.info()
        info.update(fields)
        atomic_write_json(self.path / "run.json", info)

    def info(self) -> dict[str, Any]:
        info_path = self.path / "run.json"
        if not info_path.exists():
            return {}
        return read_json_object(info_path, "restore it, or retrain into a new --out")

    def require(self, name: str, rebuild: str) -> None:
        """Strict `check` for readers of a run that records its artefacts (run.json has a
        `train_key`): `name` must exist, be recorded in the manifest and be intact. A deleted
        manifest.json does not switch the checks off; it makes every recorded artefact unusable."""
        target = self.path / name
        if not target.exists():
            raise UserError(f"{target}: missing; {rebuild}")
        if not (self.path / MANIFEST).is_file():
            raise UserError(f"{self.path / MANIFEST}: missing, so {target} cannot be checked; {rebuild}")
        if self.manifest()["artefacts"].get(name) is None:
            raise UserError(f"{target}: not recorded in {self.path / MANIFEST} (left by an unfinished or "
                            f"other run); {rebuild}")
        self.check(name, rebuild)

