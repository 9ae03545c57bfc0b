"""Running a plan: each step a `softrec` subprocess, finished steps recorded in DIR/steps.json."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softrec.bench.quality.planning import PlannedStep
from softrec.errors import UserError


class StepLog:
    """DIR/steps.json: finished commands and their wall times, so a rerun skips them."""

    def __init__(self, out: Path):
        self.path = out / "steps.json"
        self.done: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self._machine: str | None = None  # this process's machine, looked up at the first mark

    def finished(self, step: PlannedStep) -> bool:
        return step.command in self.done and step.output.exists()

    def mark(self, step: PlannedStep, seconds: float) -> None:
        from softrec.runs import atomic_write_json

        if self._machine is None:  # a resumed suite may run on another machine than the steps before it
            from softrec.bench import describe, machine

            self._machine = describe(machine())
        self.done[step.command] = {"kind": step.kind, "dataset": step.dataset, "owner": step.owner, "seconds": round(seconds, 1),
                                   "finished": datetime.now(UTC).isoformat(timespec="seconds"), "ran_on": self._machine}
        atomic_write_json(self.path, self.done)


def _eta(steps: list[PlannedStep], log: StepLog, start: int) -> str:
    """Remaining time, guessed from the median finished step of the same kind."""
    by_kind: dict[str, list[float]] = {}
    for info in log.done.values():
        by_kind.setdefault(info["kind"], []).append(info["seconds"])
    known = [statistics.median(by_kind[s.kind]) for s in steps[start:] if s.kind in by_kind and not log.finished(s)]
    unknown = sum(1 for s in steps[start:] if s.kind not in by_kind and not log.finished(s))
    eta = time.strftime("%H:%M:%S", time.gmtime(sum(known)))
    return f"ETA {eta}" + (f" + {unknown} step(s) of unmeasured kind" if unknown else "")


def execute(steps: list[PlannedStep], out: Path, env: dict[str, str]) -> StepLog:
    log, logfile = StepLog(out), out / "bench.log"
    for index, step in enumerate(steps):
        prefix = f"[{index + 1}/{len(steps)}]"
        if log.finished(step):
            print(f"{prefix} done before: {step.command}", flush=True)
            continue
        argv = list(step.argv)
        if step.kind == "train-llm" and (step.output.parent / "checkpoints").exists():
            argv.append("--resume")  # an interrupted run continues from its last checkpoint
        print(f"{prefix} {time.strftime('%H:%M:%S')} {_eta(steps, log, index)}\n    $ {step.command}", flush=True)
        runner = [*step.launcher, "-m", "softrec"] if step.launcher else [sys.executable, "-m", "softrec"]
        started = time.monotonic()
        with logfile.open("a", encoding="utf-8") as fh:
            fh.write(f"\n$ {step.command}\n")
            fh.flush()
            status = subprocess.run([*runner, *argv], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise UserError(f"step failed with exit status {status}: {step.command} (output in {logfile})")
        seconds = time.monotonic() - started
        log.mark(step, seconds)
        print(f"    finished in {seconds:.0f} s", flush=True)
    return log



def run_in_background(autogroup: Path = Path("/proc/self/autogroup")) -> list[str]:
    """The lowest CPU priority for this process and the steps it starts (`--background`): nice 19,
    and on Linux its autogroup's nice too. With autogroup scheduling (the default on desktop and
    many server kernels) nice only orders processes within one session's group, so `nice -n 19`
    alone still took a full share of the CPUs beside a measurement run from another terminal. The
    group is the whole terminal session's: start the suite with `setsid` to keep the shell's priority.
    Returns what was lowered."""
    import os

    os.nice(19 - os.nice(0))
    lowered = ["nice 19"]
    try:
        autogroup.write_text("19")
        lowered.append(f"{autogroup} nice 19")
    except OSError:  # no autogroup (other kernels, containers without /proc write access): nice is all
        pass
    return lowered
