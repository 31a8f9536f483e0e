"""The leaderboard: finished runs (the ablation's pseudo-runs too) with their scores, sortable by each score,
the best value of each column marked, the best step of each run's score curve (`best@`, in colour when it
came before the last step), and the top picks by the study's rule. `space` selects runs and
`v` opens them side by side in the compare view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Static

from flux_tui.core import analysis, results
from flux_tui.core import curve as curves
from flux_tui.core.config import Study
from flux_tui.core.metrics import (
    FACE_DISTANCE,
    N_IMAGES,
    NO_FACE,
    SCORE_KEYS,
    SCORES,
    Metric,
    figures,
    metric,
)
from flux_tui.core.results import RunRecord
from flux_tui.core.runs import DONE
from flux_tui.tui.format import lr_text
from flux_tui.tui.screens.base import OutcomeScreen
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.workers import background

if TYPE_CHECKING:
    from textual.widgets.data_table import ColumnKey

BEST = "★"
NARROW = 120  # columns: below, the top picks leave out the hyperparameters (each pick stays on one line)
HYPERPARAMETER_COLUMNS = (("learning_rate", "lr"), ("lora_rank", "rank"), ("lora_alpha", "alpha"),
                          ("max_train_steps", "steps"), ("lr_scheduler", "scheduler"))  # fmt: skip
# What a narrow terminal keeps, most wanted first; columns are dropped from the end until the rest fit.
BOARD_PRIORITY = ("sel", "name", "face_distance", "clip_score", "faceless", "pick", "best_step", "learning_rate", "lora_rank",
                  "max_train_steps", "identity_similarity", "number", "lora_alpha", "lr_scheduler", "kind",
                  N_IMAGES)  # fmt: skip


def column_labels() -> dict[str, str]:
    """Every column's key and header, in table order."""
    return {"sel": " ", "number": "#", "name": "run", "kind": "kind", **dict(HYPERPARAMETER_COLUMNS),
            **{m.key: m.header + " ▼" for m in SCORES}, N_IMAGES: metric(N_IMAGES).heading, "best_step": "best@",
            "pick": "pick"}  # fmt: skip


def board_rows(records: list[RunRecord]) -> list[RunRecord]:
    """The runs a leaderboard lists: those with scores, or done (scores may still be coming)."""
    return [r for r in records if r.scores or r.status.state == DONE]


def sorted_rows(rows: list[RunRecord], key: str | None, reverse: bool = False) -> list[RunRecord]:
    """Best first by `key` (runs without that score last, whatever the direction); None: file order."""
    if key is None:
        return list(rows)
    with_score = [r for r in rows if r.score(key) is not None]
    without = [r for r in rows if r.score(key) is None]
    with_score.sort(key=analysis.sort_key(key), reverse=reverse)
    return with_score + without


def _hp(r: RunRecord, key: str) -> str:
    v = r.hp(key)
    if v is None:
        return "-"
    return lr_text(v) if key == "learning_rate" and isinstance(v, int | float) else str(v)


def score_cell(r: RunRecord, m: Metric, best: dict[str, float]) -> Text:
    v = r.score(m.key)
    if v is None:
        return Text("-", style="dim", justify="right")
    text = m.format(v, spec=m.column_fmt)
    if m.key in best and v == best[m.key]:
        return Text(f"{text} {BEST}", style="bold green", justify="right")
    return Text(f"{text}  ", justify="right")


def best_step_cell(r: RunRecord) -> Text:
    """The best step of the run's score curve (of its final step: plain; earlier: marked), "no face" when no
    image along the curve had one, "-" without a curve."""
    points = curves.points((r.scores or {}).get("curve"))
    best = analysis.best_step(points)
    if best is not None:
        last = points[-1]["step"]
        return Text(str(best), style="" if best == last else "bold cyan", justify="right")
    return Text(NO_FACE if points else "-", style="dim", justify="right")


def _sort_keys(reserved: str = "oqrv") -> dict[str, str]:
    """A letter per score to sort by: the first of its narrow header's letters that no other key has
    (face↓: f, CLIP↑: c, identity↑: i, no face: n)."""
    keys: dict[str, str] = {}
    for m in SCORES:
        taken = set(reserved) | set(keys.values())
        keys[m.key] = next(c for c in m.narrow.lower() + m.key if c.isalpha() and c not in taken)
    return keys


SORT_KEYS = _sort_keys()


SORT_GROUP = Binding.Group("sort", compact=True)  # fold into one key-bar entry when narrow


def _sort_binding(m: Metric) -> Binding:
    return Binding(SORT_KEYS[m.key], f"sort('{m.key}')", m.heading[:1].upper() + m.heading[1:], group=SORT_GROUP,
                   tooltip=f"sort by {m.label}, best ({m.better}) first; again: worst first")  # fmt: skip


class LeaderboardScreen(OutcomeScreen):
    DEFAULT_CSS = """
    LeaderboardScreen #lb-table { height: 1fr; }
    LeaderboardScreen #lb-summary { height: auto; padding: 0 1; color: $text-muted; }
    LeaderboardScreen #lb-picks { height: auto; max-height: 8; padding: 0 1; border: round $panel;
                                  border-title-color: $text-muted; }
    """
    BINDINGS = [
        *(_sort_binding(m) for m in SCORES),
        Binding("o", "sort('')", "File order", show=False, tooltip="the study file's order"),
        Binding("space", "toggle_select", "Select ↓", tooltip="select or unselect the highlighted run, then move "
                "down a row (select several in a row with space, space, …)"),
        Binding("v", "compare", "Compare", tooltip="the selected runs side by side: prompt x run grid of images "
                "with their scores (none selected: the top picks)"),
        Binding("r", "reload", "Reload", tooltip="read the run folders again"),
    ]

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.records: list[RunRecord] = []
        self.rows: list[RunRecord] = []
        self.sort_key: str | None = FACE_DISTANCE
        self.sort_reverse = False
        self.selected: set[str] = set()
        self.columns_shown: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="lb-summary")
        yield DataTable(id="lb-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="lb-picks")
        yield KeyBar()

    @property
    def table(self) -> DataTable:
        return self.query_one("#lb-table", DataTable)

    def on_mount(self) -> None:  # OutcomeScreen's on_mount runs too (Textual calls each class's handler)
        self.query_one("#lb-picks", Static).border_title = "top picks"
        self.table.focus()

    def on_resize(self) -> None:
        if self.loaded:
            self._render_table()

    # -- data, read off the event loop
    @background(group="leaderboard")
    def action_reload(self) -> None:
        records = results.collect(self.study)
        self.app.call_from_thread(self.show_records, records)

    def show_records(self, records: list[RunRecord]) -> None:
        self.records = records
        self.loaded = True
        self._render_table()

    def _cells(self, r: RunRecord, best: dict[str, float], picks: dict[str, int]) -> dict[str, str | Text]:
        """Every column's cell of a run, by column key."""
        cells: dict[str, str | Text] = {
            "sel": Text("✓", style="bold") if r.name in self.selected else "",
            "number": "" if r.number is None else str(r.number),
            "name": r.name,
            "kind": r.kind,
            **{key: _hp(r, key) for key, _ in HYPERPARAMETER_COLUMNS},
            **{m.key: score_cell(r, m, best) for m in SCORES},
            N_IMAGES: metric(N_IMAGES).format((r.scores or {}).get(N_IMAGES), missing=""),
            "best_step": best_step_cell(r),
            "pick": Text(f"{BEST}{picks[r.name]}", style="bold yellow") if r.name in picks else "",
        }
        return cells

    def _render_table(self) -> None:
        t = self.table
        current = self.highlighted_name
        board = board_rows(self.records)
        self.rows = sorted_rows(board, self.sort_key, self.sort_reverse)
        best = analysis.best_values(board)
        picks = {r.name: i + 1 for i, r in enumerate(analysis.top_picks(board))}
        rows = [self._cells(r, best, picks) for r in self.rows]
        self._lay_columns(rows)
        t.clear()
        for r, cells in zip(self.rows, rows, strict=True):
            t.add_row(*(cells[key] for key in self.columns_shown), key=r.name)
        for m in SCORES:
            if m.key in self.columns_shown:
                arrow = (" ▲" if self.sort_reverse else " ▼") if m.key == self.sort_key else ""  # ▼: best first
                t.columns[_column_key(m.key)].label = Text(m.header + arrow, style="bold" if arrow else "")
        if current in {r.name for r in self.rows}:
            t.move_cursor(row=t.get_row_index(current))
        self._render_summary(board, picks)

    def _lay_columns(self, rows: list[dict[str, str | Text]]) -> None:
        """The columns that fit the table's width, by BOARD_PRIORITY (all of them in a wide terminal)."""
        labels = column_labels()
        widths = {k: max([len(label), *(Text(str(r[k])).cell_len for r in rows)]) + 2 for k, label in labels.items()}
        room, chosen = (self.table.size.width or 10_000) - 2, set()
        for key in BOARD_PRIORITY:
            if widths[key] > room:
                break
            chosen.add(key)
            room -= widths[key]
        shown = tuple(k for k in labels if k in chosen)
        if shown != self.columns_shown:
            self.columns_shown = shown
            self.table.clear(columns=True)
            for key in shown:
                self.table.add_column(labels[key], key=key)

    def _render_summary(self, board: list[RunRecord], picks: dict[str, int]) -> None:
        scored = analysis.scored(board)
        order = "file order" if not self.sort_key else (
            f"sorted by {analysis.LABELS[self.sort_key]} "
            f"({'worst' if self.sort_reverse else 'best'} first; "
            f"{metric(self.sort_key).better} is better)"
        )  # fmt: skip
        sel = f" · {len(self.selected)} selected" if self.selected else ""
        self.query_one("#lb-summary", Static).update(
            f"{len(board)} finished run(s), {len(scored)} scored · {order} · {BEST} a column's best, when better "
            f"than another run{sel}"
        )
        note = analysis.picks_note(board)
        if note:
            text = Text(note, style="dim")
        else:
            text = Text(f"rule: {analysis.PICK_RULE}\n", style="dim")
            by_name = {r.name: r for r in board}
            for name, i in sorted(picks.items(), key=lambda x: x[1]):
                r = by_name[name]
                text += Text(f"{BEST}{i} {name}", style="bold yellow")
                text += Text(f"  {figures(r.score)}")
                if self.size.width >= NARROW:  # a narrow table shows these beside the run
                    text += Text(f" · lr {_hp(r, 'learning_rate')} rank {_hp(r, 'lora_rank')} "
                                 f"steps {_hp(r, 'max_train_steps')}")  # fmt: skip
                text += Text("\n")
        self.query_one("#lb-picks", Static).update(text)

    # -- actions
    @property
    def highlighted_name(self) -> str | None:
        t = self.table
        if not self.rows or t.cursor_row < 0 or t.cursor_row >= len(self.rows):
            return None
        return self.rows[t.cursor_row].name

    def action_sort(self, key: str) -> None:
        if not key:
            self.sort_key, self.sort_reverse = None, False
        elif key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self._render_table()

    def action_toggle_select(self) -> None:
        name = self.highlighted_name
        if name is None:
            return
        self.selected ^= {name}
        self._render_table()
        t = self.table
        if t.cursor_row < t.row_count - 1:
            t.move_cursor(row=t.cursor_row + 1)

    def action_compare(self) -> None:
        names = [r.name for r in self.rows if r.name in self.selected]
        if not names:
            picks = analysis.top_picks(board_rows(self.records))
            names = [r.name for r in picks] or ([self.highlighted_name] if self.highlighted_name else [])
            if not names:
                self.notify("No runs to compare: select some with space", severity="warning")
                return
            self.notify(f"Nothing selected (space): comparing the top picks {', '.join(names)}")
        from flux_tui.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(names, study=self.study))

    @on(DataTable.HeaderSelected, "#lb-table")
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key in SCORE_KEYS:
            self.action_sort(key)


def _column_key(key: str) -> ColumnKey:
    from textual.widgets.data_table import ColumnKey

    return ColumnKey(key)
