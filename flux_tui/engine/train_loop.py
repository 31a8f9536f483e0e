"""The trainer's third stage: the steps, with progress, checkpoints, samples and the score curve on the way
(`engine.train_eval`); then the export.

Inside the loop a stop signal is only noted (`StopSignals.deferred`): the step under way finishes, a
checkpoint is saved and the run ends `cancelled`, so a relaunch resumes exactly there.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
    with owner.signals.deferred(), progress.reporting():
        for step in range(training.start_step + 1, total + 1):
            owner.step = step
            faults.before_step(step)
            progress.add(step, *train_step(s, training, step))
            faults.after_step()
            stopping = owner.signals.received is not None
            saved = step % s.checkpointing_steps == 0 or stopping
            sampling = bool(s.sample_every) and step % s.sample_every == 0 and not stopping
            evaluating = curve is not None and curve.due(step) and not stopping
            if saved or sampling or evaluating or progress.due(step):
                progress.report()  # a non-finite loss raises here, before a checkpoint or the curve keeps it
            if saved:
                save_checkpoint(run, settings, training, step)
            if sampling:
                sampler(step)
            early = _evaluate(curve, step) if evaluating else None
            if saved or sampling or evaluating:
                progress.restart_clock()  # the time per step counts steps only
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
    """The steps' `step` events and, at 5% intervals, a log line with the time per step over the last 20.

    A step's loss and gradient norm stay on the device until `report` reads all those of the steps since
    the last report at once (one wait for the device instead of one per step) and appends their events in
    one write. The loop reports at log points, before checkpoints, samples and the score curve's evaluations,
    and at least every REPORT_SECONDS, so the dashboard still sees every step's loss within about a second.
    """

    REPORT_SECONDS = 1.0

    def __init__(self, run: RunDir, training: Training, total: int) -> None:
        self.run, self.training, self.total = run, training, total
        self.recent: deque[float] = deque(maxlen=20)
        self.every = max(1, total // 20)
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # step, lr, loss, grad norm
        self.clock = self.reported = time.perf_counter()
        self.warmed_up = False

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.pending.append((step, self.training.lr_scheduler.get_last_lr()[0], loss, grad_norm))

    def due(self, step: int) -> bool:
        return (step == 1 or step % self.every == 0 or step == self.total
                or time.perf_counter() - self.reported >= self.REPORT_SECONDS)  # fmt: skip

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def report(self) -> None:
        """Read the pending steps' figures, write their events (and a log line at a log point). Raises
        FloatingPointError naming the first step whose loss is not finite."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = torch.stack([torch.stack((loss, norm)) for _, _, loss, norm in pending]).tolist()  # one wait
        now = time.perf_counter()
        per_step = (now - self.clock) / len(pending)
        self.clock = self.reported = now
        if self.warmed_up:
            self.recent.extend([per_step] * len(pending))
        self.warmed_up = True
        # The process's first report stays out of the rolling mean: it holds the warm-up (torch.compile's
        # wait, CUDA's first kernels), which would otherwise inflate the ETA for the next 20 steps.
        sec = sum(self.recent) / len(self.recent) if self.recent else per_step
        events = [self._event(step, lr, loss, norm, sec)
                  for (step, lr, _, _), (loss, norm) in zip(pending, values, strict=True)]  # fmt: skip
        finite = list(itertools.takewhile(lambda e: math.isfinite(e["loss"]), events))
        self.run.append_events("step", finite)
        if len(finite) < len(events):
            bad = events[len(finite)]
            raise FloatingPointError(f"the loss became {bad['loss']} at step {bad['step']}; lower learning_rate")
        last = events[-1]
        if last["step"] == 1 or last["step"] % self.every == 0 or last["step"] == self.total:
            log(f"step {last['step']}/{self.total} loss {last['loss']:.4f} lr {last['lr']:.3g} {sec:.2f} s/step "
                f"eta {last['eta_s']:.0f} s")  # fmt: skip

    def _event(self, step: int, lr: float, loss: float, grad_norm: float, sec: float) -> dict[str, Any]:
        event: dict[str, Any] = {
            "step": step, "total": self.total, "loss": round(loss, 6), "lr": lr, "sec_per_step": round(sec, 4),
            "eta_s": round(sec * (self.total - step), 1), "grad_norm": round(grad_norm, 6),
        }  # fmt: skip
        if self.training.device.type == "cuda":  # the allocator's counters: read on the host, no wait
            event.update(mem_allocated=torch.cuda.memory_allocated(), mem_reserved=torch.cuda.memory_reserved(),
                         mem_peak=torch.cuda.max_memory_allocated())  # fmt: skip
        return event

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Report the steps still pending when the loop leaves early (out of memory, a stop): their events
        are written even so."""
        try:
            yield
        finally:
            if self.pending:
                with suppress(Exception):  # the device may be what failed; the first error is the one to see
                    self.report()


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
