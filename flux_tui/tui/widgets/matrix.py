"""The experiment matrix: one row per experiment, its hyperparameters, its run's progress and its scores,
and the best step of its score curve (`best@`, live while it trains).

Sortable by any column (`s`, or a click on a header; again to reverse), filtered by text, the best score of
each score column marked. Rows are keyed by run name, so the cursor stays on its run through re-sorts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from flux_tui.core.config import Experiment, Study
from flux_tui.core.metrics import CLIP_SCORE, HEADLINE, NO_FACE, Metric
from flux_tui.core.runs import DAMAGED, QUEUED, RUNNING, Status
from flux_tui.tui.format import duration
from flux_tui.tui.runview import RunView

STATE_STYLE = {
    "new": "dim",
    "queued": "cyan",
    "running": "bold yellow",
    "done": "bold green",
    "failed": "bold red",
    "oom": "bold magenta",
    "cancelled": "dark_orange",
    "damaged": "bold white on red",
    "stale": "italic red",
}
BEST_STYLE = "bold green"


def state_label(status: Status) -> str:
    """The state as the matrix shows it; a run waiting in Slurm's queue shows squeue's `PD` and the reason
    (`PD Resources`, `PD PartitionDown`), its job id being in the step column."""
    if status.state == QUEUED and status.job_id and status.job_state in (None, "PENDING"):
        return f"PD {status.job_reason}" if status.job_reason else "PENDING"
    return status.label


def state_text(status: Status, stale: str | None = None) -> Text:
    if status.state == DAMAGED:  # stale or not: its run.json may be what is damaged
        return Text(status.label, style=STATE_STYLE[DAMAGED])
    if stale and status.state != RUNNING:
        return Text(f"{status.state} (stale)", style=STATE_STYLE["stale"])
    return Text(state_label(status), style=STATE_STYLE.get(status.state, ""))


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None
    sort: Callable[[Experiment, RunView], Any]  # a sortable value (None sorts last)
    show: Callable[[Experiment, RunView], str | Text]
    best: Metric | None = None  # a score: mark the column's best value (when it beats another run's)
    dynamic: bool = False  # changes while runs progress


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def score_column(m: Metric) -> Column:
    """A headline score's column: as wide as its header, a value, or "no face" for a face score."""
    width = max(len(m.narrow), len(m.format(0.0)), len(NO_FACE) if m.needs_face else 0)

    def show(_: Experiment, v: RunView) -> str:
        # Scored, but no face in any image: say so rather than leave the cell blank as if not scored.
        if m.needs_face and v.score(m.key) is None and v.score(CLIP_SCORE) is not None:
            return NO_FACE
        return m.format(v.score(m.key), missing="")

    return Column(m.key, m.narrow, width, lambda e, v: v.score(m.key), show, best=m, dynamic=True)


def _progress(_: Experiment, v: RunView) -> str:
    if v.status.job_id and (v.state == QUEUED or v.state == RUNNING and v.step is None):
        return f"job {v.status.job_id}"  # a batch job not training yet
    if v.queue_pos is not None and v.state == QUEUED:
        return f"queue #{v.queue_pos}"
    if v.step is None:
        return ""
    return f"{v.step}/{v.total}" if v.total else str(v.step)


def _eta(_: Experiment, v: RunView) -> str:
    return duration(v.eta_s) if v.state == RUNNING and v.eta_s is not None else ""


def _best_step(_: Experiment, v: RunView) -> str:
    """The score curve's best step; "no face" when the curve's images have none (so no step can be chosen)."""
    if v.best_step is not None:
        return str(v.best_step)
    return NO_FACE if v.curve_without_faces else ""


COLUMNS: tuple[Column, ...] = (
    Column("number", "#", 3, lambda e, v: e.number, lambda e, v: str(e.number)),
    Column("name", "name", None, lambda e, v: e.name, lambda e, v: e.name),
    Column("group", "group", 18, lambda e, v: e.group, lambda e, v: e.group),
    Column("lr", "lr", 6, lambda e, v: e.settings.learning_rate, lambda e, v: f"{e.settings.learning_rate:g}"),
    Column("rank", "rank", 4, lambda e, v: e.settings.lora_rank, lambda e, v: str(e.settings.lora_rank)),
    Column("alpha", "alpha", 5, lambda e, v: e.settings.alpha, lambda e, v: str(e.settings.alpha)),
    Column("steps", "steps", 5, lambda e, v: e.settings.max_train_steps, lambda e, v: str(e.settings.max_train_steps)),
    Column("scheduler", "sched", 8, lambda e, v: e.settings.lr_scheduler, lambda e, v: e.settings.lr_scheduler),
    Column("state", "state", 16, lambda e, v: state_label(v.status), lambda e, v: state_text(v.status, v.stale), dynamic=True),
    Column("progress", "step", 9, lambda e, v: (v.step or 0) / (v.total or 1), _progress, dynamic=True),
    Column("loss", "loss", 7, lambda e, v: v.loss, lambda e, v: _num(v.loss, ".4f"), dynamic=True),
    Column("sec_per_step", "s/step", 6, lambda e, v: v.sec_per_step, lambda e, v: _num(v.sec_per_step, ".2f"), dynamic=True),
    Column("eta", "ETA", 6, lambda e, v: v.eta_s if v.state == RUNNING else None, _eta, dynamic=True),
    *(score_column(m) for m in HEADLINE),
    Column("best_step", "best@", len(NO_FACE), lambda e, v: v.best_step, _best_step, dynamic=True),
)  # fmt: skip
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
# What a narrow terminal keeps, most wanted first: which run and how it is doing, its scores, the
# hyperparameters the study varies; then the rest. Columns are dropped from the end until the rest fit.
PRIORITY = ("name", "state", "progress", "loss", "face_distance", "clip_score", "lr", "rank", "faceless", "steps",
            "best_step", "eta", "number", "group", "scheduler", "alpha", "sec_per_step")  # fmt: skip
CELL_PADDING = 1  # DataTable's, each side of a cell
NAME_MAX = 24


def fitting_columns(name_width: int, width: int) -> tuple[Column, ...]:
    """The columns that fit in `width` cells, by PRIORITY, in their usual order."""
    chosen, used = set(), 0
    for key in PRIORITY:
        col = COLUMN_BY_KEY[key]
        need = (col.width or name_width) + 2 * CELL_PADDING
        if used + need > width:
            break
        chosen.add(key)
        used += need
    return tuple(c for c in COLUMNS if c.key in chosen)


def _sort_key(value: Any) -> tuple:
    # None (no value yet) sorts after every value; mixed types compare by their text.
    if value is None:
        return (1, 0, "")
    if isinstance(value, int | float):
        return (0, value, "")
    return (0, 0, str(value).lower())


class MatrixTable(DataTable):
    """The study's experiments as a table, keyed by run name."""

    DEFAULT_CSS = """
    MatrixTable { height: auto; max-height: 50%; }
    """
    # Enter launches the selected run (the screen's action, so the screen decides whether it may act now);
    # a table's own Enter would only post a selection. Not a priority binding: that would act on the
    # dashboard before keys already on their way to this table, such as the `s` that opens the sort dialog.
    BINDINGS = [Binding("enter", "screen.launch", "Launch", tooltip="launch the selected run now, or resume it")]

    def __init__(self, study: Study, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.study = study
        self.views: dict[str, RunView] = {e.name: RunView(e.name) for e in study.experiments}
        self.filter_text = ""
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._shown: list[str] = []
        self._best: dict[str, float | None] = {}
        self.columns_shown: tuple[Column, ...] = COLUMNS

    def on_mount(self) -> None:
        # The columns for the terminal's width from the start (the matrix spans it): laid out for every
        # column, the first resize would rebuild the table and draw the first frame twice.
        if self.app.size.width:
            self.columns_shown = fitting_columns(self._name_width(), self.app.size.width - 2)
        self._add_columns()
        self.rebuild()

    def _add_columns(self) -> None:
        for col in self.columns_shown:
            self.add_column(col.label, key=col.key, width=col.width or self._name_width())

    def _name_width(self) -> int:
        return min(NAME_MAX, max([4, *(len(e.name) for e in self.study.experiments)]))

    def on_resize(self) -> None:
        self._fit_columns()

    def _fit_columns(self) -> None:
        """Fewer columns in a narrow terminal (by PRIORITY), all of them in a wide one; the scrollbar's
        room is kept free so no column hides under it."""
        width = self.size.width
        fitting = fitting_columns(self._name_width(), width - 2) if width else COLUMNS
        if fitting != self.columns_shown:
            self.columns_shown = fitting
            self.clear(columns=True)
            self._add_columns()
            self.rebuild()

    # -- rows
    def experiment(self, name: str) -> Experiment:
        return self.study.get(name)

    def visible_names(self) -> list[str]:
        """The run names shown, in their order."""
        return list(self._shown)

    def _row_text(self, exp: Experiment, view: RunView) -> str:
        return " ".join(str(c.show(exp, view)) for c in COLUMNS).lower()

    def _matches(self, exp: Experiment) -> bool:
        terms = self.filter_text.lower().split()
        if not terms:
            return True
        text = self._row_text(exp, self.views[exp.name])
        return all(t in text for t in terms)

    def _order(self) -> list[str]:
        exps = [e for e in self.study.experiments if self._matches(e)]
        if self.sort_column:
            col = COLUMN_BY_KEY[self.sort_column]
            # None stays last in both directions
            present = [e for e in exps if col.sort(e, self.views[e.name]) is not None]
            missing = [e for e in exps if col.sort(e, self.views[e.name]) is None]
            present.sort(key=lambda e: _sort_key(col.sort(e, self.views[e.name])), reverse=self.sort_reverse)
            exps = present + missing
        return [e.name for e in exps]

    def _cells(self, name: str) -> list[str | Text]:
        exp, view = self.experiment(name), self.views[name]
        cells = []
        for col in self.columns_shown:
            cell = col.show(exp, view)
            best = self._best.get(col.key)
            if col.best and cell != "" and best is not None and col.sort(exp, view) == best:
                cell = Text(str(cell), style=BEST_STYLE)
            cells.append(cell)
        return cells

    def _compute_best(self) -> bool:
        best = {}
        for col in COLUMNS:
            if not col.best:
                continue
            values = [col.sort(e, self.views[e.name]) for e in self.study.experiments]
            best[col.key] = col.best.best([v for v in values if v is not None])
        changed = best != self._best
        self._best = best
        return changed

    def rebuild(self) -> None:
        """Re-lay every row (after a sort or filter change), keeping the cursor on the same run."""
        selected = self.selected_name
        self._compute_best()
        self.clear()
        self._shown = self._order()
        for name in self._shown:
            self.add_row(*self._cells(name), key=name)
        if selected in self._shown:
            self.move_cursor(row=self._shown.index(selected), animate=False)

    def update_views(self, views: dict[str, RunView]) -> None:
        """New views for some runs: update their cells, re-sort or re-filter only when it matters."""
        changed = [n for n in views if n in self.views]
        for name in changed:
            self.views[name] = views[name]
        if not changed:
            return
        best_changed = self._compute_best()
        if self._order() != self._shown:  # a sort or filter column changed the rows' place
            self.rebuild()
            return
        names = self._shown if best_changed else [n for n in changed if n in self._shown]
        for name in names:
            for col, cell in zip(self.columns_shown, self._cells(name), strict=True):
                if not col.dynamic:
                    continue
                self.update_cell(name, col.key, cell)

    def set_study(self, study: Study, views: dict[str, RunView]) -> None:
        """The study file changed: its experiments (added, removed, edited) with their runs' views."""
        self.study = study
        self.views = {e.name: views.get(e.name, RunView(e.name)) for e in study.experiments}
        self.columns_shown = ()  # the name column's width may have changed: lay the columns out again
        self.clear(columns=True)
        self._fit_columns()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.rebuild()

    def sort_by(self, key: str | None, reverse: bool | None = None) -> None:
        """Sort by a column; sorting again by the same column reverses the order."""
        if key is not None and key not in COLUMN_BY_KEY:
            raise KeyError(key)
        if reverse is None:
            reverse = not self.sort_reverse if key == self.sort_column else False
        self.sort_column, self.sort_reverse = key, reverse
        self.rebuild()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    @property
    def selected_name(self) -> str | None:
        if not self._shown or self.cursor_row < 0 or self.cursor_row >= len(self._shown):
            return None
        return self._shown[self.cursor_row]

    def select(self, name: str) -> None:
        if name in self._shown:
            self.move_cursor(row=self._shown.index(name), animate=False)
