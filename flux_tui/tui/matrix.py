"""The experiment matrix: one row per experiment, its hyperparameters and its run's state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from flux_tui.config import Study
from flux_tui.runs import RunDir, Status, run_dir

COLUMNS = ("#", "name", "group", "lr", "rank", "alpha", "steps", "scheduler", "state")
STATE_STYLE = {
    "new": "dim",
    "queued": "cyan",
    "running": "bold yellow",
    "done": "bold green",
    "failed": "bold red",
    "oom": "bold magenta",
    "cancelled": "dark_orange",
    "stale": "italic red",
}


def state_text(status: Status, stale: str | None = None) -> Text:
    if stale and status.state != "running":
        return Text(f"{status.state} (stale)", style=STATE_STYLE["stale"])
    return Text(status.label, style=STATE_STYLE.get(status.state, ""))


class MatrixTable(DataTable):
    """The study's experiments as a table, keyed by run name."""

    DEFAULT_CSS = """
    MatrixTable { height: 1fr; }
    """

    def __init__(self, study: Study, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.study = study

    def on_mount(self) -> None:
        for col in COLUMNS:
            self.add_column(col, key=col)
        for exp in self.study.experiments:
            s = exp.settings
            run = run_dir(self.study, exp.name)
            self.add_row(
                str(exp.number),
                exp.name,
                exp.group,
                f"{s.learning_rate:g}",
                str(s.lora_rank),
                str(s.alpha),
                str(s.max_train_steps),
                s.lr_scheduler,
                state_text(run.status(), run.stale(exp)),
                key=exp.name,
            )

    def refresh_states(self) -> None:
        for exp in self.study.experiments:
            run: RunDir = run_dir(self.study, exp.name)
            self.update_cell(exp.name, "state", state_text(run.status(), run.stale(exp)))
