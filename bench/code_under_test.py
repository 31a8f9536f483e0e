"""Which flux-tui a bench measures, printed with its figures so that a before/after pair can be told apart.

A bench's child processes run the flux_tui that PYTHONPATH names (they start outside the checkout: see each
script). To compare two versions on one machine, run the same bench script twice, alternating, e.g.

    PYTHONPATH=/path/to/checkout-before python bench/sweep_stages.py
    PYTHONPATH=/path/to/checkout-after  python bench/sweep_stages.py

and read each output's `code:` line, which says which checkout and commit ran.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import subprocess
from pathlib import Path


def package_dir() -> Path | None:
    """The folder of the flux_tui package this Python imports (None when it cannot)."""
    spec = importlib.util.find_spec("flux_tui")
    return None if spec is None or spec.origin is None else Path(spec.origin).resolve().parent


def describe() -> str:
    """`code: /path/to/checkout (commit abc1234, 2 files changed)` for the flux_tui this Python imports."""
    package = package_dir()
    if package is None:
        return "code: flux_tui is not importable"
    root = package.parent
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        dirty = len(_git(root, "status", "--porcelain", "--untracked-files=no").splitlines())
    except (OSError, subprocess.CalledProcessError):
        return f"code: {root} (not a git checkout)"
    return f"code: {root} (commit {commit}" + (f", {dirty} file(s) changed)" if dirty else ")")


def bytecode(compile_first: bool = False) -> str:
    """`bytecode: ...`: whether flux_tui's modules have current bytecode, which decides whether a start compiles
    them from source. `compile_first`: write it first, as `make` does at install."""
    package = package_dir()
    if package is None:
        return "bytecode: flux_tui is not importable"
    if compile_first:
        compileall.compile_dir(package, quiet=1)
    sources = sorted(package.rglob("*.py"))
    stale = [s for s in sources if not _current(s)]
    if not stale:
        return f"bytecode: current for all {len(sources)} modules" + (" (compiled by this bench)" if compile_first else "")
    writes = "PYTHONDONTWRITEBYTECODE is set, so every start compiles them from source" if os.environ.get(
        "PYTHONDONTWRITEBYTECODE") else "the first start writes it"  # fmt: skip
    return f"bytecode: missing or stale for {len(stale)} of {len(sources)} modules ({writes}; --compile writes it)"


def _current(source: Path) -> bool:
    """Whether the source's .pyc exists and was made from this version of it (mtime and size, as Python checks)."""
    try:
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        st = source.stat()
    except OSError:
        return False
    return (len(header) == 16 and header[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF)  # fmt: skip


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()  # fmt: skip
