"""What each training step feeds the transformer: the inputs that never change, made once on the device, and
each micro-batch's random draw.

Made once (`Batches.__init__`): the instance prompt's T5 and pooled embeddings expanded to the batch, the
text and image position ids, the guidance value; every step used to rebuild or copy them.
Drawn per micro-batch (`Batches.draw`), in this order from the trainer's one CPU generator: per sample the
flip (when `random_flip`) and the latent sample from the cached VAE distribution, then the noise, then the
timesteps (diffusers' density sampling). The photo order is a shuffle seeded by the run's seed and the epoch
alone, made once per epoch. The same seed gives the same draws, and a resumed run (its generator restored)
continues the same stream. On a GPU the draws reach the device from pinned memory without waiting for it
(`non_blocking`), so no step makes the host wait for the device.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxPipeline
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from flux_tui.core.config import Settings


@dataclass(frozen=True)
class VaeLatents:
    """How the VAE's latents are scaled, and how much smaller than the image they are."""

    shift: float
    scaling: float
    scale_factor: int


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch on the device: the transformer's input and what its prediction is compared with."""

    packed: torch.Tensor  # the noisy latents, packed into 2x2 patches: (batch, patches, 4 * channels)
    timestep: torch.Tensor  # (batch,), in 0..1
    target: torch.Tensor  # noise - latents, unpacked: (batch, channels, height, width)
    weighting: torch.Tensor  # the loss weight per sample: (batch, 1, 1, 1)


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    """The photos' order in `epoch`: a shuffle seeded by the run's seed and the epoch alone, so a resumed run
    sees the same photos in the same order."""
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


class Batches:
    """The step's inputs. `fixed` holds the unchanging ones (keyword arguments of the transformer);
    `draw(i)` makes micro-batch `i`."""

    def __init__(self, settings: Settings, image_keys: tuple[str, ...],
                 latents: Mapping[tuple[str, bool], Mapping[str, torch.Tensor]], text: Mapping[str, Any],
                 vae: VaeLatents, noise_scheduler: Any, generator: torch.Generator, device: torch.device,
                 guidance_embeds: bool) -> None:  # fmt: skip
        s = self.settings = settings
        self.keys, self.latents, self.vae = image_keys, latents, vae
        self.generator, self.device = generator, device
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        self.sigmas, self.timesteps = noise_scheduler.sigmas, noise_scheduler.timesteps
        bsz = s.train_batch_size
        c, h, w = latents[(image_keys[0], False)]["mean"].shape
        self.shape = (bsz, c, h, w)
        t5, pooled = text[s.instance_prompt]["t5"], text[s.instance_prompt]["pooled"]
        self.fixed: dict[str, Any] = {
            "encoder_hidden_states": t5[None].expand(bsz, -1, -1).to(device),
            "pooled_projections": pooled[None].expand(bsz, -1).to(device),
            "txt_ids": torch.zeros(t5.shape[0], 3, device=device),
            "img_ids": FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, device, torch.float32),
            "guidance": torch.full((bsz,), s.guidance_scale, device=device) if guidance_embeds else None,
        }

    def draw(self, micro_index: int) -> MicroBatch:
        s, gen, vae = self.settings, self.generator, self.vae
        bsz, c, h, w = self.shape
        samples = []
        for j in range(bsz):
            epoch, pos = divmod(micro_index * bsz + j, len(self.keys))
            key = self.keys[epoch_order(s.seed, epoch, len(self.keys))[pos]]
            flip = bool(s.random_flip and torch.rand((), generator=gen) < 0.5)
            dist = self.latents[(key, flip)]
            sample = dist["mean"] + dist["std"] * torch.randn(dist["mean"].shape, generator=gen)
            samples.append((sample - vae.shift) * vae.scaling)
        x0 = torch.stack(samples)
        noise = torch.randn(x0.shape, generator=gen)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=s.weighting_scheme, batch_size=bsz, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
            generator=gen,
        )  # fmt: skip
        indices = (u * self.num_train_timesteps).long().clamp(max=len(self.timesteps) - 1)
        sigmas = self.sigmas[indices].view(bsz, 1, 1, 1)
        packed = FluxPipeline._pack_latents((1.0 - sigmas) * x0 + sigmas * noise, bsz, c, h, w)
        weighting = compute_loss_weighting_for_sd3(s.weighting_scheme, sigmas)
        return MicroBatch(self._send(packed), self._send(self.timesteps[indices] / 1000),
                          self._send(noise - x0), self._send(weighting))  # fmt: skip

    def _send(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on the device; to a GPU from pinned memory, queued without waiting."""
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)
