"""A run's score curve (its scores at the steps evaluated while training) beside its loss: one small chart
per headline score, the best step marked by a vertical line, and a line that says what the curve shows
(or why a face score is missing: no face in the curve's images, as with the demo's random model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from flux_tui.core import analysis
from flux_tui.core import curve as curves
from flux_tui.core.metrics import HEADLINE, NO_FACE, Metric


class ScoreCurve(PlotextPlot):
    """One score against the step."""

    DEFAULT_CSS = """
    ScoreCurve { height: 1fr; min-height: 5; border: round $panel; border-title-color: $text-muted; }
    """

    def __init__(self, m: Metric, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = m
        self.points: tuple[tuple[int, float], ...] = ()
        self.best: int | None = None
        self.border_title = self._title()

    def _title(self) -> str:
        m = self.metric
        title = f"{m.label} ({m.better} is better)"
        if m.needs_face and not self.points and self.best is None:
            title = f"{m.label}: {NO_FACE} in the curve's images"
        return title + (f" · best step {self.best}" if self.best is not None else "")

    def set_curve(self, curve: Sequence[dict[str, Any]], best: int | None) -> None:
        points = tuple((p["step"], v) for p in curve if (v := curves.value(p, self.metric.key)) is not None)
        if (points, best) == (self.points, self.best):
            return
        self.points, self.best = points, best
        self.border_title = self._title()
        self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self.points:
            xs, ys = zip(*self.points, strict=True)
            plt.plot(list(xs), list(ys), marker="braille")
            if self.best is not None:
                plt.vline(self.best, "green")
            plt.xticks(list(xs), [str(x) for x in xs])
            if self.metric.is_count:  # a count: from 0, whole numbers
                top = max(1, int(max(ys)))
                plt.ylim(0, top)
                plt.yticks(list(range(top + 1)))
        else:
            plt.title(f"no {self.metric.label}" if self.metric.needs_face else "no evaluated step yet")
        return super().render()


def curve_note(curve: Sequence[dict[str, Any]], best: int | None, without_faces: bool,
               early_stop: dict[str, Any] | None) -> str:  # fmt: skip
    """One line over the charts: how many steps, the best one and why (or why there is none)."""
    if not curve:
        return "no score curve yet (eval_every: the LoRA is scored while it trains)"
    steps = ", ".join(str(p["step"]) for p in curve)
    text = f"score curve at steps {steps}"
    if best is not None:
        text += f" · best step {best} (green line; the leaderboard's rule)"
    elif without_faces:
        text += f" · no face distance and no best step: {analysis.NO_CURVE_FACES}"
    if early_stop and isinstance(early_stop.get("step"), int):
        text += f" · stopped early at step {early_stop['step']}"
    return text


class CurvePanel(Vertical):
    """The note and a chart per headline score (face distance, CLIP, faceless)."""

    DEFAULT_CSS = """
    CurvePanel { width: 1fr; height: 1fr; }
    CurvePanel #curve-note { height: auto; padding: 0 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="curve-note")
        for m in HEADLINE:
            yield ScoreCurve(m, id=f"curve-{m.key}")

    def show_curve(self, curve: Sequence[dict[str, Any]], best: int | None, without_faces: bool,
                   early_stop: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.display = bool(curve)  # a run without a curve shows its loss alone, full width
        self.query_one("#curve-note", Static).update(curve_note(curve, best, without_faces, early_stop))
        for chart in self.query(ScoreCurve):
            chart.set_curve(curve, best)
