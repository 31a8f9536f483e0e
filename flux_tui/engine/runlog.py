"""What an engine process prints, and where it goes: the run's `train.log`, the log the dashboard shows.

A run started by the launcher already writes its stdout and stderr into train.log; `flux-tui run` copies
the pipe into it. A standalone evaluation or ablation copies what it prints there itself (`logging_to`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from flux_tui.core.runs import RunDir


def log(message: str) -> None:
    """One timestamped line to stdout (train.log, or the pipe of `flux-tui run`). A reader that went away
    (a closed pipe) must not turn a clean stop into a crash, so write errors are dropped."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class _Tee:
    """Copies what the process prints into the run's train.log."""

    def __init__(self, stream, log_file):
        self.stream, self.log = stream, log_file

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _logs_to_train_log(run: RunDir) -> bool:
    """True when stdout already goes to train.log (a detached launch); then nothing needs copying."""
    try:
        out, log_stat = os.fstat(sys.stdout.fileno()), os.stat(run.train_log)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino) == (log_stat.st_dev, log_stat.st_ino)


@contextlib.contextmanager
def logging_to(run: RunDir) -> Iterator[None]:
    """Copy what this process prints into the run's train.log too (unless stdout already goes there)."""
    if _logs_to_train_log(run):
        yield
        return
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.train_log, "a", encoding="utf-8") as log_file:
        log_file.write(f"\n=== {' '.join(sys.argv)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(saved[0], log_file), _Tee(saved[1], log_file)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
