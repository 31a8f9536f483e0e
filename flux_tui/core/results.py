"""One record per run folder: hyperparameters, state, timings and scores, as tables and exports read them.

Real runs come from the study file, in its order; other folders under runs/ (the ablation's pseudo-runs,
runs of experiments since removed from the file) follow, so nothing on disk is hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flux_tui.core.config import Study
from flux_tui.core.metrics import EXPORT_KEYS
from flux_tui.core.runfiles import EventProblems
from flux_tui.core.runs import RunDir, Status, elapsed, run_dir

HYPERPARAMETERS = ("learning_rate", "lora_rank", "lora_alpha", "max_train_steps", "lr_scheduler", "resolution")


@dataclass
class RunRecord:
    name: str
    number: int | None
    group: str
    kind: str  # "experiment", or what a pseudo-run's run.json says (e.g. "ablation")
    config: dict[str, Any]
    status: Status
    scores: dict[str, Any] | None
    stale: str | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    run: RunDir | None = None
    problems: list[str] = field(default_factory=list)  # what is wrong with its files (damage, bad values)

    def hp(self, key: str) -> Any:
        """A hyperparameter as the run used it (alpha unset means alpha = rank)."""
        if key == "lora_alpha" and self.config.get("lora_alpha") is None:
            return self.config.get("lora_rank")
        return self.config.get(key)

    def score(self, key: str) -> float | None:
        if not self.scores:
            return None
        value = self.scores.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def flat(self) -> dict[str, Any]:
        """One flat row for CSV/JSON/Markdown exports."""
        row: dict[str, Any] = {"name": self.name, "number": self.number, "group": self.group, "kind": self.kind}
        row.update({k: self.hp(k) for k in HYPERPARAMETERS})
        row["guidance_scales"] = self.config.get("guidance_scales")
        row["state"] = self.status.state
        row["stale"] = self.stale or ""
        row["problems"] = "; ".join(self.problems)
        row.update(self.timings)
        for key in ("started_at", "finished_at"):  # readable in a table, still parseable
            if isinstance(row.get(key), int | float):
                row[key] = datetime.fromtimestamp(row[key], tz=UTC).isoformat(timespec="seconds")
        for key in EXPORT_KEYS:
            row[key] = self.scores.get(key) if self.scores else None
        return row


def _timings(run: RunDir, status: Status, problems: EventProblems | None = None) -> dict[str, float | None]:
    steps = list(run.iter_events("step", problems=problems))
    last = steps[-1] if steps else {}
    return {
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "duration_s": elapsed(status),
        "step": last.get("step"),
        "total_steps": last.get("total"),
        "sec_per_step": last.get("sec_per_step"),
        "final_loss": last.get("loss"),
    }


TRAINING_HP = ("learning_rate", "lora_rank", "lora_alpha", "max_train_steps", "lr_scheduler")


def record(run: RunDir, *, number: int | None = None, group: str = "", stale: str | None = None) -> RunRecord:
    meta = run.read_run() or {}
    status = run.status()
    scores = run.read_scores()
    events = EventProblems()
    timings = _timings(run, status, events)
    kind = meta.get("kind", "experiment")
    cfg = dict(meta.get("config", {}))
    number = number if number is not None else meta.get("number")
    if kind != "experiment":
        number = None  # a pseudo-run is not one of the study's numbered experiments
        if run.lora_source() is None:  # the base model alone: no training hyperparameter applies to it
            cfg = {k: v for k, v in cfg.items() if k not in TRAINING_HP}
    return RunRecord(
        name=run.name,
        number=number,
        group=group or meta.get("group", ""),
        kind=kind,
        config=cfg,
        status=status,
        scores=scores.value,
        stale=stale,
        timings=timings,
        run=run,
        problems=[p for p in (status.damage, scores.problem, events.text()) if p],
    )


def collect(study: Study) -> list[RunRecord]:
    """Every run of the study (in file order, with or without a folder) and every other run folder."""
    records = []
    for exp in study.experiments:
        run = run_dir(study, exp.name)
        rec = record(run, number=exp.number, group=exp.group, stale=run.stale(exp))
        if not rec.config:
            rec.config = exp.config_dict()  # not launched yet: what it will run with
        records.append(rec)
    known = set(study.names)
    root = study.workspace.runs_dir
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.name not in known and (path / "run.json").exists():
                records.append(record(RunDir(path)))
    return records
