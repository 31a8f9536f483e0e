"""A stand-in for `python -m flux_tui.engine.train RUN_DIR` in the scheduler's tests: the same folder
protocol (status, step events, SIGTERM/SIGINT/SIGHUP -> cancelled) in a second instead of half a minute of model loading.

    python tests/standin_trainer.py RUN_DIR      STANDIN_STEPS (default 20), STANDIN_SLEEP (default 0.05)

A stop saves `checkpoints/checkpoint-<steps done>/` (an empty folder) unless STANDIN_NO_CHECKPOINT is set.

It records its environment's CUDA_VISIBLE_DEVICES and appends its run name to $STANDIN_LAUNCHES (if set),
so a test can see where a run went and how often it was started."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from flux_tui.core.runs import CANCELLED, DONE, RunDir


def main() -> int:
    run = RunDir(Path(sys.argv[1]))
    steps = int(os.environ.get("STANDIN_STEPS", "20"))
    pause = float(os.environ.get("STANDIN_SLEEP", "0.05"))
    if os.environ.get("STANDIN_CRASH"):
        return int(os.environ["STANDIN_CRASH"])  # dies before saying anything, like an import error
    (run.path / "standin_env.json").write_text(
        json.dumps({"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})
    )
    if os.environ.get("STANDIN_LAUNCHES"):
        with open(os.environ["STANDIN_LAUNCHES"], "a") as fh:
            fh.write(f"{run.name} {os.getpid()}\n")
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the trainer's stop signals
        signal.signal(sig, lambda signum, _: stop.append(signum))
    status = run.status()
    run.mark_started("train", device=status.device)
    start = len(list(run.iter_events("step")))
    for step in range(start + 1, steps + 1):
        if stop:
            if not os.environ.get("STANDIN_NO_CHECKPOINT"):  # like a trainer stopped before training
                (run.checkpoints_dir / f"checkpoint-{step - 1}").mkdir(parents=True, exist_ok=True)
                run.append_event("checkpoint", step=step - 1, path=f"checkpoints/checkpoint-{step - 1}")
            name = signal.Signals(stop[0]).name
            run.mark_finished(CANCELLED, f"stopped by {name} at step {step - 1}", 128 + stop[0])
            print(f"cancelled at step {step - 1}", flush=True)
            return 128 + stop[0]
        time.sleep(pause)
        run.append_event(
            "step", step=step, total=steps, loss=1.0 / step, lr=1e-4, sec_per_step=pause, eta_s=0.0
        )
        print(f"step {step}/{steps}", flush=True)
    run.mark_finished(DONE, "trained", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
