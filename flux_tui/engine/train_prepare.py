"""The trainer's first stage: the photos into `data/`, their latents and the prompts' text embeddings.

Everything that does not change while training is computed once, here, through the sweep's feature cache
(`engine.cache`): the second run of a sweep on the same photos and base model only reads it. The VAE and
the text encoders are loaded only for what the cache lacks and dropped before training starts. The
evaluation's prompts are encoded here too (once per sweep), for the evaluation in the trainer's process. The result
is a `Prepared` record that the next stages read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flux_tui.core.config import Settings
from flux_tui.core.runs import RunDir
from flux_tui.engine import cache, data, models
from flux_tui.engine.device import free_memory
from flux_tui.engine.runlog import log


@dataclass(frozen=True)
class Prepared:
    model_dir: Path  # the base pipeline's local folder
    images: tuple[data.TrainImage, ...]
    latents: Mapping[tuple[str, bool], dict[str, torch.Tensor]]  # (image key, flipped) -> {mean, std}
    text: Mapping[str, dict[str, torch.Tensor]]  # prompt -> {t5, pooled}
    enc_dtype: torch.dtype  # what the VAE and the text encoders ran in
    sample_prompts: tuple[str, ...]


def sample_prompts(settings: Settings) -> tuple[str, ...]:
    """The prompts of the samples made while training: one or two."""
    return tuple((settings.sample_prompts or [settings.instance_prompt])[:2])


def prepare(run: RunDir, settings: Settings, device: str, with_eval: bool = False) -> Prepared:
    """The photos, their latents and the prompts' embeddings; `with_eval`: the evaluation's prompts too
    (the grid's and the curve's), so the evaluation in this process needs no text encoder."""
    info = run.read_run() or {}
    cache_dir = Path(info.get("cache_dir") or run.path / "cache")
    model_dir = models.resolve_model(settings.base_model, settings.revision, log)
    images = data.prepare_images(Path(settings.data_dir), settings.resolution, run.data_dir, cache_dir, log,
                                 device=device)  # fmt: skip
    features = cache.FeatureCache(cache_dir, cache.model_fingerprint(model_dir), run.name)
    enc_dtype = torch.float32 if device == "cpu" else torch.bfloat16
    encoder = _Encoder(features, model_dir, device, enc_dtype)
    latents = encoder.latents(images, flips=(False, True) if settings.random_flip else (False,))
    prompts = sample_prompts(settings)
    wanted = [settings.instance_prompt, *prompts]
    if with_eval:
        wanted += [*settings.eval_prompts, *settings.curve_prompts]
    text = encoder.text(list(dict.fromkeys(wanted)), settings.max_sequence_length)
    st = features.stats
    run.append_event(
        "cache", latents_encoded=st.latents_encoded, latents_reused=st.latents_reused,
        text_encoded=st.text_encoded, text_reused=st.text_reused, dir=str(cache_dir),
    )  # fmt: skip
    log(f"cache: latents {st.latents_encoded} encoded, {st.latents_reused} reused; "
        f"prompts {st.text_encoded} encoded, {st.text_reused} reused ({cache_dir})")  # fmt: skip
    return Prepared(model_dir, tuple(images), latents, text, enc_dtype, prompts)


@dataclass(frozen=True)
class _Encoder:
    """Encodes through the feature cache: what it has is read, the rest encoded and stored."""

    features: cache.FeatureCache
    model_dir: Path
    device: str
    dtype: torch.dtype

    def latents(self, images: list[data.TrainImage], flips: tuple[bool, ...]) -> dict[tuple[str, bool], Any]:
        out, missing = {}, []
        for img in images:
            for flip in flips:
                key = self.features.latent_key(img.key, flip, self.dtype)
                found = self.features.get("latents", key)
                if found is None:
                    missing.append((img, flip, key))
                else:
                    out[(img.key, flip)] = found
        if missing:
            out.update(self._encode_images(missing))
        return out

    def _encode_images(self, missing: list[tuple[data.TrainImage, bool, str]]) -> dict[tuple[str, bool], Any]:
        from diffusers import AutoencoderKL

        log(f"cache: encoding {len(missing)} image(s) with the VAE")
        vae = AutoencoderKL.from_pretrained(self.model_dir, subfolder="vae", torch_dtype=self.dtype)
        vae = vae.to(self.device).eval()
        out = {}
        with torch.no_grad():
            for img, flip, key in missing:
                pixels = data.to_tensor(img.path)
                if flip:
                    pixels = pixels.flip(-1)
                dist = vae.encode(pixels[None].to(self.device, self.dtype)).latent_dist
                tensors = {"mean": dist.mean[0].float().cpu(), "std": dist.std[0].float().cpu()}
                self.features.put("latents", key, tensors, {"image": img.name, "flip": str(flip)})
                out[(img.key, flip)] = tensors
        del vae
        free_memory(self.device)
        return out

    def text(self, prompts: list[str], max_sequence_length: int) -> dict[str, Any]:
        out, missing = {}, []
        for p in prompts:
            key = self.features.text_key(p, max_sequence_length, self.dtype)
            found = self.features.get("text", key)
            if found is None:
                missing.append((p, key))
            else:
                out[p] = found
        if missing:
            out.update(self._encode_prompts(missing, max_sequence_length))
        return out

    def _encode_prompts(self, missing: list[tuple[str, str]], max_sequence_length: int) -> dict[str, Any]:
        from diffusers import FluxPipeline

        log(f"cache: encoding {len(missing)} prompt(s) with CLIP and T5")
        pipe = FluxPipeline.from_pretrained(
            self.model_dir, transformer=None, vae=None, torch_dtype=self.dtype
        ).to(self.device)
        out = {}
        with torch.no_grad():
            for p, key in missing:
                embeds, pooled, _ = pipe.encode_prompt(prompt=p, prompt_2=p, device=self.device,
                                                       max_sequence_length=max_sequence_length)  # fmt: skip
                tensors = {"t5": embeds[0].float().cpu(), "pooled": pooled[0].float().cpu()}
                self.features.put("text", key, tensors, {"prompt": p, "max_sequence_length": str(max_sequence_length)})
                out[p] = tensors
        del pipe
        free_memory(self.device)
        return out
