"""A run's evaluation: the generation stage (samples/eval/) then the scoring stage (scores.json).

The trainer calls `evaluate_run(run)` in its own process once the LoRA is saved, and owns the run's
final state. `python -m flux_tui.engine.evaluate RUN_DIR [--score-only]` re-runs it alone (after a failed
scoring, or with new evaluation settings) as the run's owner (`engine.run_owner`): running with stage
generate/score, then done, failed, cancelled or oom, with its own times and message under status.json's
`evaluation` beside the training's. A failure in scoring leaves the LoRA and the images.
`python -m flux_tui.engine.generate RUN_DIR` makes the grid alone (`generate_run`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flux_tui.core.runs import KIND_EXPERIMENT, RunDir
from flux_tui.engine import pipeline
from flux_tui.engine import score as score_mod
from flux_tui.engine.device import choose, device_label
from flux_tui.engine.errors import EngineError
from flux_tui.engine.imagemeta import GenSettings, Job, read_metadata
from flux_tui.engine.run_owner import EXIT_USAGE, NotOwned, owned_run
from flux_tui.engine.runlog import logging_to


class EvaluateError(EngineError):
    """The run cannot be evaluated as asked (no LoRA, no images to score); the message says why."""


class ModelCache:
    """Models loaded at most once per process: pipelines by base model, face and CLIP scorers by weights."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._pipes: dict[tuple[str, str | None], Any] = {}
        self._faces: dict[str | None, score_mod.FaceEmbedder] = {}
        self._clips: dict[str, score_mod.ClipScorer] = {}

    def pipeline(self, base_model: str, revision: str | None = None):
        key = (base_model, revision)
        if key not in self._pipes:
            self._pipes.clear()  # one base model at a time: FLUX.1-dev alone fills most cards
            self._pipes[key] = pipeline.load_pipeline(base_model, self.device, revision)
        return self._pipes[key]

    def face(self, weights: str | None) -> score_mod.FaceEmbedder:
        if weights not in self._faces:
            self._faces[weights] = score_mod.FaceEmbedder(weights, self.device)
        return self._faces[weights]

    def clip(self, model: str) -> score_mod.ClipScorer:
        if model not in self._clips:
            self._clips[model] = score_mod.ClipScorer(model, self.device)
        return self._clips[model]


def _rel(run: RunDir, path: Path) -> str:
    try:
        return str(path.relative_to(run.path))
    except ValueError:
        return str(path)


def _settings(run: RunDir) -> dict[str, Any]:
    cfg = run.config()
    if not cfg:
        raise EvaluateError(f"{run.run_json} is missing or unreadable: not a run folder")
    return cfg


def check_ready(run: RunDir, score_only: bool = False) -> None:
    """Raise EvaluateError when the run lacks what the evaluation needs, before its state is touched."""
    _settings(run)
    if score_only:
        if not run.eval_images():
            raise EvaluateError(f"run {run.name!r} has no evaluation images in {run.eval_dir} to score; "
                                "evaluate it without --score-only first")  # fmt: skip
        return
    lora = run.lora_source()
    if lora is not None and not lora.is_file():
        what = "has no trained LoRA yet" if run.kind == KIND_EXPERIMENT else "refers to a LoRA that is gone"
        raise EvaluateError(f"run {run.name!r} {what} ({lora} is missing)")


def _clear_eval_images(run: RunDir) -> None:
    """Old images go first: a grid made with other prompts must not mix with the new one."""
    for png in run.eval_images():
        png.unlink()
    for sub in run.eval_dir.glob("checkpoint-*") if run.eval_dir.is_dir() else []:
        for png in sub.glob("*.png"):
            png.unlink()


def generate_stage(run: RunDir, models: ModelCache, batch_size: int = pipeline.DEFAULT_BATCH) -> list[Path]:
    """Make the evaluation grid of the run's LoRA (and of each checkpoint with `eval_checkpoints`)."""
    check_ready(run)
    cfg = _settings(run)
    lora = run.lora_source()
    size = cfg.get("eval_resolution") or cfg["resolution"]
    jobs = pipeline.eval_jobs(cfg["eval_prompts"], cfg["guidance_scales"], cfg["images_per_prompt"], cfg["eval_seed"])
    checkpoints = run.checkpoints() if cfg.get("eval_checkpoints") else []
    total = len(jobs) * (1 + len(checkpoints))
    _clear_eval_images(run)
    pipe = models.pipeline(cfg["base_model"], cfg.get("revision"))
    made: list[Path] = []

    def on_image(path: Path, job: Job, i: int, n: int, step: int | None = None) -> None:
        made.append(path)
        run.append_event("eval_image", path=_rel(run, path), prompt=job.prompt, guidance=job.guidance_scale,
                         seed=job.seed, checkpoint=step, index=len(made), total=total)  # fmt: skip
        print(f"generate: [{len(made)}/{total}] {_rel(run, path)}  {job.prompt}", flush=True)

    def settings(loras: list[dict[str, Any]], step: int | None) -> GenSettings:
        return GenSettings(
            base_model=cfg["base_model"], width=size, height=size, num_inference_steps=cfg["num_inference_steps"],
            max_sequence_length=cfg.get("max_sequence_length", 512), revision=cfg.get("revision"),
            loras=loras, run=run.name, checkpoint=step,
        )  # fmt: skip

    rank, alpha = cfg["lora_rank"], cfg.get("lora_alpha") or cfg["lora_rank"]
    for ckpt in checkpoints:
        step = int(ckpt.name.split("-")[-1])
        pipeline.set_loras(pipe, [(pipeline.checkpoint_lora(ckpt, rank, alpha), 1.0)])
        pipeline.generate_images(pipe, jobs, run.checkpoint_eval_dir(step),
                                settings([{"path": str(ckpt), "weight": 1.0, "run": run.name}], step),
                                batch_size=batch_size, on_image=lambda p, j, i, n, s=step: on_image(p, j, i, n, s))  # fmt: skip
    pipeline.set_loras(pipe, [(lora, 1.0)] if lora else [])
    loras = [{"path": str(lora), "weight": 1.0, "run": (run.read_run() or {}).get("source_run", run.name)}] if lora else []
    pipeline.generate_images(pipe, jobs, run.eval_dir, settings(loras, None), batch_size=batch_size, on_image=on_image)
    pipeline.clear_loras(pipe)
    return made


def generate_run(run: RunDir, device: str | None = None, batch_size: int = pipeline.DEFAULT_BATCH) -> int:
    """`python -m flux_tui.engine.generate RUN_DIR`: the run's evaluation grid alone, without scoring it."""
    generate_stage(run, ModelCache(device), batch_size=batch_size)
    return 0


def reference_dir(run: RunDir, cfg: dict[str, Any]) -> Path:
    """The run's training photos: the configured data folder, else the prepared copies in the run folder."""
    for candidate in (Path(cfg.get("data_dir", "")), run.data_dir):
        if str(candidate) and candidate.is_dir() and score_mod.list_images(candidate):
            return candidate
    raise EvaluateError(f"no training photos to compare faces with: {cfg.get('data_dir')} and {run.data_dir} "
                        "hold no images")  # fmt: skip


def _score_folder(images: Sequence[Path], run: RunDir, cfg: dict[str, Any], models: ModelCache) -> dict[str, Any]:
    face = models.face(cfg.get("face_weights"))
    clip = models.clip(cfg.get("clip_model") or score_mod.DEFAULT_CLIP)
    cache = (run.read_run() or {}).get("cache_dir")
    ref = score_mod.reference_embedding(reference_dir(run, cfg), face, Path(cache) if cache else None)
    meta = [read_metadata(p) for p in images]
    prompts = [m.get("prompt") for m in meta]
    if not all(prompts):
        raise EvaluateError(f"evaluation images without a prompt in their metadata in {run.eval_dir}; "
                            "evaluate without --score-only to make them again")  # fmt: skip
    return score_mod.score_images(images, prompts, face, clip, ref, meta)


SUMMARY_KEYS = ("face_distance", "identity_similarity", "clip_score", "clip_score_x100", "faceless", "n_images")


def score_stage(run: RunDir, models: ModelCache) -> dict[str, Any]:
    """Score the run's evaluation images (and each checkpoint's) into scores.json; returns what it wrote."""
    cfg = _settings(run)
    images = run.eval_images()
    if not images:
        raise EvaluateError(f"run {run.name!r} has no evaluation images in {run.eval_dir}")
    result = _score_folder(images, run, cfg, models)
    steps = sorted(int(d.name.split("-")[-1]) for d in run.eval_dir.glob("checkpoint-*") if d.name.split("-")[-1].isdigit())
    result["checkpoints"] = [
        {"step": step, **{k: v for k, v in _score_folder(run.eval_images(step), run, cfg, models).items() if k in SUMMARY_KEYS}}
        for step in steps if run.eval_images(step)
    ]  # fmt: skip
    lora = run.lora_source()
    result.update(run=run.name, kind=run.kind, lora=str(lora) if lora else None, scored_at=time.time())
    score_mod.write_scores(run.scores_json, result)
    run.append_event("scores", **{k: result[k] for k in SUMMARY_KEYS}, faceless_images=result["faceless_images"])
    print(score_mod.format_report(result), flush=True)
    return result


def evaluate_run(
    run: RunDir,
    *,
    score_only: bool = False,
    models: ModelCache | None = None,
    batch_size: int = pipeline.DEFAULT_BATCH,
) -> None:
    """Generate the run's evaluation images, then score them into scores.json, announcing each stage in
    status.json and events.jsonl. Raises on failure (the caller sets the final state)."""
    models = models or ModelCache()
    check_ready(run, score_only)
    if not score_only:
        run.write_status(stage="generate")
        run.append_event("stage", stage="generate")
        generate_stage(run, models, batch_size)
    run.write_status(stage="score")
    run.append_event("stage", stage="score")
    score_stage(run, models)


# -- standalone ---------------------------------------------------------------------------------------

OOM_ADVICE = "out of GPU memory while evaluating: lower --batch-size or eval_resolution"


def evaluate_owned(run: RunDir, models: ModelCache, *, score_only: bool = False,
                   batch_size: int = pipeline.DEFAULT_BATCH) -> int:  # fmt: skip
    """Evaluate `run` as its owner (`owned_run`): refused (EXIT_BUSY) when a live process owns it, else
    marked running and left done, failed, cancelled or oom with the evaluation's own record beside the
    training's. Returns the exit code."""
    device = device_label(choose(models.device))
    try:
        with owned_run(run, "score" if score_only else "generate", evaluation=True, device=device) as owner:
            owner.oom_advice = lambda exc: OOM_ADVICE
            evaluate_run(run, score_only=score_only, models=models, batch_size=batch_size)
    except NotOwned as exc:  # another process owns the run, or a stop came while taking it
        print(f"evaluate: {exc}", file=sys.stderr)
        return exc.exit_code
    assert owner.exit_code is not None
    return owner.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the run folder (runs/<name>)")
    parser.add_argument("--score-only", action="store_true", help="score the existing images again")
    parser.add_argument("--batch-size", type=int, default=pipeline.DEFAULT_BATCH, help="images per pipeline call")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is one)")
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run).resolve())
    try:
        check_ready(run, args.score_only)
    except EvaluateError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with logging_to(run):
        return evaluate_owned(run, ModelCache(args.device), score_only=args.score_only, batch_size=args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
