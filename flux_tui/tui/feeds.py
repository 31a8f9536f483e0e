"""The app's live data, as Textual signals a screen subscribes to on mount: the runs that changed, the
followed run's new log lines, the machine's readings, the study file's new contents. Textual drops a screen's subscriptions when the
screen goes, so a screen never hears of data after it closed, nor before it is mounted."""

from __future__ import annotations

from textual.dom import DOMNode
from textual.signal import Signal

from flux_tui.tui.messages import LogLines, RunsChanged, StudyChanged, TelemetryRead


class LiveFeeds:
    """Published by the app from the watcher's messages (each subscriber gets the message itself)."""

    def __init__(self, owner: DOMNode) -> None:
        self.runs: Signal[RunsChanged] = Signal(owner, "runs")
        self.log: Signal[LogLines] = Signal(owner, "log")
        self.telemetry: Signal[TelemetryRead] = Signal(owner, "telemetry")
        self.study: Signal[StudyChanged] = Signal(owner, "study")  # the study file changed (or broke)
