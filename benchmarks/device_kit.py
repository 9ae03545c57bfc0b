"""Build the device kit for `benchmarks/device_generation.py` and print the command to run it.

    make devkit            # or: .venv/bin/python benchmarks/device_kit.py [--prompts 1024]

A session may be lent a GPU machine (one H200) for 15 minutes of device time in all. That machine
gets a copy of the working tree plus up to 64 MiB of named ignored folders, runs one bash command
of at most 2,000 characters, and can download nothing. Its Python 3.12 has torch (CUDA), an older
transformers and most of softrec's dependencies, but not pydantic or gguf. This script prepares,
here and idempotently, the two ignored folders that command carries:

- `.whl/`: cp312 manylinux wheels of what the device lacks or has in an incompatible version
  (`WHEELS`: transformers at this venv's version, with the huggingface_hub it needs, pydantic,
  gguf, and this venv's peft/accelerate); every Requires-Dist of every wheel is checked against the
  carried wheels and the device's known packages (`DEVICE`);
- `.devkit/`: Gemma 3 270M's config, generation config and tokenizer (tokenizer.json gzipped:
  33 MB -> 5 MB) from the converted checkpoint, but not its 1 GB of weights (the device builds the
  same architecture with seeded random weights), plus real BIGRec prompts (Alpaca template, the
  first test windows of amazon-books, or of the demo data when the shared data is absent), the
  catalogue's titles (for the constrained-decoding check) and the commit they were built at.

It prints the total size to carry and the exact one-line command (carry=[".whl", ".devkit"]).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata as metadata
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHL, KIT = ROOT / ".whl", ROOT / ".devkit"
CARRY_LIMIT = 64 * 2**20
COMMAND_LIMIT = 2000

# Carried at this venv's version (None) or a pinned one. huggingface_hub: the venv's 2.x needs
# httpx2/httpcore2/truststore, which the device lacks; transformers accepts any hub >= 1.31, and
# the latest 1.x runs on the httpx stack the device's hub 1.x (transformers 5.17 wants <2) already has.
WHEELS: dict[str, str | None] = {
    "transformers": None,
    "huggingface_hub": "1.33.0",
    "peft": None,  # the device's peft/accelerate versions are unknown: carry the pair softrec is tested with
    "accelerate": None,
    "pydantic": None,
    "pydantic_core": None,
    "typing_inspection": None,
    "annotated_types": None,
    "typing_extensions": None,  # pydantic_core needs >= 4.16; torch's pin on the device may be older
    "click": None,  # huggingface_hub wants >= 8.4.2; the device's (typer's) may be older
    "gguf": None,  # a softrec dependency the device lacks (not imported by the kit)
    "requests": None,  # gguf's; with two of its own (idna and certifi come with the device's httpx)
    "urllib3": None,
    "charset_normalizer": None,
}

# What the device machine has (brief of issue #13), version where known. Marked "implied": what its
# transformers 5.17.0 (huggingface-hub>=1.5,<2, regex, typer, safetensors>=0.8) and hub 1.x
# (httpx, hf-xet, fsspec, click), httpx (idna, certifi), torch (jinja2) and accelerate (psutil)
# require, hence installed.
DEVICE: dict[str, str | None] = {
    "torch": "2.11.0", "transformers": "5.17.0", "tokenizers": "0.23.2", "peft": None,
    "accelerate": None, "safetensors": None, "pyyaml": None, "pandas": None, "matplotlib": None,
    "tqdm": None, "filelock": None, "numpy": None, "sentence-transformers": None,
    # implied
    "huggingface-hub": None, "regex": None, "typer": None, "packaging": None, "httpx": None,
    "hf-xet": None, "fsspec": None, "click": None, "psutil": None, "jinja2": None, "idna": None,
    "certifi": None,
}
DEVICE_IMPLIED_MIN = {"safetensors": "0.8.0", "regex": "2025.10.22", "huggingface-hub": "1.5.0"}

PIP_TARGET = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
              "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
              "--platform", "manylinux2014_x86_64")
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

KIT_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja")


def normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- ignore rules
def ensure_ignored() -> None:
    """.whl/ and .devkit/ must be ignored (carried by name, never committed)."""
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip())
    if not exclude.is_absolute():
        exclude = ROOT / exclude
    for folder in (".whl", ".devkit"):
        probe = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=ROOT)
        if probe.returncode != 0:
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with exclude.open("a", encoding="utf-8") as fh:
                fh.write(f"/{folder}/\n")
            log(f"added /{folder}/ to {exclude}")


# ---------------------------------------------------------------- wheels
def wanted_wheels() -> dict[str, str]:
    return {name: pinned or metadata.version(name) for name, pinned in WHEELS.items()}


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def build_wheels() -> list[Path]:
    WHL.mkdir(exist_ok=True)
    wanted = {normalise(n): v for n, v in wanted_wheels().items()}
    for path in sorted(WHL.glob("*.whl")):
        name, version = wheel_name_version(path)
        if wanted.get(name) != version:
            log(f"removing stale {path.name}")
            path.unlink()
    have = {wheel_name_version(p)[0] for p in WHL.glob("*.whl")}
    missing = [f"{name}=={version}" for name, version in wanted_wheels().items() if normalise(name) not in have]
    if missing:
        log(f"downloading {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check", *PIP_TARGET,
                        "-d", str(WHL), *missing], check=True)
    return sorted(WHL.glob("*.whl"))


def requirements_of(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def check_requirements(wheels: list[Path]) -> list[str]:
    """Every Requires-Dist (no extras; markers evaluated for CPython 3.12 on x86_64 Linux) of every
    carried wheel is met by a carried wheel or by the device. Returns the problems."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    carried = dict(wheel_name_version(w) for w in wheels)
    device = {normalise(k): v for k, v in DEVICE.items()}
    floors = {normalise(k): v for k, v in DEVICE_IMPLIED_MIN.items()}
    problems = []
    for wheel in wheels:
        owner = wheel_name_version(wheel)[0]
        for line in requirements_of(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(MARKERS):
                continue
            name = normalise(req.name)
            if name in carried:
                if not req.specifier.contains(Version(carried[name]), prereleases=True):
                    problems.append(f"{owner}: needs {req}, carries {name} {carried[name]}")
                continue
            if name not in device:
                problems.append(f"{owner}: needs {req}, neither carried nor on the device")
                continue
            known = device[name] or floors.get(name)
            if known and not req.specifier.contains(Version(known), prereleases=True):
                problems.append(f"{owner}: needs {req}, the device has {name} {known}")
    return problems


# ---------------------------------------------------------------- model files and prompts
def checkpoint_dir() -> Path:
    from softrec.models.gguf import ensure_checkpoint

    return ensure_checkpoint("gemma-3-270m")


def copy_model_files(source: Path) -> None:
    for name in KIT_FILES:
        if (source / name).exists() and not same_file(source / name, KIT / name):
            shutil.copyfile(source / name, KIT / name)
    target = KIT / "tokenizer.json.gz"
    stamp = KIT / "tokenizer.json.sha256"
    digest = hashlib.sha256((source / "tokenizer.json").read_bytes()).hexdigest()
    if not target.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
        log("compressing tokenizer.json")
        with (source / "tokenizer.json").open("rb") as raw, target.open("wb") as fh, \
                gzip.GzipFile(filename="tokenizer.json", mode="wb", compresslevel=9, fileobj=fh, mtime=0) as out:
            shutil.copyfileobj(raw, out)  # mtime 0: the same bytes every build
        stamp.write_text(digest + "\n")


def same_file(a: Path, b: Path) -> bool:
    return b.exists() and a.read_bytes() == b.read_bytes()


def write_prompts(dataset_source: str, count: int, work: Path) -> None:
    """The first `count` test windows as Alpaca prompts (what evaluation decodes), the catalogue's titles."""
    from transformers import AutoTokenizer

    from softrec.config import DataConfig
    from softrec.data.prompts import build_prompt
    from softrec.data.protocol import prepare_dataset

    target = KIT / "prompts.jsonl"
    settings = {"dataset": dataset_source, "count": count}
    stamp = KIT / "prompts.settings.json"
    if target.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        return
    log(f"writing {count} prompts from {dataset_source}")
    config = DataConfig(dataset=dataset_source, train_size=16, valid_size=16, test_size=count)
    dataset = prepare_dataset(config, work / f"prepared-{Path(dataset_source).name}-{count}")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir()))
    titles = dataset.titles
    samples = dataset.split("test")[:count]
    if len(samples) < count:
        log(f"note: the test split has {len(samples)} windows, fewer than {count}")
    with target.open("w", encoding="utf-8") as fh:
        for s in samples:
            text = build_prompt([titles[i] for i in s.history], dataset.domain, "alpaca", tokenizer, item_ids=s.history)
            fh.write(json.dumps({"prompt": text}, ensure_ascii=False) + "\n")
    (KIT / "titles.json").write_text(json.dumps(list(titles), ensure_ascii=False) + "\n", encoding="utf-8")
    stamp.write_text(json.dumps(settings) + "\n")


def write_commit() -> None:
    """The commit the kit was built at, and whether the tree differed (the device copy has no .git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    (KIT / "commit.txt").write_text(f"{git('rev-parse', 'HEAD')}{' (modified)' if dirty else ''}\n")


# ---------------------------------------------------------------- the command
def device_command(script_args: str = "") -> str:
    install = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
               "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit;")
    run = ("HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false python3 benchmarks/device_generation.py "
           f"--kit .devkit --out $OUT{(' ' + script_args) if script_args else ''}")
    return f"{install} {run}"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tree_size() -> int:
    """Bytes of the working tree that travels: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in listed if p and (ROOT / p.decode()).is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = ROOT.parent / "shared" / "data" / "amazon-books"
    parser.add_argument("--dataset", default=str(default_data) if default_data.is_dir() else "demo",
                        help="where the prompts come from (default: shared amazon-books, else demo)")
    parser.add_argument("--prompts", type=int, default=1024, help="prompts written to .devkit/prompts.jsonl")
    parser.add_argument("--work", default="/tmp/softrec-devkit", help="where the dataset is prepared")
    parser.add_argument("--args", default="", help="extra arguments for device_generation.py in the command")
    parser.add_argument("--no-download", action="store_true", help="check the wheels already in .whl only")
    args = parser.parse_args()

    ensure_ignored()
    KIT.mkdir(exist_ok=True)
    wheels = sorted(WHL.glob("*.whl")) if args.no_download else build_wheels()
    problems = check_requirements(wheels)
    for wheel in wheels:
        log(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB)")
    copy_model_files(checkpoint_dir())
    write_prompts(args.dataset, args.prompts, Path(args.work))
    write_commit()

    sizes = {name: folder_size(ROOT / name) for name in (".whl", ".devkit")}
    tree = tree_size()
    total = sum(sizes.values())
    log(f"carry: .whl {sizes['.whl'] / 2**20:.1f} MiB + .devkit {sizes['.devkit'] / 2**20:.1f} MiB = "
        f"{total / 2**20:.1f} MiB of the 64 MiB (the working tree adds {tree / 2**20:.1f} MiB)")
    command = device_command(args.args)
    if problems:
        log("REQUIREMENTS NOT MET on the device:\n  " + "\n  ".join(problems))
    if total + tree > CARRY_LIMIT or len(command) > COMMAND_LIMIT:
        log(f"TOO BIG: {(total + tree) / 2**20:.1f} MiB carried, command {len(command)} characters")
        return 1
    log(f'device command ({len(command)} characters), run with carry=[".whl", ".devkit"] and timeout_s=540:')
    print(command)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
