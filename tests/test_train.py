"""The trainer on the tiny demo model, as real subprocesses on the CPU.

One workspace per module (a copy of the demo workspace with its own experiments.toml); its runs are shared
by the tests that read them, so each subprocess runs once. No mocks: the only fault injected is CUDA's
out-of-memory error (FLUX_TUI_FAULT=oom_at_step:N), which a CPU cannot raise for real; `step_delay` only
slows steps down so a signal lands mid-training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flux_tui.core import config, launch, runs
from flux_tui.core.runs import CANCELLED, DONE, FAILED, OOM, RunDir

pytestmark = pytest.mark.slow

STUDY = """\
[workspace]
runs_dir = "runs"
cache_dir = "cache"

[defaults]
base_model = "models/tiny-flux"
data_dir = "photos"
instance_prompt = "a photo of cr7man"
resolution = 64
learning_rate = 1e-3
lora_rank = 4
lora_dropout = 0.1
random_flip = true
gradient_accumulation_steps = 2
gradient_checkpointing = true
max_train_steps = 10
lr_scheduler = "cosine"
lr_warmup_steps = 2
mixed_precision = "no"
max_sequence_length = 32
seed = 7
checkpointing_steps = 4
checkpoints_total_limit = 2
sample_every = 5
sample_prompts = ["a photo of cr7man"]
num_inference_steps = 3
guidance_scales = [3.5]

[[experiment]]
name = "base"

[[experiment]]
name = "resumed"       # the same settings as base: stopped by SIGTERM, relaunched

[[experiment]]
name = "alpha"
lora_rank = 4
lora_alpha = 12        # scale 3: the exported file must carry it
learning_rate = 5e-3
lora_dropout = 0.0

[[experiment]]
name = "overfit"
data_dir = "one_photo"
random_flip = false
gradient_accumulation_steps = 1
gradient_checkpointing = false
learning_rate = 1e-2
lora_rank = 8
lora_dropout = 0.0
lr_scheduler = "constant"
lr_warmup_steps = 0
lora_target_modules = ["to_k", "to_q", "to_v", "to_out.0", "proj_out", "proj_mlp", "ff.net.2"]
max_train_steps = 30
sample_every = 0
checkpointing_steps = 1000

[[experiment]]
name = "oom"
max_train_steps = 6

[[experiment]]
name = "evalfail"
max_train_steps = 2
sample_every = 0
eval_prompts = ["a photo of cr7man"]
face_weights = "weights/vggface2-standin.pt"
clip_model = "./models/no-such-clip"   # scoring cannot load it: the evaluation fails for real

[[experiment]]
name = "diverges"      # a learning rate no loss survives: not finite from step 2
learning_rate = 1e30
lr_scheduler = "constant"
lr_warmup_steps = 0
lora_dropout = 0.0
random_flip = false
gradient_accumulation_steps = 1
max_train_steps = 200  # log points every 10 steps: step 2's loss is read with the steps after it
checkpointing_steps = 1000
sample_every = 0

[[experiment]]
name = "ctrlc"
max_train_steps = 40
checkpointing_steps = 1000
sample_every = 0

[[experiment]]
name = "nophoto"
data_dir = "no_photo"  # holds one file that is not an image
"""


@pytest.fixture(scope="module")
def ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train") / "ws"
    shutil.copytree(demo_workspace / "models" / "tiny-flux", root / "models" / "tiny-flux")
    shutil.copytree(demo_workspace / "photos", root / "photos")
    shutil.copytree(demo_workspace / "weights", root / "weights")
    one = root / "one_photo"
    one.mkdir()
    shutil.copy(demo_workspace / "photos" / "01.jpg", one / "01.jpg")
    (one / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (one / "notes.txt").write_text("not a photo")
    (root / "no_photo").mkdir()
    (root / "no_photo" / "a.png").write_bytes(b"garbage")
    (root / "experiments.toml").write_text(STUDY)
    return root


def _study(ws: Path) -> config.Study:
    return config.load(ws / "experiments.toml")


def _run(ws: Path, name: str) -> RunDir:
    study = _study(ws)
    return runs.prepare(study, study.get(name))


def _train(run: RunDir, env: dict[str, str] | None = None, timeout: float = 240) -> int:
    proc = launch.start(run, env=env, extra_args=("--no-eval",))
    return proc.wait(timeout=timeout)


def _wait_for_step(run: RunDir, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("step", 0) >= step for e in run.iter_events("step")):
            return
        assert proc.poll() is None, f"the run ended early:\n{run.train_log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no step {step} within {timeout} s:\n{run.train_log.read_text()}")


def _lora(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def base(ws: Path) -> RunDir:
    run = _run(ws, "base")
    assert _train(run) == 0, run.train_log.read_text()
    return run


@pytest.fixture(scope="module")
def alpha(ws: Path, base: RunDir) -> RunDir:
    run = _run(ws, "alpha")  # after base: it finds base's encodes in the cache
    assert _train(run) == 0, run.train_log.read_text()
    return run


def test_a_run_trains_and_leaves_its_folder_complete(base: RunDir) -> None:
    status = base.status()
    assert (status.state, status.exit_code, status.device) == (DONE, 0, "cpu")
    assert base.lora_file.exists()
    # Prepared images are named by stem and content hash: data/01-1a2b3c4d.png for photos/01.jpg.
    assert sorted(p.name.split("-")[0] for p in base.data_dir.iterdir()) == [f"0{i}" for i in range(1, 7)]
    steps = list(base.iter_events("step"))
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert all({"loss", "lr", "sec_per_step", "eta_s", "total"} <= e.keys() for e in steps)
    assert steps[0]["lr"] < steps[1]["lr"]  # warmup
    assert [e["stage"] for e in base.iter_events("stage")] == ["prepare", "train"]
    # Checkpoints every 4 steps, the last 2 kept; samples every 5 steps, each announced.
    assert [p.name for p in base.checkpoints()] == ["checkpoint-4", "checkpoint-8"]
    assert [e["step"] for e in base.iter_events("checkpoint")] == [4, 8]
    samples = list(base.iter_events("sample"))
    assert [e["step"] for e in samples] == [5, 10]
    assert all(Path(p).is_file() for e in samples for p in e["paths"])


def test_the_log_holds_the_engines_progress_lines_not_library_bars_or_notices(base: RunDir) -> None:
    """base encoded the photos (and their flips) and prompt itself (the first run on an empty cache), loading
    pipeline parts through diffusers and transformers: their progress bars and torch_dtype notice stay out."""
    log = base.train_log.read_text()
    for line in ("cache: encoding 12 image(s) with the VAE", "step 1/10", "step 10/10", "checkpoint: checkpoint-8",
                 "samples: 1 image(s) in samples/step_5", "lora: "):  # fmt: skip
        assert line in log, line
    for noise in ("Loading weights", "Loading pipeline components", "it/s]", "%|", "\r", "torch_dtype",
                  "FutureWarning"):  # fmt: skip
        assert noise not in log, f"{noise!r} in train.log:\n{log}"


def test_the_second_run_of_a_sweep_reuses_the_caches(base: RunDir, alpha: RunDir) -> None:
    first = next(base.iter_events("cache"))
    second = next(alpha.iter_events("cache"))
    # 6 photos x (as is, flipped) and one prompt: encoded by the first run, only read by the second.
    assert (first["latents_encoded"], first["latents_reused"], first["text_encoded"]) == (12, 0, 1)
    assert (second["latents_encoded"], second["latents_reused"]) == (0, 12)
    assert (second["text_encoded"], second["text_reused"]) == (0, 1)
    index = [json.loads(line) for line in (Path(first["dir"]) / "index.jsonl").read_text().splitlines()]
    assert {r["run"] for r in index} == {"base"}
    # The face crops too: every one was written by the first run, none (no face detection) by the second.
    crops = list((Path(first["dir"]) / "crops").glob("*.png"))
    started = next(alpha.iter_events("stage"))["t"]
    assert len(crops) == 6 and all(p.stat().st_mtime < started for p in crops)


def test_plain_diffusers_loads_the_lora_and_makes_the_trainers_images(alpha: RunDir) -> None:
    import numpy as np
    import torch
    from diffusers import FluxPipeline
    from PIL import Image

    sample = list(alpha.iter_events("sample"))[-1]
    assert sample["step"] == 10  # the final weights
    settings = config.settings_from_dict(alpha.config())
    assert settings.alpha != settings.lora_rank
    pipe = FluxPipeline.from_pretrained(settings.base_model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def generate() -> np.ndarray:
        image = pipe(
            sample["prompts"][0], height=64, width=64, num_inference_steps=sample["num_inference_steps"],
            guidance_scale=sample["guidance"], generator=torch.Generator().manual_seed(sample["seed"]),
            max_sequence_length=settings.max_sequence_length,
        ).images[0]  # fmt: skip
        return np.asarray(image, dtype=np.int16)

    without = generate()
    pipe.load_lora_weights(alpha.lora_dir)
    with_lora = generate()
    trainer = np.asarray(Image.open(sample["paths"][0]).convert("RGB"), dtype=np.int16)
    assert np.abs(with_lora - trainer).max() <= 1  # equal up to rounding to 8 bits
    assert np.abs(without - trainer).mean() > 1  # and the LoRA does change the image


def test_sigterm_then_relaunch_ends_with_the_uninterrupted_weights(ws: Path, base: RunDir) -> None:
    run = _run(ws, "resumed")
    proc = launch.start(run, env={"FLUX_TUI_FAULT": "step_delay:0.4"}, extra_args=("--no-eval",))
    _wait_for_step(run, 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # what the dashboard's stop does: the run's whole group
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    status = run.status()
    assert status.state == CANCELLED, status
    stopped_at = max(e["step"] for e in run.iter_events("step"))
    assert stopped_at < 10
    assert run.latest_checkpoint().name == f"checkpoint-{stopped_at}"
    assert f"checkpoint-{stopped_at}" in status.message
    assert not run.lora_file.exists()

    # Relaunched through the foreground command: it resumes from the checkpoint.
    cli = subprocess.run(
        [sys.executable, "-m", "flux_tui.main", "run", "resumed", "--no-eval", "-f", str(ws / "experiments.toml")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "resumed  done" in cli.stdout
    assert [e["step"] for e in run.iter_events("resume")] == [stopped_at]
    assert run.status().state == DONE
    expected, got = _lora(base.lora_file), _lora(run.lora_file)
    assert expected.keys() == got.keys()
    worst = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert worst <= 1e-5


@pytest.fixture(scope="module")
def overfit(ws: Path) -> RunDir:
    run = _run(ws, "overfit")
    assert _train(run) == 0, run.train_log.read_text()
    return run


def test_loss_falls_when_overfitting_one_photo(overfit: RunDir) -> None:
    losses = [e["loss"] for e in overfit.iter_events("step")]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.9 * first, losses


def test_unreadable_files_are_named_and_skipped(overfit: RunDir) -> None:
    log = overfit.train_log.read_text()
    assert "skipping broken.jpg: cannot read it as an image" in log
    assert "skipping notes.txt: not a jpg, png or webp file" in log
    assert [p.name[:3] for p in overfit.data_dir.iterdir()] == ["01-"]


def test_no_usable_photo_fails_with_a_message_that_says_so(tmp_path: Path) -> None:
    from flux_tui.engine.data import NoImagesError, prepare_images

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"garbage")
    lines: list[str] = []
    with pytest.raises(NoImagesError, match=r"no usable training photo in .*photos.*skipped a\.png"):
        prepare_images(tmp_path / "photos", 64, tmp_path / "out", tmp_path / "cache", lines.append)
    assert any("a.png" in line for line in lines)


def test_a_run_without_a_usable_photo_fails_saying_so_without_a_traceback(ws: Path) -> None:
    run = _run(ws, "nophoto")
    assert _train(run) == 1
    status = run.status()
    assert status.state == FAILED and status.message.startswith("no usable training photo in "), status
    assert "skipped a.png" in status.message
    assert "Traceback" not in run.train_log.read_text() and "NoImagesError" not in status.message


def test_a_loss_that_stops_being_finite_fails_the_run_naming_its_step(ws: Path) -> None:
    run = _run(ws, "diverges")
    assert _train(run) == 1, run.train_log.read_text()
    status = run.status()
    assert status.state == FAILED and "the loss became nan at step 2" in status.message, status
    # Losses are read from the device in batches, but only finite ones are recorded, and nothing is kept.
    assert [e["step"] for e in run.iter_events("step")] == [1]
    assert not run.checkpoints() and not run.lora_file.exists()


def test_cuda_out_of_memory_ends_oom_with_a_hint(ws: Path) -> None:
    run = _run(ws, "oom")
    code = _train(run, env={"FLUX_TUI_FAULT": "oom_at_step:3"})
    status = run.status()
    assert (status.state, code, status.exit_code) == (OOM, 3, 3)
    assert "out of memory at step 3" in status.message
    assert "a lower resolution" not in status.message  # 64 px is already low
    assert 'optimizer = "adamw8bit"' in status.message and "injected" in status.message
    assert status.log_tail and not run.is_process_alive()
    assert [e["step"] for e in run.iter_events("step")] == [1, 2]


def test_ctrl_c_in_flux_tui_run_checkpoints_and_cancels(ws: Path) -> None:
    run = runs.run_dir(_study(ws), "ctrlc")
    # A terminal's Ctrl-C signals the foreground process group: the command and its run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_tui.main", "run", "ctrlc", "--no-eval", "-f", str(ws / "experiments.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "FLUX_TUI_FAULT": "step_delay:0.4"},
    )  # fmt: skip
    _wait_for_step(run, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    status = run.status()
    assert status.state == CANCELLED and status.exit_code == 128 + signal.SIGINT, status
    assert "stopped by SIGINT" in status.message
    assert run.latest_checkpoint() is not None
    assert "ctrlc  cancelled" in out
    assert "=== launched" in run.train_log.read_text()  # the run's output went to its log


def test_an_evaluation_failure_fails_the_run_and_keeps_the_lora_and_a_relaunch_only_evaluates(
    ws: Path, demo_workspace: Path
) -> None:
    run = _run(ws, "evalfail")
    proc = launch.start(run)  # with evaluation
    assert proc.wait(timeout=240) == 1
    status = run.status()
    assert status.state == "failed", status
    assert status.message.startswith("evaluation failed (the LoRA is kept)"), status.message
    assert "no-such-clip" in status.message
    assert run.lora_file.exists()
    assert status.log_tail
    training = (status.started_at, status.finished_at, status.device)
    lora = run.lora_file.read_bytes()

    # The missing CLIP arrives where the study file says; a relaunch evaluates the trained LoRA, and the run's
    # record stays its training's, as with `flux-tui evaluate`: the evaluation's own is beside it.
    shutil.copytree(demo_workspace / "models" / "tiny-clip", ws / "models" / "no-such-clip")
    proc = launch.start(_run(ws, "evalfail"))
    assert proc.wait(timeout=240) == 0, run.train_log.read_text()[-3000:]
    status = run.status()
    assert (status.state, status.exit_code, status.message) == (DONE, 0, "trained and evaluated")
    assert (status.started_at, status.finished_at, status.device) == training
    ev = status.evaluation
    assert (ev["state"], ev["stage"], ev["exit_code"], ev["device"]) == (DONE, "score", 0, "cpu")
    assert training[1] <= ev["started_at"] <= ev["finished_at"]
    assert run.lora_file.read_bytes() == lora and run.scores_json.exists()
    assert "only evaluating it" in run.train_log.read_text()
