"""Running a plan: each step a `softrec` subprocess, finished steps recorded in DIR/steps.json; one
process at a time runs a suite's steps (DIR/.suite.lock), saying which in DIR/running.json."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softrec.bench.quality.planning import PlannedStep, canonical_command
from softrec.errors import UserError


class StepLog:
    """DIR/steps.json: finished commands and their wall times, so a rerun skips them."""

    def __init__(self, out: Path):
        self.path = out / "steps.json"
        recorded = json.loads(self.path.read_text()) if self.path.exists() else {}
        # canonical -> as recorded: saved under the recorded key, so the older softrec that wrote it still resumes
        self.recorded_as = {canonical_command(c): c for c in recorded}
        self.done: dict[str, dict[str, Any]] = {c: recorded[r] for c, r in self.recorded_as.items()}
        self._machine: str | None = None  # this process's machine, looked up at the first mark

    def save(self) -> None:
        from softrec.runs import atomic_write_json

        atomic_write_json(self.path, {self.recorded_as.get(c, c): info for c, info in self.done.items()})

    def finished(self, step: PlannedStep) -> bool:
        return step.command in self.done and step.output.exists()

    def mark(self, step: PlannedStep, seconds: float, share: float = 1.0) -> None:
        """`share`: the part of the step its final process ran (a resumed training: what its checkpoints
        had not done); the time of processes killed before it is not known."""
        if self._machine is None:  # a resumed suite may run on another machine than the steps before it
            from softrec.bench import describe, machine

            self._machine = describe(machine())
        self.done[step.command] = {"kind": step.kind, "dataset": step.dataset, "owner": step.owner, "seconds": round(seconds, 1),
                                   "finished": datetime.now(UTC).isoformat(timespec="seconds"), "ran_on": self._machine}
        if share < 1.0:
            self.done[step.command]["share_timed"] = round(share, 3)
        self.save()


SUITE_LOCK = ".suite.lock"  # held by the process that runs the suite's steps, for as long as it runs
RUNNING = "running.json"  # the step it runs now: command, pid, start (removed when the step ends)


def _running(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / RUNNING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def suite_lock(out: Path) -> Iterator[None]:
    """Exclusive use of OUT's steps: a second suite process on the same folder would start the
    trainings the first is running (and fail on their run locks midway, hours later)."""
    from softrec.runs import dir_lock

    info = _running(out) or {}
    since = f" (pid {info.get('pid')}, step started {info.get('started')})" if info else ""
    with dir_lock(out / SUITE_LOCK, f"{out}: another `softrec bench quality` is running this suite{since}; "
                                    "follow it with --status"):
        yield


def suite_running(out: Path) -> bool:
    """Whether a process holds OUT's suite lock now (checked without creating anything)."""
    from softrec.errors import UserError
    from softrec.runs import acquire_lock

    if not (out / SUITE_LOCK).exists():
        return False
    try:
        acquire_lock(out / SUITE_LOCK, "held").release()
    except UserError:
        return True
    return False


LONG_STEP_S = 60.0  # steps planned shorter than this (data preparation) are mostly process start: no guide for others


def training_progress(step: PlannedStep) -> tuple[int, int] | None:
    """(optimizer steps done, planned) of an interrupted or running LLM training: its newest complete
    checkpoint's trainer state; None for other steps or before the first checkpoint."""
    from softrec.training.checkpoints import last_complete_checkpoint

    if step.kind != "train-llm" or not (newest := last_complete_checkpoint(step.output.parent / "checkpoints")):
        return None
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0)), int(state.get("max_steps") or 0)


def _validation_so_far(step: PlannedStep) -> str:
    """An unfinished LLM training's validation HR@10 per finished epoch (its history.json, written after
    each), the best one so far starred; empty before the first epoch has ended."""
    if step.kind != "train-llm" or not step.output.exists():
        return ""
    try:
        epochs = json.loads(step.output.read_text(encoding="utf-8"))
        values = [f"{e['valid']['HR@10']:.4f}{'*' if e.get('best') else ''}" for e in epochs]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"; validation HR@10 by epoch {', '.join(values)}" if values else ""


def _left(step: PlannedStep) -> float:
    """The share of a step still to run: what its checkpoints have not done (early stopping may end it sooner)."""
    done = training_progress(step)
    return 1.0 - min(done[0] / done[1], 1.0) if done and done[1] else 1.0


def eta(steps: list[PlannedStep], log: StepLog, start: int, planned: dict[str, float]) -> str:
    """The remaining steps' time: each one's planned seconds (`timeplan`: every run to its epoch cap),
    less what its checkpoints have done, times how far off the plan was on the finished steps of its
    kind (the median of measured / planned), or, while none of its kind has finished, on all the
    finished long LLM steps together (a classic model's rate says nothing of the LLM's). A long step
    done in under LONG_STEP_S skipped its work (an evaluation copied from a sibling, `--reuse-from`)
    and says nothing of the rate; nor does one timed on another kind of CPU (restored with `--restore`
    or `--pack`: an AMX Xeon's SOFT training, ~2x faster, put an AMD EPYC's ETA at half the truth).
    Hours count on past 24."""
    if not planned:
        return "ETA unknown (no time plan)"
    from softrec.bench import cpu_model

    here = cpu_model()
    ratios: dict[str, list[float]] = {}
    measured = plan = 0.0
    for command, info in log.done.items():
        if "restored_from" in info or not str(info.get("ran_on") or "").startswith(here):
            continue
        timed_plan = planned.get(command, 0.0) * info.get("share_timed", 1.0)
        if timed_plan and not (info["seconds"] < LONG_STEP_S <= timed_plan):
            ratios.setdefault(info["kind"], []).append(info["seconds"] / timed_plan)
            if timed_plan >= LONG_STEP_S and not info["kind"].endswith("-classic"):  # not the LLM's rate
                measured, plan = measured + info["seconds"], plan + timed_plan
    overall = measured / plan if plan else 1.0
    left = [s for s in steps[start:] if not log.finished(s)]
    seconds = sum(planned.get(s.command, 0.0) * _left(s) * (statistics.median(ratios[s.kind]) if s.kind in ratios
                                                            else overall) for s in left)
    hours, rest = divmod(int(seconds), 3600)
    note = f"planned x{overall:.2g} as measured so far" if plan else "planned, no long step timed yet"
    return f"ETA {hours}:{rest // 60:02d} h for {len(left)} step(s) ({note})"


def execute(steps: list[PlannedStep], out: Path, env: dict[str, str],
            planned: Callable[[], dict[str, float]] = dict) -> StepLog:
    """Runs the unfinished steps in order; `planned()`: every step's planned seconds by command, asked
    again before each step (a dataset's shape is known once prepared)."""
    with suite_lock(out):
        return _execute(steps, out, env, planned)


def _execute(steps: list[PlannedStep], out: Path, env: dict[str, str], planned: Callable[[], dict[str, float]]) -> StepLog:
    from softrec.runs import atomic_write_json

    log, logfile = StepLog(out), out / "bench.log"
    for index, step in enumerate(steps):
        prefix = f"[{index + 1}/{len(steps)}]"
        if log.finished(step):
            print(f"{prefix} done before: {step.command}", flush=True)
            continue
        argv = list(step.argv)
        if step.kind == "train-llm" and (step.output.parent / "checkpoints").exists():
            argv.append("--resume")  # an interrupted run continues from its last checkpoint
        share = _left(step)
        print(f"{prefix} {time.strftime('%H:%M:%S')} {eta(steps, log, index, planned())}\n    $ {step.command}", flush=True)
        runner = [*step.launcher, "-m", "softrec"] if step.launcher else [sys.executable, "-m", "softrec"]
        started = time.monotonic()
        atomic_write_json(out / RUNNING, {"command": step.command, "pid": os.getpid(),
                                          "started": datetime.now(UTC).isoformat(timespec="seconds")})
        try:
            with logfile.open("a", encoding="utf-8") as fh:
                fh.write(f"\n$ {step.command}\n")
                fh.flush()
                status = subprocess.run([*runner, *argv], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        finally:
            (out / RUNNING).unlink(missing_ok=True)
        if status != 0:
            raise UserError(f"step failed with exit status {status}: {step.command} (output in {logfile})")
        seconds = time.monotonic() - started
        log.mark(step, seconds, share)
        print(f"    finished in {seconds:.0f} s", flush=True)
    return log



def status(steps: list[PlannedStep], out: Path, planned: dict[str, float]) -> str:
    """`--status`: each step of the plan, finished (and how long it took), part-trained, or to run; the ETA."""
    from softrec.preflight import duration

    log, lines, first = StepLog(out), [], None
    running = suite_running(out)
    now = (_running(out) or {}) if running else {}
    for index, step in enumerate(steps):
        if log.finished(step):
            info = log.done[step.command]
            state = f"done in {duration(info['seconds'])}" + (
                f" (the last {info['share_timed']:.0%} of it, resumed)" if "share_timed" in info else "") + (
                f", restored from {info['restored_from']} (no weights here)" if "restored_from" in info else "")
        else:
            first = index if first is None else first
            done = training_progress(step)
            state = f"trained {done[0]}/{done[1]} optimizer steps" if done else "to run"
            if canonical_command(now.get("command", "")) == step.command:
                state = f"running since {now['started']} (suite pid {now['pid']})" + (f", {state}" if done else "")
            state += _validation_so_far(step)
        lines.append(f"[{index + 1}/{len(steps)}] {step.dataset} {step.owner} {step.kind}: {state}")
    if first is None:
        lines.append("every step has finished")
    else:
        lines.append(eta(steps, log, first, planned))
        if not running:
            lines.append(f"Nothing is running this suite (no process holds {out / SUITE_LOCK}): run the same command "
                         "without --status to resume it.")
    return "\n".join(lines)


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
