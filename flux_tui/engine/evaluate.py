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
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from flux_tui.core import analysis
from flux_tui.core.metrics import METRICS
from flux_tui.core.runs import KIND_EXPERIMENT, RunDir
from flux_tui.engine import pipeline
from flux_tui.engine import score as score_mod
from flux_tui.engine.device import choose, device_label, free_memory
from flux_tui.engine.errors import EngineError
from flux_tui.engine.imagemeta import GenSettings, Job, read_metadata
from flux_tui.engine.run_owner import EXIT_USAGE, NotOwned, owned_run
from flux_tui.engine.runlog import logging_to


class EvaluateError(EngineError):
    """The run cannot be evaluated as asked (no LoRA, no images to score); the message says why."""


class ModelCache:
    """Models loaded at most once per process: pipelines by base model, face and CLIP scorers by weights.

    With `park_scorers` (the trainer, whose model keeps the GPU between evaluations) the scorers go back to
    the CPU after each `scoring()` block and the accelerator's cache is emptied; on a CPU that is a no-op."""

    def __init__(self, device: str | None = None, park_scorers: bool = False):
        self.device = device
        self.park_scorers = park_scorers
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

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """Scorers loaded earlier come back to the device for the block; parked after it (`park_scorers`)."""
        home = choose(self.device)
        scorers = [*self._faces.values(), *self._clips.values()]
        for scorer in scorers:
            scorer.to(home)
        try:
            yield
        finally:
            if self.park_scorers:
                for scorer in [*self._faces.values(), *self._clips.values()]:
                    scorer.to("cpu")
                free_memory(home)


class ImageMaker(Protocol):
    """What makes a run's evaluation images: a pipeline loaded for them (`LoadedPipeline`), or the trainer's
    model already in memory (`engine.train_eval.TrainedImages`)."""

    quantize: str  # the base model's weights as they make the images: none, int8 or nf4

    def use_lora(self, lora: Path | None, checkpoint: Path | None = None) -> None:
        """Make the next images with the run's LoRA `lora` (None: the base alone), or with `checkpoint`'s."""

    def generate(self, jobs: list[Job], out_dir: Path, gen: GenSettings, batch_size: int,
                 on_image: Callable[[Path, Job, int, int], None]) -> list[Path]: ...  # fmt: skip

    def finish(self) -> None:
        """The evaluation is over: leave the model as it was found."""


class LoadedPipeline:
    """The whole pipeline from disk (text encoders included), the LoRAs loaded by diffusers: what a
    standalone evaluation, the ablation and a relaunch of a trained run use."""

    quantize = "none"

    def __init__(self, models: ModelCache, cfg: dict[str, Any]):
        self.cfg = cfg
        self.pipe = models.pipeline(cfg["base_model"], cfg.get("revision"))

    def use_lora(self, lora: Path | None, checkpoint: Path | None = None) -> None:
        if checkpoint is not None:
            rank = self.cfg["lora_rank"]
            state = pipeline.checkpoint_lora(checkpoint, rank, self.cfg.get("lora_alpha") or rank)
            pipeline.set_loras(self.pipe, [(state, 1.0)])
        else:
            pipeline.set_loras(self.pipe, [(lora, 1.0)] if lora else [])

    def generate(self, jobs: list[Job], out_dir: Path, gen: GenSettings, batch_size: int,
                 on_image: Callable[[Path, Job, int, int], None]) -> list[Path]:  # fmt: skip
        return pipeline.generate_images(self.pipe, jobs, out_dir, gen, batch_size=batch_size, on_image=on_image)

    def finish(self) -> None:
        pipeline.clear_loras(self.pipe)


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


def grid_settings(run: RunDir, cfg: dict[str, Any], loras: list[dict[str, Any]], step: int | None,
                  quantize: str = "none") -> GenSettings:  # fmt: skip
    """What every image of a run's evaluation shares (its PNG metadata)."""
    size = cfg.get("eval_resolution") or cfg["resolution"]
    return GenSettings(
        base_model=cfg["base_model"], width=size, height=size, num_inference_steps=cfg["num_inference_steps"],
        max_sequence_length=cfg.get("max_sequence_length", 512), revision=cfg.get("revision"),
        loras=loras, run=run.name, checkpoint=step, quantize=quantize,
    )  # fmt: skip


def generate_stage(run: RunDir, models: ModelCache, batch_size: int = pipeline.DEFAULT_BATCH,
                   maker: ImageMaker | None = None) -> list[Path]:  # fmt: skip
    """Make the evaluation grid of the run's LoRA (and of each checkpoint with `eval_checkpoints`), with
    `maker` (default: the pipeline loaded from disk)."""
    check_ready(run)
    cfg = _settings(run)
    lora = run.lora_source()
    jobs = pipeline.eval_jobs(cfg["eval_prompts"], cfg["guidance_scales"], cfg["images_per_prompt"], cfg["eval_seed"])
    checkpoints = run.checkpoints() if cfg.get("eval_checkpoints") else []
    total = len(jobs) * (1 + len(checkpoints))
    _clear_eval_images(run)
    maker = maker or LoadedPipeline(models, cfg)
    made: list[Path] = []

    def on_image(path: Path, job: Job, step: int | None) -> None:
        made.append(path)
        run.append_event("eval_image", path=_rel(run, path), prompt=job.prompt, guidance=job.guidance_scale,
                         seed=job.seed, checkpoint=step, index=len(made), total=total)  # fmt: skip
        print(f"generate: [{len(made)}/{total}] {_rel(run, path)}  {job.prompt}", flush=True)

    for ckpt in checkpoints:
        step = int(ckpt.name.split("-")[-1])
        maker.use_lora(None, checkpoint=ckpt)
        gen = grid_settings(run, cfg, [{"path": str(ckpt), "weight": 1.0, "run": run.name}], step, maker.quantize)
        maker.generate(jobs, run.checkpoint_eval_dir(step), gen, batch_size,
                       lambda p, j, i, n, s=step: on_image(p, j, s))  # fmt: skip
    maker.use_lora(lora)
    source = (run.read_run() or {}).get("source_run", run.name)
    loras = [{"path": str(lora), "weight": 1.0, "run": source}] if lora else []
    maker.generate(jobs, run.eval_dir, grid_settings(run, cfg, loras, None, maker.quantize), batch_size,
                   lambda p, j, i, n: on_image(p, j, None))  # fmt: skip
    maker.finish()
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


def score_images_of(images: Sequence[Path], run: RunDir, cfg: dict[str, Any], models: ModelCache) -> dict[str, Any]:
    """Every score of `images` (of `run`, prompts from their metadata) against the run's training photos."""
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


SUMMARY_KEYS = tuple(m.key for m in METRICS)  # a set of images in one line (events, checkpoints)


def score_stage(run: RunDir, models: ModelCache) -> dict[str, Any]:
    """Score the run's evaluation images (and each checkpoint's) into scores.json; returns what it wrote."""
    cfg = _settings(run)
    images = run.eval_images()
    if not images:
        raise EvaluateError(f"run {run.name!r} has no evaluation images in {run.eval_dir}")
    with models.scoring():
        result = score_images_of(images, run, cfg, models)
        steps = sorted(int(d.name.split("-")[-1]) for d in run.eval_dir.glob("checkpoint-*")
                       if d.name.split("-")[-1].isdigit())  # fmt: skip
        result["checkpoints"] = [
            {"step": step, **{k: v for k, v in score_images_of(run.eval_images(step), run, cfg, models).items()
                              if k in SUMMARY_KEYS}}
            for step in steps if run.eval_images(step)
        ]  # fmt: skip
    lora = run.lora_source()
    result.update(base=base_of(images[0]), **curve_record(run))
    result.update(run=run.name, kind=run.kind, lora=str(lora) if lora else None, scored_at=time.time())
    score_mod.write_scores(run.scores_json, result)
    run.append_event("scores", **{k: result[k] for k in SUMMARY_KEYS}, faceless_images=result["faceless_images"])
    print(score_mod.format_report(result), flush=True)
    return result


def base_of(image: Path) -> dict[str, Any]:
    """Which base model made the images, from their metadata: {model, revision, quantize}."""
    meta = read_metadata(image)
    return {"model": meta.get("base_model"), "revision": meta.get("revision"), "quantize": meta.get("quantize", "none")}


def curve_record(run: RunDir) -> dict[str, Any]:
    """scores.json's `curve` (per evaluated step while training), `best_step` (PICK_RULE over it) and
    `early_stop`, from the events (core.curve); empty when the run has no curve."""
    reader = run.curve()
    if not reader.curve:
        return {}
    lora = run.best_lora_file
    out: dict[str, Any] = {"curve": reader.curve, "best_step": analysis.best_step(reader.curve),
                           "best_lora": str(lora) if lora.is_file() else None}  # fmt: skip
    if reader.early_stop:
        out["early_stop"] = reader.early_stop
    return out


def evaluate_run(
    run: RunDir,
    *,
    score_only: bool = False,
    models: ModelCache | None = None,
    batch_size: int = pipeline.DEFAULT_BATCH,
    maker: ImageMaker | None = None,
) -> None:
    """Generate the run's evaluation images (with `maker`, default: the pipeline loaded from disk), then
    score them into scores.json, announcing each stage in status.json and events.jsonl. Raises on failure
    (the caller sets the final state)."""
    models = models or ModelCache()
    check_ready(run, score_only)
    if not score_only:
        run.write_status(stage="generate")
        run.append_event("stage", stage="generate")
        generate_stage(run, models, batch_size, maker)
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
