"""The loss curve itself (textual-plotext): imported by `lossplot.LossPlot` after the first frame."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot


def thin(points: Sequence[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    """At most about `n` points, evenly spaced, always keeping the last one."""
    if n <= 0 or len(points) <= n:
        return list(points)
    stride = len(points) / n
    picked = [points[int(i * stride)] for i in range(n)]
    if picked[-1] != points[-1]:
        picked.append(points[-1])
    return picked


class LossChart(PlotextPlot):
    """The points, thinned to the width available so a repaint stays cheap."""

    def __init__(self, points: tuple[tuple[int, float], ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.points = points

    def show(self, points: tuple[tuple[int, float], ...]) -> None:
        self.points = points
        self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self.points:
            xs, ys = zip(*thin(self.points, max(8, self.size.width * 2)), strict=True)
            plt.plot(list(xs), list(ys), marker="braille")
            # Ticks chosen for the pane's size, so labels never run into each other in a small terminal.
            w, h = self.size.width, self.size.height
            plt.xticks(*axis_ticks(min(xs), max(xs), max(2, min(6, w // 12)), integer=True))
            plt.yticks(*axis_ticks(min(ys), max(ys), max(2, min(5, h // 3))))
            if h >= 8:
                plt.xlabel("step")
        else:
            plt.title("no steps yet")
        return super().render()


def axis_ticks(lo: float, hi: float, n: int, integer: bool = False) -> tuple[list[float], list[str]]:
    """About `n` evenly spaced ticks from `lo` to `hi` and their labels (whole numbers for steps, three
    significant digits for a loss)."""
    if hi <= lo:
        return [lo], [f"{lo:g}" if not integer else str(round(lo))]
    values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    if integer:
        values = sorted({round(v) for v in values})
        return [float(v) for v in values], [str(v) for v in values]
    return values, [f"{v:.3g}" for v in values]
