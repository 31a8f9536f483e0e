"""Generation: the evaluation grid of a run, its metadata, the generate/score stages, and LoRA merges.

Real tiny FLUX pipeline (the demo workspace's), real LoRA files, real subprocesses for the commands.
The runs' LoRAs are made by `make_lora_workspace` (tests/conftest.py): seeded random non-zero B matrices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_lora_workspace
from PIL import Image

from flux_tui.core import config
from flux_tui.core.runs import DONE, FAILED, RunDir, run_dir
from flux_tui.engine import generate, imagemeta, pipeline


def _env(tmp: Path) -> dict[str, str]:
    # Nothing may be downloaded: an empty torch hub and offline mode make any attempt fail loudly.
    return {**os.environ, "TORCH_HOME": str(tmp / "torch-home"), "HF_HUB_OFFLINE": "1", "FLUX_TUI_OFFLINE": "1"}


def flux_tui(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flux_tui.main", *args], capture_output=True, text=True,
                          env=_env(tmp), timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_workspace(demo_workspace, tmp_path_factory.mktemp("gen") / "ws", {"exp01": 1, "exp02": 2})


@pytest.fixture(scope="module")
def study(workspace: Path) -> config.Study:
    return config.load(workspace)


def _rewrite(study: config.Study, name: str, **settings) -> RunDir:
    """Change a run's evaluation settings the way the file would, through RunDir.write_run."""
    exp = study.get(name)
    exp = dataclasses.replace(exp, settings=exp.settings.model_copy(update=settings))
    run = run_dir(study, name)
    run.write_run(exp, study)
    return run


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_eval_grid_covers_every_prompt_guidance_and_seed() -> None:
    jobs = pipeline.eval_jobs(["a", "b"], [3.5, 5.0], 3, seed=10)
    assert len(jobs) == 12 and len({j.name for j in jobs}) == 12
    assert {(j.prompt, j.guidance_scale, j.seed) for j in jobs} == {
        (p, g, s) for p in "ab" for g in (3.5, 5.0) for s in (10, 11, 12)
    }
    assert jobs[0].name == "p01-g3.5-s10.png"


def test_png_metadata_round_trips(tmp_path: Path) -> None:
    job = imagemeta.Job("x.png", "cr7man, cinematic style — «quotes» 😀", 5.0, 7)
    settings = imagemeta.GenSettings("models/tiny-flux", 64, 48, 4, loras=[{"path": "/r/a.safetensors", "weight": 0.8,
                                                                      "run": "a"}], run="a")  # fmt: skip
    imagemeta.save_png(Image.new("RGB", (64, 48)), tmp_path / "x.png", imagemeta.metadata_for(job, settings))
    meta = imagemeta.read_metadata(tmp_path / "x.png")
    assert meta["prompt"] == job.prompt and meta["seed"] == 7 and meta["guidance_scale"] == 5.0
    assert meta["num_inference_steps"] == 4 and (meta["width"], meta["height"]) == (64, 48)
    assert meta["base_model"] == "models/tiny-flux" and meta["loras"][0]["weight"] == 0.8
    assert Image.open(tmp_path / "x.png").text["prompt"] == job.prompt  # readable by other tools too
    # A PNG from another tool with only a plain prompt chunk still gives its prompt.
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", "plain")
    Image.new("RGB", (8, 8)).save(tmp_path / "other.png", pnginfo=info)
    assert imagemeta.read_metadata(tmp_path / "other.png") == {"prompt": "plain"}
    assert imagemeta.read_metadata(tmp_path / "missing.png") == {}


@pytest.mark.slow
def test_evaluate_makes_the_grid_with_metadata_and_scores_it(study: config.Study, tmp_path: Path) -> None:
    # exp02 has rank 4 and alpha 16: its checkpoint (scale not folded) must give the final LoRA's images.
    run = _rewrite(study, "exp02", guidance_scales=[2.0, 3.5], eval_checkpoints=True)
    cfg = run.config()
    proc = flux_tui("evaluate", "exp02", "-f", str(study.file), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = run.status()
    assert status.state == DONE and status.exit_code == 0

    stages = [e["stage"] for e in run.iter_events("stage")]
    assert stages == ["generate", "score"]
    images = run.eval_images()
    jobs = pipeline.eval_jobs(cfg["eval_prompts"], [2.0, 3.5], 1, cfg["eval_seed"])
    assert [p.name for p in images] == sorted(j.name for j in jobs)
    events = list(run.iter_events("eval_image"))
    assert len(events) == 2 * len(jobs) and events[-1]["index"] == events[-1]["total"] == 2 * len(jobs)
    for job in jobs:
        meta = imagemeta.read_metadata(run.eval_dir / job.name)
        assert (meta["prompt"], meta["seed"], meta["guidance_scale"]) == (job.prompt, job.seed, job.guidance_scale)
        assert meta["base_model"] == cfg["base_model"] and meta["num_inference_steps"] == cfg["num_inference_steps"]
        assert meta["loras"] == [{"path": str(run.lora_file), "weight": 1.0, "run": "exp02"}]
        assert (meta["width"], meta["height"]) == (64, 64)
        ckpt_image = run.checkpoint_eval_dir(5) / job.name
        assert imagemeta.read_metadata(ckpt_image)["checkpoint"] == 5
        assert np.abs(_pixels(ckpt_image) - _pixels(run.eval_dir / job.name)).max() <= 1

    scores = run.scores()
    for key in ("face_distance", "identity_similarity", "clip_score", "clip_score_x100", "faceless",
                "faceless_images", "n_images", "per_prompt", "per_image", "models"):  # fmt: skip
        assert key in scores, key
    assert scores["n_images"] == len(jobs) and len(scores["per_image"]) == len(jobs)
    assert [p["prompt"] for p in scores["per_prompt"]] == cfg["eval_prompts"]
    assert sum(p["faceless"] for p in scores["per_prompt"]) == scores["faceless"] == len(scores["faceless_images"])
    assert [g["guidance_scale"] for g in scores["per_guidance"]] == [2.0, 3.5]
    assert [c["step"] for c in scores["checkpoints"]] == [5]
    assert scores["models"]["note"].startswith("DEMO")  # the demo's random models say so
    assert 0 <= scores["clip_score_x100"] <= 100
    assert "generate: [1/" in run.train_log.read_text()  # the output went to the run's log as well


@pytest.mark.slow
def test_a_scoring_failure_keeps_lora_and_images_and_scoring_reruns_alone(study: config.Study, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vggface2.pt"
    run = _rewrite(study, "exp01", face_weights=str(missing))
    proc = flux_tui("evaluate", str(run.path), tmp=tmp_path)
    assert proc.returncode == 1
    status = run.status()
    assert status.state == FAILED and status.stage == "score"
    assert str(missing) in status.message and "--face-weights" in status.message
    assert run.lora_file.is_file() and len(run.eval_images()) == 4 and run.scores() is None
    made = {p.name: p.stat().st_mtime_ns for p in run.eval_images()}

    good = study.get("exp01").settings.face_weights
    _rewrite(study, "exp01", face_weights=good)
    proc = flux_tui("evaluate", "exp01", "-f", str(study.file), "--score-only", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.status().state == DONE and run.scores()["n_images"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in run.eval_images()} == made  # scored, not regenerated
    assert [e["stage"] for e in run.iter_events("stage")][-1] == "score"


def test_evaluate_refuses_a_run_without_lora_before_touching_it(study: config.Study, tmp_path: Path) -> None:
    run = run_dir(study, "exp03")
    run.write_run(study.get("exp03"), study)
    from flux_tui.engine import evaluate

    assert evaluate.main([str(run.path)]) == 2
    assert run.status().state == "new"  # not marked failed: nothing ran


@pytest.fixture(scope="module")
def pipe(study: config.Study):
    return pipeline.load_pipeline(study.get("exp01").settings.base_model, "cpu")


def _one(pipe, tmp: Path, name: str, loras, fuse: bool = False, seed: int = 3) -> np.ndarray:
    pipeline.set_loras(pipe, loras, fuse=fuse)
    job = imagemeta.Job(f"{name}.png", "a photo of cr7man", 3.5, seed)
    settings = imagemeta.GenSettings("tiny", 64, 64, 4, max_sequence_length=32)
    [path] = pipeline.generate_images(pipe, [job], tmp, settings)
    return _pixels(path)


def test_a_merge_of_two_loras_differs_from_each_alone(pipe, study: config.Study, tmp_path: Path) -> None:
    a, b = run_dir(study, "exp01").lora_file, run_dir(study, "exp02").lora_file
    base = _one(pipe, tmp_path, "base", [])
    only_a = _one(pipe, tmp_path, "a", [(a, 1.0)])
    only_b = _one(pipe, tmp_path, "b", [(b, 1.0)])
    merged = _one(pipe, tmp_path, "ab", [(a, 0.8), (b, 0.7)])
    fused = _one(pipe, tmp_path, "ab-fused", [(a, 0.8), (b, 0.7)], fuse=True)
    back = _one(pipe, tmp_path, "base-again", [])

    def diff(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x - y).mean())

    assert diff(only_a, base) > 1 and diff(only_b, base) > 1
    assert diff(merged, only_a) > 1 and diff(merged, only_b) > 1
    assert np.abs(fused - merged).max() <= 2  # fusing bakes the same weighted sum into the weights
    assert np.abs(back - base).max() <= 1  # unfused and unloaded: the base model again


def test_batched_images_equal_one_at_a_time(pipe, tmp_path: Path) -> None:
    pipeline.set_loras(pipe, [])
    jobs = pipeline.eval_jobs(["a photo of cr7man", "cr7man smiling at camera", "portrait of cr7man"], [3.5], 1, 4)
    settings = imagemeta.GenSettings("tiny", 64, 64, 4, max_sequence_length=32)
    batched = pipeline.generate_images(pipe, jobs, tmp_path / "b3", settings, batch_size=3)
    single = pipeline.generate_images(pipe, jobs, tmp_path / "b1", settings, batch_size=1)
    for x, y in zip(batched, single, strict=True):
        assert np.abs(_pixels(x) - _pixels(y)).max() <= 1


@pytest.mark.slow
def test_generate_command_merges_two_runs_and_scores_against_one(study: config.Study, tmp_path: Path) -> None:
    runs = study.workspace.runs_dir
    proc = flux_tui("generate", "--lora", str(runs / "exp01"), "--lora", str(runs / "exp02"), "--weights", "0.8,0.7",
                    "--prompt", "cr7man and a friend, group photo", "--images", "2",
                    "--score-against", str(runs / "exp01"), tmp=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = study.workspace.root / "merges" / "exp01+exp02-w0.8,0.7"
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["p01-g3.5-s0.png", "p01-g3.5-s1.png"]
    meta = imagemeta.read_metadata(pngs[0])
    assert [(x["run"], x["weight"]) for x in meta["loras"]] == [("exp01", 0.8), ("exp02", 0.7)]
    assert meta["prompt"] == "cr7man and a friend, group photo" and meta["fused"] is False
    scores = json.loads((out / "scores-exp01.json").read_text())
    assert scores["n_images"] == 2 and scores["reference"]["dir"] == study.get("exp01").settings.data_dir
    assert "face distance" in proc.stdout
    said = proc.stdout + proc.stderr  # the engine's lines only: no library progress bar or notice
    assert "generate: loading" in said and "[2/2] p01-g3.5-s1.png" in said
    assert not any(noise in said for noise in ("Loading pipeline components", "Loading weights", "it/s]", "torch_dtype"))

    # --fuse: the same call fused writes its own folder and leaves the unfused images as they were
    before = {p.name: p.read_bytes() for p in pngs}
    proc = flux_tui("generate", "--lora", str(runs / "exp01"), "--lora", str(runs / "exp02"), "--weights", "0.8,0.7",
                    "--prompt", "cr7man and a friend, group photo", "--fuse", tmp=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fused = study.workspace.root / "merges" / "exp01+exp02-w0.8,0.7-fused"
    assert [p.name for p in fused.glob("*.png")] == ["p01-g3.5-s0.png"] and str(fused) in proc.stdout
    assert imagemeta.read_metadata(fused / "p01-g3.5-s0.png")["fused"] is True
    assert {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))} == before


def test_generate_rejects_weights_that_do_not_match_the_loras(study: config.Study, capsys) -> None:
    runs = study.workspace.runs_dir
    code = generate.main(["--lora", str(runs / "exp01"), "--lora", str(runs / "exp02"), "--weights", "0.8", "--prompt", "x"])
    assert code == 2 and "1 weight(s) for 2 --lora(s)" in capsys.readouterr().err
    assert generate.main(["--lora", str(runs / "exp04"), "--prompt", "x"]) == 2
    assert "no LoRA there" in capsys.readouterr().err


@pytest.mark.slow
def test_a_runs_best_step_lora_is_used_as_run_at_best_or_with_step_best(study: config.Study, tmp_path: Path) -> None:
    from flux_tui.tui.screens.playground import lora_runs

    runs = study.workspace.runs_dir
    run = run_dir(study, "exp02")
    run.best_lora_dir.mkdir()
    try:
        shutil.copy(run_dir(study, "exp01").lora_file, run.best_lora_file)  # another LoRA than exp02's own
        assert pipeline.resolve_lora(f"{run.path}@best") == (run.best_lora_file, "exp02@best")
        assert pipeline.resolve_lora(run.path, "best") == (run.best_lora_file, "exp02@best")
        with pytest.raises(pipeline.GenerateError, match="'exp01' has no best-step LoRA"):
            pipeline.resolve_lora(runs / "exp01", "best")
        # The playground offers it beside the run's own LoRA, under the name the engine resolves.
        listed = {name: path for name, path, _ in lora_runs(study)}
        assert listed["exp02@best"] == f"{run.path}@best" and listed["exp02"] == str(run.path)
        assert "exp01@best" not in listed

        out = tmp_path / "out"
        proc = flux_tui("generate", "--lora", str(run.path), "--step", "best", "--prompt", "cr7man", "--steps", "2",
                        "--guidance", "3.5", "--out", str(out), tmp=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (png,) = sorted(out.glob("*.png"))
        meta = imagemeta.read_metadata(png)
        assert meta["loras"] == [{"path": str(run.best_lora_file), "weight": 1.0, "run": "exp02@best"}]
        assert meta["base_model"] == study.get("exp02").settings.base_model  # the run's config still found
        # The same image as with exp01's own LoRA file: the best step's LoRA is what was loaded. (The guidance
        # is given: by default each run's own first guidance scale, which differs between exp01 and exp02.)
        proc = flux_tui("generate", "--lora", str(runs / "exp01"), "--prompt", "cr7man", "--steps", "2",
                        "--guidance", "3.5", "--out", str(tmp_path / "same"), tmp=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert np.abs(_pixels(png) - _pixels(tmp_path / "same" / png.name)).max() <= 1
    finally:
        shutil.rmtree(run.best_lora_dir)
