"""Evaluation inside the training process: the score curve, the best step's LoRA, early stopping, and the
final evaluation made with the model already in memory. Real trainer subprocesses on the tiny demo model.

The demo's random model draws no face, so the curve's face distances are decided by the test's own photos
through the documented hook `FLUX_TUI_FAULT=curve_images:DIR` (engine/faults.py): the evaluation at step N
scores DIR/step-N/'s pictures instead of the pixels it generated. The scorers are the real ones (MTCNN,
InceptionResnetV1 with the demo's stand-in weights, the tiny CLIP): the demo's own photos of the reference
person land far closer to the reference than LFW faces of other people (0.003-0.007 against 0.009-0.02).
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

import numpy as np
import pytest
from PIL import Image

from flux_tui.core import config, launch, runs
from flux_tui.core.runs import DONE, RunDir

pytestmark = pytest.mark.slow

STUDY = """\
[workspace]
runs_dir = "runs"
cache_dir = "cache"

[defaults]
base_model = "models/tiny-flux"
clip_model = "models/tiny-clip"
face_weights = "weights/vggface2-standin.pt"
data_dir = "photos"
instance_prompt = "a photo of cr7man"
resolution = 64
learning_rate = 1e-3
lora_rank = 4
lora_alpha = 8
max_train_steps = 6
lr_scheduler = "cosine"
mixed_precision = "no"
gradient_checkpointing = false
max_sequence_length = 32
seed = 3
checkpointing_steps = 2
checkpoints_total_limit = 10
sample_every = 0
num_inference_steps = 2
guidance_scales = [3.5]
eval_prompts = ["a photo of cr7man", "cr7man smiling", "portrait of cr7man", "cr7man outdoors"]
eval_every = 2

[[experiment]]
name = "curve"

[[experiment]]
name = "resumed"       # the same as curve: stopped by SIGTERM after its evaluation at step 4, relaunched

[[experiment]]
name = "plain"         # the same training without a curve
eval_every = 0

[[experiment]]
name = "early"
max_train_steps = 20
early_stop_patience = 2
"""


def _lfw(i: int) -> Image.Image:
    from skimage import data

    pixels = (data.lfw_subset()[i] * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB").resize((160, 160), Image.BICUBIC)


def _pictures(folder: Path, which: str, photos: Path) -> None:
    """Three pictures: the reference person's own photos, or three LFW faces of other people."""
    folder.mkdir(parents=True)
    for i, name in enumerate(("01.jpg", "03.jpg", "04.png")):
        if which == "person":
            shutil.copy(photos / name, folder / f"{i}-{name}")
        else:
            _lfw(i + (3 if which == "others2" else 0)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curve") / "ws"
    for part in ("models/tiny-flux", "models/tiny-clip", "photos", "weights"):
        shutil.copytree(demo_workspace / part, root / part)
    (root / "experiments.toml").write_text(STUDY)
    # What the curve sees at each step: for `curve` the person at step 4 only; for `early` at step 2 only.
    for step, which in ((2, "others"), (4, "person"), (6, "others2")):
        _pictures(root / "scripted-best" / f"step-{step}", which, root / "photos")
    for step, which in ((2, "person"), (4, "others"), (6, "others2")):
        _pictures(root / "scripted-early" / f"step-{step}", which, root / "photos")
    return root


def _env(ws: Path, scripted: str | None = None) -> dict[str, str]:
    env = {**os.environ, "TORCH_HOME": str(ws / "torch-home"), "HF_HUB_OFFLINE": "1", "FLUX_TUI_OFFLINE": "1"}
    if scripted:
        env["FLUX_TUI_FAULT"] = f"curve_images:{ws / scripted}"
    return env


def _launch(ws: Path, name: str, scripted: str | None = None, *extra: str) -> RunDir:
    study = config.load(ws / "experiments.toml")
    run = runs.prepare(study, study.get(name))
    proc = launch.start(run, env=_env(ws, scripted), extra_args=extra)
    assert proc.wait(timeout=300) == 0, run.train_log.read_text()
    return run


@pytest.fixture(scope="module")
def curve(ws: Path) -> RunDir:
    return _launch(ws, "curve", "scripted-best")


@pytest.fixture(scope="module")
def early(ws: Path, curve: RunDir) -> RunDir:
    return _launch(ws, "early", "scripted-early")


def test_a_run_scores_its_curve_at_every_eval_step_and_reports_the_cost(curve: RunDir) -> None:
    scores = curve.scores()
    assert [p["step"] for p in scores["curve"]] == [2, 4, 6]
    for p in scores["curve"]:
        assert p["n_images"] == 3 and p["faceless"] == 0 and p["face_distance"] is not None
    fd = {p["step"]: p["face_distance"] for p in scores["curve"]}
    assert fd[4] < fd[2] and fd[4] < fd[6]  # the step shown the person's own photos
    assert scores["best_step"] == 4 and scores["best_lora"] == str(curve.best_lora_file)
    assert scores["base"] == {"model": str(Path(curve.config()["base_model"])), "revision": None, "quantize": "none"}
    log = curve.train_log.read_text()
    for step in (2, 4, 6):
        assert f"curve: step {step}: face " in log  # each evaluation's figures and time are logged
    assert "evaluation(s) while training took" in log
    assert not curve.curve_dir.exists()  # the steps' LoRAs go once the best one is kept
    images = sorted(p.name for p in curve.curve_images_dir(4).iterdir())
    assert images == ["p01-g3.5-s0.png", "p02-g3.5-s0.png", "p03-g3.5-s0.png"]  # curve prompts: the first 3


def test_the_best_steps_lora_loads_in_plain_diffusers_and_equals_that_checkpoint(curve: RunDir) -> None:
    import torch
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    best = load_file(curve.best_lora_file)
    ckpt = load_file(curve.checkpoints_dir / "checkpoint-4" / "lora.safetensors")  # peft names, scale not folded
    settings = config.settings_from_dict(curve.config())
    scale = settings.alpha / settings.lora_rank
    assert scale == 2
    assert set(best) == {f"transformer.{k}" for k in ckpt}
    for key, value in ckpt.items():
        expected = value * scale if ".lora_B." in key else value
        assert torch.equal(best[f"transformer.{key}"], expected), key
    final = load_file(curve.lora_file)
    assert any(not torch.equal(final[k], best[k]) for k in best)  # lora/ stays the final step's
    pipe = FluxPipeline.from_pretrained(settings.base_model, torch_dtype=torch.float32)
    pipe.load_lora_weights(curve.best_lora_dir)
    assert pipe.get_list_adapters() == {"transformer": ["default_0"]}


def test_the_curve_does_not_change_what_is_trained(ws: Path, curve: RunDir) -> None:
    plain = _launch(ws, "plain", None, "--no-eval")
    from safetensors.torch import load_file

    a, b = load_file(curve.lora_file), load_file(plain.lora_file)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert not list(plain.iter_events("curve"))


def test_the_final_evaluation_in_the_trainer_makes_the_images_a_standalone_one_makes(ws: Path, curve: RunDir,
                                                                                    tmp_path: Path) -> None:  # fmt: skip
    log = curve.train_log.read_text()
    assert "generate: loading" not in log  # the trainer's transformer made the grid: nothing loaded again
    cache = next(curve.iter_events("cache"))
    assert cache["text_encoded"] + cache["text_reused"] == 4  # the 4 eval prompts (the first is the instance prompt)
    before = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in curve.eval_images()}
    assert len(before) == 4
    shutil.copy(curve.scores_json, tmp_path / "scores.json")
    done = subprocess.run([sys.executable, "-m", "flux_tui.main", "evaluate", str(curve.path)], env=_env(ws),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generate: loading" in curve.train_log.read_text()  # this one loaded the pipeline from disk
    for path in curve.eval_images():
        assert np.abs(np.asarray(Image.open(path), dtype=np.int16) - before[path.name]).max() <= 1
    again, first = curve.scores(), json.loads((tmp_path / "scores.json").read_text())
    assert again["curve"] == first["curve"] and again["best_step"] == 4  # a re-evaluation keeps the curve


def test_a_relaunch_keeps_the_curve_and_step_loras_of_before_its_checkpoint(ws: Path, curve: RunDir) -> None:
    study = config.load(ws / "experiments.toml")
    run = runs.prepare(study, study.get("resumed"))
    env = _env(ws, "scripted-best")
    env["FLUX_TUI_FAULT"] += ",step_delay:0.5"
    proc = launch.start(run, env=env)
    deadline = time.monotonic() + 240
    while not any(e.get("step") == 4 for e in run.iter_events("curve")):
        assert proc.poll() is None and time.monotonic() < deadline, run.train_log.read_text()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stopped = run.latest_checkpoint()
    assert stopped is not None and int(stopped.name.split("-")[1]) >= 4
    assert run.curve_lora_dir(4).is_dir()  # kept for the relaunch: step 4 may be the best

    proc = launch.start(run, env=_env(ws, "scripted-best"))
    assert proc.wait(timeout=300) == 0, run.train_log.read_text()
    begins = list(run.iter_events("curve_begin"))
    assert [p["step"] for p in begins[-1]["carried"]] == [2, 4]  # not evaluated again
    assert [e["step"] for e in run.iter_events("curve")] == [2, 4, 6]
    scores = run.scores()
    assert [p["step"] for p in scores["curve"]] == [2, 4, 6] and scores["best_step"] == 4
    from safetensors.torch import load_file

    a, b = load_file(curve.best_lora_file), load_file(run.best_lora_file)  # made by the first launch
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_early_stopping_ends_done_saying_why_with_the_schedule_as_it_ran(early: RunDir) -> None:
    status = early.status()
    assert (status.state, status.exit_code) == (DONE, 0)
    assert status.message.startswith("stopped early at step 6 of 20: face distance had not improved for 2 "
                                     "evaluations"), status.message  # fmt: skip
    assert status.message.endswith("trained and evaluated")
    assert max(e["step"] for e in early.iter_events("step")) == 6
    assert {e["total"] for e in early.iter_events("step")} == {20}  # the schedule was laid out for 20 steps
    (stop,) = early.iter_events("early_stop")
    assert (stop["step"], stop["total"], stop["schedule_steps"], stop["best_step"]) == (6, 20, 20, 2)
    assert stop["lr"] > 0  # a cosine schedule over 20 steps had not reached its end at step 6
    scores = early.scores()
    assert [p["step"] for p in scores["curve"]] == [2, 4, 6] and scores["best_step"] == 2
    assert scores["early_stop"]["step"] == 6
    assert early.lora_file.exists() and early.best_lora_file.exists()
