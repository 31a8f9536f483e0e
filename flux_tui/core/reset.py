"""Resetting a run: its folder is moved aside to `runs/.old/<name>-<timestamp>/`, never deleted, so the run
starts afresh (state `new`) with the study file's settings the next time it is launched.

This is how a stale run (trained with settings the file no longer has) is trained again, and how a damaged
folder is cleared out of the way. The dashboard's reset key and `flux-tui reset` both come here.

A reset is refused while anything may still write into the folder: a process holding the run's ownership
lock (`core/runlock.py`), a status that says running with a live process (or on another machine), or a
batch job (Slurm) still waiting in its queue to start the trainer. It runs
under the workspace queue lock and holds the run's own lock while it renames, so no launch can slip in
between the check and the move.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from flux_tui.core import runlock
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import QUEUED, RUNNING, RunDir

OLD_DIR = ".old"  # under the runs folder: where reset runs' folders go
QUEUE_LOCK = ".queue.lock"  # the scheduler's workspace lock (core/scheduler.py)


class ResetRefused(Exception):
    """The run cannot be reset now; the message says why and what to do."""


@dataclass(frozen=True)
class Reset:
    name: str
    moved_to: Path | None  # None: the run had no folder, so there was nothing to move


def old_dir(runs_dir: Path) -> Path:
    return Path(runs_dir) / OLD_DIR


def aside_path(run: RunDir, now: float | None = None) -> Path:
    """A free `runs/.old/<name>-<YYYYmmdd-HHMMSS>[-N]/` for the run's folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    base = old_dir(run.path.parent) / f"{run.name}-{stamp}"
    path, n = base, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_resettable(run: RunDir) -> None:
    """Raise ResetRefused when a process may still own or write the run's folder."""
    owner = runlock.holder(run.path)
    if owner is not None:
        who = f"pid {owner}" if owner else "a live process"
        raise ResetRefused(f"{run.name} is owned by {who} (it holds {runlock.lock_path_hint(run.name)}): "
                           "stop it first and let it end")  # fmt: skip
    status = run.status()
    if status.state == QUEUED and status.job_id:
        # A batch job waiting in Slurm's queue would start the trainer on this folder's name after the move.
        raise ResetRefused(f"{run.name} is waiting in the batch queue as job {status.job_id}: take it off the "
                           "queue first (x, or flux-tui stop), then reset")  # fmt: skip
    if status.state != RUNNING:
        return
    if status.host and status.host != socket.gethostname():
        raise ResetRefused(f"{run.name} is running on {status.host}: stop it there first")
    if run.is_process_alive(status):
        raise ResetRefused(f"{run.name} is running (pid {status.pid}): stop it first and let it end")


def reset_run(run: RunDir, now: float | None = None) -> Reset:
    """Move the run's folder to `runs/.old/<name>-<timestamp>/`. Works on a damaged folder too (no or broken
    run.json/status.json); refuses a running run (ResetRefused)."""
    if not (run.path.exists() or run.path.is_symlink()):
        return Reset(run.name, None)
    with file_lock(run.path.parent / QUEUE_LOCK):
        check_resettable(run)
        try:
            fd = runlock.acquire(run.path)  # held while moving: a launcher now waits for us, or fails
        except runlock.RunLocked as exc:
            raise ResetRefused(f"{exc}: stop it first and let it end") from None
        try:
            target = aside_path(run, now)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(run.path, target)
        finally:
            os.close(fd)
    return Reset(run.name, target)
