"""Model reads per run of a demo sweep: how many times each model file is opened, the bytes those opens
cover, and the wall time of each stage, for every run of a small sweep trained and evaluated one after
another (the first run encodes into the sweep's cache, the next ones find it there).

    .venv/bin/python bench/model_loads.py [--runs N] [--steps S] [--no-curve] [--keep DIR]

Each run is `python -m flux_tui.engine.train RUN_DIR` under `strace -f -e trace=openat` (strace must be
installed); every successful open of a file under the workspace's models/ folder is counted. On the demo's
tiny model the bytes are small; the counts are what carries over to FLUX.1-dev, where a transformer open
reads ~24 GB and a T5 one ~9.5 GB. The script uses nothing newer than the run folder layout, so it also
measures an older checkout (PYTHONPATH pointing at it) for a before/after comparison; `--no-curve` sets
`eval_every = 0` (a setting older checkouts do not know).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
OPEN_RE = re.compile(r'openat\([^,]+, "([^"]+)", [^)]*\)\s+=\s+(\d+)')
STAGES = ("prepare", "train", "generate", "score")


def study_text(demo_toml: str, n: int, steps: int, curve: bool) -> str:
    """The demo's study with its first `n` experiments, `steps` steps each, sampling off."""
    head, _, rows = demo_toml.partition("[[experiment]]")
    head = re.sub(r"(?m)^max_train_steps = \d+$", f"max_train_steps = {steps}", head)
    head = re.sub(r"(?m)^sample_every = \d+$", "sample_every = 0", head)
    if not curve:
        head = head.replace("[defaults]\n", "[defaults]\neval_every = 0\n", 1)
    blocks = ["[[experiment]]" + b for b in rows.split("[[experiment]]")][:n]
    blocks = [re.sub(r"(?m)^max_train_steps = \d+$", f"max_train_steps = {steps}", b) for b in blocks]
    return head + "".join(blocks)


def opens(trace: Path, models: Path) -> Counter[str]:
    """Successful opens of files under `models` (strace writes one line per call, children included)."""
    root = str(models.resolve())
    found: Counter[str] = Counter()
    for line in trace.read_text(errors="replace").splitlines():
        m = OPEN_RE.search(line)
        if m and m.group(1).startswith(root + "/"):
            found[m.group(1)[len(root) + 1 :]] += 1
    return found


def stage_times(run_dir: Path) -> dict[str, float]:
    """Seconds per stage, from the run's `stage` events and its end in status.json."""
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    marks = [(e["stage"], e["t"]) for e in events if e.get("type") == "stage"]
    end = json.loads((run_dir / "status.json").read_text()).get("finished_at") or marks[-1][1]
    out: dict[str, float] = {}
    for i, (stage, t) in enumerate(marks):
        nxt = marks[i + 1][1] if i + 1 < len(marks) else end
        out[stage] = out.get(stage, 0.0) + nxt - t
    return out


def run_one(ws: Path, name: str, trace: Path) -> tuple[int, float]:
    cmd = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace),
           sys.executable, "-m", "flux_tui.engine.train", str(ws / "runs" / name)]  # fmt: skip
    t0 = time.perf_counter()
    # From the workspace: `python -m` puts the current folder first on sys.path, so a checkout's folder
    # would shadow the code PYTHONPATH names.
    code = subprocess.call(cmd, cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return code, time.perf_counter() - t0


def report(name: str, found: Counter[str], models: Path, stages: dict[str, float], wall: float) -> None:
    weights = {k: v for k, v in found.items() if k.endswith(WEIGHTS)}
    covered = sum((models / k).stat().st_size * v for k, v in weights.items())
    print(f"\n{name}: {sum(found.values())} opens under models/ ({sum(weights.values())} of weight files, "
          f"{covered / 1e6:.1f} MB of weights opened); {wall:.1f} s in all")  # fmt: skip
    for path, count in sorted(weights.items()):
        print(f"  {count:3d} x {path}  ({(models / path).stat().st_size / 1e6:.2f} MB)")
    print("  stages: " + ", ".join(f"{s} {stages[s]:.1f} s" for s in STAGES if s in stages))


def main() -> None:
    from flux_tui.core import config, runs
    from flux_tui.engine.demo import build_demo_workspace

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the sweep (default 3)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (default 12)")
    parser.add_argument("--no-curve", action="store_true", help="eval_every = 0 (no evaluation while training)")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temp folder)")
    args = parser.parse_args()
    if not shutil.which("strace"):
        sys.exit("bench/model_loads.py needs strace (apt-get install strace)")
    ws = args.keep or Path(tempfile.mkdtemp(prefix="bench-loads-")) / "ws"
    build_demo_workspace(ws, force=True)
    toml = ws / "experiments.toml"
    toml.write_text(study_text(toml.read_text(), args.runs, args.steps, curve=not args.no_curve))
    study = config.load(toml)
    models = ws / "models"
    print(f"{len(study.experiments)} run(s) of {args.steps} steps, one after another, in {ws}")
    totals: Counter[str] = Counter()
    for exp in study.experiments:
        run = runs.prepare(study, exp)
        trace = ws / f"strace-{exp.name}.txt"
        code, wall = run_one(ws, exp.name, trace)
        if code != 0:
            sys.exit(f"{exp.name} exited {code}; see {run.train_log}")
        found = opens(trace, models)
        totals.update(found)
        report(exp.name, found, models, stage_times(run.path), wall)
    weights = sorted(k for k in totals if k.endswith(WEIGHTS))
    print(f"\nweight-file opens over the {len(study.experiments)} runs: "
          + ", ".join(f"{Path(k).parent} {totals[k]}" for k in weights))  # fmt: skip


if __name__ == "__main__":
    main()
