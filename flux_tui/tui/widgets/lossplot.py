"""A run's loss curve in a titled box.

The curve itself (`losschart.LossChart`: textual-plotext, which imports plotext) mounts once its module
has loaded, in a thread after the first frame, so the first frame shows the box without waiting for it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from textual.containers import Vertical

from flux_tui.tui.workers import RelayWorkerErrors, after_first_frame, background

CHART_MODULE = "flux_tui.tui.widgets.losschart"


class LossPlot(RelayWorkerErrors, Vertical):
    DEFAULT_CSS = """
    LossPlot { height: 1fr; border: round $panel; border-title-color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "loss"
        self._points: tuple[tuple[int, float], ...] = ()
        self._title = ""
        self._chart: Any = None

    @property
    def ready(self) -> bool:
        """The chart is mounted."""
        return self._chart is not None

    def on_mount(self) -> None:
        if CHART_MODULE in sys.modules:  # loaded already: no reason to wait
            self._mount_chart()
        else:
            after_first_frame(self, self._load_chart)

    @background(group="loss-chart")
    def _load_chart(self) -> None:
        importlib.import_module(CHART_MODULE)
        self.app.call_from_thread(self._mount_chart)

    def _mount_chart(self) -> None:
        if self._chart is None and self.is_attached:
            self._chart = importlib.import_module(CHART_MODULE).LossChart(self._points)
            self.mount(self._chart)

    @property
    def has_points(self) -> bool:
        return bool(self._points)

    def set_points(self, points: Sequence[tuple[int, float]], title: str = "loss") -> None:
        points = tuple(points)
        if points == self._points and title == self._title:
            return
        self._points, self._title = points, title
        self.border_title = title
        if self._chart is not None:
            self._chart.show(points)
