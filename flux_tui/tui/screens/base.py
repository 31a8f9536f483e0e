"""What the views over the study's run folders share: the study, and the app's live feeds."""

from __future__ import annotations

from typing import Any, Protocol

from textual.screen import Screen

from flux_tui.core.config import Study
from flux_tui.tui.feeds import LiveFeeds
from flux_tui.tui.messages import RunsChanged, StudyChanged
from flux_tui.tui.runview import outcomes_changed
from flux_tui.tui.workers import RelayWorkerErrors


class StudyHost(Protocol):
    """What a study screen needs of its app (FluxApp, or a test's bare host)."""

    study: Study
    feeds: LiveFeeds


class StudyScreen(RelayWorkerErrors, Screen):
    """A screen over the study's run folders: `study` is the one given (tests), else the app's. A screen that
    follows live data subscribes to `self.feeds` in its `on_mount`."""

    HELP_WIDGETS: tuple[type, ...] = ()  # widgets whose keys the help lists with the screen's own
    # The screen gets these classes by terminal size: styles.tcss and the screens lay out small terminals with them.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._study = study

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A screen's keys act only while it is the one shown. One read of the terminal can hold `s` and
        Enter: each key goes to the widget focused when it arrived, so the Enter reaches this screen after
        `s` opened the sort dialog over it, and would launch the selected run instead of picking a column.
        (None: shown, dimmed, in a key bar still visible under a dialog.)"""
        return True if self.is_active else None

    @property
    def host(self) -> StudyHost:
        return self.app  # type: ignore[return-value]

    @property
    def study(self) -> Study:
        return self._study or self.host.study

    @property
    def feeds(self) -> LiveFeeds:
        return self.host.feeds


class OutcomeScreen(StudyScreen):
    """A view of finished runs: it re-reads (`action_reload`, key `r`) when shown, and when a run finishes or
    gets scores, not on every training step."""

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.loaded = False
        self._outcomes: dict[str, tuple[str, bool]] = {}

    def action_reload(self) -> None:
        raise NotImplementedError

    def on_mount(self) -> None:
        self.feeds.runs.subscribe(self, self._runs_changed)
        self.feeds.study.subscribe(self, self._study_changed)

    def _study_changed(self, message: StudyChanged) -> None:
        if message.study is not None and self.loaded and self.is_current:
            self.action_reload()  # runs added or removed, settings changed: shown again when it is next resumed

    def _runs_changed(self, message: RunsChanged) -> None:
        if outcomes_changed(self._outcomes, message.views) and self.loaded and self.is_current:
            self.action_reload()

    def on_screen_resume(self) -> None:
        self.action_reload()  # on first show too: runs may have finished since
