"""The dashboard application: screens, keys, and the bridge between the watcher thread and the screens.

The app holds no truth of its own: the watcher reads the run folders and the machine, the scheduler (core)
starts and stops processes, and the app only publishes what they report on its feeds (`feeds.py`), which the
open screens subscribe to.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from flux_tui.core import reset
from flux_tui.core.config import Study
from flux_tui.core.console import reopen_line
from flux_tui.core.runs import QUEUED, RUNNING, run_dir
from flux_tui.core.scheduler import Outcome, Scheduler
from flux_tui.core.studyfile import StudyFile
from flux_tui.core.telemetry import Sample, Telemetry
from flux_tui.tui import graphics, terminal_watch
from flux_tui.tui.feeds import LiveFeeds
from flux_tui.tui.messages import (
    LogLines,
    RunsChanged,
    RunsStarted,
    StudyChanged,
    TelemetryRead,
    WatcherFailed,
)
from flux_tui.tui.runview import RunGpu, RunView
from flux_tui.tui.screens import VIEW_KEYS, VIEWS
from flux_tui.tui.watcher import Watcher
from flux_tui.tui.widgets.matrix import COLUMNS
from flux_tui.tui.workers import append_log, describe, log_path


class FluxApp(App[int]):
    TITLE = "flux-tui"
    CSS_PATH = "styles.tcss"
    MODES = {v.mode: v.factory for v in VIEWS}
    DEFAULT_MODE = VIEWS[0].mode
    BINDINGS = [
        Binding("question_mark", "help", "Help", tooltip="this help: every key of every view, the states, where runs go"),
        Binding("q", "quit", "Quit", tooltip="quit the dashboard: the runs keep going, queued runs still start as "
                "slots free, and the next dashboard finds them"),
        *(Binding(v.key, f"switch_mode('{v.mode}')", v.title, show=len(VIEWS) > 1, group=VIEW_KEYS,
                  tooltip=f"switch to the {v.title.lower()}") for v in VIEWS),  # fmt: skip
    ]

    def __init__(
        self,
        study: Study,
        *,
        telemetry: Any = "auto",
        scheduler: Scheduler | None = None,
        watch: bool = True,
        run_queue: bool = True,
        gc_paused: bool = False,
        **watch_intervals: float,
    ) -> None:
        """`telemetry`: a `Telemetry` (or anything with its `sample()`), "auto" for the machine's, None
        for none. `watch=False` starts no watcher thread (for tests that feed messages themselves);
        `run_queue=False` watches without starting queued runs (keys still act on the selected run).
        `gc_paused`: the garbage collector is off for the start (flux_tui.main); on again after the first frame."""
        super().__init__()
        self.study = study
        self.study_file = StudyFile(study)  # the file on disk now: watched, and checked before each launch
        self.study_problems: list = []  # why the file on disk cannot be used (the last good study stays)
        self.sub_title = study.file.name
        self.telemetry = Telemetry() if telemetry == "auto" else telemetry
        self.scheduler = scheduler or Scheduler(study, gpus=self._gpus)
        self.feeds = LiveFeeds(self)
        self.views: dict[str, RunView] = {}
        self.sample: Sample | None = None
        self.run_gpus: list[RunGpu] = []
        self.term_sent: dict[str, float] = {}  # run -> when this dashboard sent it SIGTERM
        self.ready = asyncio.Event()  # set once the first full scan of the run folders has arrived
        self.drawn = asyncio.Event()  # set once the first frame is on the terminal (workers.after_first_frame)
        self.gc_paused = gc_paused
        self.watcher: Watcher | None = None
        if watch:
            self.watcher = Watcher(
                study,
                self.post_message,
                scheduler=self.scheduler if run_queue else None,
                telemetry=self.telemetry,
                study_file=self.study_file,
                **watch_intervals,
            )
        for exp in study.experiments:  # the first frame shows each run's state without waiting
            self.views[exp.name] = RunView(exp.name, run_dir(study, exp.name).status())

    def _gpus(self) -> list:
        gpus = getattr(self.telemetry, "gpus", None)
        return list(gpus()) if callable(gpus) else []

    def on_mount(self) -> None:
        # What `flux-tui check` warns about (a missing photo folder) would scroll away under the app.
        for problem in self.study.warnings:
            self.notify(str(problem), title="experiments.toml", severity="warning", timeout=15)

    def on_ready(self) -> None:
        """Textual's `Ready`: the first frame is on the terminal. The watcher starts only now: its first scan
        would hold the GIL half the time while that frame is laid out (the frame shows each run's state from
        status.json, read in __init__)."""
        self.drawn.set()
        if self.gc_paused:  # one collection of what the start left (~40 ms), then the rest is never walked again
            self.gc_paused = False
            gc.collect()
            gc.freeze()
            gc.enable()
        if self.watcher is not None:
            self.watcher.start()

    def on_unmount(self) -> None:
        if self.watcher is not None and self.watcher.ident is not None:  # started (an app can end before Ready)
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

    def on_study_changed(self, message: StudyChanged) -> None:
        name = self.study.file.name
        had_problems = bool(self.study_problems)
        self.study_problems = list(message.problems) if message.study is None else []
        if message.study is None:
            self.notify(f"{len(message.problems)} problem(s), listed above the matrix; the matrix shows the last "
                        "good version and nothing is launched until the file is fixed", title=f"{name} changed",
                        severity="error", timeout=10)  # fmt: skip
        else:
            changes = study_changes(self.study, message.study)
            if had_problems or ";" in changes:  # a save that changed nothing says nothing
                self.notify(changes, title=f"{name} reloaded")
            self.study = message.study
            self.scheduler.study = message.study
            self.views = dict(message.views)
            for problem in message.study.warnings:
                self.notify(str(problem), title=name, severity="warning", timeout=15)
        self.feeds.study.publish(message)

    def on_log_lines(self, message: LogLines) -> None:
        self.feeds.log.publish(message)

    def on_telemetry_read(self, message: TelemetryRead) -> None:
        self.sample, self.run_gpus = message.sample, message.runs
        self.feeds.telemetry.publish(message)

    def on_runs_started(self, message: RunsStarted) -> None:
        self.notify("started " + ", ".join(message.names), title="queue")

    def on_watcher_failed(self, message: WatcherFailed) -> None:
        append_log(self.log_file, f"watcher error:\n{message.error}")
        self.notify(message.error, title="watcher error", severity="error", timeout=15)

    # -- the one rule for every worker (tui/workers.py): a failure is reported, never closes the app
    @property
    def log_file(self) -> Path:
        return log_path(self.study.workspace.root)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            return
        what = describe(event.worker)
        logged = append_log(self.log_file, f"background work failed: {what}", event.worker.error)
        where = f" (traceback in {self.log_file})" if logged else ""
        self.notify(f"{what}{where}", title="background work failed", severity="error", timeout=15)

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

        self.run_worker(work, thread=True, group="actions", exit_on_error=False)

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

    def _file_as_on_disk(self) -> Outcome | None:
        """Bring the scheduler to the study file as it is now, right before a launch (the watcher may not have
        looked yet); an Outcome saying why not when the file has problems."""
        self.study_file.check()
        if self.study_file.problems:
            return Outcome(False, f"{self.study.file.name} has {len(self.study_file.problems)} problem(s) "
                           "(listed above the matrix): fix it first; nothing was launched")  # fmt: skip
        self.scheduler.study = self.study_file.study
        return None

    def do_submit(self, name: str) -> None:
        self._act(lambda: self._file_as_on_disk() or self.scheduler.submit(name))

    def do_queue_all(self) -> None:
        self._act(lambda: self._file_as_on_disk() or self.scheduler.queue_all())

    def do_reset(self, name: str) -> None:
        self._act(partial(reset_outcome, self.study, name))

    def do_stop(self, name: str, kill: bool = False) -> None:
        if not kill:
            self.term_sent[name] = time.monotonic()
        self._act(partial(self.scheduler.stop, name, kill=kill))

    def open_detail(self, name: str) -> None:
        from flux_tui.tui.screens.detail import RunDetailScreen

        if isinstance(self.screen, RunDetailScreen) and self.screen.run_name == name:
            return  # `d` pressed twice before the first detail showed
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
            key = f"key: {b.key_display or b.key}"
            yield SystemCommand(b.description, f"{key} · {b.tooltip}" if b.tooltip else key,
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
        lines.append(reopen_line(self.study.file))  # flux-tui itself, or its path where it is not on PATH
        return "\n".join(lines)


def study_changes(old: Study, new: Study) -> str:
    """`7 experiments: exp07 added; exp02 removed; exp03 changed`."""
    before = {e.name: e.config_hash for e in old.experiments}
    after = {e.name: e.config_hash for e in new.experiments}
    parts = [f"{len(after)} experiment(s)"]
    for what, names in (("added", [n for n in after if n not in before]),
                        ("removed", [n for n in before if n not in after]),
                        ("changed", [n for n in after if n in before and before[n] != after[n]])):  # fmt: skip
        if names:
            parts.append(f"{', '.join(names)} {what}")
    return "; ".join(parts)


def reset_outcome(study: Study, name: str) -> Outcome:
    """Reset a run (core/reset.py) and say what happened, as the other actions do."""
    try:
        done = reset.reset_run(run_dir(study, name))
    except reset.ResetRefused as exc:
        return Outcome(False, str(exc), name)
    if done.moved_to is None:
        return Outcome(False, f"{name} has no folder: nothing to reset", name)
    where = done.moved_to.relative_to(study.workspace.root) if done.moved_to.is_relative_to(
        study.workspace.root) else done.moved_to  # fmt: skip
    return Outcome(True, f"{name} reset: its old folder is kept as {where}; the next launch trains it from scratch",
                   name)  # fmt: skip


def run_dashboard(study: Study, gc_paused: bool = False) -> int:
    """`gc_paused`: flux_tui.main turned the garbage collector off for the start; it comes back on after the
    first frame."""
    app = FluxApp(study, gc_paused=gc_paused)
    # The terminal's graphics are asked about before the app reads the terminal (main.py started asking).
    graphics.wait_for_answer()
    from flux_tui.tui.widgets import images

    if not images.textual_image_can_be_told():  # a textual-image we cannot hand the answers to: let it ask now
        images.load_image_support()
    if (fd := terminal_watch.terminal_fd()) is not None:  # a thread of its own: Textual's loop may wait for ever
        terminal_watch.watch(fd, lambda: append_log(app.log_file, "the terminal hung up (its connection dropped): "
                             "the dashboard ended; runs and the queue go on without it"))  # fmt: skip
    app.run()
    app.scheduler.tick()  # what was queued in the last second starts now, not only when a run ends
    print(app.farewell())
    return app.return_code or 0
