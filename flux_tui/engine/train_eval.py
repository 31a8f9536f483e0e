"""Evaluation inside the training process, with the model already in memory.

`TrainedImages` makes images with the transformer being trained (its LoRA adapter as it is, or a
checkpoint's loaded into it for a moment), a VAE loaded once, and the prompts' embeddings from the sweep's
text cache (`train_prepare` encodes the evaluation prompts there): the transformer is read from disk once
per run and no text encoder is loaded. The samples made while training, the score curve and the final
evaluation grid (`engine.evaluate`'s `ImageMaker`) all use it.

`Curve` scores the LoRA every `eval_every` steps (and at the last step) on `curve_prompts`, one image each
with the first guidance scale and `eval_seed`, with the evaluation's scorers (loaded once per process,
parked on the CPU between evaluations): a `curve` event per step (`core.curve`), the step's LoRA kept under
`curve/step-<N>/` until training ends, when PICK_RULE's step becomes `lora/best/`. With
`early_stop_patience` K, training stops once face distance has not improved for K evaluations. A failed
evaluation turns the curve off with a warning (training goes on; running out of memory still ends the run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from flux_tui.core import analysis
from flux_tui.core import curve as curves
from flux_tui.core.config import Settings
from flux_tui.core.metrics import FACE_DISTANCE, figures, metric
from flux_tui.core.runs import RunDir
from flux_tui.engine import checkpoint, compile_blocks, lora, pipeline
from flux_tui.engine.device import is_oom
from flux_tui.engine.evaluate import SUMMARY_KEYS, ModelCache, grid_settings, score_images_of
from flux_tui.engine.faults import Faults
from flux_tui.engine.imagemeta import GenSettings, Job
from flux_tui.engine.runlog import log
from flux_tui.engine.train_model import Training
from flux_tui.engine.train_prepare import Prepared


class TrainedImages:
    """The evaluation's image maker over the trainer's model (see the module's doc)."""

    def __init__(self, run: RunDir, settings: Settings, prepared: Prepared, training: Training):
        self.run, self.prepared = run, prepared
        self.model = training.unwrapped
        self.device = training.device
        self.autocast = training.accelerator.autocast
        self.quantize = settings.quantize
        self._vae: Any = None
        self._scheduler_config: Any = None
        self._trained: dict[str, torch.Tensor] | None = None  # the adapter as trained, while a checkpoint's is in

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A pipeline around the model (in eval mode, without gradients, its blocks uncompiled) with the VAE
        on the device; the model's mode and the VAE's place on the CPU come back after."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

        p = self.prepared
        if self._vae is None:
            self._vae = AutoencoderKL.from_pretrained(p.model_dir, subfolder="vae", torch_dtype=p.enc_dtype)
            self._scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(p.model_dir, subfolder="scheduler")
        training = self.model.training
        self.model.eval()
        self._vae.to(self.device)
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_config), vae=self._vae,
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=self.model,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        try:
            with torch.no_grad(), self.autocast(), compile_blocks.eager(self.model):
                yield pipe
        finally:
            self._vae.to("cpu")
            if training:
                self.model.train()

    # -- engine.evaluate.ImageMaker
    def use_lora(self, lora_file: Path | None, checkpoint: Path | None = None) -> None:
        if checkpoint is not None:
            from safetensors.torch import load_file

            if self._trained is None:
                self._trained = lora.lora_state(self.model)
            lora.load_lora_state(self.model, load_file(checkpoint / "lora.safetensors"))
            return
        if lora_file != self.run.lora_file:
            raise ValueError(f"the trainer's model holds {self.run.lora_file}, not {lora_file}")
        self.finish()

    def generate(self, jobs: list[Job], out_dir: Path, gen: GenSettings, batch_size: int,
                 on_image: Callable[[Path, Job, int, int], None] | None = None) -> list[Path]:  # fmt: skip
        with self.session() as pipe:
            return pipeline.generate_images(pipe, jobs, out_dir, gen, batch_size=batch_size, on_image=on_image,
                                            text=self.prepared.text)  # fmt: skip

    def finish(self) -> None:
        if self._trained is not None:
            lora.load_lora_state(self.model, self._trained)
            self._trained = None


class Curve:
    """The score curve of one training (see the module's doc). `points` are by step."""

    def __init__(self, run: RunDir, settings: Settings, training: Training, images: TrainedImages,
                 models: ModelCache) -> None:  # fmt: skip
        self.run, self.s, self.training, self.images, self.models = run, settings, training, images, models
        self.cfg = run.config()
        self.points: dict[int, dict[str, Any]] = {}
        self.seconds = 0.0
        self.off = False
        self.faults = Faults.from_env()

    @classmethod
    def start(cls, run: RunDir, settings: Settings, training: Training, images: TrainedImages,
              models: ModelCache) -> Curve | None:  # fmt: skip
        """The curve of this launch, carrying the points (and kept LoRAs) of an earlier one up to the
        checkpoint resumed from; None when `eval_every` is 0."""
        if settings.eval_interval == 0:
            log("curve: off (eval_every = 0)")
            return None
        curve = cls(run, settings, training, images, models)
        carried = [p for p in run.curve().curve
                   if p["step"] <= training.start_step and run.curve_lora_dir(p["step"]).is_dir()]  # fmt: skip
        curve.points = {p["step"]: p for p in carried}
        run.append_event("curve_begin", every=settings.eval_interval, prompts=settings.curve_prompts,
                         patience=settings.early_stop_patience, carried=carried)  # fmt: skip
        log(f"curve: the LoRA is scored every {settings.eval_interval} steps on {len(settings.curve_prompts)} "
            f"prompt(s)" + (f", early stop after {settings.early_stop_patience} evaluations without a better "
                            "face distance" if settings.early_stop_patience else ""))  # fmt: skip
        return curve

    def due(self, step: int) -> bool:
        """Whether `step` is evaluated: every `eval_every` steps and the last, unless already done."""
        every, total = self.s.eval_interval, self.s.max_train_steps
        return not self.off and step not in self.points and (step % every == 0 or step == total)

    def evaluate(self, step: int) -> None:
        """Score the LoRA as it is at `step`. The random states are put back after: a run with a curve
        trains exactly the weights of one without."""
        rng = checkpoint.rng_state(self.training.generator)
        t0 = time.perf_counter()
        try:
            self._save_lora(step)
            images = self._generate(step)
            t1 = time.perf_counter()
            self.faults.replace_curve_images(step, images)
            with self.models.scoring():
                result = score_images_of(images, self.run, self.cfg, self.models)
            t2 = time.perf_counter()
        except Exception as exc:
            if is_oom(exc):
                raise
            self._turn_off(step, exc)
            return
        finally:
            checkpoint.set_rng_state(rng, self.training.generator)
        took = t2 - t0
        self.seconds += took
        point = {"step": step, **{k: result[k] for k in SUMMARY_KEYS}}
        self.points[step] = point
        self.run.append_event("curve", **point, faceless_images=result["faceless_images"],
                              images=[str(p.relative_to(self.run.path)) for p in images],
                              seconds=round(took, 3), generate_s=round(t1 - t0, 3))  # fmt: skip
        log(f"curve: step {step}: {figures(lambda k: point.get(k))} ({len(images)} image(s) in {took:.1f} s: "
            f"generating {t1 - t0:.1f} s, scoring {t2 - t1:.1f} s)")  # fmt: skip

    def _save_lora(self, step: int) -> None:
        """The LoRA as it is now, in diffusers' format, under curve/step-<N>/ (written aside, renamed)."""
        final = self.run.curve_lora_dir(step)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lora.export_lora(self.images.model, self.s, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def _generate(self, step: int) -> list[Path]:
        s = self.s
        out = self.run.curve_images_dir(step)
        for old in out.glob("*.png") if out.is_dir() else []:
            old.unlink()
        jobs = pipeline.eval_jobs(s.curve_prompts, s.guidance_scales[:1], 1, s.eval_seed)
        loras = [{"path": str(self.run.curve_lora_dir(step)), "weight": 1.0, "run": self.run.name}]
        gen = grid_settings(self.run, self.cfg, loras, step, self.images.quantize)
        return self.images.generate(jobs, out, gen, pipeline.DEFAULT_BATCH)

    def _turn_off(self, step: int, exc: Exception) -> None:
        self.off = True
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        self.run.append_event("curve_failed", step=step, message=message)
        log(f"curve: WARNING: the evaluation at step {step} failed ({message}); no more evaluations while "
            "training (the run goes on; its final evaluation will tell whether scoring works)")  # fmt: skip

    def stop_reason(self) -> str | None:
        """Why training stops now (`early_stop_patience` evaluations without a better face distance)."""
        patience = self.s.early_stop_patience
        since = curves.evaluations_since_best_face(self.points.values())
        if not patience or since is None or since < patience:
            return None
        best = min((p for p in self.points.values() if curves.value(p, FACE_DISTANCE) is not None),
                   key=lambda p: (curves.value(p, FACE_DISTANCE), p["step"]))  # fmt: skip
        return (f"{metric(FACE_DISTANCE).label} had not improved for {since} evaluations (early_stop_patience = "
                f"{patience}; lowest {metric(FACE_DISTANCE).format(best[FACE_DISTANCE])} at step {best['step']})")

    def record_stop(self, step: int, reason: str) -> None:
        """The early stop in the events, with the learning-rate schedule as it really ran."""
        s = self.s
        lr = self.training.lr_scheduler.get_last_lr()[0]
        self.run.append_event("early_stop", step=step, total=s.max_train_steps, reason=reason,
                              patience=s.early_stop_patience, best_step=analysis.best_step(self.curve),
                              lr=lr, lr_scheduler=s.lr_scheduler, schedule_steps=s.max_train_steps)  # fmt: skip
        log(f"curve: stopping early at step {step} of {s.max_train_steps}: {reason}. The learning-rate schedule "
            f"({s.lr_scheduler}) was laid out for {s.max_train_steps} steps; it stopped at lr {lr:.3g}")  # fmt: skip

    @property
    def curve(self) -> list[dict[str, Any]]:
        return [self.points[s] for s in sorted(self.points)]

    def keep_best(self) -> int | None:
        """After the export: the best step's LoRA becomes lora/best/ and curve/ goes. Returns the step."""
        n = len(self.points)
        log(f"curve: {n} evaluation(s) while training took {self.seconds:.1f} s in this process")
        best = analysis.best_step(self.curve)
        if best is None:
            log(f"curve: no best step: {analysis.NO_CURVE_FACES if self.points else 'no evaluated step'}")
        elif self.run.curve_lora_dir(best).is_dir():
            tmp = self.run.path / ".lora-best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.run.curve_lora_dir(best), tmp)
            shutil.rmtree(self.run.best_lora_dir, ignore_errors=True)
            os.replace(tmp, self.run.best_lora_dir)
            self.run.append_event("best_lora", step=best, path=str(self.run.best_lora_dir))
            log(f"curve: best step {best} ({analysis.STEP_RULE}): its LoRA is {self.run.best_lora_file}")
        shutil.rmtree(self.run.curve_dir, ignore_errors=True)
        return best
