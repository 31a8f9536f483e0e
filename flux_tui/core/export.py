"""`flux-tui export`: every run with its hyperparameters, state, timings and scores, as CSV, JSON or Markdown."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from flux_tui.core.results import RunRecord

FORMATS = ("csv", "json", "md")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return " ".join(_cell(x) for x in v)
    return str(v)


def render(records: list[RunRecord], fmt: str) -> str:
    rows = [r.flat() for r in records]
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    columns = list(rows[0]) if rows else ["name"]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
