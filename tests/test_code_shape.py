"""The team's rule that no function runs over 60 lines, checked on the source (the AST), so a long function
fails the suite by name instead of waiting for a review to notice it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flux_tui"
MAX_LINES = 60


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (N lines)` for every function or method longer than `limit` lines (its def to its
    last line, nested functions counted in their parent and again on their own)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append(f"flux_tui/{rel.as_posix()}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_over_60_lines() -> None:
    too_long = long_functions()
    assert not too_long, f"functions over {MAX_LINES} lines (split them):\n" + "\n".join(too_long)


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "core" / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    (tmp_path / "engine").mkdir()
    method = "\n".join(f"    {line}" for line in body.splitlines())  # one level deeper: a method's body
    (tmp_path / "engine" / "steps.py").write_text(f"class Loop:\n    def run(self):\n{method}\n")
    assert long_functions(tmp_path) == ["flux_tui/core/long.py:5 long (61 lines)",
                                        "flux_tui/engine/steps.py:2 run (61 lines)"]  # fmt: skip
