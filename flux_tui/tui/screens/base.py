"""What the views over the study's run folders share."""

from __future__ import annotations

from typing import Any

from textual.screen import Screen

from flux_tui.core.config import Study
from flux_tui.tui.runview import outcomes_changed


class StudyScreen(Screen):
    """A screen over the study's run folders: `study` is the one given (tests), else the app's."""

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._study = study

    @property
    def study(self) -> Study:
        return self._study or self.app.study  # type: ignore[attr-defined]


class OutcomeScreen(StudyScreen):
    """A view of finished runs: it re-reads (`reload`) when shown, and when a run finishes or gets scores,
    not on every training step."""

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.loaded = False
        self._outcomes: dict[str, tuple[str, bool]] = {}

    def reload(self) -> None:
        raise NotImplementedError

    def runs_changed(self, views: dict[str, Any]) -> None:
        """The dashboard's watcher saw runs change."""
        if outcomes_changed(self._outcomes, views) and self.loaded and self.is_current:
            self.reload()

    def on_screen_resume(self) -> None:
        self.reload()  # on first show too: runs may have finished since
