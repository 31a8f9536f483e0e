"""The dashboard's terminal hanging up.

An SSH connection that drops hangs up the dashboard's terminal, and SIGHUP ends the process at once. Where
SIGHUP is ignored (started under `nohup`, by a wrapper that ignores it), nothing would: Textual's input thread
reads end-of-file from the hung-up terminal in a loop (a whole core) while the app waits for its terminal
for ever, a process nobody can see that keeps starting queued runs. A daemon thread asks the terminal every
second (one ioctl: a hung-up terminal answers EIO) and, once it has hung up, notes it in the dashboard's log
and ends the process at once, as SIGHUP would have. Nothing is lost: runs and the queue live in the run folders, and
every state file is written atomically.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable

CHECK_EVERY_S = 1.0
_HUNG_UP = (errno.EIO, errno.ENXIO, errno.EBADF)  # what a hung-up (or closed) terminal answers


def terminal_fd() -> int | None:
    """The terminal the dashboard reads its keys from (Textual's driver reads stdin), None without one."""
    stdin = sys.__stdin__
    try:
        fd = stdin.fileno() if stdin is not None else -1
    except (OSError, ValueError):
        return None
    return fd if fd >= 0 and os.isatty(fd) else None


def gone(fd: int) -> bool:
    """The terminal on `fd` has hung up: its connection dropped."""
    try:
        termios.tcgetattr(fd)
    except termios.error as exc:
        return bool(exc.args) and exc.args[0] in _HUNG_UP
    return False


def watch(fd: int, note: Callable[[], object], every: float = CHECK_EVERY_S) -> threading.Thread:
    """Check the terminal on `fd` every `every` seconds; once it has hung up, call `note` and end the process
    with SIGHUP's exit status (129), without the clean-up SIGHUP's default action would not run either."""

    def run() -> None:
        while not gone(fd):
            time.sleep(every)
        try:
            note()
        finally:  # a thread cannot restore SIGHUP's action (only the main thread may): end as it would have
            os._exit(128 + signal.SIGHUP)

    thread = threading.Thread(target=run, name="flux-tui-terminal", daemon=True)
    thread.start()
    return thread
