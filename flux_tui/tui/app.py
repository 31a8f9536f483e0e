"""The dashboard application: screens, keys, and the bridge between the watcher thread and the screens.

The app holds no truth of its own: the watcher reads the run folders and the machine, the scheduler (core)
starts and stops processes, and the app only publishes what they report on its feeds (`feeds.py`), which the
open screens subscribe to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

# textual-image queries the terminal's graphics support when imported: do it before the app owns the tty.
import textual_image.renderable  # noqa: F401
import textual_image.widget  # noqa: F401
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from flux_tui.core.config import Study
from flux_tui.core.runs import QUEUED, RUNNING, run_dir
from flux_tui.core.scheduler import Outcome, Scheduler
from flux_tui.core.telemetry import Sample, Telemetry
from flux_tui.tui.feeds import LiveFeeds
from flux_tui.tui.messages import LogLines, RunsChanged, RunsStarted, TelemetryRead, WatcherFailed
from flux_tui.tui.runview import RunGpu, RunView
from flux_tui.tui.screens import VIEWS
from flux_tui.tui.watcher import Watcher
from flux_tui.tui.widgets.matrix import COLUMNS


class FluxApp(App[int]):
    TITLE = "flux-tui"
    CSS_PATH = "styles.tcss"
    MODES = {v.mode: v.factory for v in VIEWS}
    DEFAULT_MODE = VIEWS[0].mode
    BINDINGS = [
        Binding("q", "quit", "Quit (runs keep going)"),
        Binding("question_mark", "help", "Help"),
        *(Binding(v.key, f"switch_mode('{v.mode}')", v.title, show=len(VIEWS) > 1) for v in VIEWS),
    ]

    def __init__(
        self,
        study: Study,
        *,
        telemetry: Any = "auto",
        scheduler: Scheduler | None = None,
        watch: bool = True,
        run_queue: bool = True,
        **watch_intervals: float,
    ) -> None:
        """`telemetry`: a `Telemetry` (or anything with its `sample()`), "auto" for the machine's, None
        for none. `watch=False` starts no watcher thread (for tests that feed messages themselves);
        `run_queue=False` watches without starting queued runs (keys still act on the selected run)."""
        super().__init__()
        self.study = study
        self.sub_title = study.file.name
        self.telemetry = Telemetry() if telemetry == "auto" else telemetry
        self.scheduler = scheduler or Scheduler(study, gpus=self._gpus)
        self.feeds = LiveFeeds(self)
        self.views: dict[str, RunView] = {}
        self.sample: Sample | None = None
        self.run_gpus: list[RunGpu] = []
        self.term_sent: dict[str, float] = {}  # run -> when this dashboard sent it SIGTERM
        self.ready = asyncio.Event()  # set once the first full scan of the run folders has arrived
        self.watcher: Watcher | None = None
        if watch:
            self.watcher = Watcher(
                study,
                self.post_message,
                scheduler=self.scheduler if run_queue else None,
                telemetry=self.telemetry,
                **watch_intervals,
            )
        for exp in study.experiments:  # the first frame shows each run's state without waiting
            self.views[exp.name] = RunView(exp.name, run_dir(study, exp.name).status())

    def _gpus(self) -> list:
        gpus = getattr(self.telemetry, "gpus", None)
        return list(gpus()) if callable(gpus) else []

    def on_mount(self) -> None:
        if self.watcher is not None:
            self.watcher.start()
        # What `flux-tui check` warns about (a missing photo folder) would scroll away under the app.
        for problem in self.study.warnings:
            self.notify(str(problem), title="experiments.toml", severity="warning", timeout=15)

    def on_unmount(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.join(timeout=2)

    # -- publishing what the watcher reads; a screen reads the latest state on mount, then subscribes
    def on_runs_changed(self, message: RunsChanged) -> None:
        self.views.update(message.views)
        for name, view in message.views.items():
            if view.state != RUNNING:
                self.term_sent.pop(name, None)
        self.feeds.runs.publish(message)
        if message.first:
            self.ready.set()

    def on_log_lines(self, message: LogLines) -> None:
        self.feeds.log.publish(message)

    def on_telemetry_read(self, message: TelemetryRead) -> None:
        self.sample, self.run_gpus = message.sample, message.runs
        self.feeds.telemetry.publish(message)

    def on_runs_started(self, message: RunsStarted) -> None:
        self.notify("started " + ", ".join(message.names), title="queue")

    def on_watcher_failed(self, message: WatcherFailed) -> None:
        self.notify(message.error, title="watcher error", severity="error", timeout=15)

    def follow(self, name: str | None) -> None:
        if self.watcher is not None:
            self.watcher.follow(name)

    # -- actions on runs: the scheduler works in a thread, the outcome comes back as a notification
    def _act(self, fn: Callable[[], Outcome | list[Outcome]]) -> None:
        def work() -> None:
            result = fn()
            self.call_from_thread(self._report, result)
            if self.watcher is not None:
                self.watcher.poke()

        self.run_worker(work, thread=True, group="actions")

    def _report(self, result: Outcome | list[Outcome]) -> None:
        results = result if isinstance(result, list) else [result]
        if not results:
            self.notify("nothing to queue: every run is done, running or queued")
            return
        ok = [r for r in results if r.ok]
        bad = [r for r in results if not r.ok]
        if len(results) > 1:
            if ok:
                self.notify(f"queued {len(ok)} run(s): {', '.join(r.name for r in ok)}", title="queue")
            for r in bad:
                self.notify(r.message, severity="warning")
            return
        r = results[0]
        self.notify(r.message, severity="information" if r.ok else "warning")

    def do_submit(self, name: str) -> None:
        self._act(partial(self.scheduler.submit, name))

    def do_queue_all(self) -> None:
        self._act(self.scheduler.queue_all)

    def do_stop(self, name: str, kill: bool = False) -> None:
        if not kill:
            self.term_sent[name] = time.monotonic()
        self._act(partial(self.scheduler.stop, name, kill=kill))

    def open_detail(self, name: str) -> None:
        from flux_tui.tui.screens.detail import RunDetailScreen

        self.push_screen(RunDetailScreen(name))

    def action_help(self) -> None:
        from flux_tui.tui.screens.help import HelpScreen  # Markdown loads on first use, not at start

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- the command palette: every key's action, sorting by each column, each run's detail
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        seen = set()
        for active in screen.active_bindings.values():
            b = active.binding
            if not b.description or b.action in seen or b.action == "quit":
                continue
            seen.add(b.action)
            yield SystemCommand(b.description, f"key: {b.key_display or b.key}",
                                partial(self.run_action, b.action, active.node))  # fmt: skip
        dashboard = self._dashboard()  # the matrix, when in the current mode's stack (under a detail, say)
        if dashboard is not None:
            for col in COLUMNS:
                yield SystemCommand(f"Sort by {col.label}", f"sort the matrix by its {col.key} column",
                                    partial(dashboard.sort_by, col.key))  # fmt: skip
        for exp in self.study.experiments:
            yield SystemCommand(
                f"Detail of {exp.name}", exp.group or "run detail", partial(self.open_detail, exp.name)
            )

    def _dashboard(self) -> Any:
        from flux_tui.tui.screens.dashboard import DashboardScreen

        return next((s for s in self.screen_stack if isinstance(s, DashboardScreen)), None)

    def farewell(self) -> str:
        """What the terminal says after the dashboard closes: the runs keep going."""
        statuses = {e.name: run_dir(self.study, e.name).status() for e in self.study.experiments}
        running = [n for n, st in statuses.items() if st.state == RUNNING]
        queued = [n for n, st in statuses.items() if st.state == QUEUED]
        lines = []
        if running:
            lines.append(
                f"flux-tui: {len(running)} run(s) keep going in the background: {', '.join(running)}."
            )
        if queued:
            lines.append(
                f"flux-tui: {len(queued)} queued run(s) will start as slots free, with no dashboard open: "
                f"{', '.join(queued)}."
            )
        if not lines:
            lines.append("flux-tui: no run is running.")
        lines.append(f"Reopen with: flux-tui {self.study.file}   (or from a shell: flux-tui status -f {self.study.file})")
        return "\n".join(lines)


def run_dashboard(study: Study) -> int:
    app = FluxApp(study)
    app.run()
    app.scheduler.tick()  # what was queued in the last second starts now, not only when a run ends
    print(app.farewell())
    return app.return_code or 0
