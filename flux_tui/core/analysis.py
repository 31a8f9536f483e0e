"""Comparing finished runs: the leaderboard, the study's pick rule, and each hyperparameter's effect.

An effect is read only from runs that differ in that one hyperparameter and agree on every other training
setting, as the study's scenarios were built ("higher learning rate lowered face distance in 2 of 2").
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flux_tui.core import curve as curves
from flux_tui.core.config import UNTRAINED_KEYS
from flux_tui.core.metrics import BY_KEY, CLIP_SCORE, FACE_DISTANCE, FACELESS, SCORE_KEYS, SCORES, metric
from flux_tui.core.results import RunRecord

T = TypeVar("T")

EFFECT_KEYS = ("learning_rate", "lora_rank", "lora_alpha", "max_train_steps", "lr_scheduler", "guidance")
# How hyperparameters and scores are named in sentences and on axes.
LABELS = {
    "learning_rate": "learning rate",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "max_train_steps": "steps",
    "lr_scheduler": "scheduler",
    "guidance": "guidance scale",
    **{m.key: m.label for m in SCORES},
}
def pick_rule(among: str) -> str:
    """The study's rule for choosing, in words, over `among` (runs, or the steps of a run's curve)."""
    return (f"lowest {metric(FACE_DISTANCE).label} among {among} with no more {metric(FACELESS).label} than the "
            f"median, ties broken by the higher {metric(CLIP_SCORE).label}")  # fmt: skip


PICK_RULE = pick_rule("scored runs")
STEP_RULE = pick_rule("the evaluated steps of its curve")


def scored(records: list[RunRecord]) -> list[RunRecord]:
    """The runs with scores (a scored set of images always has a CLIP score; faces may be missing)."""
    return [r for r in records if r.scores and r.score(CLIP_SCORE) is not None]


def best_values(records: list[RunRecord]) -> dict[str, float]:
    """The best value of each score column over the scored runs (to mark it in a table); a column where every
    run has the same value has none."""
    best: dict[str, float] = {}
    for m in SCORES:
        top = m.best([v for r in records if (v := r.score(m.key)) is not None])
        if top is not None:
            best[m.key] = top
    return best


def sort_key(key: str):
    """Sort scored runs best first by `key`; runs without the score go last."""
    lower = BY_KEY[key].lower_is_better if key in BY_KEY else False

    def k(r: RunRecord) -> tuple[int, float]:
        v = r.score(key)
        if v is None:
            return (1, 0.0)
        return (0, v if lower else -v)

    return k


NO_FACES = (
    "no run has a face distance: no face was found in any generated image "
    "(with the demo's random-weight model there never is one)"
)


def picks_note(records: list[RunRecord]) -> str | None:
    """Why there are no top picks, or None when there are some."""
    if top_picks(records):
        return None
    if not scored(records):
        return "no scored runs yet: scores appear when a run's evaluation is done"
    return NO_FACES


def ranked_by_pick_rule(items: Sequence[T], score: Callable[[T, str], float | None]) -> list[T]:
    """PICK_RULE over anything scored (the runs of a study, or the steps of one run's curve): the items with
    a face distance and no more faceless images than their median, best first (ties keep their order)."""
    with_face = [x for x in items if score(x, FACE_DISTANCE) is not None]
    if not with_face:
        return []
    median = statistics.median(score(x, FACELESS) or 0.0 for x in with_face)
    eligible = [x for x in with_face if (score(x, FACELESS) or 0.0) <= median]
    return sorted(eligible, key=lambda x: (score(x, FACE_DISTANCE), -(score(x, CLIP_SCORE) or 0.0)))


def top_picks(records: list[RunRecord], n: int = 3) -> list[RunRecord]:
    """The study's way of choosing: see PICK_RULE."""
    return ranked_by_pick_rule(scored(records), RunRecord.score)[:n]


def best_step(curve: Sequence[Mapping[str, Any]]) -> int | None:
    """The step of a run's curve that PICK_RULE chooses (None: no step has a face distance)."""
    ranked = ranked_by_pick_rule(curves.points(list(curve)), curves.value)
    return ranked[0]["step"] if ranked else None


NO_CURVE_FACES = "no face was found in the images along its curve (the demo's random-weight model never draws one)"


def steps_reading(name: str, scores: Mapping[str, Any] | None) -> str | None:
    """One run's within-run steps analysis from its curve ("exp03: face distance best at step 750, worse by
    0.0400 at 1000"), or None when it has fewer than two evaluated steps."""
    curve = curves.points((scores or {}).get("curve"))
    if len(curve) < 2:
        return None
    last = curve[-1]
    best = best_step(curve)
    if best is not None:
        text = f"{name}: " + _compared(FACE_DISTANCE, next(p for p in curve if p["step"] == best), last)
    else:
        top = max((p for p in curve if curves.value(p, CLIP_SCORE) is not None),
                  key=lambda p: curves.value(p, CLIP_SCORE) or 0.0, default=None)  # fmt: skip
        text = f"{name}: no best step, {NO_CURVE_FACES}"
        if top is not None:
            text += "; " + _compared(CLIP_SCORE, top, last)
    stop = (scores or {}).get("early_stop")
    if isinstance(stop, Mapping) and isinstance(stop.get("step"), int):
        text += f" (stopped early at step {stop['step']}" + (f" of {stop['total']})" if stop.get("total") else ")")
    return text


def _compared(key: str, best: Mapping[str, Any], last: Mapping[str, Any]) -> str:
    """`face distance best at step 750, worse by 0.0400 at 1000` (best: its step's point; last: the curve's)."""
    m = metric(key)
    word = "best" if key == FACE_DISTANCE else ("lowest" if m.lower_is_better else "highest")
    head = f"{m.label} {word} at step {best['step']} ({m.format(best[key])})"
    if best["step"] == last["step"]:
        return head + ", the last evaluated step"
    a, b = curves.value(best, key), curves.value(last, key)
    if a is None or b is None:
        return head + f", not measured at {last['step']}"
    diff = b - a
    worse = diff > 0 if m.lower_is_better else diff < 0
    if diff == 0:
        return head + f", the same at {last['step']}"
    if m.change(a, b) == 0:
        return head + f", within {m.noise:g} at {last['step']} (no clear change)"
    if not worse:  # only where the rule set the step aside (more faceless images than the median)
        faceless = last.get(FACELESS)
        return head + f", better by {m.format(abs(diff))} at {last['step']} but with {faceless} faceless image(s)"
    return head + f", worse by {m.format(abs(diff))} at {last['step']}"


def steps_readings(records: list[RunRecord]) -> list[str]:
    """The within-run steps analysis of every run with a curve, in the records' order."""
    return [text for r in records if (text := steps_reading(r.name, r.scores))]


# -- effects ---------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Runs that differ only in `key`, ordered by its value, with each score per value."""

    key: str
    fixed: dict[str, Any]  # the settings they share (the hyperparameters among them, for display)
    values: list[Any]
    runs: list[str]
    scores: dict[str, list[float | None]]  # score key -> one value per entry of `values`


@dataclass
class Effect:
    key: str
    comparisons: list[Comparison]

    def reading(self, score: str) -> str:
        """One line: how often raising the hyperparameter moved the score which way."""
        label, what = LABELS[self.key], LABELS[score]
        pairs = [
            (c.values[i], c.values[i + 1], c.scores[score][i], c.scores[score][i + 1])
            for c in self.comparisons
            for i in range(len(c.values) - 1)
            if c.scores[score][i] is not None and c.scores[score][i + 1] is not None
        ]
        if not pairs:
            if not self.comparisons:
                return f"{label}: no scored runs differ only in it"
            if metric(score).needs_face:
                return f"{label}: the runs that differ only in it have no {what} (no face found in their images)"
            return f"{label}: the runs that differ only in it are not scored yet"
        m = metric(score)
        moves = [m.change(sa, sb) for _, _, sa, sb in pairs]
        if self.key == "lr_scheduler":
            return self._scheduler_reading(score, pairs, moves)
        more = "more steps" if self.key == "max_train_steps" else f"higher {label}"
        n, up, down = len(pairs), moves.count(1), moves.count(-1)
        flat = n - up - down
        if up == down == 0:
            if m.noise:
                return f"{more}: no clear effect on {what} ({n} of {n} comparisons differ by less than {m.noise:g})"
            return f"{more} left {what} unchanged in {n} of {n} comparisons"
        within = f" ({flat} within {m.noise:g}: no clear change)" if flat and m.noise else ""
        if up == down:
            return f"{more} raised {what} in {up} and lowered it in {down} of {n} comparisons{within}"
        direction, count = ("raised", up) if up > down else ("lowered", down)
        return f"{more} {direction} {what} in {count} of {n} comparisons{within}"

    def _scheduler_reading(self, score: str, pairs: list[tuple], moves: list[int]) -> str:
        m, what = metric(score), LABELS[score]
        wins: dict[str, int] = defaultdict(int)
        for (a, b, _, _), move in zip(pairs, moves, strict=True):
            if move:
                better_b = move < 0 if m.lower_is_better else move > 0
                wins[b if better_b else a] += 1
        if not wins:
            n = len(pairs)
            return f"no clear difference in {what} between schedulers ({n} of {n} comparisons within {m.noise:g})"
        leader = max(wins, key=lambda k: wins[k])
        return f"{leader} scheduler gave the better {what} in {wins[leader]} of {len(pairs)} comparisons"


def _sortable(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def find_effects(records: list[RunRecord], key: str) -> Effect:
    """Group runs that agree on every training setting but `key` (and guidance: per image, within a run)."""
    if key == "guidance":
        return Effect(key, _guidance_comparisons(records))
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        if not r.config or r.kind != "experiment":
            continue
        # Alpha left unset follows the rank, so a rank comparison does not hold it fixed.
        others = {
            k: v for k, v in r.config.items()
            if k not in UNTRAINED_KEYS and k != key and not (key == "lora_rank" and k == "lora_alpha" and v is None)
        }  # fmt: skip
        groups[repr(sorted(others.items()))].append(r)
    comparisons = []
    for members in groups.values():
        by_value: dict[Any, RunRecord] = {}
        for r in members:
            by_value.setdefault(r.hp(key), r)  # same settings twice: the first stands for both
        if len(by_value) < 2:
            continue
        values = sorted(by_value, key=_sortable)
        ordered = [by_value[v] for v in values]
        first = ordered[0]
        fixed = {k: first.hp(k) for k in ("learning_rate", "lora_rank", "max_train_steps", "lr_scheduler") if k != key}
        comparisons.append(
            Comparison(
                key=key,
                fixed=fixed,
                values=values,
                runs=[r.name for r in ordered],
                scores={s: [r.score(s) for r in ordered] for s in SCORE_KEYS},
            )
        )
    comparisons.sort(key=lambda c: [_sortable(v) for v in c.fixed.values()])
    return Effect(key, comparisons)


def _guidance_comparisons(records: list[RunRecord]) -> list[Comparison]:
    out = []
    for r in scored(records):
        per_g = (r.scores or {}).get("per_guidance")
        if not isinstance(per_g, list) or len(per_g) < 2:
            continue
        # engine.score writes `guidance_scale`; `guidance` is accepted too
        rows = sorted(per_g, key=lambda d: d.get("guidance_scale", d.get("guidance", 0)))
        out.append(
            Comparison(
                key="guidance",
                fixed={"run": r.name},
                values=[d.get("guidance_scale", d.get("guidance")) for d in rows],
                runs=[r.name] * len(rows),
                scores={s: [d.get(s) for d in rows] for s in SCORE_KEYS},
            )
        )
    return out


def all_effects(records: list[RunRecord]) -> list[Effect]:
    return [find_effects(records, key) for key in EFFECT_KEYS]
