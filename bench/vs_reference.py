"""flux-tui's training step against diffusers' reference script, side by side. Prints figures; asserts nothing.

    python bench/vs_reference.py PATH/TO/train_dreambooth_lora_flux.py [--repeats 3] [--threads N]

It fetches nothing. The reference is diffusers' `examples/dreambooth/train_dreambooth_lora_flux.py`; take it
from a diffusers git checkout at the installed version (`python -c "import diffusers;
print(diffusers.__version__)"`):

    git clone https://github.com/huggingface/diffusers && cd diffusers && git checkout v<version>
    # the script is examples/dreambooth/train_dreambooth_lora_flux.py; it also needs torchvision

Both train on the demo's tiny FLUX model (built offline in a temp folder, or --workspace) with the same
settings: 64 px, batch 1, LoRA rank 4 and alpha 4 on to_q/to_k/to_v/to_out.0, AdamW lr 1e-4 constant,
max grad norm 1, T5 sequence 32, latents cached, fp32 on the CPU, no checkpoints, samples or evaluation.
flux-tui runs as the dashboard starts it (`python -m flux_tui.engine.train RUN --no-eval`, the sweep's cache
already holding the latents); the reference under `accelerate launch --cpu`. Each is timed as a whole process
at 50 and at 450 steps; the marginal step is (time at 450 - time at 50) / 400: what one more step costs,
start-up and the final save cancelled out. Runs alternate (ours 50, ours 450, reference 50, reference 450)
so that a busy machine slows both alike; the figures are medians over --repeats.
--long N times the longer run at N steps instead of 450: where the machine's speed drifts from one
minute to the next (a shared VM), a few seconds of drift swamp 400 steps of a tiny model, and more steps
make the marginal step steadier.

Takes about 1.5 minutes per repeat on an idle 2-core machine (4.5 minutes with the default 3).
--compile runs flux-tui with `torch_compile = true` (each of its processes compiles the transformer's
blocks first; the wait is part of the start-up, which the marginal step cancels out).
--threads sets OMP_NUM_THREADS for both (on a machine shared with other work, 1 gives steadier figures:
oversubscribed OpenMP threads spin and slow tiny models tenfold).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from code_under_test import describe

SHORT, LONG = 50, 450  # the step counts; --long raises the second on a noisy machine
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The experiments' shared settings (the demo's [defaults] supplies the models and the photos).
OURS = """\
learning_rate = 1e-4
lr_scheduler = "constant"
lr_warmup_steps = 0
lora_rank = 4
lora_alpha = 4
lora_target_modules = ["to_q", "to_k", "to_v", "to_out.0"]
max_sequence_length = 32
resolution = 64
train_batch_size = 1
gradient_accumulation_steps = 1
random_flip = false
mixed_precision = "no"
checkpointing_steps = 100000
sample_every = 0
seed = 42
"""


def study_text(demo_toml: str, compile_blocks: bool = False, long: int = LONG) -> str:
    """The demo's study file with its experiments replaced by one per step count."""
    head = demo_toml.split("[[experiment]]")[0]
    ours = OURS + f"torch_compile = {str(compile_blocks).lower()}\n"
    experiments = "".join(f'\n[[experiment]]\nname = "steps{n}"\nmax_train_steps = {n}\n{ours}'
                          for n in (1, SHORT, long))  # fmt: skip
    return head + experiments


def reference_args(script: Path, workspace: Path, out: Path, steps: int) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    return [*launch, str(script),
            "--pretrained_model_name_or_path", str(workspace / "models" / "tiny-flux"),
            "--instance_data_dir", str(workspace / "photos"), "--instance_prompt", "a photo of cr7man",
            "--resolution", "64", "--train_batch_size", "1", "--rank", "4", "--lora_alpha", "4",
            "--lora_layers", ",".join(f"attn.{t}" for t in TARGETS),
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--max_sequence_length", "32", "--cache_latents", "--guidance_scale", "3.5", "--seed", "42",
            "--max_train_steps", str(steps), "--checkpointing_steps", "100000", "--output_dir", str(out)]  # fmt: skip


class Timing(NamedTuple):
    wall: float  # seconds from spawn to exit
    cpu: float  # CPU seconds of the process tree (user + system): steadier than wall on a busy machine


class Bench:
    def __init__(self, script: Path, workspace: Path, tmp: Path, env: dict[str, str]) -> None:
        self.script, self.workspace, self.tmp, self.env = script, workspace, tmp, env
        from flux_tui.core import config

        self.study = config.load(workspace / "experiments.toml")

    def ours(self, steps: int) -> Timing:
        """Seconds for the trainer's whole process on a fresh run folder of `steps` steps."""
        from flux_tui.core import runs

        exp = next(e for e in self.study.experiments if e.name == f"steps{steps}")
        shutil.rmtree(runs.run_dir(self.study, exp.name).path, ignore_errors=True)
        run = runs.prepare(self.study, exp)
        return self._timed([sys.executable, "-m", "flux_tui.engine.train", str(run.path), "--no-eval"],
                           f"flux-tui {steps} steps", run.train_log)  # fmt: skip

    def reference(self, steps: int) -> Timing:
        out = self.tmp / f"reference-{steps}"
        shutil.rmtree(out, ignore_errors=True)
        return self._timed(reference_args(self.script, self.workspace, out, steps), f"reference {steps} steps",
                           self.tmp / f"reference-{steps}.log")  # fmt: skip

    def _timed(self, argv: list[str], what: str, log: Path) -> Timing:
        cpu0, t0 = _children_cpu(), time.perf_counter()
        with open(log, "a", encoding="utf-8") as fh:
            done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env, check=False,
                                  cwd=self.workspace)  # fmt: skip
        timing = Timing(time.perf_counter() - t0, _children_cpu() - cpu0)
        if done.returncode:
            raise SystemExit(f"{what} failed (exit {done.returncode}); its output is in {log}")
        return timing


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process and their children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_reference(script: Path) -> None:
    """Say which diffusers the script asks for against the installed one, and what it needs."""
    import diffusers

    if not script.is_file():
        raise SystemExit(f"{script}: no such file (see `python {sys.argv[0]} --help` for how to get it)")
    wanted = re.search(r'check_min_version\("([^"]+)"\)', script.read_text(encoding="utf-8"))
    print(f"reference: {script} (asks for diffusers >= {wanted.group(1) if wanted else '?'}; "
          f"installed {diffusers.__version__})")  # fmt: skip
    if importlib.util.find_spec("torchvision") is None:
        raise SystemExit("the reference script needs torchvision: pip install torchvision")
    if importlib.util.find_spec("tensorboard") is not None:
        print("note: tensorboard is installed, so the reference also logs each step to it (its default)")


def summary(name: str, short: list[Timing], long: list[Timing], steps: int) -> tuple[float, float]:
    """Print and return the marginal step, (wall, cpu) seconds, from the medians."""
    out = []
    for kind in ("wall", "cpu"):
        s = statistics.median(getattr(t, kind) for t in short)
        lg = statistics.median(getattr(t, kind) for t in long)
        out.append((lg - s) / (steps - SHORT))
        print(f"{name:9s} {kind:4s}: {SHORT} steps {s:6.2f} s, {steps} steps {lg:6.2f} s  ->  marginal step "
              f"{out[-1] * 1000:6.2f} ms")  # fmt: skip
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path, help="diffusers' examples/dreambooth/train_dreambooth_lora_flux.py")
    parser.add_argument("--workspace", type=Path, help="a built demo workspace to copy (default: build one)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per program and length (default 3)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="flux-tui with torch_compile = true (the "
                        "reference has no such option; the compile time cancels out like the start-up)")
    parser.add_argument("--long", type=int, default=LONG, help=f"the longer run's steps (default {LONG}; more "
                        "steps make the marginal step steadier where the machine's speed drifts)")
    args = parser.parse_args()
    check_reference(args.reference.resolve())
    print(describe())
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", FLUX_TUI_OFFLINE="1")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory(prefix="flux-tui-vs-ref-") as tmp_name:
        tmp = Path(tmp_name)
        if args.workspace is None:
            from flux_tui.engine.demo import build_demo_workspace

            args.workspace = build_demo_workspace(tmp / "demo")
        ws = tmp / "ws"
        shutil.copytree(args.workspace, ws, ignore=shutil.ignore_patterns("runs", ".flux-tui"))
        toml = ws / "experiments.toml"
        toml.write_text(study_text(toml.read_text(encoding="utf-8"), args.compile, args.long), encoding="utf-8")
        bench = Bench(args.reference.resolve(), ws, tmp, env)
        bench.ours(1)  # fills the sweep's cache: every timed run reads its latents and prompt from it
        times: dict[str, list[Timing]] = {"ours50": [], "ours_long": [], "ref50": [], "ref_long": []}
        for i in range(args.repeats):
            times["ours50"].append(bench.ours(SHORT))
            times["ours_long"].append(bench.ours(args.long))
            times["ref50"].append(bench.reference(SHORT))
            times["ref_long"].append(bench.reference(args.long))
            print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v[-1].wall:.2f} s ({v[-1].cpu:.2f} s CPU)" for k, v in times.items()), flush=True)  # fmt: skip
    print(f"medians of {args.repeats}; wall = spawn to exit, cpu = CPU time of the process tree")
    ours = summary("flux-tui", times["ours50"], times["ours_long"], args.long)
    ref = summary("reference", times["ref50"], times["ref_long"], args.long)
    start = [statistics.median(t.wall for t in times[k]) for k in ("ours50", "ref50")]
    print(f"ratio flux-tui / reference, marginal step: {ours[0] / ref[0]:.2f}x wall, {ours[1] / ref[1]:.2f}x CPU   "
          f"(start-up plus {SHORT} steps: {start[0]:.1f} s vs {start[1]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
