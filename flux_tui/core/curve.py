"""A run's score curve: the scores of its LoRA at steps during training (`eval_every`), and the best step.

The trainer appends to `events.jsonl` a `curve_begin` record when its training starts (`carried`: the points
it keeps from an earlier launch, those at or before the checkpoint it resumed from), then one `curve` record
per evaluated step, and `early_stop` when it stops early. A reader keeps the points of the last
`curve_begin` and of every `curve` record after it, the later record of a step winning. The evaluation copies
the finished curve into `scores.json` (`curve`, `best_step`, `early_stop`). Everything read here is outside
data: a point that is not a step with numbers is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flux_tui.core.metrics import FACE_DISTANCE, METRICS

# A point's keys: the step, then every metric of the one table (core.metrics), in its order.
POINT_KEYS: tuple[str, ...] = ("step", *(m.key for m in METRICS))


def _number(v: Any) -> float | int | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def point(raw: Any) -> dict[str, Any] | None:
    """A valid curve point ({step, <metric>: number or None}), or None."""
    if not isinstance(raw, Mapping):
        return None
    step = raw.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return None
    return {"step": step, **{k: _number(raw.get(k)) for k in POINT_KEYS[1:]}}


def points(raw: Any) -> list[dict[str, Any]]:
    """The valid points of a list (scores.json's `curve`), one per step (the later wins), by step."""
    found = {p["step"]: p for p in map(point, raw if isinstance(raw, list) else []) if p is not None}
    return [found[s] for s in sorted(found)]


class CurveReader:
    """Follows a run's events record by record (the dashboard reads them incrementally)."""

    def __init__(self) -> None:
        self._points: dict[int, dict[str, Any]] = {}
        self.early_stop: dict[str, Any] | None = None

    def apply(self, ev: Mapping[str, Any]) -> bool:
        """Take one event; True when the curve (or the early stop) changed."""
        kind = ev.get("type")
        if kind == "curve_begin":
            self._points = {p["step"]: p for p in points(ev.get("carried"))}
            self.early_stop = None
        elif kind == "curve":
            p = point(ev)
            if p is None:
                return False
            self._points[p["step"]] = p
        elif kind == "early_stop" and isinstance(ev.get("step"), int):
            self.early_stop = {k: ev.get(k) for k in ("step", "total", "best_step", "patience", "reason")}
        else:
            return False
        return True

    @property
    def curve(self) -> list[dict[str, Any]]:
        return [self._points[s] for s in sorted(self._points)]


def from_events(events: Iterable[Mapping[str, Any]]) -> CurveReader:
    reader = CurveReader()
    for ev in events:
        reader.apply(ev)
    return reader


def value(p: Mapping[str, Any], key: str) -> float | None:
    """A score of a curve point (None: not measured, e.g. no face in its images)."""
    v = _number(p.get(key))
    return None if v is None else float(v)


def evaluations_since_best_face(curve: Iterable[Mapping[str, Any]]) -> int | None:
    """How many evaluations came after the lowest face distance so far (0: the last one is the lowest;
    an evaluation without a face counts as no improvement). None: no step has a face distance yet."""
    best: float | None = None
    since = 0
    for p in sorted(curve, key=lambda p: p["step"]):
        fd = value(p, FACE_DISTANCE)
        if fd is not None and (best is None or fd < best):
            best, since = fd, 0
        elif best is not None:
            since += 1
    return None if best is None else since
