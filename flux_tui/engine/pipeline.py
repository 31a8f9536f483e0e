"""The FLUX pipeline at inference: loading it, LoRAs as weighted adapters, images made in batches.

Used by the evaluation (a run's grid), by free generation with merged LoRAs (`engine.generate`) and by the
playground server. Every image is saved with its metadata (`engine.imagemeta`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flux_tui.core import engine_args
from flux_tui.core.runs import BEST, LORA_FILE, RunDir, split_lora_ref
from flux_tui.engine.device import choose, is_oom
from flux_tui.engine.errors import EngineError
from flux_tui.engine.imagemeta import GenSettings, Job, metadata_for, save_png
from flux_tui.engine.models import resolve_model

DEFAULT_BATCH = engine_args.DEFAULT_BATCH
TextEmbeddings = Mapping[str, Mapping[str, Any]]  # prompt -> {"t5": tensor, "pooled": tensor} (engine.cache)


class GenerateError(EngineError):
    """Bad input for generation (a missing LoRA, mismatched weights); the message says what to fix."""


# -- jobs -------------------------------------------------------------------------------------------


def eval_jobs(prompts: Sequence[str], guidance_scales: Sequence[float], images_per_prompt: int, seed: int) -> list[Job]:
    """The evaluation grid. Image k of every prompt uses seed `seed + k`, so runs compare on equal noise."""
    jobs = []
    for pi, prompt in enumerate(prompts):
        for g in guidance_scales:
            for k in range(images_per_prompt):
                name = f"p{pi + 1:02d}-g{g:g}-s{seed + k}.png"
                jobs.append(Job(name=name, prompt=prompt, guidance_scale=float(g), seed=seed + k, prompt_index=pi))
    return jobs


def _batches(jobs: Sequence[Job], size: int) -> Iterator[list[Job]]:
    """Jobs grouped by guidance (one pipeline call takes one guidance value), `size` at a time."""
    by_guidance: dict[float, list[Job]] = {}
    for job in jobs:
        by_guidance.setdefault(job.guidance_scale, []).append(job)
    for group in by_guidance.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]


# -- pipeline ---------------------------------------------------------------------------------------


def load_pipeline(base_model: str, device: str | None = None, revision: str | None = None):
    """FluxPipeline on `device` (bf16 on GPU, fp32 on CPU). On a GPU too small for the whole pipeline
    (FLUX.1-dev in bf16 needs about 34 GB), components move to the GPU one at a time instead."""
    import diffusers
    import torch
    from diffusers import FluxPipeline

    device = choose(device)
    dtype = torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    folder = resolve_model(base_model, revision, lambda line: print(line, flush=True))
    print(f"generate: loading {base_model} on {device} ({str(dtype).removeprefix('torch.')})", flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*")  # renamed in new diffusers; old ones need it
        pipe = FluxPipeline.from_pretrained(folder, torch_dtype=dtype)
    # LoRA loading logs a warning per text encoder without LoRA keys: noise in every run's log.
    diffusers.utils.logging.set_verbosity_error()
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        size = sum(p.numel() * p.element_size() for m in pipe.components.values()
                   if isinstance(m, torch.nn.Module) for p in m.parameters())  # fmt: skip
        if size > 0.8 * total:
            pipe.enable_model_cpu_offload(device=device)
            return pipe
    return pipe.to(device)


# -- LoRAs ------------------------------------------------------------------------------------------


def resolve_lora(path: str | Path, step: str | None = None) -> tuple[Path, str | None]:
    """A LoRA file from a run folder, a lora/ folder or a .safetensors file; with the run's name if any.
    `runs/exp03@best` (or `step="best"` with a run folder) is the LoRA of the run's best step."""
    p, suffix = split_lora_ref(path)
    step = step or suffix
    if step is not None:
        return _step_lora(RunDir(p), step), f"{RunDir(p).name}@{step}"
    if p.is_file():
        return p, None
    run = RunDir(p)
    for candidate in (run.lora_file, p / LORA_FILE):
        if candidate.is_file():
            return candidate, run.name if candidate == run.lora_file else None
    if run.exists():
        raise GenerateError(f"run {run.name!r} ({p}) has no trained LoRA yet ({run.lora_file} is missing)")
    raise GenerateError(f"{p}: no LoRA there (expected a run folder, a folder with {LORA_FILE}, or the file)")


def _step_lora(run: RunDir, step: str) -> Path:
    if step != BEST:
        raise GenerateError(f"step {step!r}: only the best step's LoRA is kept as a LoRA ({BEST!r}, in lora/best/)")
    if not run.exists():
        raise GenerateError(f"{run.path}: not a run folder, so it has no best step")
    if not run.best_lora_file.is_file():
        raise GenerateError(f"run {run.name!r} has no best-step LoRA ({run.best_lora_file} is missing): it needs a "
                            "score curve (eval_every > 0) with a face distance at some step")  # fmt: skip
    return run.best_lora_file


def checkpoint_lora(ckpt: Path, rank: int, alpha: int) -> dict[str, Any]:
    """A training checkpoint's LoRA (peft names, scale not folded: engine.checkpoint's format) as the
    state dict diffusers' load_lora_weights takes, with alpha/rank folded into lora_B as the export does."""
    from safetensors.torch import load_file

    file = ckpt / "lora.safetensors"
    if not file.is_file():
        raise GenerateError(f"checkpoint {ckpt} has no lora.safetensors")
    scale = alpha / rank
    return {f"transformer.{k}": (v * scale if ".lora_B." in k else v) for k, v in load_file(file).items()}


def set_loras(pipe, loras: Sequence[tuple[Path | dict[str, Any], float]], fuse: bool = False) -> list[str]:
    """Replace the pipeline's LoRAs with `loras` (files or state dicts) as weighted adapters, optionally
    fused into the weights."""
    clear_loras(pipe)
    names = []
    for i, (source, _) in enumerate(loras):
        name = f"lora{i}"
        if isinstance(source, dict):
            pipe.load_lora_weights(source, adapter_name=name)
        else:
            pipe.load_lora_weights(str(source.parent), weight_name=source.name, adapter_name=name)
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[float(w) for _, w in loras])
        if fuse:
            # Fused: the weighted sum is baked into the transformer's weights (faster sampling, same images).
            pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe._flux_tui_fused = fuse and bool(names)
    return names


def clear_loras(pipe) -> None:
    if getattr(pipe, "_flux_tui_fused", False):
        pipe.unfuse_lora()
        pipe._flux_tui_fused = False
    if pipe.get_list_adapters():
        pipe.unload_lora_weights()


# -- images -----------------------------------------------------------------------------------------


def generate_images(
    pipe,
    jobs: Sequence[Job],
    out_dir: Path,
    gen: GenSettings,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_image: Callable[[Path, Job, int, int], None] | None = None,
    text: TextEmbeddings | None = None,
) -> list[Path]:
    """Make every job's image into `out_dir`. Prompts are batched `batch_size` at a time; a CUDA
    out-of-memory halves the batch and retries, down to one image. Each image has its own seeded
    generator, so an image does not depend on the batch it was made in. With `text` (prompt -> {t5,
    pooled}, the sweep's text cache) the prompts are not encoded: a pipeline without text encoders works."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    paths: list[Path] = []
    pending = list(_batches(jobs, max(1, batch_size)))
    while pending:
        batch = pending.pop(0)
        try:
            images = _call(pipe, batch, gen, text)
        except Exception as exc:
            if len(batch) > 1 and is_oom(exc) and str(device).startswith("cuda"):
                torch.cuda.empty_cache()
                half = len(batch) // 2
                print(f"generate: out of memory with {len(batch)} images at once; trying {half}", flush=True)
                pending[:0] = [batch[:half], batch[half:]]
                continue
            raise
        for job, image in zip(batch, images, strict=True):
            path = out_dir / job.name
            save_png(image, path, metadata_for(job, gen))
            paths.append(path)
            if on_image:
                on_image(path, job, len(paths), len(jobs))
    return paths


def _call(pipe, batch: Sequence[Job], gen: GenSettings, text: TextEmbeddings | None = None) -> list[Any]:
    """One pipeline call for `batch` (one guidance value); each image with its own seeded generator."""
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(j.seed) for j in batch]
    if text is None:
        prompts: dict[str, Any] = {"prompt": [j.prompt for j in batch], "max_sequence_length": gen.max_sequence_length}
    else:
        prompts = _embeddings(pipe, batch, text)
    result = pipe(
        **prompts,
        height=gen.height,
        width=gen.width,
        num_inference_steps=gen.num_inference_steps,
        guidance_scale=batch[0].guidance_scale,
        generator=generators,
    )
    return list(result.images)


def _embeddings(pipe, batch: Sequence[Job], text: TextEmbeddings) -> dict[str, Any]:
    """The batch's prompt embeddings from the text cache, on the transformer's device and dtype."""
    import torch

    missing = [j.prompt for j in batch if j.prompt not in text]
    if missing:
        raise GenerateError(f"no cached text embedding for the prompt {missing[0]!r}")
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    return {
        "prompt_embeds": torch.stack([text[j.prompt]["t5"] for j in batch]).to(device, dtype),
        "pooled_prompt_embeds": torch.stack([text[j.prompt]["pooled"] for j in batch]).to(device, dtype),
    }
