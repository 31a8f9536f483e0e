"""The study file as it is on disk now: re-read and re-validated whenever its stat changes.

The dashboard keeps one `StudyFile` for the file it opened. Its watcher thread calls `check()` a few times a
second (a stat: inode, mtime and size), and the app calls it again right before every launch, so a launch
never uses settings older than the file. A file that no longer validates keeps the last good `study` and
says why in `problems` (each with its file and line); while it has problems, nothing should be launched.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from flux_tui.core import config
from flux_tui.core.config import Problem, Study


def stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class StudyFile:
    """The last good study of a file, its current problems, and a generation that counts the changes seen.
    Thread-safe: `check()` may be called from any thread."""

    def __init__(self, study: Study) -> None:
        self.path = Path(study.file)
        self.study = study
        self.problems: list[Problem] = []
        self.generation = 0
        self._key = stat_key(self.path)
        self._lock = threading.Lock()

    def check(self) -> bool:
        """Read the file again if it changed on disk since the last look. True when it did (then `study` is
        the new one, or `problems` says why the file cannot be used and `study` is still the last good one)."""
        with self._lock:
            key = stat_key(self.path)
            if key == self._key:
                return False
            self._key = key
            try:
                study = config.load(self.path)
            except config.ConfigError as exc:
                self.problems = [p for p in exc.problems if p.severity == "error"] or list(exc.problems)
            else:
                self.study, self.problems = study, []
            self.generation += 1
            return True
