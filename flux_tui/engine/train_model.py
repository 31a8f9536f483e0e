"""The trainer's second stage and its unit of work: the model to train, and one optimizer step.

`build` loads the transformer (optionally quantized), adds the LoRA, makes the optimizer and the learning
rate schedule, and resumes all of it (and every random state) from the newest checkpoint. `train_step` is
one optimizer step over its accumulation micro-batches: diffusers' FLUX DreamBooth LoRA recipe (flow
matching, density-sampled timesteps, loss weighting, the guidance embedding), on the cached latents and
text embeddings of the `Prepared` record, fed by `train_batch.Batches`. A step never reads a value back from
the device: it returns the loss and the gradient norm as tensors, which the loop reads when it reports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxPipeline

from flux_tui.core.config import Settings
from flux_tui.core.runs import RunDir
from flux_tui.engine import checkpoint, compile_blocks, lora, models
from flux_tui.engine.models import MissingLibraryError
from flux_tui.engine.runlog import log
from flux_tui.engine.train_batch import Batches, VaeLatents
from flux_tui.engine.train_prepare import Prepared

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Training:
    """Everything that changes while training (the objects are updated in place; the record is not)."""

    accelerator: Any
    transformer: Any  # wrapped by the accelerator (what a step calls)
    unwrapped: Any  # the model itself (what checkpoints, samples and the export read)
    params: tuple[torch.nn.Parameter, ...]
    optimizer: Any
    lr_scheduler: Any
    generator: torch.Generator  # noise, timesteps, latent samples, flips: restored on resume
    batches: Batches  # each step's inputs
    start_step: int  # the last step already done (0, or the step of the checkpoint resumed from)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def _accelerator(settings: Settings, device: str) -> tuple[Any, torch.dtype]:
    from accelerate import Accelerator

    precision = settings.mixed_precision
    if device == "cpu" and precision == "fp16":
        log("train: fp16 mixed precision needs a GPU; on the CPU training runs in bf16")
        precision = "bf16"
    return Accelerator(mixed_precision=precision, cpu=device == "cpu"), WEIGHT_DTYPES[precision]


def _transformer(prepared: Prepared, settings: Settings, weight_dtype: torch.dtype, device: torch.device):
    s = settings
    log(f"train: loading the transformer ({'quantized ' + s.quantize if s.quantize != 'none' else weight_dtype})")
    transformer = models.load_transformer(prepared.model_dir, s.quantize, weight_dtype)
    if s.quantize == "none":
        transformer.to(device)  # already in weight_dtype
    if s.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = lora.add_lora(transformer, s)
    log(f"train: LoRA rank {s.lora_rank}, alpha {s.alpha} on {', '.join(s.lora_target_modules)}: "
        f"{sum(p.numel() for p in params):,} trainable parameters")  # fmt: skip
    if s.torch_compile:
        n = compile_blocks.compile_blocks(transformer)
        log(f"train: torch.compile on the transformer's {n} blocks: the first step waits for the compiler")
    return transformer, params


def _optimizer(settings: Settings, params: list[torch.nn.Parameter], fused: bool):
    s = settings
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise MissingLibraryError(
                "optimizer = 'adamw8bit' needs bitsandbytes (pip install bitsandbytes; it needs a CUDA GPU)"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
    # fused: one kernel for every parameter instead of a loop of small operations per parameter (on the
    # CPU a tenth of the time for the demo's 28 LoRA matrices; the LoRA is float32 wherever it trains). Not
    # under fp16's gradient scaler: a fused step skips an overflowed update itself, and accelerate would
    # then step the learning rate as if it had been made.
    return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay, fused=fused or None)


def _resume(run: RunDir, settings: Settings, transformer, params, optimizer, lr_scheduler,
            generator: torch.Generator) -> int:  # fmt: skip
    """Load the newest checkpoint that restores into the model, optimizer, schedule and RNG (a damaged one
    is set aside and the one before it tried). Returns its step (0: none)."""

    def apply(restored: checkpoint.Restored) -> None:
        lora.load_lora_state(transformer, restored.lora)
        for p in params:
            p.data = p.data.float()
        optimizer.load_state_dict(_this_implementation(restored.optimizer, optimizer))
        lr_scheduler.load_state_dict(restored.scheduler)
        checkpoint.set_rng_state(restored.rng, generator)

    restored = checkpoint.resume(run, apply, log)
    if restored is None:
        return 0
    log(f"train: resuming from {restored.path.name} (step {restored.step} of {settings.max_train_steps})")
    run.append_event("resume", step=restored.step, path=str(restored.path))
    return restored.step


def _this_implementation(state: dict, optimizer) -> dict:
    """The checkpoint's optimizer state, set to step with this optimizer's implementation (fused or not):
    `load_state_dict` takes those switches from the checkpoint, and one written before the optimizer was
    fused would otherwise make the resumed run step differently from an uninterrupted one."""
    groups = [{**saved, **{k: ours[k] for k in ("fused", "foreach") if k in ours}}
              for saved, ours in zip(state["param_groups"], optimizer.param_groups, strict=False)]  # fmt: skip
    return {**state, "param_groups": groups}


def _vae_latents(prepared: Prepared) -> VaeLatents:
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(prepared.model_dir, subfolder="vae")
    return VaeLatents(shift=config.get("shift_factor") or 0.0, scaling=config.get("scaling_factor", 1.0),
                      scale_factor=2 ** (len(config["block_out_channels"]) - 1))  # fmt: skip


def build(run: RunDir, settings: Settings, prepared: Prepared, device: str) -> Training:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler

    s = settings
    accelerator, weight_dtype = _accelerator(s, device)
    torch.manual_seed(s.seed)  # LoRA init
    random.seed(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    transformer, params = _transformer(prepared, s, weight_dtype, accelerator.device)
    optimizer = _optimizer(s, params, fused=accelerator.scaler is None)
    lr_scheduler = get_scheduler(s.lr_scheduler, optimizer=optimizer, num_warmup_steps=s.lr_warmup_steps,
                                 num_training_steps=s.max_train_steps)  # fmt: skip
    start = _resume(run, s, transformer, params, optimizer, lr_scheduler, generator)
    wrapped, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(prepared.model_dir, subfolder="scheduler")
    batches = Batches(s, tuple(img.key for img in prepared.images), prepared.latents, prepared.text,
                      _vae_latents(prepared), noise_scheduler, generator, accelerator.device,
                      guidance_embeds=bool(transformer.config.guidance_embeds))  # fmt: skip
    return Training(accelerator, wrapped, accelerator.unwrap_model(wrapped), tuple(params), optimizer,
                    lr_scheduler, generator, batches, start)  # fmt: skip


# -- one step ----------------------------------------------------------------------------------------


def _loss(training: Training, micro_index: int) -> torch.Tensor:
    t = training
    batch = t.batches.draw(micro_index)
    pred = t.transformer(hidden_states=batch.packed, timestep=batch.timestep, return_dict=False,
                         **t.batches.fixed)[0]  # fmt: skip
    bsz, _, h, w = batch.target.shape
    f = t.batches.vae.scale_factor
    pred = FluxPipeline._unpack_latents(pred, h * f, w * f, f)
    loss = (batch.weighting.float() * (pred.float() - batch.target.float()) ** 2).reshape(bsz, -1).mean(1)
    return loss.mean()


def _clip(training: Training, max_norm: float) -> torch.Tensor:
    """Clip the gradients to `max_norm` and return their norm (what `accelerator.clip_grad_norm_` does for
    one process, without its checks for distributed set-ups)."""
    if training.accelerator.scaler is not None:  # fp16: measure the gradients unscaled
        training.accelerator.unscale_gradients()
    return torch.nn.utils.clip_grad_norm_(training.params, max_norm)


def _update(training: Training) -> None:
    """Step the optimizer and the learning rate, then drop the gradients. With fp16's gradient scaler this goes
    through accelerate's wrappers (they skip a step whose gradients overflowed); without one the wrappers
    add nothing but per-call checks (two package look-ups and a signature inspection a step), so the
    optimizer and the schedule they wrap are stepped directly."""
    t = training
    if t.accelerator.scaler is not None:
        t.optimizer.step()
        t.lr_scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)
    else:
        t.optimizer.optimizer.step()
        t.lr_scheduler.scheduler.step()
        t.optimizer.optimizer.zero_grad(set_to_none=True)


def train_step(settings: Settings, training: Training, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (all its accumulation micro-batches). Returns (mean loss, gradient norm) as
    0-d tensors on the device: reading them waits for the device, so the loop does it only when it reports."""
    accum = settings.gradient_accumulation_steps
    t = training
    losses = []
    for micro in range(accum):
        loss = _loss(t, (step - 1) * accum + micro)
        scaled = loss / accum if accum > 1 else loss
        if t.accelerator.scaler is not None:
            t.accelerator.backward(scaled)  # scales the loss for fp16
        else:
            scaled.backward()
        losses.append(loss.detach())
    grad_norm = _clip(t, settings.max_grad_norm)
    _update(t)
    return (losses[0] if accum == 1 else torch.stack(losses).mean()), grad_norm
