"""The scores of a run, in one table: every module that reads, ranks, formats, charts or summarises a score
takes it from here (results, analysis, export, report, the dashboard's views, the engine's summary).

Adding a metric is one `Metric(...)` line in `METRICS` (and the per-image value it summarises, computed by
`engine/score.py`). The table's order is the order of `scores.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Rows = Sequence[Mapping[str, Any]]  # per-image rows, as `scores.json`'s `per_image`

# The keys that rules name (the study's pick rule, "scored", "no face found").
FACE_DISTANCE = "face_distance"
CLIP_SCORE = "clip_score"
FACELESS = "faceless"
N_IMAGES = "n_images"
NO_FACE = "no face"  # what a face score shows when no image had a face


def _mean(key: str, scale: Callable[[float], float] = float) -> Callable[[Rows], float | None]:
    def mean(rows: Rows) -> float | None:
        values = [v for r in rows if isinstance(v := r.get(key), int | float) and not isinstance(v, bool)]
        values = [scale(v) for v in values]
        return sum(values) / len(values) if values else None

    return mean


def _count_faceless(rows: Rows) -> int:
    return sum(not r.get("face") for r in rows)


@dataclass(frozen=True)
class Metric:
    key: str  # in scores.json
    label: str  # in a sentence: "higher learning rate lowered face distance"
    heading: str  # a table column's header; `header` adds the arrow of the better direction
    narrow: str  # a narrow column's header (the matrix), and the header of a count in any table
    tag: str  # before a value in a line of figures: "face 0.7571 · CLIP 0.2988"
    title: str  # its line in a run's detail
    fmt: str  # format spec of a value
    better: Literal["lower", "higher"] | None = None  # None: a figure, not a score runs are ranked by
    rank: int | None = None  # place among the ranking scores (the leaderboard's column order)
    chart: bool = False  # a headline score: a matrix column, a chart in the effects view and the report
    needs_face: bool = False  # computed from faces: None when no image has one
    per_prompt: bool = True  # repeated per prompt in scores.json
    column_fmt: str | None = None  # in a leaderboard column, when narrower than `fmt`
    summarize: Callable[[Rows], float | int | None] | None = None  # from per-image rows; None: their mean
    # Two runs whose values differ by less than this differ within the score's noise (seeds, prompts): an
    # effect reading calls that "no clear effect". 0 for a count: any difference in a count is real.
    noise: float = 0.0

    @property
    def lower_is_better(self) -> bool:
        return self.better == "lower"

    @property
    def is_count(self) -> bool:
        return self.fmt == "d"

    @property
    def arrow(self) -> str:
        """Which way is better: ↓ (lower), ↑ (higher), or nothing for a figure."""
        return {"lower": "↓", "higher": "↑"}.get(self.better or "", "")

    @property
    def header(self) -> str:
        """`face dist ↓`: the heading with the better direction."""
        return f"{self.heading} {self.arrow}" if self.arrow else self.heading

    def change(self, before: float, after: float) -> int:
        """+1 when `after` is higher than `before` by at least the noise, -1 when lower, 0 within it."""
        diff = after - before
        if diff == 0 or abs(diff) < self.noise:
            return 0
        return 1 if diff > 0 else -1

    def best(self, values: Sequence[float]) -> float | None:
        """The best of `values` when it is better than at least one other (a table stars it), else None:
        when every run ties, no run is best."""
        if not values:
            return None
        top = min(values) if self.lower_is_better else max(values)
        return top if any(v != top for v in values) else None

    def of_images(self, rows: Rows) -> float | int | None:
        """The value over a set of images, from their per-image rows."""
        return (self.summarize or _mean(self.key))(rows)

    def format(self, value: Any, missing: str = "-", spec: str | None = None) -> str:
        """The value as figures show it; `missing` for no value (None, or not a number)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return missing
        spec = spec or self.fmt
        if spec == "d" and isinstance(value, float):
            spec = ".0f"  # a count read back as a float
        return format(value, spec)


METRICS: tuple[Metric, ...] = (
    Metric(FACE_DISTANCE, "face distance", heading="face dist", narrow="face↓", tag="face",
           title="Face Distance Score (lower is better)", fmt=".4f", better="lower", rank=1, chart=True,
           needs_face=True, noise=0.005),
    Metric("identity_similarity", "identity similarity", heading="identity", narrow="identity↑",
           tag="identity", title="identity similarity (cosine)", fmt=".4f", better="higher", rank=3,
           needs_face=True, column_fmt=".3f", noise=0.005),
    Metric(CLIP_SCORE, "CLIP score", heading="CLIP", narrow="CLIP↑", tag="CLIP", title="CLIP score (0..1)",
           fmt=".4f", better="higher", rank=2, chart=True, noise=0.005),
    Metric("clip_score_x100", "CLIP score x100", heading="CLIP x100", narrow="CLIPx100", tag="CLIP x100",
           title="CLIP score x100 (torchmetrics' scale)", fmt=".2f", per_prompt=False, noise=0.5,
           summarize=_mean(CLIP_SCORE, lambda c: 100 * max(c, 0.0))),
    Metric(FACELESS, "faceless images", heading="faceless", narrow="no face", tag="faceless",
           title="images without a face", fmt="d", better="lower", rank=4, chart=True,
           summarize=_count_faceless),
    Metric(N_IMAGES, "images scored", heading="images", narrow="images", tag="images", title="images scored",
           fmt="d", summarize=len),
)  # fmt: skip

BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
# The scores runs are ranked by (leaderboard columns, best marks, effects), most important first.
_RANKED = [m for m in METRICS if m.rank is not None]
SCORES: tuple[Metric, ...] = tuple(sorted(_RANKED, key=lambda m: m.rank or 0))
SCORE_KEYS: tuple[str, ...] = tuple(m.key for m in SCORES)
HEADLINE: tuple[Metric, ...] = tuple(m for m in SCORES if m.chart)
# A flat export's columns: the ranking scores, then the other figures, each in the table's order.
EXPORT_KEYS: tuple[str, ...] = tuple(m.key for m in _RANKED) + tuple(m.key for m in METRICS if m.rank is None)
PER_PROMPT_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if m.per_prompt)


def metric(key: str) -> Metric:
    """The metric of a key (KeyError names it when there is none)."""
    return BY_KEY[key]


def summary(rows: Rows) -> dict[str, Any]:
    """Every metric of a set of images from its per-image rows (scores.json's top-level figures)."""
    return {m.key: m.of_images(rows) for m in METRICS}


def figures(
    value_of: Callable[[str], Any], which: Sequence[Metric] = HEADLINE, sep: str = " · ", labels: bool = False,
) -> str:
    """One line of figures: `face 0.7571 · CLIP 0.2988 · faceless 0`; with `labels`: `face distance 0.7571`."""
    return sep.join(f"{m.label if labels else m.tag} {m.format(value_of(m.key))}" for m in which)


def noise_rule(which: Sequence[Metric] = SCORES) -> str:
    """The rule effect readings follow, in words: `a difference below 0.005 in face distance or CLIP score
    reads as no clear effect`."""
    by_noise: dict[float, list[str]] = {}
    for m in which:
        if m.noise:
            by_noise.setdefault(m.noise, []).append(m.label)
    parts = [f"below {n:g} in {_either(labels)}" for n, labels in by_noise.items()]
    return f"a difference {'; '.join(parts)} reads as no clear effect" if parts else ""


def _either(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
