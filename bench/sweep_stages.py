"""Where the time of a sweep's runs goes, stage by stage: the first run of the demo sweep (empty caches) against
the next ones (crops, latents and prompt embeddings cached). Prints figures; asserts nothing.

    python bench/sweep_stages.py [--workspace DIR] [--runs 2] [--no-eval]

Each run is the trainer's whole process, as the dashboard starts it (`python -m flux_tui.engine.train RUN`),
on a fresh copy of the demo workspace (built offline in a temp folder, or --workspace). The stages come from
the run's events.jsonl:

    start-up   spawn to the `prepare` stage: Python, torch, taking ownership of the run
    prepare    to the `cache` record: photos cropped (or read from the crop cache), latents and prompt
               embeddings encoded (or read from the sweep's cache)
    model      to the `train` stage: peft, transformers and diffusers imported, transformer loaded, LoRA added
    train      to the `generate` stage (or the exit with --no-eval): the steps, checkpoints, samples, export
    generate   the evaluation's images;  score: scoring them, and the exit

A second run prepares in a fraction of a second; the libraries the model needs (peft, transformers, diffusers)
then import in `model` instead, so compare `to train` (start-up + prepare + model) too. It also counts what
the prepare stage made rather than read: crops (files added to the crop cache, so MTCNN ran) and encodes (the
`cache` record). Takes about a minute per run on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from code_under_test import describe

STAGES = ("start-up", "prepare", "model", "train", "generate", "score")


def stage_times(events: list[dict], spawned: float, ended: float) -> dict[str, float]:
    """Seconds per stage from the run's events (wall clock: `t` is time.time())."""
    marks = {"spawn": spawned}
    for e in events:
        if e.get("type") == "stage" and e.get("stage") not in marks:
            marks[e["stage"]] = e["t"]
        elif e.get("type") == "cache" and "cache" not in marks:
            marks["cache"] = e["t"]
    marks["exit"] = ended
    order = [("start-up", "spawn", "prepare"), ("prepare", "prepare", "cache"), ("model", "cache", "train"),
             ("train", "train", "generate"), ("generate", "generate", "score"), ("score", "score", "exit")]  # fmt: skip
    times = {}
    for name, start, end in order:
        if start in marks:
            stop = marks.get(end, ended if name == "train" else None)
            if stop is not None:
                times[name] = stop - marks[start]
    return times


def run_once(ws: Path, name: str, no_eval: bool) -> tuple[dict[str, float], dict, int]:
    from flux_tui.core import config, runs

    study = config.load(ws / "experiments.toml")
    run = runs.prepare(study, study.get(name))
    crops = ws / ".flux-tui" / "cache" / "crops"
    before = len(list(crops.glob("*.png"))) if crops.is_dir() else 0
    argv = [sys.executable, "-m", "flux_tui.engine.train", str(run.path), *(["--no-eval"] if no_eval else [])]
    spawned = time.time()
    with open(run.train_log, "a", encoding="utf-8") as log:
        # cwd: the workspace, as the dashboard's launch; never the checkout, whose flux_tui `-m` would put
        # first on sys.path ahead of PYTHONPATH (which is how a comparison picks the code to run)
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=ws)
    ended = time.time()
    if done.returncode:
        raise SystemExit(f"{name} failed (exit {done.returncode}); see {run.train_log}")
    events = list(run.iter_events())
    cache = next((e for e in events if e.get("type") == "cache"), {})
    made = len(list(crops.glob("*.png"))) - before if crops.is_dir() else 0
    return stage_times(events, spawned, ended), cache, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="a built demo workspace to copy (default: build one)")
    parser.add_argument("--runs", type=int, default=2, help="how many of the sweep's runs, in order (default 2)")
    parser.add_argument("--no-eval", action="store_true", help="train only (no generate and score stages)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flux-tui-stages-") as tmp:
        if args.workspace is None:
            from flux_tui.engine.demo import build_demo_workspace

            args.workspace = build_demo_workspace(Path(tmp) / "demo")
        ws = Path(tmp) / "ws"
        shutil.copytree(args.workspace, ws, ignore=shutil.ignore_patterns("runs", ".flux-tui"))
        from flux_tui.core import config

        names = [e.name for e in config.load(ws / "experiments.toml").experiments][: args.runs]
        print(describe())
        print(f"{'run':8s}" + "".join(f"{s:>10s}" for s in STAGES) + f"{'total':>10s}{'to train':>10s}   made in prepare")
        for i, name in enumerate(names, 1):
            times, cache, crops = run_once(ws, name, args.no_eval)
            cells = "".join(f"{times[s]:9.2f}s" if s in times else f"{'-':>10s}" for s in STAGES)
            made = (f"{crops} crops, {cache.get('latents_encoded', '?')} latents, "
                    f"{cache.get('text_encoded', '?')} prompts")  # fmt: skip
            ready = sum(times.get(s, 0.0) for s in STAGES[:3])
            print(f"{i}. {name:5s}{cells}{sum(times.values()):9.2f}s{ready:9.2f}s   {made}", flush=True)
    print("wall seconds per stage (see the docstring); 'to train' = start-up + prepare + model, the wait before the "
          "first step; 'made' counts what was computed rather than read from a cache")
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
