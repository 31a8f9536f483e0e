"""What the dashboard knows about a run, rebuilt from its folder and kept up to date incrementally.

Plain Python (no Textual) so the watcher thread can build it and the tests can check it directly.
`RunTracker.poll()` reads only what changed since the last call: status.json and scores.json when their
stat changes, and the bytes appended to events.jsonl. Each change produces a new immutable `RunView`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flux_tui.core import analysis
from flux_tui.core import curve as curves
from flux_tui.core.config import Experiment
from flux_tui.core.fsutil import TailReader
from flux_tui.core.metrics import BY_KEY, FACE_DISTANCE, FACELESS
from flux_tui.core.runfiles import EventProblems, parse_event
from flux_tui.core.runs import RUNNING, STAGES, RunDir, Status

_UNSET = object()
MAX_LOG_LINES = 5_000  # lines the log pane keeps (and the watcher sends on a reset)
MAX_LOSS_POINTS = 20_000  # a 1500-step run is far below; bounds memory for very long runs


@dataclass(frozen=True)
class RunGpu:
    """A running run as the gauges show it: its pid, its device and the GPU memory its processes hold; a
    batch job's run (on a compute node) its job, node and the peak GPU memory its own step events report."""

    name: str
    pid: int | None
    device: str | None
    gpu_mem: int = 0
    job_id: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class EvalImage:
    path: Path
    prompt: str = ""
    guidance: float | None = None
    seed: int | None = None
    checkpoint: int | None = None  # set for the evaluation of an intermediate checkpoint


@dataclass(frozen=True)
class SampleSet:
    """The images sampled at one training step, with the prompts that made them."""

    step: int
    paths: tuple[Path, ...]
    prompts: tuple[str, ...] = ()

    def caption(self, i: int) -> str:
        return self.prompts[i] if i < len(self.prompts) else self.paths[i].stem.replace("_", " ")


@dataclass(frozen=True)
class Attempt:
    """One launch of a run, from its events: a relaunch (a resume after a stop, a re-evaluation) is another.
    Times are the events' own, so the time a run sat stopped between two attempts is in neither."""

    start: float  # its first stage began
    stages: tuple[tuple[str, float], ...]  # (stage, time it began)
    last: float  # its latest event of any kind: where a stopped attempt ended, as far as the folder knows
    resumed_from: int | None = None  # the checkpoint step it resumed from


def _opens_attempt(stage: str, current: dict[str, Any] | None) -> bool:
    """A stage begins a new attempt when it is `prepare` (every launch of the trainer starts there) or does
    not follow the attempt's stages in their order (an evaluation started again after scoring)."""
    if current is None or stage == "prepare":
        return True
    order = {s: i for i, s in enumerate(STAGES)}
    last = current["stages"][-1][0]
    return order.get(stage, len(order)) <= order.get(last, -1)


@dataclass(frozen=True)
class RunView:
    """A snapshot of one run for the screens. Lists are never mutated after the view is built."""

    name: str
    status: Status = field(default_factory=Status)
    stale: str | None = None
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    lr: float | None = None
    sec_per_step: float | None = None
    eta_s: float | None = None
    mem_peak: int | None = None
    losses: tuple[tuple[int, float], ...] = ()
    stages: tuple[tuple[str, float], ...] = ()  # (stage, time it began), every attempt's
    attempts: tuple[Attempt, ...] = ()
    samples: tuple[SampleSet, ...] = ()  # by step
    eval_images: tuple[EvalImage, ...] = ()  # the final evaluation grid and any checkpoints' ones
    checkpoints: tuple[int, ...] = ()
    scores: dict[str, Any] | None = None
    queue_pos: int | None = None
    curve: tuple[dict[str, Any], ...] = ()  # the score curve as the trainer records it (core.curve)
    early_stop: dict[str, Any] | None = None
    scores_problem: str | None = None  # what scores.json lost on validation, or why it is unusable
    events_problem: str | None = None  # how many records of events.jsonl were skipped, and the first reason

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def score_curve(self) -> list[dict[str, Any]]:
        """The score curve: live from the events, else as scores.json keeps it (a folder without events)."""
        return list(self.curve) or curves.points((self.scores or {}).get("curve"))

    @property
    def best_step(self) -> int | None:
        """The curve's best step by the leaderboard's rule (None: no curve, or no face along it)."""
        return analysis.best_step(self.score_curve)

    @property
    def curve_without_faces(self) -> bool:
        """A curve was scored, but no image along it had a face (the demo's random model)."""
        curve = self.score_curve
        return bool(curve) and all(curves.value(p, FACE_DISTANCE) is None for p in curve)

    @property
    def problems(self) -> tuple[str, ...]:
        """What is wrong with the run's files, one line each (the detail shows them; nothing crashes on them)."""
        found = (self.status.damage, self.scores_problem, self.events_problem)
        return tuple(p for p in found if p)

    @property
    def latest_sample(self) -> tuple[SampleSet, int] | None:
        """The newest sample set and the index of the image to show (its first)."""
        for sset in reversed(self.samples):
            if sset.paths:
                return sset, 0
        return None

    def score(self, key: str) -> float | None:
        value = (self.scores or {}).get(key)
        if isinstance(value, list) and key in BY_KEY and BY_KEY[key].is_count:
            return len(value)  # tolerate a count given as the list of what it counts
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def faceless(self) -> int | None:
        value = self.score(FACELESS)
        return int(value) if value is not None else None


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _resolve(run: RunDir, p: Any) -> Path:
    path = Path(str(p))
    return path if path.is_absolute() else run.path / path


class RunTracker:
    """Follows one run folder. Not thread-safe: one thread polls it."""

    def __init__(self, run: RunDir, experiment: Experiment | None = None):
        self.run = run
        self.experiment = experiment
        self.view = RunView(run.name)
        self._status_key: object = _UNSET
        self._scores_key: object = _UNSET
        self._events = TailReader(run.events_jsonl)
        self._events_ino: int | None = None
        self._reset_events()

    def _reset_events(self) -> None:
        self._losses: list[tuple[int, float]] = []
        self._stages: list[tuple[str, float]] = []
        self._samples: dict[int, SampleSet] = {}
        self._eval: list[EvalImage] = []
        self._ckpts: list[int] = []
        self._last_step: dict[str, Any] = {}
        self._attempts: list[dict[str, Any]] = []
        self._curve = curves.CurveReader()
        self._problems = EventProblems()
        self._line_no = 0

    def set_experiment(self, experiment: Experiment) -> None:
        """The study file changed: judge staleness against this experiment from the next poll on."""
        self.experiment = experiment
        self._status_key = _UNSET

    def set_queue_pos(self, pos: int | None) -> bool:
        if pos == self.view.queue_pos:
            return False
        self.view = replace(self.view, queue_pos=pos)
        return True

    def poll(self) -> bool:
        """Read what changed. True when the view changed (then `self.view` is a new object)."""
        changes: dict[str, Any] = {}
        key = (_stat_key(self.run.status_json), _stat_key(self.run.run_json))
        # A status recovered from the run's lock (status.json lost while it runs) changes when the process
        # ends, which touches no file: read it again every time.
        recovered_live = self.view.status.damage is not None and self.view.state == RUNNING
        if key != self._status_key or recovered_live:
            first, self._status_key = self._status_key is _UNSET, key
            status = self.run.status()
            if first or status != self.view.status:
                changes["status"] = status
            if self.experiment is not None:
                stale = self.run.stale(self.experiment)
                if first or stale != self.view.stale:
                    changes["stale"] = stale
        key = _stat_key(self.run.scores_json)
        if key != self._scores_key:
            self._scores_key = key
            scores = self.run.read_scores()
            changes.update(scores=scores.value, scores_problem=scores.problem)
        if self._read_events():
            last = self._last_step
            changes.update(
                step=last.get("step"),
                total=last.get("total"),
                loss=last.get("loss"),
                lr=last.get("lr"),
                sec_per_step=last.get("sec_per_step"),
                eta_s=last.get("eta_s"),
                mem_peak=last.get("mem_peak"),
                losses=tuple(self._losses),
                stages=tuple(self._stages),
                attempts=tuple(
                    Attempt(a["start"], tuple(a["stages"]), a["last"], a["resumed_from"]) for a in self._attempts
                ),
                samples=tuple(v for _, v in sorted(self._samples.items())),
                eval_images=tuple(self._eval),
                checkpoints=tuple(self._ckpts),
                curve=tuple(self._curve.curve),
                early_stop=self._curve.early_stop,
                events_problem=self._problems.text(),
            )
        if not changes:
            return False
        self.view = replace(self.view, **changes)
        return True

    def _read_events(self) -> bool:
        key = _stat_key(self.run.events_jsonl)
        if key is None:
            if self._events_ino is not None:  # the file went away (the run was reset)
                self._events_ino = None
                self._events = TailReader(self.run.events_jsonl)
                self._reset_events()
                return True
            return False
        if self._events_ino is not None and (key[0] != self._events_ino or key[2] < self._events.offset):
            self._events = TailReader(self.run.events_jsonl)  # replaced or truncated: read it again
            self._reset_events()
        self._events_ino = key[0]
        lines = self._events.read_lines()  # whole lines only: a half-written one is held back
        changed = False
        for line in lines:
            self._line_no += 1
            if not line.strip():
                continue
            ev, why = parse_event(line)
            if ev is None:
                self._problems.add(self._line_no, why or "")
                changed = True
            else:
                changed |= self._apply(ev)
        return changed

    def _track_attempt(self, kind: Any, ev: dict[str, Any]) -> None:
        t = ev.get("t")
        if not isinstance(t, int | float) or isinstance(t, bool):
            return
        current = self._attempts[-1] if self._attempts else None
        if kind == "stage" and _opens_attempt(str(ev.get("stage")), current):
            current = {"start": float(t), "stages": [], "last": float(t), "resumed_from": None}
            self._attempts.append(current)
        if current is None:
            return
        current["last"] = max(current["last"], float(t))
        if kind == "stage":
            current["stages"].append((str(ev.get("stage")), float(t)))
        elif kind == "resume" and isinstance(ev.get("step"), int):
            current["resumed_from"] = ev["step"]

    def _apply(self, ev: dict[str, Any]) -> bool:
        kind = ev.get("type")
        self._track_attempt(kind, ev)
        if kind == "resume":
            return True
        if kind == "step":
            self._last_step = ev
            step, loss = ev.get("step"), ev.get("loss")
            if isinstance(step, int) and isinstance(loss, int | float):
                if self._losses and step <= self._losses[-1][0]:
                    # a resumed run replays steps after its checkpoint: the new values win
                    while self._losses and self._losses[-1][0] >= step:
                        self._losses.pop()
                self._losses.append((step, float(loss)))
                if len(self._losses) > MAX_LOSS_POINTS:
                    del self._losses[: len(self._losses) - MAX_LOSS_POINTS]
        elif kind == "stage":
            self._stages.append((str(ev.get("stage")), float(ev.get("t") or 0.0)))
        elif kind == "sample":
            step = ev.get("step")
            paths = ev.get("paths") or ([ev["path"]] if ev.get("path") else [])
            if isinstance(step, int):
                prompts = tuple(str(p) for p in ev.get("prompts") or ())
                self._samples[step] = SampleSet(step, tuple(_resolve(self.run, p) for p in paths), prompts)
        elif kind == "eval_image" and "path" in ev:
            path = _resolve(self.run, ev["path"])
            self._eval = [e for e in self._eval if e.path != path]
            ckpt = ev.get("checkpoint")
            self._eval.append(
                EvalImage(path, str(ev.get("prompt") or ""), ev.get("guidance"), ev.get("seed"),
                          ckpt if isinstance(ckpt, int) else None)
            )  # fmt: skip
        elif kind == "checkpoint" and isinstance(ev.get("step"), int):
            self._ckpts.append(ev["step"])
        else:
            return self._curve.apply(ev)
        return True


def eval_images_on_disk(run: RunDir, view: RunView) -> list[EvalImage]:
    """The evaluation images: from the events, else (an older run, a lost events file) from the folder,
    with prompts from scores.json's per-image list when it has them."""
    if view.eval_images:
        return [e for e in view.eval_images if e.checkpoint is None]
    prompts: dict[str, str] = {}
    for item in per_image(view.scores):
        name = image_name(item)
        if name:
            prompts[name] = str(item.get("prompt") or "")
    if not run.eval_dir.is_dir():
        return []
    return [EvalImage(p, prompts.get(p.name, "")) for p in sorted(run.eval_dir.glob("*.png"))]


def samples_on_disk(run: RunDir, view: RunView) -> list[SampleSet]:
    """Intermediate samples by step: from the events, else from samples/step_N/ folders."""
    if view.samples:
        return list(view.samples)
    found = []
    if run.samples_dir.is_dir():
        for d in run.samples_dir.glob("step_*"):
            suffix = d.name.removeprefix("step_")
            if suffix.isdigit():
                found.append(SampleSet(int(suffix), tuple(sorted(d.glob("*.png")))))
    return sorted(found, key=lambda s: s.step)


def image_name(item: dict[str, Any]) -> str:
    """The file name of a per-image score entry of scores.json."""
    return Path(str(item.get("image") or "")).name


def per_image(scores: dict[str, Any] | None) -> list[dict[str, Any]]:
    items = (scores or {}).get("per_image") or []
    return [i for i in items if isinstance(i, dict)]


def per_prompt(scores: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows of the per-prompt table, whether scores.json keeps them as a list or a mapping by prompt."""
    raw = (scores or {}).get("per_prompt") or []
    if isinstance(raw, dict):
        return [{"prompt": k, **v} for k, v in raw.items() if isinstance(v, dict)]
    return [r for r in raw if isinstance(r, dict)]


def outcomes_changed(seen: dict[str, tuple[str, bool]], views: dict[str, Any]) -> bool:
    """Record each run's (state, has scores) in `seen`; True when any differs from the last call. Views
    that rank finished runs re-read on this, not on every training step."""
    changed = False
    for name, view in views.items():
        outcome = (view.state, view.scores is not None)
        changed |= seen.get(name) != outcome
        seen[name] = outcome
    return changed
