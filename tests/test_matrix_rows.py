"""The dashboard opens on the shipped study and shows its 11 experiments as rows."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from flux_tui.core import config
from flux_tui.tui.app import FluxApp

REPO = Path(__file__).resolve().parents[1]


async def test_dashboard_shows_one_row_per_experiment_of_the_shipped_file() -> None:
    study = config.load(REPO / "experiments.toml")
    app = FluxApp(study)
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        table = app.query_one("#matrix", DataTable)
        assert table.row_count == 11
        first = [str(c) for c in table.get_row_at(0)]
        assert "exp01" in first and "Extreme parameters" in first and "0.001" in first
        last = [str(c) for c in table.get_row_at(10)]
        assert "exp11" in last and "constant" in last


async def test_the_files_warnings_are_shown_in_the_dashboard(tmp_path: Path) -> None:
    (tmp_path / "experiments.toml").write_text('[[experiment]]\nname = "a"\n')  # no photos/ folder
    study = config.load(tmp_path / "experiments.toml")
    app = FluxApp(study)
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        shown = [str(n.message) for n in app._notifications]
        assert any("photos does not exist" in m for m in shown), shown
