"""Small filesystem helpers shared by every wing: atomic writes and tolerant JSON-lines reads.

Files are created with the permissions the umask gives (0644 under the usual 022), so teammates on a shared
server can read runs: `tempfile.mkstemp` makes its files 0600, so `atomic_write_text` sets them back, and
`follow_umask` does the same for what other libraries write privately (safetensors).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which races
    with any thread creating a file meanwhile): from /proc/self/status on Linux >= 4.7, else by setting and
    restoring it under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_setting()


def _umask_by_setting() -> int:
    with _UMASK_LOCK:  # only our own readers are kept apart: another thread's new file could get 077
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode(executable: bool = False) -> int:
    """The mode `open()` would give a new file (or mkdir a new folder, with `executable`): 0o666 or 0o777
    less the umask."""
    return (0o777 if executable else 0o666) & ~current_umask()


def follow_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything under it) the permissions the umask gives new files and
    folders. For what other libraries write privately: safetensors >= 0.5 and mkdtemp make 0600/0700."""
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    files, folders = file_mode(), file_mode(executable=True)
    for p in paths:
        if not p.is_symlink():
            p.chmod(folders if p.is_dir() else files)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half of one. The
    file gets the umask's permissions, like any file `open()` creates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block; the kernel frees it if the holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def is_file(path: Path) -> bool:
    """`path.is_file()` that says False, not raises, for a path a run's files named wrongly (a component too
    long for a file name, a loop of links)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or (being replaced) unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a half-written or corrupt line (a writer mid-flush) is skipped."""
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - generator owns it
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record in one write, so a tailing reader sees whole lines promptly. A last line left
    unterminated (a writer killed mid-line) is ended first, so it cannot swallow this record: the damaged
    line stays on its own and readers skip it."""
    append_jsonl_records(path, [record])


def append_jsonl_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one per line, in one write (and one check of the last byte), as `append_jsonl`."""
    lines = b"".join((json.dumps(record, default=str) + "\n").encode("utf-8") for record in records)
    if not lines:
        return
    with open(path, "a+b") as fh:  # readable too: the last byte is checked
        fh.write(_line_break_needed(fh.fileno()) + lines)
        fh.flush()


def _line_break_needed(fd: int) -> bytes:
    """A newline when the file behind `fd` ends without one, else nothing (an fstat and a one-byte pread)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    return b"" if os.pread(fd, 1, size - 1) == b"\n" else b"\n"


class TailReader:
    """Reads only the bytes appended to a file since the last call and returns whole new lines.

    A partial last line (a writer mid-write) is held back until its newline arrives. When the file shrinks
    or is replaced, reading starts again from the top.
    """

    def __init__(self, path: Path, max_initial_bytes: int | None = None):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._inode: int | None = None
        self._max_initial = max_initial_bytes

    def read_lines(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
            self.offset, self._partial = 0, b""
        if self._inode is None and self._max_initial is not None and st.st_size > self._max_initial:
            # First read of a big file: start near the end, at a line boundary.
            self.offset = st.st_size - self._max_initial
            self._partial = b""
            skip_first = True
        else:
            skip_first = False
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if skip_first and lines:
            lines = lines[1:]
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]
