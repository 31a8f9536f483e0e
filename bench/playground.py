"""The playground on the demo workspace: engine start-up, the first prompt (pipeline load + generation +
scoring) against the following ones (generation + scoring only), and the cost of swapping a LoRA weight.

    .venv/bin/python bench/playground.py [WORKSPACE] [--prompts N]   (default: a fresh demo workspace)

Figures come from the engine's own timings (`timings` of each answer), plus the wall time the client saw.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flux_tui.core import config
from flux_tui.core.playground_client import PlaygroundClient


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace", nargs="?")
    parser.add_argument("--prompts", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-playground-"))
    if args.workspace:
        root = Path(args.workspace)
    else:
        from flux_tui.engine.demo import build_demo_workspace  # torch only for building it

        root = build_demo_workspace(tmp / "ws")
    s = config.load(root / "experiments.toml").experiments[0].settings
    client = PlaygroundClient(tmp)
    t = time.perf_counter()
    client.start()
    client.ready.wait(120)
    print(f"engine ready (python up, no torch yet)    {time.perf_counter() - t:7.2f} s")
    client.call("configure", timeout=600, workspace=str(tmp), base_model=s.base_model, clip_model=s.clip_model,
                face_weights=s.face_weights)  # fmt: skip
    t = time.perf_counter()
    client.call("add_reference", paths=[s.data_dir], timeout=600)
    print(f"add 6 reference photos (face model load) {time.perf_counter() - t:7.2f} s")
    size = s.eval_resolution or s.resolution
    walls, gens = [], []
    for i in range(args.prompts):
        t = time.perf_counter()
        r = client.call("generate", prompt=f"a photo of cr7man {i}", seed=i, steps=s.num_inference_steps,
                        width=size, height=size, max_sequence_length=s.max_sequence_length, timeout=600)  # fmt: skip
        wall = time.perf_counter() - t
        tm = r["timings"]
        print(f"prompt {i + 1}: wall {wall:6.2f} s = load {tm['load_s']:6.2f} + generate {tm['generate_s']:5.2f} "
              f"+ score {tm['score_s']:5.2f} (pipeline loads so far: {r['counters']['pipeline_loads']})")  # fmt: skip
        if i:
            walls.append(wall)
            gens.append(tm["generate_s"])
    if walls:
        print(f"after the first: median wall {statistics.median(walls):.2f} s per prompt "
              f"({size}px, {s.num_inference_steps} steps), generation {statistics.median(gens):.2f} s")  # fmt: skip
    t = time.perf_counter()
    client.close()
    print(f"shutdown                                 {time.perf_counter() - t:7.2f} s")


if __name__ == "__main__":
    main()
