"""What one training step of the demo model is made of: the transformer's own work against everything else.
Prints figures; asserts nothing.

    python bench/step_floor.py [--workspace DIR] [--steps N] [--threads N]

Runs the trainer's own code in this process on the demo's tiny model (64 px, rank 4, lr 1e-4 constant, T5
sequence 32, latents cached: bench/vs_reference.py's settings) and times, per step, medians of five rounds:
  draw            the micro-batch's random draw (`Batches.draw`)
  forward         the transformer's forward pass and the loss, no gradients
  forward+backward  the same with gradients: the model's own work, the floor of any step
  train_step      the trainer's whole step (`train_model.train_step`: draw, forward, backward, clip, AdamW, LR)
The difference between the last two is what the trainer adds around the model. vs_reference.py's marginal
step also counts the loop around `train_step` (events, reports): compare its figure with these.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from code_under_test import describe
from vs_reference import OURS

# vs_reference.py's settings, so the two benches' figures can be read side by side.
SETTINGS = f'\n[[experiment]]\nname = "floor"\nmax_train_steps = 100000\n{OURS}'


def per_step(fn: Callable[[], object], steps: int) -> float:
    """Milliseconds per call: the median of five rounds of `steps` calls, after a warm-up."""
    for _ in range(10):
        fn()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        rounds.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, help="a built demo workspace (default: build one)")
    parser.add_argument("--steps", type=int, default=100, help="steps per round (default 100)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="with torch_compile = true (the warm-up "
                        "waits for the compiler, once with gradients and once without)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from flux_tui.core import config, runs
    from flux_tui.engine import train_model, train_prepare

    print(describe())
    with tempfile.TemporaryDirectory(prefix="flux-tui-floor-") as tmp:
        ws = Path(tmp) / "ws"
        if args.workspace is None:
            from flux_tui.engine.demo import build_demo_workspace

            build_demo_workspace(ws)
        else:
            shutil.copytree(args.workspace, ws, ignore=shutil.ignore_patterns("runs", ".flux-tui"))
        toml = ws / "experiments.toml"
        toml.write_text(
            toml.read_text(encoding="utf-8").split("[[experiment]]")[0] + SETTINGS
            + f"torch_compile = {str(args.compile).lower()}\n", encoding="utf-8",
        )  # fmt: skip
        study = config.load(toml)
        run = runs.prepare(study, study.experiments[0])
        settings = config.settings_from_dict(run.config())
        t = train_model.build(run, settings, train_prepare.prepare(run, settings, "cpu"), "cpu")
        step = iter(range(1, 10**9))

        def forward() -> None:
            with torch.no_grad():
                train_model._loss(t, 0)

        figures = {
            "draw": per_step(lambda: t.batches.draw(0), args.steps),
            "forward": per_step(forward, args.steps),
            "forward+backward": per_step(lambda: train_model._loss(t, 0).backward(), args.steps),
            "train_step": per_step(lambda: train_model.train_step(settings, t, next(step)), args.steps),
        }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"{'compiled blocks' if args.compile else 'eager'}, ms per step (median of 5 rounds)")  # fmt: skip
    for name, ms in figures.items():
        print(f"  {name:17s} {ms:7.2f} ms")
    around = figures["train_step"] - figures["forward+backward"]
    share = figures["forward+backward"] / figures["train_step"]
    print(f"the model's own work is {share:.0%} of the step; the trainer adds {around:.2f} ms around it")


if __name__ == "__main__":
    sys.exit(main())
