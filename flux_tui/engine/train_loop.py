"""The trainer's third stage: the steps, with progress, checkpoints, samples and the score curve on the way
(`engine.train_eval`); then the export.

Inside the loop a stop signal is only noted (`StopSignals.deferred`): the step under way finishes, a
checkpoint is saved and the run ends `cancelled`, so a relaunch resumes exactly there.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from flux_tui.core.config import Settings
from flux_tui.core.runs import RunDir
from flux_tui.engine import checkpoint, lora
from flux_tui.engine.faults import Faults
from flux_tui.engine.run_owner import Cancelled, OwnedRun
from flux_tui.engine.runlog import log
from flux_tui.engine.train_eval import Curve, TrainedImages
from flux_tui.engine.train_model import Training, train_step
from flux_tui.engine.train_prepare import Prepared


def train(run: RunDir, settings: Settings, prepared: Prepared, training: Training, owner: OwnedRun,
          images: TrainedImages, curve: Curve | None = None) -> str | None:  # fmt: skip
    """Steps `training.start_step + 1 .. max_train_steps`, the score curve evaluated on the way. Returns
    why it stopped early (None: it ran every step). Raises Cancelled (after a checkpoint) on a stop signal,
    FloatingPointError when the loss stops being finite."""
    s = settings
    total = s.max_train_steps
    run.write_status(stage="train")
    run.append_event("stage", stage="train")
    log(f"train: steps {training.start_step + 1}..{total}, batch {s.train_batch_size} x "
        f"{s.gradient_accumulation_steps} accumulation, lr {s.learning_rate:g} ({s.lr_scheduler}), "
        f"{training.device}")  # fmt: skip
    training.transformer.train()
    faults = Faults.from_env()
    progress = _Progress(run, training, total)
    sampler = _Sampler(run, settings, prepared, images)
    if curve is not None and training.start_step and curve.due(training.start_step):
        curve.evaluate(training.start_step)  # a stop came before this step's evaluation: it is made now
    with owner.signals.deferred():
        for step in range(training.start_step + 1, total + 1):
            owner.step = step
            faults.before_step(step)
            t0 = time.perf_counter()
            loss, grad_norm = train_step(s, prepared, training, step)
            faults.after_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {step}; lower learning_rate")
            progress.record(step, loss, grad_norm, time.perf_counter() - t0)
            stopping = owner.signals.received is not None
            saved = step % s.checkpointing_steps == 0 or stopping
            if saved:
                save_checkpoint(run, settings, training, step)
            if s.sample_every and step % s.sample_every == 0 and not stopping:
                sampler(step)
            early = _evaluate(curve, step) if not stopping else None
            if owner.signals.received is not None:
                if not saved:  # the signal came while sampling or evaluating
                    save_checkpoint(run, settings, training, step)
                raise Cancelled(owner.signals.received, step)
            if early:
                return early
    return None


def _evaluate(curve: Curve | None, step: int) -> str | None:
    """The curve's evaluation at `step` when due; returns why training stops early, if it does."""
    if curve is None or not curve.due(step):
        return None
    curve.evaluate(step)
    reason = curve.stop_reason() if step < curve.s.max_train_steps else None  # the last step: not early
    if reason:
        curve.record_stop(step, reason)
        return f"stopped early at step {step} of {curve.s.max_train_steps}: {reason}"
    return None


class _Progress:
    """A `step` event per step, and a log line at 5% intervals, with the time per step over the last 20."""

    def __init__(self, run: RunDir, training: Training, total: int) -> None:
        self.run, self.training, self.total = run, training, total
        self.recent: deque[float] = deque(maxlen=20)
        self.every = max(1, total // 20)

    def record(self, step: int, loss: float, grad_norm: float, seconds: float) -> None:
        self.recent.append(seconds)
        sec = sum(self.recent) / len(self.recent)
        event: dict[str, Any] = {
            "step": step, "total": self.total, "loss": round(loss, 6),
            "lr": self.training.lr_scheduler.get_last_lr()[0], "sec_per_step": round(sec, 4),
            "eta_s": round(sec * (self.total - step), 1), "grad_norm": round(float(grad_norm), 6),
        }  # fmt: skip
        if self.training.device.type == "cuda":
            event.update(mem_allocated=torch.cuda.memory_allocated(), mem_reserved=torch.cuda.memory_reserved(),
                         mem_peak=torch.cuda.max_memory_allocated())  # fmt: skip
        self.run.append_event("step", **event)
        if step == 1 or step % self.every == 0 or step == self.total:
            log(f"step {step}/{self.total} loss {loss:.4f} lr {event['lr']:.3g} {sec:.2f} s/step "
                f"eta {event['eta_s']:.0f} s")  # fmt: skip


def save_checkpoint(run: RunDir, settings: Settings, training: Training, step: int) -> None:
    t = training
    path = checkpoint.save(run, step, settings.max_train_steps, lora.lora_state(t.unwrapped), t.optimizer,
                           t.lr_scheduler, t.generator, keep=settings.checkpoints_total_limit)  # fmt: skip
    run.append_event("checkpoint", step=step, path=str(path))
    log(f"checkpoint: {path.name}")


class _Sampler:
    """Images of the model as it is now, for one or two prompts, under samples/step_N/, made with the
    trainer's model (`TrainedImages`: its VAE loads once and stays on the CPU between calls)."""

    def __init__(self, run: RunDir, settings: Settings, prepared: Prepared, images: TrainedImages) -> None:
        self.run, self.s, self.prepared, self.images = run, settings, prepared, images

    def __call__(self, step: int) -> None:
        s, p = self.s, self.prepared
        out = self.run.samples_dir / f"step_{step}"
        out.mkdir(parents=True, exist_ok=True)
        guidance = s.guidance_scales[0]
        with self.images.session() as pipe:
            paths = [str(self._image(pipe, prompt, guidance, step, out / f"{i:02d}.png"))
                     for i, prompt in enumerate(p.sample_prompts)]  # fmt: skip
        self.run.append_event("sample", step=step, paths=paths, prompts=list(p.sample_prompts), seed=s.seed,
                              guidance=guidance, num_inference_steps=s.num_inference_steps)  # fmt: skip
        log(f"samples: {len(paths)} image(s) in {out.relative_to(self.run.path)}")

    def _image(self, pipe: Any, prompt: str, guidance: float, step: int, path: Path) -> Path:
        from PIL.PngImagePlugin import PngInfo

        s = self.s
        text = self.prepared.text[prompt]
        dtype, device = pipe.transformer.dtype, self.images.device
        image = pipe(
            prompt_embeds=text["t5"][None].to(device, dtype),
            pooled_prompt_embeds=text["pooled"][None].to(device, dtype),
            height=s.resolution, width=s.resolution, num_inference_steps=s.num_inference_steps,
            guidance_scale=guidance, generator=torch.Generator().manual_seed(s.seed),
        ).images[0]  # fmt: skip
        meta = PngInfo()
        for k, v in {"prompt": prompt, "seed": s.seed, "guidance": guidance, "step": step,
                     "num_inference_steps": s.num_inference_steps}.items():  # fmt: skip
            meta.add_text(k, str(v))
        image.save(path, pnginfo=meta)
        return path


def export(run: RunDir, settings: Settings, training: Training) -> None:
    """The LoRA in diffusers' format into lora/, written aside and renamed into place."""
    tmp = run.path / ".lora.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lora.export_lora(training.unwrapped, settings, tmp)
    if run.lora_dir.exists():
        shutil.rmtree(run.lora_dir)
    os.replace(tmp, run.lora_dir)
    log(f"lora: {run.lora_file}")
