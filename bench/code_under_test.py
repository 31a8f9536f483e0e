"""Which flux-tui a bench measures, printed with its figures so that a before/after pair can be told apart.

A bench's child processes run the flux_tui that PYTHONPATH names (they start outside the checkout: see each
script). To compare two versions on one machine, run the same bench script twice, alternating, e.g.

    PYTHONPATH=/path/to/checkout-before python bench/sweep_stages.py
    PYTHONPATH=/path/to/checkout-after  python bench/sweep_stages.py

and read each output's `code:` line, which says which checkout and commit ran.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path


def describe() -> str:
    """`code: /path/to/checkout (commit abc1234, 2 files changed)` for the flux_tui this Python imports."""
    spec = importlib.util.find_spec("flux_tui")
    if spec is None or spec.origin is None:
        return "code: flux_tui is not importable"
    root = Path(spec.origin).resolve().parents[1]
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        dirty = len(_git(root, "status", "--porcelain", "--untracked-files=no").splitlines())
    except (OSError, subprocess.CalledProcessError):
        return f"code: {root} (not a git checkout)"
    return f"code: {root} (commit {commit}" + (f", {dirty} file(s) changed)" if dirty else ")")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()  # fmt: skip
