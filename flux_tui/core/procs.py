"""Process identity and signals: a pid is trusted only together with its start time (pids are reused)."""

from __future__ import annotations

import os
import signal

# psutil imports in each function (~20 ms on first use): the dashboard reads a run's pid only when a status
# says it runs, so a first frame of runs at rest never pays for it.


def start_time(pid: int) -> float | None:
    """The process's creation time (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """True when `pid` runs and is the same process that started at `started` (not a reused pid)."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return started is None or abs(created - started) < 1.0


def signal_group(pgid: int | None, pid: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send `sig` to the run's whole process group (its data loaders and helpers too). False if gone."""
    try:
        if pgid:
            os.killpg(pgid, sig)
        elif pid:
            os.kill(pid, sig)
        else:
            return False
        return True
    except (ProcessLookupError, PermissionError):
        return False
