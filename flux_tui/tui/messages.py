"""Messages the watcher thread posts to the app (Textual's post_message is thread-safe)."""

from __future__ import annotations

from textual.message import Message

from flux_tui.core.telemetry import Sample
from flux_tui.tui.runview import RunGpu, RunView


class RunsChanged(Message):
    """New views of the runs that changed since the last message."""

    def __init__(self, views: dict[str, RunView], first: bool = False) -> None:
        super().__init__()
        self.views = views
        self.first = first  # the first full scan after start


class LogLines(Message):
    """Lines appended to the followed run's train.log; `reset`: the pane starts over with these."""

    def __init__(self, name: str | None, lines: list[str], reset: bool = False) -> None:
        super().__init__()
        self.name = name
        self.lines = lines
        self.reset = reset


class TelemetryRead(Message):
    def __init__(self, sample: Sample, runs: list[RunGpu]) -> None:
        super().__init__()
        self.sample = sample
        self.runs = runs


class RunsStarted(Message):
    """The scheduler started queued runs."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names


class WatcherFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
