"""A run's ownership lock: whoever holds it owns `runs/<name>/`, for the whole life of its processes.

`status.json` says who runs a run, but it is data a user or a crash can damage; the lock cannot lie. It is an
flock on `runs/.locks/<name>.lock`, beside the run folder rather than in it, so deleting the folder while its
trainer runs does not free the lock for a second trainer. The kernel frees it when the last process holding it
exits (a SIGKILL too), so a stale lock cannot outlive its owner.

The launcher takes it before starting the engine process and hands the open descriptor to the child
(`child_env` + `pass_fds`): the lock is held from before the fork until the child and the launcher are gone,
with no window in which a second launch could slip in. An engine process started any other way (a Slurm job,
`python -m flux_tui.engine.train` by hand) takes it itself (`adopt_or_acquire`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

ENV_FD = "FLUX_TUI_RUN_LOCK_FD"


class RunLocked(Exception):
    """Another process owns the run; `pid` is its pid when it said so."""

    def __init__(self, name: str, pid: int | None):
        self.name, self.pid = name, pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"run {name!r} is owned by {who} (it holds {lock_path_hint(name)}); it is still running")


def lock_path_hint(name: str) -> str:
    return f"runs/.locks/{name}.lock"


def lock_path(run_path: Path) -> Path:
    run_path = Path(run_path)
    return run_path.parent / ".locks" / f"{run_path.name}.lock"


def _open(run_path: Path) -> int:
    path = lock_path(run_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who may read it


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def acquire(run_path: Path, pid: int | None = None) -> int:
    """Take the lock without waiting and return its descriptor (inheritable, for `pass_fds`). Writes `pid`
    (default: ours) into the file so a refused launch can name the owner. Raises RunLocked."""
    fd = _open(run_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise RunLocked(Path(run_path).name, holder) from None
    record_owner(fd, pid or os.getpid())
    os.set_inheritable(fd, True)
    return fd


def record_owner(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def holder(run_path: Path) -> int | None:
    """The pid that owns the run (0 when the owner did not say), or None when nobody holds the lock."""
    path = lock_path(run_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def child_env(fd: int) -> dict[str, str]:
    """Environment that tells the engine child which inherited descriptor is its run's lock."""
    return {ENV_FD: str(fd)}


@contextlib.contextmanager
def adopt_or_acquire(run_path: Path) -> Iterator[int]:
    """For the engine process (and the run's supervisor): keep the lock its launcher handed down (recording
    our pid in it), or take it. Yields the descriptor (to hand on with `pass_fds`); held until the block
    ends; raises RunLocked when another process owns the run."""
    inherited = os.environ.pop(ENV_FD, "")
    fd = None
    if inherited.isdigit():
        fd = int(inherited)
        try:
            os.fstat(fd)
            if os.path.samestat(os.fstat(fd), os.stat(lock_path(run_path))):
                record_owner(fd, os.getpid())
            else:
                fd = None
        except OSError:
            fd = None
    if fd is None:
        fd = acquire(run_path)
    os.set_inheritable(fd, False)
    try:
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
