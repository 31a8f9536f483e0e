"""`flux-tui status`: every run's state, stage, progress, device, owner and scores, as a table or JSON."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from flux_tui.core.config import Study
from flux_tui.core.metrics import HEADLINE, NO_FACE, SCORE_KEYS
from flux_tui.core.results import RunRecord, collect
from flux_tui.core.runs import QUEUED, RUNNING, STATES, Status

NOTE_WIDTH = 60


def rows(study: Study, statuses: dict[str, Status], queue: list[str]) -> list[dict[str, Any]]:
    """One record per run (the study's in file order, then other folders); `statuses` are the reconciled
    ones, `queue` the queued runs in the order they will start."""
    position = {name: i + 1 for i, name in enumerate(queue)}
    out = []
    for rec in collect(study):
        st = statuses.get(rec.name, rec.status)
        out.append(_row(rec, st, position.get(rec.name)))
    return out


def _row(rec: RunRecord, st: Status, queue_position: int | None) -> dict[str, Any]:
    owned = st.state == RUNNING or st.job_id
    return {
        "name": rec.name,
        "number": rec.number,
        "state": st.state,
        "stage": st.stage if st.state == RUNNING else None,
        "step": rec.timings.get("step"),
        "total_steps": rec.timings.get("total_steps") or rec.hp("max_train_steps"),
        "device": st.device if owned else None,
        "node": st.host if owned and st.job_id else None,  # a batch job's compute node
        "executor": st.executor,
        "pid": st.pid if st.state == RUNNING else None,
        "job_id": st.job_id,
        "job_state": st.job_state if st.job_id else None,  # Slurm's word for the job (PENDING, RUNNING, ...)
        "job_reason": st.job_reason if st.job_id else None,  # why it waits (Resources, Priority, ...)
        "queue_position": queue_position if st.state == QUEUED else None,
        "message": st.message,
        "damage": st.damage,  # why a `damaged` run's status.json or run.json cannot be trusted
        "recovered": st.recovered,  # the state its other files prove (done: scores.json holds scores)
        "problems": rec.problems,  # what is wrong with its files, damage included
        "started_at": st.started_at,
        "finished_at": st.finished_at,
        **{key: _number((rec.scores or {}).get(key)) for key in SCORE_KEYS},
    }


def _number(value: Any) -> int | float | None:
    """A score as scores.json has it (a count stays an int), or None for anything that is not a number."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def to_json(table: list[dict[str, Any]]) -> str:
    return json.dumps(table, indent=2) + "\n"


def _cell(row: dict[str, Any]) -> list[str]:
    state = f"{row['state']}:{row['stage']}" if row["stage"] else row["state"]
    if row["recovered"]:
        state += f" ({row['recovered']})"
    if row["queue_position"]:
        state += f" #{row['queue_position']}"
    step = f"{row['step'] or 0}/{row['total_steps']}" if row["total_steps"] else ""
    owner = f"job {row['job_id']}" if row["job_id"] else (f"pid {row['pid']}" if row["pid"] else "")
    device = ":".join(d for d in (row["node"], row["device"]) if d)  # node7:cuda:0 for a batch job
    scored = any(row[key] is not None for key in SCORE_KEYS)
    scores = [m.format(row[m.key], missing=NO_FACE if scored and m.needs_face else "") for m in HEADLINE]
    note = row["damage"] or row["message"]  # a damaged run: the reason first (the JSON has the rest)
    note = note if len(note) <= NOTE_WIDTH else note[: NOTE_WIDTH - 1] + "…"
    return [str(row["number"] or ""), row["name"], state, step, device, owner, *scores, note]


def to_text(table: list[dict[str, Any]]) -> str:
    headers = ["#", "name", "state", "step", "device", "pid/job", *(m.heading for m in HEADLINE), "note"]
    cells = [_cell(r) for r in table]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def summary(table: list[dict[str, Any]]) -> str:
    """`2 running, 4 queued, 1 done`: how many runs are in each state, in the states' order."""
    counts = Counter(row["state"] for row in table)
    order = [RUNNING, QUEUED, *(s for s in STATES if s not in (RUNNING, QUEUED))]
    return ", ".join(f"{counts[state]} {state}" for state in order if counts[state])
