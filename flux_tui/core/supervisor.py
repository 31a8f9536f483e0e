"""A run's supervisor: the small process (no torch) that owns one run from its launch to its recorded end.

    python -m flux_tui.core.supervisor RUN_DIR [--device D] [--env KEY=VALUE]... -- TRAINER COMMAND...

`launch.start` spawns it in its own session, so a closed terminal or a dropped SSH connection never reaches
it, and hands it the run's lock. It
1. starts the trainer in a session of its own (stop signals go to the trainer's group, never to the
   supervisor), handing the lock on, output to train.log, and records the trainer's pid in status.json;
2. waits for it and, when the trainer could not say how it ended, records what really happened: killed by
   SIGKILL (a stop with --kill, the kernel's out-of-memory killer), a segfault, an exit before any state;
3. lets go of the run's lock and starts the next queued runs, reading the study file afresh, under the
   workspace's queue lock; then exits with the trainer's exit code (128+N for signal N).
SIGTERM and SIGINT sent to the supervisor itself are passed on to the trainer's group; SIGHUP is ignored.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flux_tui.core import config, launch, procs, runlock
from flux_tui.core.executor import LOCAL
from flux_tui.core.runs import CANCELLED, FAILED, RUNNING, RunDir, Status

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what a user's stop sends


def describe_exit(returncode: int, stop_signal: str | None) -> tuple[str, str, int]:
    """(state, message, exit code) of a trainer that ended with Popen's `returncode` (negative: killed by
    that signal) without recording a state of its own."""
    if returncode >= 0:
        why = f"the trainer exited with code {returncode} before recording how it ended (see train.log)"
        return FAILED, why, returncode
    sig = signal.Signals(-returncode)
    code = 128 + sig.value
    if stop_signal == sig.name:
        return CANCELLED, f"killed with {sig.name} on request; work since the last checkpoint is lost", code
    if sig in STOP_SIGNALS:
        return CANCELLED, f"stopped by {sig.name} before it could save a checkpoint", code
    if sig == signal.SIGKILL:
        why = "not by flux-tui: the kernel's out-of-memory killer (see `dmesg`), a user, or a time limit"
        return FAILED, f"killed by SIGKILL ({why})", code
    return FAILED, f"killed by {sig.name}", code


def record_exit(run: RunDir, pid: int, returncode: int) -> Status:
    """Record how the trainer `pid` ended, unless it recorded that itself. Under the run's launch lock, so
    that a stop's request (`stop_signal`, written under the same lock) is seen."""
    with launch.run_lock(run):
        status = run.status()
        if status.state != RUNNING or status.pid != pid:
            return status  # it said how it ended (done, failed, cancelled, oom)
        state, message, code = describe_exit(returncode, status.stop_signal)
        return run.mark_ended(state, message, code)


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def advance_queue(run: RunDir) -> list[str]:
    """Start the next queued runs of the workspace this run belongs to, as the study file says now."""
    file = (run.read_run() or {}).get("study_file")
    if not file:
        return []
    try:
        study = config.load(file)
    except (config.ConfigError, OSError) as exc:
        _say(f"the queue waits: {file} cannot be read now ({exc}); a dashboard or `flux-tui submit` starts it")
        return []
    from flux_tui.core.scheduler import Scheduler
    from flux_tui.core.telemetry import Telemetry

    started = Scheduler(study, gpus=Telemetry().gpus).tick()
    if started:
        _say(f"started the next queued run(s): {', '.join(started)}")
    return started


def _say(message: str) -> None:
    print(f"=== supervisor {time.strftime('%H:%M:%S')}: {message}", flush=True)


class _Forwarder:
    """Stop signals that reach the supervisor go to the trainer's group (noted until the trainer exists)."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.pending: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _handle(self, signum: int, frame) -> None:
        if self.pgid is None:
            self.pending.append(signum)
        else:
            procs.signal_group(self.pgid, None, signum)

    def attach(self, pgid: int) -> None:
        self.pgid = pgid
        for signum in self.pending:
            procs.signal_group(pgid, None, signum)


def _start_trainer(run: RunDir, args: argparse.Namespace, lock_fd: int) -> subprocess.Popen:
    extra = dict(item.split("=", 1) for item in args.env)
    env = {**os.environ, **extra, **runlock.child_env(lock_fd), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args.command, stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=run.path,
        pass_fds=(lock_fd,),
    )  # fmt: skip
    run.write_status(**run.launch_changes(
        state=RUNNING, stage="starting", pid=proc.pid, pgid=proc.pid, process_start=procs.start_time(proc.pid),
        host=socket.gethostname(), device=args.device, executor=LOCAL, job_id=None, stop_signal=None,
        queued_from=None,
    ))  # fmt: skip
    return proc


def _answer(fd: int | None, line: str) -> None:
    """Tell the launcher (one line on the pipe it handed down) and let the pipe go."""
    if fd is None:
        return
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass  # the launcher is gone; nobody waits for the answer
    finally:
        os.close(fd)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flux_tui.core.supervisor", usage=__doc__.split("\n")[2].strip())
    p.add_argument("run_dir", type=Path)
    p.add_argument("--device", default=None, help="what status.json records as the run's device")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for the trainer only")
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        p.error("no trainer command after --")
    cut = argv.index("--")
    args = p.parse_args(argv[:cut])
    args.command = argv[cut + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    ready = os.environ.pop(launch.READY_ENV, "")
    ready_fd = int(ready) if ready.isdigit() else None
    forward = _Forwarder()
    run = RunDir(args.run_dir.resolve())
    try:
        with runlock.adopt_or_acquire(run.path) as lock_fd:
            try:
                proc = _start_trainer(run, args, lock_fd)
            except OSError as exc:
                run.mark_ended(FAILED, f"could not start the trainer: {exc}")
                _answer(ready_fd, f"error: run {run.name!r}: could not start the trainer: {exc}")
                return 1
            forward.attach(proc.pid)
            _answer(ready_fd, "ok")
            returncode = proc.wait()
            status = record_exit(run, proc.pid, returncode)
            how = f"{status.state}, {status.message}" if status.message else status.state
            _say(f"the trainer (pid {proc.pid}) ended: {how}")
    except runlock.RunLocked as exc:
        _answer(ready_fd, f"error: {exc}")
        return 1
    advance_queue(run)  # the run's lock is free again: a queued relaunch of this same run may start
    return exit_code(returncode)


if __name__ == "__main__":
    sys.exit(main())
