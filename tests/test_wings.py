"""The three wings stay apart: the contracts cover every core module, and the dashboard loads no torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"flux_tui.main", "flux_tui.__main__", "flux_tui.__init__"}


def contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_core_module_is_under_the_core_contract() -> None:
    core = next(c for c in contracts() if c["name"].startswith("The core"))
    modules = {f"flux_tui.{p.stem}" for p in (REPO / "flux_tui").glob("*.py")} - ENTRY_POINTS
    missing = modules - set(core["source_modules"])
    assert not missing, f"add {sorted(missing)} to the core contract in pyproject.toml"


def test_import_contracts_hold() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:]


def test_cli_and_dashboard_modules_load_no_torch() -> None:
    code = (
        "import sys, flux_tui.main, flux_tui.tui.app, flux_tui.cli\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
