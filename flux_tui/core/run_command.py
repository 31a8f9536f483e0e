"""`flux-tui run`: experiments one after another in the foreground, with a one-line progress per run.

Each run is the same process the dashboard starts (`python -m flux_tui.engine.train RUN_DIR`), in a session
of its own like every run, so that stopping it (the dashboard's `x`, `flux-tui stop`) signals the run and
nothing else of the script or terminal that started this command. This command is the run's parent: Ctrl-C,
SIGTERM or SIGHUP reaching it is passed on to the run's process group, which saves a checkpoint and ends
`cancelled`; no further run starts. It records how a run ended when the run could not (killed by SIGKILL),
as a supervisor does, and when it is done it starts the workspace's queued runs. The run's output is copied
into its train.log as the dashboard's runs write it, and `--verbose` echoes it here too.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from flux_tui.core import launch, procs, runs, supervisor
from flux_tui.core.config import Experiment, Study
from flux_tui.core.fsutil import TailReader
from flux_tui.core.runs import CANCELLED, DONE, RunDir

EXIT_OK, EXIT_FAIL, EXIT_INTERRUPTED = 0, 1, 130
POLL_S = 0.5


class _Interrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise _Interrupted(signum)


def _copy_output(stream, log_path, echo: TextIO | None) -> None:
    """The run's stdout into its train.log (and the terminal with --verbose), line by line."""
    with open(log_path, "ab") as log:
        log.write(f"\n=== launched {time.strftime('%Y-%m-%d %H:%M:%S')} by flux-tui run\n".encode())
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            if echo is not None:
                echo.write(line.decode("utf-8", errors="replace"))
                echo.flush()


class Progress:
    """One line per run: rewritten in place on a terminal, else printed at each stage and every 10%."""

    def __init__(self, out: TextIO, label: str):
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.stage = "starting"
        self.step: dict | None = None
        self._printed: tuple[str, int] | None = None

    def feed(self, event: dict) -> None:
        if event.get("type") == "stage":
            self.stage = str(event.get("stage"))
        elif event.get("type") == "step":
            self.step = event

    def text(self) -> str:
        parts = [self.label, self.stage]
        if self.step and self.stage == "train":
            e = self.step
            parts.append(f"step {e.get('step')}/{e.get('total')}")
            if isinstance(e.get("loss"), int | float):
                parts.append(f"loss {e['loss']:.4f}")
            if isinstance(e.get("sec_per_step"), int | float):
                parts.append(f"{e['sec_per_step']:.2f} s/step")
            if isinstance(e.get("eta_s"), int | float) and self.stage == "train":
                parts.append(f"eta {_duration(e['eta_s'])}")
        return "  ".join(parts)

    def show(self) -> None:
        if self.tty:
            self.out.write("\r\033[K" + self.text())
            self.out.flush()
            return
        step = self.step or {}
        total = step.get("total") or 0
        tenth = int(10 * (step.get("step") or 0) / total) if total else 0
        key = (self.stage, tenth)
        if key != self._printed:
            self._printed = key
            print(self.text(), file=self.out, flush=True)

    def finish(self, line: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        print(line, file=self.out, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_one(run: RunDir, label: str, *, no_eval: bool, verbose: bool, out: TextIO) -> tuple[str, bool]:
    """Start the run and follow it to its end. Returns (final state, whether the user interrupted)."""
    extra = ("--no-eval",) if no_eval else ()
    events = TailReader(run.events_jsonl)
    events.read_lines()  # progress of this launch only, not of an earlier one
    proc = launch.start(run, detach=False, extra_args=extra, device=None)
    copier = threading.Thread(target=_copy_output, args=(proc.stdout, run.train_log, out if verbose else None),
                              daemon=True)  # fmt: skip
    copier.start()
    progress = Progress(out, label)
    interrupted = False
    started = time.monotonic()
    while True:
        try:
            for line in events.read_lines():
                try:
                    progress.feed(json.loads(line))
                except ValueError:
                    continue
            if not verbose:
                progress.show()
            if proc.poll() is not None:
                break
            time.sleep(POLL_S)
        except (_Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
            # The run is in its own session: a terminal's Ctrl-C reaches only us, so pass every one on.
            if proc.poll() is None:
                procs.signal_group(proc.pid, None, signum)
            if not interrupted:
                interrupted = True
                progress.finish(f"{label}  stopping: the run saves a checkpoint, then ends (relaunch resumes it)")
    copier.join(timeout=5)
    supervisor.record_exit(run, proc.pid, proc.returncode)
    status = run.reconcile()
    took = _duration(time.monotonic() - started)
    steps = f"  step {progress.step.get('step')}/{progress.step.get('total')}" if progress.step else ""
    message = f"  {status.message}" if status.message else ""
    progress.finish(f"{label}  {status.state}{steps}  in {took}{message}")
    if status.state not in (DONE,) and status.log_tail and not verbose:
        for line in status.log_tail[-5:]:
            print(f"    {line}", file=out)
    return status.state, interrupted


def run_experiments(study: Study, experiments: Sequence[Experiment], *, no_eval: bool = False,
                    verbose: bool = False, out: TextIO = sys.stdout) -> int:  # fmt: skip
    """Run each experiment in turn, skipping those done with the same settings (and evaluated, unless
    `no_eval`: a run trained with --no-eval is only evaluated). Exit code: 0 when
    every run is done, 130 when the user interrupted, else 1."""
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    failed = 0
    try:
        for i, exp in enumerate(experiments, start=1):
            label = f"[{i}/{len(experiments)}] {exp.name}"
            run = runs.run_dir(study, exp.name)
            evaluated = no_eval or run.scores() is not None
            if run.exists() and run.status().state == DONE and not run.changed_keys(exp) and evaluated:
                print(f"{label}  done already (`flux-tui reset {run.name}` to run it again)", file=out)
                continue
            try:
                run = runs.prepare(study, exp)
                state, interrupted = run_one(run, label, no_eval=no_eval, verbose=verbose, out=out)
            except (runs.LaunchError, launch.AlreadyRunning) as exc:
                print(f"{label}  not started: {exc}", file=out)
                failed += 1
                continue
            if interrupted or state == CANCELLED:
                left = len(experiments) - i
                if left:
                    print(f"interrupted: {left} run(s) not started", file=out)
                return EXIT_INTERRUPTED
            failed += state != DONE
    except (_Interrupted, KeyboardInterrupt):
        print("interrupted", file=out)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _start_queued(study, out)
    return EXIT_FAIL if failed else EXIT_OK


def _start_queued(study: Study, out: TextIO) -> None:
    """Our runs held a slot: queued runs that waited for it start now (the study file read afresh)."""
    from flux_tui.core.scheduler import Scheduler
    from flux_tui.core.telemetry import Telemetry

    started = Scheduler(study, gpus=Telemetry().gpus).tick()
    if started:
        print(f"started queued run(s): {', '.join(started)}", file=out)
