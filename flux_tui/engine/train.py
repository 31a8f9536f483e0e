"""`python -m flux_tui.engine.train RUN_DIR [--no-eval]`: train one run's LoRA, then evaluate it.

The process owns its run folder for its lifetime (`engine.run_owner`): it holds the run's lock, writes
`status.json` as it moves through the stages (prepare, train, then the evaluation's generate and score),
appends progress to `events.jsonl`, checkpoints every `checkpointing_steps`, and always ends in a finished
state:

    done        0       the LoRA is in lora/ (and the evaluation, unless --no-eval, ran)
    failed      1       the message and the last log lines are in status.json
    oom         3       CUDA ran out of memory; the message says what to lower
    cancelled   128+N   signal N (SIGTERM, SIGINT, SIGHUP): during training the step under way finishes and
                        a checkpoint is saved first, so a relaunch resumes from it; before, it stops at once

It exits 2 for a folder that is not a run, and 4 when another process owns the run (it names its pid);
both leave the run as it was.

Relaunching resumes from the newest checkpoint; relaunching a run whose LoRA exists only evaluates it.
The stages: `train_prepare` (photos, cached latents and text embeddings), `train_model` (the model to
train, one optimizer step), `train_loop` (the steps, checkpoints, samples, the export), `train_eval` (the
score curve while training, and the evaluation with the model already in memory: the transformer is read
once per run, and no text encoder loads when the sweep's text cache holds every prompt).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from flux_tui.core.config import Settings, settings_from_dict
from flux_tui.core.runs import RunDir
from flux_tui.engine.device import default_device, device_label, free_memory, is_oom
from flux_tui.engine.errors import EngineError
from flux_tui.engine.evaluate import ImageMaker, ModelCache, evaluate_run
from flux_tui.engine.faults import ENV as FAULT_ENV
from flux_tui.engine.faults import Faults
from flux_tui.engine.run_owner import EXIT_USAGE, NotOwned, OwnedRun, owned_run
from flux_tui.engine.runlog import log


class EvaluationFailed(EngineError):
    """The LoRA is trained and kept, but its evaluation failed."""


def oom_advice(settings: Settings, step: int | None, exc: BaseException) -> str:
    """What to lower after CUDA ran out of memory, from the run's own settings."""
    tips = []
    if settings.resolution > 512:
        tips.append(f"a lower resolution (now {settings.resolution})")
    if not settings.gradient_checkpointing:
        tips.append("gradient_checkpointing = true")
    if settings.optimizer != "adamw8bit":
        tips.append('optimizer = "adamw8bit" (needs bitsandbytes)')
    if settings.quantize == "none":
        tips.append('quantize = "int8" or "nf4"')
    if settings.train_batch_size > 1:
        tips.append("train_batch_size = 1 with gradient_accumulation_steps for the same effective batch")
    if settings.mixed_precision == "no":
        tips.append('mixed_precision = "bf16"')
    where = f" at step {step}" if step else ""
    advice = f"CUDA out of memory{where}. Try: " + ("; ".join(tips) if tips else "a smaller lora_rank or a bigger GPU")
    return advice + (f" ({exc})" if FAULT_ENV in str(exc) else "")  # say so when it was injected


@dataclass(frozen=True)
class Trained:
    images: ImageMaker  # the trained model in memory, to evaluate it with (engine.train_eval.TrainedImages)
    stopped_early: str | None  # why training stopped before max_train_steps, if it did


def train_lora(run: RunDir, settings: Settings, device: str, owner: OwnedRun, models: ModelCache | None) -> Trained:
    """Prepare, build, train (scoring the curve with `models`, when given), export: the stages hand each
    other their records. The model stays in memory for the evaluation."""
    # The libraries load here, after the run's signal handlers are in place: a stop during the imports
    # already ends the run `cancelled`. The prepare stage needs only torch, Pillow and safetensors (the VAE,
    # the text encoders and MTCNN load inside it, and only for what the caches lack); peft, transformers
    # and the rest of diffusers load after it, with the model to train.
    from flux_tui.engine import train_prepare

    prepared = train_prepare.prepare(run, settings, device, with_eval=models is not None)
    from flux_tui.engine import train_eval, train_loop, train_model

    training = train_model.build(run, settings, prepared, device)
    images = train_eval.TrainedImages(run, settings, prepared, training)
    curve = train_eval.Curve.start(run, settings, training, images, models) if models else None
    if models is None and settings.eval_interval:
        log("curve: off with --no-eval (no evaluation while training"
            + (", so no early stopping)" if settings.early_stop_patience else ")"))
    stopped = train_loop.train(run, settings, prepared, training, owner, images, curve)
    train_loop.export(run, settings, training)
    if curve is not None:
        curve.keep_best()
    training.accelerator.free_memory()  # the optimizer's state goes; the model stays for the evaluation
    return Trained(images, stopped)


def evaluate_after_training(run: RunDir, models: ModelCache, maker: ImageMaker | None) -> None:
    """The evaluation in this process (with the trained model when there is one, else the pipeline loaded
    from disk). Its failure fails the run but keeps the LoRA; out of memory stays oom."""
    try:
        evaluate_run(run, models=models, maker=maker)
    except Exception as exc:
        if is_oom(exc):
            raise
        if not isinstance(exc, EngineError):
            traceback.print_exc()
        detail = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        raise EvaluationFailed(f"evaluation failed (the LoRA is kept): {detail}") from exc


def execute(run: RunDir, owner: OwnedRun, with_eval: bool) -> str:
    """The run's work, as its owner. Returns the message of a run that ends done."""
    settings = settings_from_dict(run.config())
    import torch

    Faults.from_env()  # a malformed switch fails here, before any work
    device = default_device()
    owner.record_device(device_label(device))
    owner.oom_advice = lambda exc: oom_advice(settings, owner.step, exc)
    run.append_event("stage", stage="prepare")
    log(f"run {run.name}: pid {os.getpid()}, device {device_label(device)}, torch {torch.__version__}")
    models = ModelCache(device, park_scorers=True) if with_eval else None
    trained = None
    if run.lora_file.exists():
        log(f"train: {run.lora_file} exists: this run is trained; only evaluating it")
    else:
        trained = train_lora(run, settings, device, owner, models)
        free_memory(device)  # the training's activations and optimizer are gone: the evaluation gets the memory
    early = f"{trained.stopped_early}; " if trained and trained.stopped_early else ""
    if models is None:
        return early + "trained (evaluation skipped: --no-eval)"
    evaluate_after_training(run, models, trained.images if trained else None)
    return early + "trained and evaluated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.train", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>/, with its run.json)")
    parser.add_argument("--no-eval", action="store_true", help="train only; skip generation and scoring")
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir.resolve())
    if not run.exists():
        print(f"train: {run.run_json} not found: not a run folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        with owned_run(run, "prepare", resumable=True, evaluation=None) as owner:  # None: trained, only evaluated
            owner.done_message = execute(run, owner, with_eval=not args.no_eval)
    except NotOwned as exc:  # another process owns the run, or a stop came while taking it
        print(f"train: {exc}", file=sys.stderr)
        return exc.exit_code
    assert owner.exit_code is not None
    return owner.exit_code


if __name__ == "__main__":
    sys.exit(main())
