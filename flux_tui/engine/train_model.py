"""The trainer's second stage and its unit of work: the model to train, and one optimizer step.

`build` loads the transformer (optionally quantized), adds the LoRA, makes the optimizer and the learning
rate schedule, and resumes all of it (and every random state) from the newest checkpoint. `train_step` is
one optimizer step over its accumulation micro-batches: diffusers' FLUX DreamBooth LoRA recipe (flow
matching, density-sampled timesteps, loss weighting, the guidance embedding), on the cached latents and
text embeddings of the `Prepared` record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from flux_tui.core.config import Settings
from flux_tui.core.runs import RunDir
from flux_tui.engine import checkpoint, lora, models
from flux_tui.engine.models import MissingLibraryError
from flux_tui.engine.runlog import log
from flux_tui.engine.train_prepare import Prepared

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class VaeLatents:
    """How the VAE's latents are scaled, and how much smaller than the image they are."""

    shift: float
    scaling: float
    scale_factor: int


@dataclass(frozen=True)
class Training:
    """Everything that changes while training (the objects are updated in place; the record is not)."""

    accelerator: Any
    transformer: Any  # wrapped by the accelerator; `unwrapped` is the model itself
    params: tuple[torch.nn.Parameter, ...]
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    generator: torch.Generator  # noise, timesteps, latent samples, flips: restored on resume
    vae: VaeLatents
    start_step: int  # the last step already done (0, or the step of the checkpoint resumed from)

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.transformer)

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
    return transformer, params


def _optimizer(settings: Settings, params: list[torch.nn.Parameter]):
    s = settings
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise MissingLibraryError(
                "optimizer = 'adamw8bit' needs bitsandbytes (pip install bitsandbytes; it needs a CUDA GPU)"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
    return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)


def _resume(run: RunDir, settings: Settings, transformer, params, optimizer, lr_scheduler,
            generator: torch.Generator) -> int:  # fmt: skip
    """Load the newest checkpoint that restores into the model, optimizer, schedule and RNG (a damaged one
    is set aside and the one before it tried). Returns its step (0: none)."""

    def apply(restored: checkpoint.Restored) -> None:
        lora.load_lora_state(transformer, restored.lora)
        for p in params:
            p.data = p.data.float()
        optimizer.load_state_dict(restored.optimizer)
        lr_scheduler.load_state_dict(restored.scheduler)
        checkpoint.set_rng_state(restored.rng, generator)

    restored = checkpoint.resume(run, apply, log)
    if restored is None:
        return 0
    log(f"train: resuming from {restored.path.name} (step {restored.step} of {settings.max_train_steps})")
    run.append_event("resume", step=restored.step, path=str(restored.path))
    return restored.step


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
    optimizer = _optimizer(s, params)
    lr_scheduler = get_scheduler(s.lr_scheduler, optimizer=optimizer, num_warmup_steps=s.lr_warmup_steps,
                                 num_training_steps=s.max_train_steps)  # fmt: skip
    start = _resume(run, s, transformer, params, optimizer, lr_scheduler, generator)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(prepared.model_dir, subfolder="scheduler")
    return Training(accelerator, transformer, tuple(params), optimizer, lr_scheduler, noise_scheduler, generator,
                    _vae_latents(prepared), start)  # fmt: skip


# -- one step ----------------------------------------------------------------------------------------


def _batch(settings: Settings, prepared: Prepared, training: Training, micro_index: int):
    """Latents and text embeddings for micro-batch `micro_index`. The photo order is a seeded shuffle
    per epoch computed from the index alone, so a resumed run sees the same photos in the same order."""
    s, gen, vae = settings, training.generator, training.vae
    n = len(prepared.images)
    latents = []
    for j in range(s.train_batch_size):
        k = micro_index * s.train_batch_size + j
        epoch, pos = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch))
        img = prepared.images[int(order[pos])]
        flip = bool(s.random_flip and torch.rand((), generator=gen) < 0.5)
        dist = prepared.latents[(img.key, flip)]
        sample = dist["mean"] + dist["std"] * torch.randn(dist["mean"].shape, generator=gen)
        latents.append((sample - vae.shift) * vae.scaling)
    text = prepared.text[s.instance_prompt]
    bsz = len(latents)
    return torch.stack(latents), text["t5"][None].expand(bsz, -1, -1), text["pooled"][None].expand(bsz, -1)


def _loss(settings: Settings, prepared: Prepared, training: Training, micro_index: int) -> torch.Tensor:
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    s, t, dev = settings, training, training.device
    x0, t5, pooled = _batch(s, prepared, t, micro_index)
    bsz, c, h, w = x0.shape
    noise = torch.randn(x0.shape, generator=t.generator)
    u = compute_density_for_timestep_sampling(
        weighting_scheme=s.weighting_scheme, batch_size=bsz, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
        generator=t.generator,
    )  # fmt: skip
    ns = t.noise_scheduler
    indices = (u * ns.config.num_train_timesteps).long().clamp(max=len(ns.timesteps) - 1)
    sigmas = ns.sigmas[indices].view(bsz, 1, 1, 1)
    packed = FluxPipeline._pack_latents((1.0 - sigmas) * x0 + sigmas * noise, bsz, c, h, w)
    guidance = torch.full((bsz,), s.guidance_scale, device=dev) if t.unwrapped.config.guidance_embeds else None
    pred = t.transformer(
        hidden_states=packed.to(dev), timestep=(ns.timesteps[indices] / 1000).to(dev), guidance=guidance,
        pooled_projections=pooled.to(dev), encoder_hidden_states=t5.to(dev),
        txt_ids=torch.zeros(t5.shape[1], 3, device=dev),
        img_ids=FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, dev, torch.float32), return_dict=False,
    )[0]  # fmt: skip
    f = t.vae.scale_factor
    pred = FluxPipeline._unpack_latents(pred, h * f, w * f, f)
    weighting = compute_loss_weighting_for_sd3(s.weighting_scheme, sigmas).to(dev)
    target = (noise - x0).to(dev)
    loss = (weighting.float() * (pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1)
    return loss.mean()


def train_step(settings: Settings, prepared: Prepared, training: Training, step: int) -> tuple[float, float]:
    """One optimizer step (all its accumulation micro-batches). Returns (mean loss, gradient norm)."""
    accum = settings.gradient_accumulation_steps
    t = training
    loss_sum = 0.0
    for micro in range(accum):
        loss = _loss(settings, prepared, t, (step - 1) * accum + micro)
        t.accelerator.backward(loss / accum)
        loss_sum += float(loss.detach())
    grad_norm = t.accelerator.clip_grad_norm_(list(t.params), settings.max_grad_norm)
    t.optimizer.step()
    t.lr_scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    return loss_sum / accum, float(grad_norm)
