"""What the watcher thread reports to the app (Textual's post_message is thread-safe), and what the app
passes on to the screens through its feeds (`tui/feeds.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from flux_tui.core.config import Problem, Study
from flux_tui.core.telemetry import Sample
from flux_tui.tui.runview import RunGpu, RunView


@dataclass
class RunsChanged(Message):
    """New views of the runs that changed since the last message."""

    views: dict[str, RunView]
    first: bool = False  # the first full scan after start: every run


@dataclass
class LogLines(Message):
    """Lines appended to the followed run's train.log; `reset`: the pane starts over with these."""

    name: str | None
    lines: list[str]
    reset: bool = False


@dataclass
class TelemetryRead(Message):
    """A reading of the machine and of each running run's GPU memory."""

    sample: Sample
    runs: list[RunGpu]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TelemetryRead)  # a newer reading makes a waiting one stale


@dataclass
class StudyChanged(Message):
    """The study file changed on disk: `study` is the file as it is now (with `views` of all its runs), or None
    when it no longer validates (`problems` says why; the last good study stays in use)."""

    study: Study | None
    problems: list[Problem]
    views: dict[str, RunView]


@dataclass
class RunsStarted(Message):
    """The scheduler started queued runs."""

    names: list[str]


@dataclass
class WatcherFailed(Message):
    error: str
