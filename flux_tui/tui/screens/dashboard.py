"""The main screen: the experiment matrix, and beside it the selected run's live log, loss curve and latest
sample, with the machine's gauges below."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Header, Input, Static

from flux_tui.core.runs import QUEUED, RUNNING, run_dir
from flux_tui.tui.messages import LogLines, RunsChanged, StudyChanged, TelemetryRead
from flux_tui.tui.runview import RunView
from flux_tui.tui.screens.base import StudyScreen
from flux_tui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from flux_tui.tui.widgets.gauges import GaugesPanel
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.widgets.logpane import LogPane
from flux_tui.tui.widgets.lossplot import LossPlot
from flux_tui.tui.widgets.matrix import COLUMNS, MatrixTable
from flux_tui.tui.widgets.sample import SampleView

if TYPE_CHECKING:
    from flux_tui.tui.app import FluxApp

DEMO_MARKER = ".flux-tui-demo.json"  # written by the demo builder at the workspace root


class DashboardScreen(StudyScreen):
    BINDINGS = [
        Binding("enter", "launch", "Launch", tooltip="launch the selected run now, or resume it from "
                "its last checkpoint (first in the queue when every slot is busy)"),
        Binding("a", "queue_all", "Queue all", tooltip="queue every run that is not done yet"),
        Binding("x", "stop", "Stop", tooltip="stop the selected run: SIGTERM to its process group, so it saves a "
                "checkpoint; x again offers SIGKILL. On a queued run: take it off the queue (back to new)"),
        Binding("d", "detail", "Detail", tooltip="the run's detail: config, stage timeline, loss curve, scores, images"),
        Binding("slash", "filter", "Filter", tooltip="filter rows by text (every word must match); esc clears"),
        Binding("s", "sort", "Sort", tooltip="sort by a column (again: reverse); a click on a header does the same"),
        Binding("R", "reset", "Reset", show=False, tooltip="reset the selected run (a stale one, say): its folder "
                "moves to runs/.old/<name>-<time>/, kept, and it trains from scratch with the file's settings"),
        Binding("l", "focus_log", "Log", show=False, tooltip="move into the log pane (scroll up to stop following; "
                "end follows again)"),
        Binding("escape", "back_to_matrix", "Matrix", show=False, tooltip="back to the matrix from the log or filter"),
    ]  # fmt: skip

    app: FluxApp

    def __init__(self) -> None:
        super().__init__(id="dashboard")
        self._followed: str | None = None
        self._plot_view: RunView | None = None
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        study = self.study
        yield Header()
        if (study.workspace.root / DEMO_MARKER).exists():
            yield Static(
                "Demo workspace: the models have random weights, so samples and scores show how the "
                "dashboard works, not the quality of a fine-tune.",
                id="demo-banner",
            )
        yield Static(id="study-problems")
        with Horizontal(id="toolbar"):
            yield Input(placeholder="/ filter: name, state, lr…", id="filter")
            yield Static(id="summary")
        yield MatrixTable(study, id="matrix")
        with Horizontal(id="run-panel"):
            yield LogPane(id="log")
            with Vertical(id="run-side"):
                yield LossPlot(id="loss")
                yield SampleView(id="sample")
        yield GaugesPanel(id="gauges")
        yield KeyBar()

    @property
    def matrix(self) -> MatrixTable:
        return self.query_one(MatrixTable)

    def on_mount(self) -> None:
        self.matrix.focus()
        self.show_views(self.app.views)
        self._follow_selected()
        self.query_one(GaugesPanel).show(self.app.sample, self.app.run_gpus)
        self.feeds.runs.subscribe(self, self._runs_changed)
        self.feeds.log.subscribe(self, self._log_lines)
        self.feeds.telemetry.subscribe(self, self._telemetry_read)
        self.feeds.study.subscribe(self, self._study_changed)
        self._show_problems(self.app.study_problems)

    # -- live data from the app's feeds
    def _runs_changed(self, message: RunsChanged) -> None:
        self.show_views(message.views)

    def _study_changed(self, message: StudyChanged) -> None:
        self._show_problems(message.problems if message.study is None else [])
        if message.study is not None:
            self.matrix.set_study(message.study, message.views)
            self._update_summary()
            self._follow_selected()

    def _show_problems(self, problems: list) -> None:
        """The study file's problems above the matrix, which keeps showing the last good version."""
        box = self.query_one("#study-problems", Static)
        box.display = bool(problems)
        if problems:
            head = Text(f"{self.study.file.name} cannot be used as saved: the matrix shows the last good version "
                        "and nothing launches until it is fixed", style="bold")  # fmt: skip
            box.update(Text("\n").join([head, *(Text(str(p)) for p in problems)]))

    def show_views(self, views: dict[str, RunView]) -> None:
        self.matrix.update_views(views)
        self._update_summary()
        name = self.matrix.selected_name
        if name in views:
            self._show_selected(views[name])

    def _log_lines(self, message: LogLines) -> None:
        log = self.query_one(LogPane)
        if message.reset or message.name != log.run_name:
            log.show_run(message.name, message.lines)
        else:
            log.append(message.lines)

    def _telemetry_read(self, message: TelemetryRead) -> None:
        self.query_one(GaugesPanel).show(message.sample, message.runs)

    def _update_summary(self) -> None:
        views = self.app.views
        counts: dict[str, int] = {}
        for v in views.values():
            counts[v.state] = counts.get(v.state, 0) + 1
        # A narrow toolbar leaves out the total (the matrix shows every run) so the counts fit.
        parts = [f"{len(self.study.experiments)} experiments"] if self.size.width >= 120 else []
        parts += [
            f"{counts[s]} {s}"
            for s in ("running", "queued", "done", "failed", "oom", "cancelled", "damaged")
            if s in counts
        ]
        m = self.matrix
        if m.sort_column:
            label = next(c.label for c in COLUMNS if c.key == m.sort_column)
            parts.append(f"sorted by {label} {'↓' if m.sort_reverse else '↑'}")
        if m.filter_text:
            parts.append(f"{len(m.visible_names())} shown")
        self.query_one("#summary", Static).update(" · ".join(parts))

    # -- the selected run
    @on(DataTable.RowHighlighted, "#matrix")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._follow_selected()

    def _follow_selected(self) -> None:
        name = self.matrix.selected_name
        if name != self._followed:
            self._followed = name
            self.app.follow(name)
            self.query_one(LossPlot).set_points((), f"loss · {name}" if name else "loss")
        if name:
            self._show_selected(self.app.views.get(name, RunView(name)))
        else:  # a filter that matches nothing: no run, nothing of an old one
            self.query_one(SampleView).show(None, "")
            self.query_one(SampleView).border_title = "latest sample"

    def _show_selected(self, view: RunView) -> None:
        # plotext redraws the whole plot: at most twice a second while a run streams steps
        if self._plot_view is None:
            self.set_timer(0.5, self._draw_plot)
            if not self.query_one(LossPlot).has_points:
                self.query_one(LossPlot).set_points(view.losses, f"loss · {view.name}")
        self._plot_view = view
        latest = view.latest_sample
        if latest is None:
            self.query_one(SampleView).show(None, "")
        else:
            sset, i = latest
            self.query_one(SampleView).show(sset.paths[i], f"step {sset.step} · {sset.caption(i)}")
        self.query_one(SampleView).border_title = f"latest sample · {view.name}"

    def _draw_plot(self) -> None:
        view, self._plot_view = self._plot_view, None
        if view is not None and view.name == self.matrix.selected_name:
            self.query_one(LossPlot).set_points(view.losses, f"loss · {view.name}")

    # -- actions
    def _selected(self) -> str | None:
        name = self.matrix.selected_name
        if name is None:
            self.notify("No run selected", severity="warning")
        return name

    def action_launch(self) -> None:
        name = self._selected()
        if name:
            self.app.do_submit(name)

    def action_queue_all(self) -> None:
        self.app.do_queue_all()

    def action_stop(self) -> None:
        name = self._selected()
        if not name:
            return
        view = self.app.views.get(name, RunView(name))
        if view.state == RUNNING and name in self.app.term_sent:
            waited = time.monotonic() - self.app.term_sent[name]

            def answer(yes: bool | None) -> None:
                if yes:
                    self.app.do_stop(name, kill=True)

            self.app.push_screen(
                ConfirmScreen(
                    f"{name} got SIGTERM {waited:.0f}s ago and is still running (saving a checkpoint can take a "
                    f"while). Send SIGKILL to its process group? Work since its last checkpoint is lost.",
                    yes="SIGKILL",
                    no="Wait",
                ),
                answer,
            )
            return
        if view.state not in (RUNNING, QUEUED):
            self.notify(f"{name} is not running ({view.state})", severity="warning")
            return
        self.app.do_stop(name)

    def action_reset(self) -> None:
        name = self._selected()
        if not name:
            return
        view = self.app.views.get(name, RunView(name))
        if not run_dir(self.study, name).path.exists():
            self.notify(f"{name} has no folder yet: nothing to reset", severity="warning")
            return
        if view.state == RUNNING:
            self.notify(f"{name} is running: stop it first (x), then reset it", severity="warning")
            return
        why = f" It is stale: {view.stale}." if view.stale else ""
        question = (
            f"Reset {name}?{why} Its folder runs/{name}/ (LoRA, checkpoints, samples, scores, logs) is moved to "
            f"runs/.old/{name}-<date>-<time>/, kept, not deleted. The run is then new: its next launch trains it "
            "from scratch with the file's settings."
        )

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.do_reset(name)

        self.app.push_screen(ConfirmScreen(question, yes="Reset", no="Keep"), answer)

    def action_detail(self) -> None:
        name = self._selected()
        if name:
            self.app.open_detail(name)

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_back_to_matrix(self) -> None:
        if isinstance(self.focused, Input) and self.focused.value:
            self.focused.value = ""
        self.matrix.focus()

    def action_focus_log(self) -> None:
        self.query_one(LogPane).focus()

    def action_sort(self) -> None:
        m = self.matrix
        options = [(c.key, c.label if c.label != "#" else "# (number)") for c in COLUMNS]

        def picked(key: str | None) -> None:
            if key:
                self.sort_by(key)

        self.app.push_screen(ChoiceScreen("Sort by (again: reverse)", options, m.sort_column), picked)

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        self.matrix.sort_by(key, reverse)
        self._update_summary()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.matrix.focus()  # enter in the filter box: done filtering

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        # Re-filter when typing pauses, not on every key (each new selection reloads a log and an image).
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.15, partial(self._apply_filter, event.value))

    def _apply_filter(self, text: str) -> None:
        self._filter_timer = None
        self.matrix.set_filter(text)
        self._update_summary()
        self._follow_selected()

    def on_resize(self) -> None:
        self._update_summary()

    @on(DataTable.HeaderSelected, "#matrix")
    def _header_selected(self) -> None:
        self._update_summary()
