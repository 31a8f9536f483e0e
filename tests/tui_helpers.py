"""Run folders made by hand for the dashboard's tests, screenshots and benchmark: a small study file and
runs in every state, written through RunDir as the trainer and the evaluation write them."""

from __future__ import annotations

import functools
import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Static

from flux_tui.core import config, runs
from flux_tui.core.fsutil import atomic_write_json
from flux_tui.core.runs import RunDir
from flux_tui.core.telemetry import GiB, GpuStat, HostStat, Sample
from flux_tui.tui.feeds import LiveFeeds

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: fixed times make screenshots repeatable

STUDY_TOML = """\
[workspace]
runs_per_gpu = {runs_per_gpu}

[defaults]
base_model = "models/tiny-flux"
data_dir = "photos"
resolution = 64
max_train_steps = 40
lr_scheduler = "cosine"
sample_every = 10
eval_prompts = ["a photo of cr7man", "cr7man smiling at camera", "cr7man in a suit", "portrait of cr7man"]

[[experiment]]
number = 1
name = "exp01"
group = "Extreme parameters"
learning_rate = 1e-3
lora_rank = 8
max_train_steps = 20

[[experiment]]
number = 2
name = "exp02"
group = "Extreme parameters"
learning_rate = 1e-4
lora_rank = 32

[[experiment]]
number = 3
name = "exp03"
group = "Fixed-step variations"
learning_rate = 5e-4
lora_rank = 16

[[experiment]]
number = 4
name = "exp04"
group = "LR scheduler impact"
learning_rate = 5e-4
lora_rank = 16
lr_scheduler = "constant"

[[experiment]]
number = 5
name = "exp05"
group = "Step count effects"
learning_rate = 5e-4
lora_rank = 16
max_train_steps = 30

[[experiment]]
number = 6
name = "exp06"
group = "Step count effects"
learning_rate = 1e-3
lora_rank = 32
"""


def make_study(root: Path, runs_per_gpu: int = 1) -> config.Study:
    root.mkdir(parents=True, exist_ok=True)
    (root / "photos").mkdir(exist_ok=True)
    (root / "experiments.toml").write_text(STUDY_TOML.format(runs_per_gpu=runs_per_gpu))
    return config.load(root / "experiments.toml")


@functools.cache
def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def face_image(seed: int, size: int = 64) -> Image.Image:
    """A real photo (scikit-image's astronaut), cropped differently per seed, so thumbnails show a face."""
    im = _astronaut()
    off = (seed * 17) % 60
    return im.crop((120 + off, 20 + off // 2, 320 + off, 220 + off // 2)).resize((size, size))


def write_steps(run: RunDir, total: int, upto: int, t0: float = T0, sec: float = 0.5) -> None:
    for step in range(1, upto + 1):
        loss = 0.6 * math.exp(-step / (total / 2)) + 0.05 * math.sin(step) ** 2 + 0.1
        run.append_event(
            "step", step=step, total=total, loss=round(loss, 5), lr=1e-4, sec_per_step=sec,
            eta_s=(total - step) * sec,
        )  # fmt: skip
    _fix_times(run, t0)


def _fix_times(run: RunDir, t0: float) -> None:
    # append_event stamps the wall clock; rewrite it so screenshots do not depend on when they were made
    import json

    lines = run.events_jsonl.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        ev = json.loads(line)
        ev["t"] = t0 + i
        out.append(json.dumps(ev))
    run.events_jsonl.write_text("\n".join(out) + "\n")


def write_run(
    study: config.Study,
    name: str,
    state: str,
    *,
    upto: int | None = None,
    scores: dict | None = None,
    samples: bool = True,
    eval_images: bool = False,
    log_lines: int = 30,
    message: str = "",
    pid: int | None = None,
    curve: list[dict] | None = None,
) -> RunDir:
    """A run folder in `state` as the trainer leaves it, with fixed times (and the curve's records, when
    given: those up to step `upto`)."""
    exp = study.get(name)
    run = runs.prepare(study, exp)
    total = exp.settings.max_train_steps
    upto = total if upto is None else upto
    run.append_event("stage", stage="prepare")
    run.append_event("stage", stage="train")
    write_steps(run, total, upto)
    if samples:
        for step in range(exp.settings.sample_every, upto + 1, exp.settings.sample_every):
            d = run.samples_dir / f"step_{step}"
            d.mkdir(parents=True, exist_ok=True)
            face_image(step + exp.number).save(d / "a_photo_of_cr7man.png")
            run.append_event("sample", step=step, paths=[str(d / "a_photo_of_cr7man.png")])
    if curve:
        write_curve_events(run, [p for p in curve if p["step"] <= upto])
    if eval_images:
        run.append_event("stage", stage="generate")
        run.eval_dir.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(exp.settings.eval_prompts):
            p = run.eval_dir / f"{i:02d}_g5.0_s0.png"
            face_image(i * 5 + exp.number).save(p)
            run.append_event("eval_image", path=str(p), prompt=prompt, guidance=5.0, seed=0)
        run.append_event("stage", stage="score")
    _fix_times(run, T0)
    with open(run.train_log, "a") as fh:
        for i in range(1, min(log_lines, upto) + 1):
            fh.write(f"[{name}] step {i:4d}/{total}  loss {0.5 / i:.4f}  lr 1.0e-04\n")
    if scores is not None:
        atomic_write_json(run.scores_json, scores)
    started = T0
    fields = dict(
        state=state, stage=None, started_at=started, host=socket.gethostname(), message=message, device="cpu"
    )
    if state == "running":
        fields.update(stage="train", pid=pid, process_start=_start_time(pid), pgid=pid)
    elif state == "queued":
        fields.update(queued_at=T0 + exp.number, started_at=None)
    else:
        fields.update(finished_at=started + 60 * exp.number, exit_code=0 if state == "done" else 1)
    atomic_write_json(run.status_json, {**runs.Status().__dict__, **fields, "updated_at": T0})
    return run


def _start_time(pid: int | None) -> float | None:
    from flux_tui.core import procs

    return procs.start_time(pid) if pid else None


def scores_for(n: int, fd: float, clip: float, faceless: int = 0) -> dict:
    prompts = ["a photo of cr7man", "cr7man smiling at camera", "cr7man in a suit", "portrait of cr7man"]
    return {
        "face_distance": fd,
        "identity_similarity": round(1 - fd / 2, 4),
        "clip_score": clip,
        "clip_score_x100": round(clip * 100, 2),
        "faceless": faceless,
        "faceless_images": [f"{i:02d}_g5.0_s0.png" for i in range(faceless)],
        "n_images": len(prompts),
        "per_prompt": [
            {
                "prompt": p,
                "n_images": 1,
                "face_distance": round(fd + 0.01 * i, 4),
                "clip_score": round(clip - 0.002 * i, 4),
                "faceless": int(i < faceless),
            }
            for i, p in enumerate(prompts)
        ],  # fmt: skip
        "per_image": [
            {
                "image": f"{i:02d}_g5.0_s0.png",
                "prompt": p,
                "face_distance": round(fd + 0.01 * i, 4),
                "clip_score": round(clip - 0.002 * i, 4),
                "face": i >= faceless,
            }
            for i, p in enumerate(prompts)
        ],  # fmt: skip
    }


def curve_of(total: int, values: list[tuple[float | None, float, int]], n_images: int = 3) -> dict:
    """scores.json's curve keys for a run evaluated at every quarter of `total` steps: one (face distance,
    CLIP score, faceless) per evaluation, as the trainer's `curve` records and the evaluation copy them."""
    from flux_tui.core import analysis

    every = -(-total // len(values))
    curve = [
        {"step": min(total, every * (i + 1)), "face_distance": fd, "identity_similarity": None if fd is None else
         round(1 - fd / 2, 4), "clip_score": clip, "clip_score_x100": round(clip * 100, 2), "faceless": faceless,
         "n_images": n_images}
        for i, (fd, clip, faceless) in enumerate(values)
    ]  # fmt: skip
    return {"curve": curve, "best_step": analysis.best_step(curve)}


def write_curve_events(run: RunDir, curve: list[dict]) -> None:
    """The trainer's curve records for a run folder written by hand (the dashboard follows them live)."""
    run.append_event("curve_begin", every=curve[0]["step"], prompts=[], carried=[])
    for point in curve:
        run.append_event("curve", **point)


def sleeper() -> subprocess.Popen:
    """A real process in its own session standing for a run's trainer (the state shown is the folder's)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


# Made-up scores for the study's 11 experiments: (face_distance, clip_score, faceless), keyed by the study's
# Table 1 names (exp08 = lr 1e-3 r32, exp09 = lr 1e-4 r8, exp06/exp07 = 500/1500 steps).
SWEEP_SCORES = {
    "exp01": (0.80, 0.290, 1), "exp02": (0.78, 0.300, 0), "exp03": (0.76, 0.299, 0), "exp04": (0.79, 0.295, 2),
    "exp05": (0.85, 0.301, 0), "exp06": (0.82, 0.298, 0), "exp07": (0.77, 0.304, 0), "exp08": (0.71, 0.296, 1),
    "exp09": (0.90, 0.305, 0), "exp10": (0.74, 0.292, 3), "exp11": (0.75, 0.301, 0),
}  # fmt: skip
# Score curves of three of them (eval_every: a quarter of their steps): exp03 is best at 750 of 1000 and
# overfits after, exp07 keeps improving to 1500, exp10's best-looking step has more faceless images.
SWEEP_CURVES = {
    "exp03": [(0.82, 0.296, 0), (0.78, 0.298, 0), (0.72, 0.300, 0), (0.76, 0.299, 0)],
    "exp07": [(0.84, 0.300, 0), (0.80, 0.302, 0), (0.78, 0.303, 0), (0.77, 0.304, 0)],
    "exp10": [(0.79, 0.290, 0), (0.70, 0.291, 2), (0.75, 0.292, 0), (0.74, 0.292, 1)],
}


def scored_sweep(root: Path, n_images: int = 2) -> config.Study:
    """The shipped 11-experiment study, every run done and scored, with face photos as eval images."""
    import json
    import shutil

    from PIL import PngImagePlugin

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "experiments.toml", root / "experiments.toml")
    (root / "photos").mkdir(exist_ok=True)
    study = config.load(root / "experiments.toml")
    for position, exp in enumerate(study.experiments, start=1):
        run = runs.prepare(study, exp)
        run.write_status(state=runs.DONE, started_at=T0, finished_at=T0 + 600.0)
        total = exp.settings.max_train_steps
        run.append_event("step", step=total, total=total, loss=0.3, sec_per_step=1.5)
        fd, clip, faceless = SWEEP_SCORES[exp.name]
        prompts = exp.settings.eval_prompts[:n_images]
        per_image = [{"image": f"{i:03d}.png", "prompt": p, "face": i >= faceless,
                      "face_distance": None if i < faceless else round(fd + 0.01 * i, 4),
                      "clip_score": round(clip - 0.002 * i, 4)} for i, p in enumerate(prompts)]  # fmt: skip
        scores = {"face_distance": fd, "clip_score": clip, "clip_score_x100": clip * 100, "faceless": faceless,
                  "identity_similarity": 1 - fd / 2, "n_images": len(exp.settings.eval_prompts),
                  "per_image": per_image}  # fmt: skip
        if exp.name in SWEEP_CURVES:
            scores.update(curve_of(total, SWEEP_CURVES[exp.name]))
        run.scores_json.write_text(json.dumps(scores))
        run.eval_dir.mkdir(parents=True)
        for i, prompt in enumerate(prompts):
            meta = PngImagePlugin.PngInfo()
            meta.add_text("prompt", prompt)
            # seeded by the run's place in the file, which stays with its configuration (numbers do not)
            face_image(position * 3 + i).save(run.eval_dir / f"{i:03d}.png", pnginfo=meta)
    return study


def populated_study(root: Path, running_pid: int | None = None) -> config.Study:
    """Six runs: done (two, with scores and images), running, queued, failed, new."""
    study = make_study(root)
    curve = curve_of(20, [(0.81, 0.291, 0), (0.77, 0.296, 0), (0.74, 0.300, 0), (0.76, 0.299, 0)])
    write_run(study, "exp01", "done", scores={**scores_for(1, 0.7571, 0.2988), **curve}, eval_images=True,
              curve=curve["curve"])  # fmt: skip
    write_run(study, "exp02", "done", scores=scores_for(2, 0.7933, 0.2945, faceless=1), eval_images=True)
    if running_pid is not None:
        live = curve_of(40, [(0.85, 0.281, 1), (0.80, 0.290, 0), (0.78, 0.292, 0), (0.79, 0.291, 0)])
        write_run(study, "exp03", "running", upto=23, pid=running_pid, curve=live["curve"])
    write_run(study, "exp04", "queued", upto=0, samples=False, log_lines=0)
    write_run(
        study, "exp05", "failed", upto=12, message="CUDA error: an illegal memory access was encountered"
    )
    return study


class FixedTelemetry:
    """A fixed reading of the machine, so screenshots do not change with the CPU load. With `gpus`, two
    made-up GPUs show what the panel looks like on a GPU server (this machine has none)."""

    def __init__(self, gpus: bool = False, pid_mem: dict[int, int] | None = None):
        self._gpus = (
            (
                GpuStat(0, "NVIDIA H100 80GB HBM3", 52 * GiB, 80 * GiB, 97, 71),
                GpuStat(1, "NVIDIA H100 80GB HBM3", 3 * GiB, 80 * GiB, 0, 34),
            )
            if gpus
            else ()
        )
        self._pid_mem = pid_mem or {}

    def gpus(self) -> list[GpuStat]:
        return list(self._gpus)

    def sample(self) -> Sample:
        host = HostStat(cpu_percent=37.5, ram_used=int(9.4 * GiB), ram_total=24 * GiB, n_cpus=16)
        if not self._gpus:
            return Sample(at=T0, host=host, gpu_error="NVML: NVML Shared Library Not Found")
        return Sample(at=T0, host=host, gpus=self._gpus, proc_gpu_mem=dict(self._pid_mem))


HOST = socket.gethostname()


async def until(pilot: Pilot, pred: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    """Let the app run until `pred()` is true (and return it); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")


class ScreenHost(App[None]):
    """A bare app holding one screen over `study`, as the dashboard would, with the dashboard's live feeds
    (a test publishes on them what the watcher would)."""

    def __init__(self, study: config.Study, screen_factory: Callable[[], Screen]) -> None:
        super().__init__()
        self.study = study
        self.feeds = LiveFeeds(self)
        self._factory = screen_factory

    def compose(self) -> ComposeResult:
        yield Static("host")

    def on_mount(self) -> None:
        self.push_screen(self._factory())
