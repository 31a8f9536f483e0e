"""Starting a run's process: the one place that knows the command line of a run.

A run is `python -m flux_tui.engine.train RUN_DIR` in its own session (so it survives the dashboard and the
SSH connection), its output appended to `train.log`. A per-run lock file makes check-then-launch atomic, so
two dashboards (or a dashboard and `flux-tui run`) never start the same run twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

from flux_tui.core import procs, runlock
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import RUNNING, RunDir


class AlreadyRunning(Exception):
    pass


def engine_command(run: RunDir, *extra: str) -> list[str]:
    return [sys.executable, "-u", "-m", "flux_tui.engine.train", str(run.path), *extra]


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """An exclusive lock on the run folder for the moment of check-and-launch (flock: freed on exit)."""
    with file_lock(run.path / ".launch.lock"):
        yield


def start(
    run: RunDir,
    *,
    env: Mapping[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    device: str | None = None,
    detach: bool = True,
) -> subprocess.Popen:
    """Start the run's process. Raises AlreadyRunning when a live process already owns the run.

    detach=True: its own session, output to train.log (the dashboard's way). detach=False: same session
    and the caller reads the output (the foreground `flux-tui run`, where Ctrl-C reaches the run too).
    """
    with run_lock(run):
        status = run.status()
        if status.state == RUNNING and run.is_process_alive(status):
            raise AlreadyRunning(f"run {run.name!r} is already running (pid {status.pid})")
        try:
            lock_fd = runlock.acquire(run.path)
        except runlock.RunLocked as exc:
            raise AlreadyRunning(str(exc)) from None
        try:
            proc = _spawn(run, env, extra_args, detach, lock_fd)
        finally:
            os.close(lock_fd)  # the child keeps its inherited copy for as long as it lives
        # Record the pid at once, so a dashboard that looks now already sees the run as its owner's.
        run.write_status(
            state=RUNNING,
            stage="starting",
            pid=proc.pid,
            pgid=proc.pid if detach else os.getpgid(0),
            process_start=procs.start_time(proc.pid),
            host=socket.gethostname(),
            started_at=time.time(),
            finished_at=None,
            exit_code=None,
            message="",
            device=device,
        )
        return proc


def _spawn(
    run: RunDir, env: Mapping[str, str] | None, extra_args: tuple[str, ...], detach: bool, lock_fd: int
) -> subprocess.Popen:
    """The engine process, holding the run's lock (handed down as an inherited descriptor)."""
    child_env = {**os.environ, **(env or {}), **runlock.child_env(lock_fd), "PYTHONUNBUFFERED": "1"}
    cmd = engine_command(run, *extra_args)
    if detach:
        with open(run.train_log, "ab") as log:
            log.write(f"\n=== launched {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=child_env, cwd=run.path, pass_fds=(lock_fd,),
            )  # fmt: skip
    else:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=child_env, cwd=run.path, pass_fds=(lock_fd,),
        )  # fmt: skip
    return proc
