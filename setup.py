"""Build hook only (the project is declared in pyproject.toml): a wheel or non-editable install records
the git commit it was built from in softrec/_build.json, since nothing at run time can find it there
(site-packages is not a checkout). Long experiments run from such installs, and their results name
the commit (softrec.runs.provenance.git_commit). setuptools has no declarative option for this."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class BuildWithCommit(build_py):
    def run(self) -> None:
        super().run()
        commit = None if self.editable_mode else _git("rev-parse", "HEAD")  # an editable install asks git itself
        if commit:
            dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
            target = Path(self.build_lib) / "softrec" / "_build.json"
            target.write_text(json.dumps({"git_commit": commit + ("-dirty" if dirty else "")}) + "\n")


setup(cmdclass={"build_py": BuildWithCommit})
