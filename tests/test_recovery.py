"""A run on a messy photo folder whose newest checkpoint gets damaged: the trainer as real subprocesses on
the demo's tiny model, under a real umask of 022.

The first launch ends `oom` at step 7 (the one injected fault: CUDA's out-of-memory error, which a CPU
cannot raise) after checkpoints 2, 4 and 6. Checkpoint 6's files are then cut short, as a full disk or an
interrupted copy leaves them. The relaunch must resume from checkpoint 4, keep the damaged one aside,
train to the end, evaluate against the same messy folder, and leave files that teammates can read.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from flux_tui.core import config, launch, runs
from flux_tui.core.fsutil import iter_jsonl
from flux_tui.core.runs import DONE, OOM, RunDir

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
random_flip = false
max_train_steps = 8
checkpointing_steps = 2
checkpoints_total_limit = 3
sample_every = 0
mixed_precision = "no"
max_sequence_length = 32
seed = 3
eval_prompts = ["a photo of cr7man"]
guidance_scales = [3.5]
images_per_prompt = 1
num_inference_steps = 2

[[experiment]]
name = "messy"
"""
USED = {"01.jpg", "01.png", "02.png", "03.jpg", "04.png", "05.jpg", "06.png", "deep.png"}
UNUSABLE = {"cut.jpg", "pipe.jpg", "loop-a.jpg", "loop-b.jpg", "gone.jpg", "album.jpg", "copy-of-03.jpg"}
UMASK = 0o022


def _messy_photos(demo: Path, folder: Path) -> None:
    shutil.copytree(demo / "photos", folder)
    ImageOps.mirror(Image.open(folder / "01.jpg")).save(folder / "01.png")  # same stem, another picture
    grey = np.asarray(Image.open(folder / "02.png").convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(folder / "deep.png")  # 16-bit grey
    shutil.copyfile(folder / "03.jpg", folder / "copy-of-03.jpg")
    data = (folder / "05.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    os.symlink("nowhere.jpg", folder / "gone.jpg")
    (folder / "album.jpg").mkdir()


@pytest.fixture(scope="module")
def umask_022():
    old = os.umask(UMASK)  # the launched processes inherit it
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory, umask_022) -> Path:
    root = tmp_path_factory.mktemp("recovery") / "ws"
    for part in ("models", "weights"):
        shutil.copytree(demo_workspace / part, root / part)
    _messy_photos(demo_workspace, root / "photos")
    (root / "experiments.toml").write_text(STUDY)
    return root


@pytest.fixture(scope="module")
def damaged(ws: Path) -> tuple[RunDir, dict[str, int]]:
    """The run after its first launch, with checkpoint-6 cut short. Returns it and the cut files' sizes."""
    study = config.load(ws / "experiments.toml")
    run = runs.prepare(study, study.get("messy"))
    proc = launch.start(run, env={"FLUX_TUI_FAULT": "oom_at_step:7"}, extra_args=("--no-eval",))
    assert proc.wait(timeout=300) == 3, run.train_log.read_text()
    assert run.status().state == OOM
    assert [p.name for p in run.checkpoints()] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    sizes = {}
    for name in ("lora.safetensors", "optimizer.pt"):
        f = run.checkpoints_dir / "checkpoint-6" / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        sizes[name] = f.stat().st_size
    return run, sizes


@pytest.fixture(scope="module")
def relaunched(damaged: tuple[RunDir, dict[str, int]]) -> RunDir:
    run, _ = damaged
    proc = launch.start(run)  # with evaluation
    assert proc.wait(timeout=400) == 0, run.train_log.read_text()
    return run


def test_the_relaunch_resumes_from_the_last_good_checkpoint_and_keeps_the_damaged_one(
    damaged: tuple[RunDir, dict[str, int]], relaunched: RunDir
) -> None:
    run, sizes = damaged
    status = run.status()
    assert (status.state, status.exit_code) == (DONE, 0), status
    assert [e["step"] for e in run.iter_events("resume")] == [4]
    steps = [e["step"] for e in run.iter_events("step")]
    assert steps == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]  # the first launch's 1..6, then 5..8 after resuming at 4
    log = run.train_log.read_text()
    assert "WARNING: checkpoint-6 is damaged" in log and "resuming from checkpoint-4" in log
    [aside] = list(run.checkpoints_dir.glob("checkpoint-6.broken-*"))
    assert {f.name: f.stat().st_size for f in aside.iterdir() if f.name in sizes} == sizes  # kept as it was
    assert (aside / "rng.pt").is_file() and (aside / "state.json").is_file()
    assert [p.name for p in run.checkpoints()] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert run.lora_file.is_file() and run.scores() is not None


def test_every_unusable_photo_is_named_in_training_and_in_the_face_reference(relaunched: RunDir) -> None:
    log = relaunched.train_log.read_text()
    for name in UNUSABLE:
        assert f"data: skipping {name}: " in log, name
        assert f"score: reference: skipping {name}: " in log, name
    reference = relaunched.scores()["reference"]
    assert set(reference["skipped"]) == UNUSABLE and reference["n_photos"] == len(USED)


def test_each_photo_has_its_own_prepared_image_and_latent(relaunched: RunDir, ws: Path) -> None:
    prepared = sorted(p.name for p in relaunched.data_dir.iterdir())
    assert len(prepared) == len(USED) and sum(n.startswith("01-") for n in prepared) == 2
    latents = {r["image"]: r["key"] for r in iter_jsonl(ws / "cache" / "index.jsonl") if r["kind"] == "latents"}
    assert set(latents) == USED  # each encoded once, under its own key
    from safetensors.torch import load_file

    jpg, png = (load_file(ws / "cache" / "latents" / f"{latents[n]}.safetensors") for n in ("01.jpg", "01.png"))
    assert not np.allclose(jpg["mean"].numpy(), png["mean"].numpy())
    [deep] = [p for p in relaunched.data_dir.iterdir() if p.name.startswith("deep-")]
    assert np.asarray(Image.open(deep)).mean() < 200  # not clipped to white


def test_what_the_run_writes_follows_the_umask(relaunched: RunDir, ws: Path) -> None:
    wrong = []
    for top in (ws / "runs", ws / "cache"):
        for p in [top, *top.rglob("*")]:
            want = (0o777 if p.is_dir() else 0o666) & ~UMASK
            if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != want:
                wrong.append(f"{p.relative_to(ws)}: {stat.S_IMODE(p.stat().st_mode):o}")
    assert not wrong
    assert (relaunched.lora_file.stat().st_mode & 0o044) == 0o044  # teammates can read the LoRA
