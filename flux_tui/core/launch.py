"""Starting a run's process: the one place that knows the command line of a run.

A run's trainer is `python -m flux_tui.engine.train RUN_DIR`, always in a session of its own, so stop
signals reach its process group and nothing else (not the dashboard, not the script that ran
`flux-tui run`). Two ways to start it:

- detached (the dashboard, `flux-tui submit`, the queue): a supervisor (`core/supervisor.py`) in its own
  session starts the trainer, records how it ended and starts the next queued run; output to `train.log`.
  `start` returns once the supervisor has recorded the trainer's pid in status.json.
- foreground (`flux-tui run`): the caller is the trainer's parent, reads its output and forwards signals.

The run's ownership lock (`runlock`) is taken here and handed down (supervisor, trainer), so two launchers
never start the same run, even when status.json is damaged; a per-run launch lock makes check-then-launch
atomic and orders a stop's records before the supervisor's.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

from flux_tui.core import procs, runlock
from flux_tui.core.executor import LOCAL
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import RUNNING, LaunchError, RunDir

# A Python script run instead of `-m flux_tui.engine.train` (the tests' stand-in trainer, which speaks the
# same folder protocol in a second). Inherited by supervisors, so the runs they start next use it too.
TRAINER_ENV = "FLUX_TUI_TRAINER"
READY_ENV = "FLUX_TUI_SUPERVISOR_READY_FD"
READY_TIMEOUT_S = 120.0


class AlreadyRunning(Exception):
    pass


def engine_command(run: RunDir, *extra: str) -> list[str]:
    script = os.environ.get(TRAINER_ENV)
    target = [script] if script else ["-m", "flux_tui.engine.train"]
    return [sys.executable, "-u", *target, str(run.path), *extra]


def supervisor_command(run: RunDir, trainer: list[str], env: Mapping[str, str], device: str | None) -> list[str]:
    """The supervisor's command line: the trainer's command after `--`, its own environment as --env."""
    cmd = [sys.executable, "-u", "-m", "flux_tui.core.supervisor", str(run.path)]
    if device:
        cmd += ["--device", device]
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, "--", *trainer]


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
    """Start the run. Raises AlreadyRunning when a live process already owns the run, LaunchError when
    its supervisor could not start the trainer.

    detach=True: returns the supervisor (which exits with the trainer's exit code, 128+N for signal N).
    detach=False: returns the trainer, its output on the pipe `stdout` for the caller to copy (the foreground
    `flux-tui run`, which forwards Ctrl-C to the run's group)."""
    with run_lock(run):
        status = run.status()
        if status.state == RUNNING and run.is_process_alive(status):
            raise AlreadyRunning(f"run {run.name!r} is already running (pid {status.pid})")
        try:
            lock_fd = runlock.acquire(run.path)
        except runlock.RunLocked as exc:
            raise AlreadyRunning(str(exc)) from None
        try:
            if detach:
                return _supervise(run, dict(env or {}), extra_args, device, lock_fd)
            return _foreground(run, dict(env or {}), extra_args, device, lock_fd)
        finally:
            os.close(lock_fd)  # the child keeps its inherited copy for as long as it lives


def _supervise(
    run: RunDir, env: dict[str, str], extra_args: tuple[str, ...], device: str | None, lock_fd: int
) -> subprocess.Popen:
    trainer = engine_command(run, *extra_args)
    read_end, write_end = os.pipe()
    child_env = {**os.environ, **runlock.child_env(lock_fd), READY_ENV: str(write_end), "PYTHONUNBUFFERED": "1"}
    try:
        with open(run.train_log, "ab") as log:
            log.write(f"\n=== launched {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(trainer)}\n".encode())
            proc = subprocess.Popen(
                supervisor_command(run, trainer, env, device), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=child_env, cwd=run.path,
                pass_fds=(lock_fd, write_end),
            )  # fmt: skip
    finally:
        os.close(write_end)
    try:
        answer = _read_answer(read_end)
    finally:
        os.close(read_end)
    if answer is None:  # it ended without a word: it could not even start (see train.log)
        code = proc.wait()
        raise LaunchError(f"run {run.name!r}: its supervisor exited with code {code}; see {run.train_log}")
    if answer.startswith("error:"):
        proc.wait()
        raise LaunchError(answer.removeprefix("error:").strip())
    return proc  # "ok", or no answer in READY_TIMEOUT_S (a starved machine): it records the pid itself


def _read_answer(fd: int) -> str | None:
    """The supervisor's one line: 'ok' once the trainer's pid is in status.json, or 'error: ...'; None at
    EOF; 'timeout' when it said nothing in READY_TIMEOUT_S."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "timeout"
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").strip() or None
        data += chunk
    return data.decode(errors="replace").strip()


def _foreground(
    run: RunDir, env: dict[str, str], extra_args: tuple[str, ...], device: str | None, lock_fd: int
) -> subprocess.Popen:
    child_env = {**os.environ, **env, **runlock.child_env(lock_fd), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        engine_command(run, *extra_args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, env=child_env, cwd=run.path, pass_fds=(lock_fd,),
    )  # fmt: skip
    record_started(run, proc.pid, device)
    return proc


def record_started(run: RunDir, pid: int, device: str | None) -> None:
    """status.json names the trainer `pid` (its own session, so its pgid is its pid) as the run's owner at
    once, so a dashboard that looks now already sees the run as its owner's."""
    run.write_status(**run.launch_changes(
        state=RUNNING, stage="starting", pid=pid, pgid=pid, process_start=procs.start_time(pid),
        host=socket.gethostname(), device=device, executor=LOCAL, job_id=None, stop_signal=None, queued_from=None,
    ))  # fmt: skip
