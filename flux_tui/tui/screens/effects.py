"""Each hyperparameter's effect: one tab per hyperparameter with the one-line readings, a terminal chart
per score (each comparison a line: the score against the hyperparameter's values, the others held fixed),
and the runs each comparison is made of. The steps tab adds the analysis within runs: where each run's
score curve was best, and how far the last step moved from it."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Header, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from flux_tui.core import analysis, results
from flux_tui.core.analysis import Comparison, Effect
from flux_tui.core.config import Study
from flux_tui.core.metrics import HEADLINE, metric, noise_rule
from flux_tui.tui.format import lr_text
from flux_tui.tui.screens.base import OutcomeScreen
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.workers import background

_FIXED_LABELS = {
    "learning_rate": "lr",
    "lora_rank": "rank",
    "max_train_steps": "steps",
    "lr_scheduler": "",
    "run": "",
}


def value_text(key: str, v: Any) -> str:
    if key == "learning_rate" and isinstance(v, int | float):
        return lr_text(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def comparison_label(c: Comparison) -> str:
    """What a comparison holds fixed: `lr 5e-4 · steps 1000`, or the run for guidance."""
    parts = []
    for k, v in c.fixed.items():
        prefix = _FIXED_LABELS.get(k, k)
        parts.append(f"{prefix} {value_text(k, v)}".strip())
    return " · ".join(parts) or "all else equal"


def axis_values(effect: Effect) -> list[Any]:
    """Every value the hyperparameter takes across its comparisons, in order: the chart's x positions."""
    seen: list[Any] = []
    for c in effect.comparisons:
        for v in c.values:
            if v not in seen:
                seen.append(v)
    return sorted(seen, key=lambda v: (0, v) if isinstance(v, int | float) else (1, str(v)))


class EffectChart(PlotextPlot):
    """One score against one hyperparameter's values, a line per comparison."""

    DEFAULT_CSS = """
    EffectChart { width: 1fr; height: 18; border: round $panel; border-title-color: $text-muted; }
    """

    def __init__(self, effect: Effect, score: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.effect, self.score = effect, score
        self.border_title = f"{metric(score).label} {metric(score).arrow}"  # fits a third of 80 columns

    def series(self) -> list[tuple[str, list[int], list[float]]]:
        """(label, x positions, scores) per comparison with at least one scored point."""
        xs_all = axis_values(self.effect)
        out = []
        for c in self.effect.comparisons:
            points = [
                (xs_all.index(v), s)
                for v, s in zip(c.values, c.scores[self.score], strict=True)
                if s is not None
            ]
            if points:
                out.append((comparison_label(c), [p[0] for p in points], [float(p[1]) for p in points]))
        return out

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        series = self.series()
        if not series:
            plt.title("no scored comparison")
            return super().render()
        values = axis_values(self.effect)
        for label, xs, ys in series:
            plt.plot(xs, ys, marker="dot", label=label[:28])
        plt.xticks(list(range(len(values))), [value_text(self.effect.key, v) for v in values])
        plt.xlim(-0.3, len(values) - 0.7)
        plt.xlabel(analysis.LABELS[self.effect.key])
        return super().render()


def readings_text(effect: Effect) -> Text:
    text = Text()
    for m in HEADLINE:
        text += Text(f"{m.label:<16}", style="bold") + Text(effect.reading(m.key) + "\n")
    if effect.comparisons:
        text += Text(f"({noise_rule(HEADLINE)})", style="dim")
    return text


def comparisons_text(effect: Effect) -> Text:
    if not effect.comparisons:
        label = analysis.LABELS[effect.key]
        hint = ("a run needs two or more guidance scales (guidance_scales) to compare them" if effect.key == "guidance"
                else f"add runs that differ from each other only in {label} to the matrix")  # fmt: skip
        return Text(f"No runs differ only in {label}: {hint}.", style="dim")
    text = Text(f"{len(effect.comparisons)} comparison(s):\n", style="bold")
    for c in effect.comparisons:
        steps = " → ".join(f"{value_text(effect.key, v)} ({r})" if effect.key != "guidance" else value_text(effect.key, v)
                           for v, r in zip(c.values, c.runs, strict=True))  # fmt: skip
        text += Text(f"  {comparison_label(c)}: ", style="dim") + Text(steps + "\n")
    return text


STEPS = "max_train_steps"


def within_runs_text(readings: list[str]) -> Text:
    """The steps tab's within-run analysis: each run's score curve, beside the comparison across runs."""
    text = Text("Within runs ", style="bold") + Text(f"(each run's score curve; best step: {analysis.STEP_RULE}):\n",
                                                      style="dim")  # fmt: skip
    if not readings:
        return text + Text("  no run has a score curve of two or more evaluated steps yet (eval_every)", style="dim")
    for line in readings:
        name, _, rest = line.partition(": ")
        text += Text(f"  {name}: ", style="bold") + Text(rest + "\n")
    return text


class EffectsScreen(OutcomeScreen):
    DEFAULT_CSS = """
    EffectsScreen #fx-tabs { height: 1fr; }  /* the tabs scroll inside, the note above stays in view */
    EffectsScreen TabPane { padding: 0 1; height: 1fr; }
    EffectsScreen .fx-readings { height: auto; margin: 0 0 1 0; }
    EffectsScreen .fx-charts { height: auto; }
    EffectsScreen .fx-runs { height: auto; margin: 1 0 0 0; }
    EffectsScreen #fx-within { height: auto; margin: 1 0 0 0; }
    EffectsScreen #fx-note { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("right_square_bracket", "tab(1)", "Next", tooltip="the next hyperparameter's tab"),
        Binding("left_square_bracket", "tab(-1)", "Previous", tooltip="the previous hyperparameter's tab"),
        Binding("r", "reload", "Reload", tooltip="read the run folders again"),
    ]

    def __init__(self, study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.effects: list[Effect] = []
        self._generation = 0  # the newest reload: an older one that finishes later draws nothing

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading scores…", id="fx-note")
        with TabbedContent(id="fx-tabs"):
            for key in analysis.EFFECT_KEYS:
                with TabPane(analysis.LABELS[key], id=f"fx-{key}"), VerticalScroll():
                    yield Static(classes="fx-readings")
                    yield Horizontal(classes="fx-charts")
                    yield Static(classes="fx-runs")
                    if key == STEPS:
                        yield Static(id="fx-within")
        yield KeyBar()

    def action_reload(self) -> None:
        self._generation += 1
        self._load(self._generation)

    @background(group="effects")
    def _load(self, generation: int) -> None:
        records = results.collect(self.study)
        effects = analysis.all_effects(records)
        self.app.call_from_thread(self.show_effects, effects, generation, analysis.steps_readings(records))

    async def show_effects(self, effects: list[Effect], generation: int | None = None,
                           within: list[str] | None = None) -> None:  # fmt: skip
        if generation is not None and generation != self._generation:
            return
        self.effects = effects
        self.query_one("#fx-within", Static).update(within_runs_text(within or []))
        tabs = self.query_one(TabbedContent)
        found = 0
        for effect in effects:
            pane = self.query_one(f"#fx-{effect.key}", TabPane)
            n = len(effect.comparisons)
            found += n
            tabs.get_tab(pane).label = f"{analysis.LABELS[effect.key]} ({n})"  # type: ignore[assignment]
            pane.query_one(".fx-readings", Static).update(readings_text(effect))
            charts = pane.query_one(".fx-charts", Horizontal)
            await charts.remove_children()
            if generation is not None and generation != self._generation:
                return  # reloaded meanwhile: the newer one draws
            if effect.comparisons:
                await charts.mount_all(EffectChart(effect, m.key) for m in HEADLINE)
            pane.query_one(".fx-runs", Static).update(comparisons_text(effect))
        self.query_one("#fx-note", Static).update(
            f"{found} comparison(s) of runs that differ in one hyperparameter only · [ ] switch tabs · "
            "the number on a tab counts its comparisons"
        )
        self.loaded = True

    def action_tab(self, delta: int) -> None:
        tabs = self.query_one(TabbedContent)
        ids = [f"fx-{k}" for k in analysis.EFFECT_KEYS]
        current = ids.index(tabs.active) if tabs.active in ids else 0
        tabs.active = ids[(current + delta) % len(ids)]
