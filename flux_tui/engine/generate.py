"""Image generation: a run's evaluation grid, and free generation with several LoRAs merged (group photos).

    python -m flux_tui.engine.generate RUN_DIR
        every evaluation prompt x guidance scale x image index of the run, with fixed seeds, into
        samples/eval/ (and samples/eval/checkpoint-N/ per checkpoint with `eval_checkpoints`)
    python -m flux_tui.engine.generate --lora runs/a --lora runs/b --weights 0.8,0.7 --prompt "..." [--fuse]
        the study's two-person photos: several runs' LoRAs as weighted adapters, into --out

Every PNG carries its prompt, seed, guidance, steps, size, base model and LoRAs as PNG text chunks
(`read_metadata` reads them back; DEVELOPERS.md lists the keys). The pipeline loads once per process.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from flux_tui import __version__ as VERSION
from flux_tui.core import engine_args
from flux_tui.core.engine_args import generate_args
from flux_tui.core.runs import RunDir

META_KEY = "flux_tui"  # the PNG text chunk holding every field as one JSON object
LORA_FILE = "pytorch_lora_weights.safetensors"
DEFAULT_BATCH = engine_args.DEFAULT_BATCH


class GenerateError(Exception):
    """Bad input for generation (a missing LoRA, mismatched weights); the message says what to fix."""


@dataclass(frozen=True)
class Job:
    """One image to make. `name` is its file name; the same job always gives the same image."""

    name: str
    prompt: str
    guidance_scale: float
    seed: int
    prompt_index: int = 0


@dataclass
class GenSettings:
    base_model: str
    width: int
    height: int
    num_inference_steps: int
    max_sequence_length: int = 512
    revision: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)  # {path, weight, run}
    fused: bool = False
    run: str | None = None
    checkpoint: int | None = None


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


# -- metadata ---------------------------------------------------------------------------------------


def metadata_for(job: Job, gen: GenSettings) -> dict[str, Any]:
    return {
        "prompt": job.prompt,
        "seed": job.seed,
        "guidance_scale": job.guidance_scale,
        "num_inference_steps": gen.num_inference_steps,
        "width": gen.width,
        "height": gen.height,
        "base_model": gen.base_model,
        "revision": gen.revision,
        "loras": gen.loras,
        "fused": gen.fused,
        "run": gen.run,
        "checkpoint": gen.checkpoint,
        "software": f"flux-tui {VERSION}",
    }


def save_png(image: Image.Image, path: Path, meta: dict[str, Any]) -> None:
    """Save with the metadata as text chunks: one JSON chunk plus a plain chunk per scalar field."""
    info = PngInfo()
    info.add_text(META_KEY, json.dumps(meta, sort_keys=True))
    for key, value in meta.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            info.add_text(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)  # a watcher never sees half an image


def read_metadata(path: Path) -> dict[str, Any]:
    """The generation metadata of a PNG ({} when it has none). Plain `prompt` chunks from other tools count."""
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, ValueError):
        return {}
    if META_KEY in text:
        try:
            data = json.loads(text[META_KEY])
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError:
            pass
    return {k: text[k] for k in ("prompt", "seed", "guidance_scale") if k in text}


# -- pipeline ---------------------------------------------------------------------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(base_model: str, device: str | None = None, revision: str | None = None):
    """FluxPipeline on `device` (bf16 on GPU, fp32 on CPU). On a GPU too small for the whole pipeline
    (FLUX.1-dev in bf16 needs about 34 GB), components move to the GPU one at a time instead."""
    import diffusers
    import torch
    from diffusers import FluxPipeline

    device = device or default_device()
    dtype = torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    from flux_tui.engine.models import resolve_model

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


def resolve_lora(path: str | Path) -> tuple[Path, str | None]:
    """A LoRA file from a run folder, a lora/ folder or a .safetensors file; with the run's name if any."""
    p = Path(path).expanduser()
    if p.is_file():
        return p, None
    run = RunDir(p)
    for candidate in (run.lora_file, p / LORA_FILE):
        if candidate.is_file():
            return candidate, run.name if candidate == run.lora_file else None
    if run.exists():
        raise GenerateError(f"run {run.name!r} ({p}) has no trained LoRA yet ({run.lora_file} is missing)")
    raise GenerateError(f"{p}: no LoRA there (expected a run folder, a folder with {LORA_FILE}, or the file)")


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


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def generate_images(
    pipe,
    jobs: Sequence[Job],
    out_dir: Path,
    gen: GenSettings,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_image: Callable[[Path, Job, int, int], None] | None = None,
) -> list[Path]:
    """Make every job's image into `out_dir`. Prompts are batched `batch_size` at a time; a CUDA
    out-of-memory halves the batch and retries, down to one image. Each image has its own seeded
    generator, so an image does not depend on the batch it was made in."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    paths: list[Path] = []
    pending = list(_batches(jobs, max(1, batch_size)))
    while pending:
        batch = pending.pop(0)
        try:
            generators = [torch.Generator(device="cpu").manual_seed(j.seed) for j in batch]
            result = pipe(
                prompt=[j.prompt for j in batch],
                height=gen.height,
                width=gen.width,
                num_inference_steps=gen.num_inference_steps,
                guidance_scale=batch[0].guidance_scale,
                generator=generators,
                max_sequence_length=gen.max_sequence_length,
            )
        except Exception as exc:
            if len(batch) > 1 and _is_oom(exc) and str(device).startswith("cuda"):
                torch.cuda.empty_cache()
                half = len(batch) // 2
                print(f"generate: out of memory with {len(batch)} images at once; trying {half}", flush=True)
                pending[:0] = [batch[:half], batch[half:]]
                continue
            raise
        for job, image in zip(batch, result.images, strict=True):
            path = out_dir / job.name
            save_png(image, path, metadata_for(job, gen))
            paths.append(path)
            if on_image:
                on_image(path, job, len(paths), len(jobs))
    return paths


# -- command line -----------------------------------------------------------------------------------


def _parse_weights(text: str | None, n: int) -> list[float]:
    if not text:
        return [1.0] * n
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise GenerateError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.8,0.7") from None
    if len(weights) != n:
        raise GenerateError(f"--weights gives {len(weights)} weight(s) for {n} --lora(s); give one per LoRA")
    return weights


def _common_config(runs: Sequence[RunDir]) -> dict[str, Any]:
    configs = [r.config() for r in runs if r.config()]
    if not configs:
        return {}
    bases = {c.get("base_model") for c in configs}
    if len(bases) > 1:
        raise GenerateError(f"the LoRAs were trained on different base models ({', '.join(map(str, bases))})")
    return configs[0]


def generate_with_loras(args: argparse.Namespace) -> int:
    """Free generation: --prompt(s) x --images with one or more LoRAs merged by weight."""
    from flux_tui.engine import score as scoring

    loras = [resolve_lora(p) for p in args.lora]
    weights = _parse_weights(args.weights, len(loras))
    runs = [RunDir(Path(p).expanduser()) for p in args.lora]
    cfg = _common_config([r for r in runs if r.exists()])
    base = args.base_model or cfg.get("base_model")
    if not base:
        raise GenerateError("no base model: give --base-model (the LoRAs are not in run folders that name one)")
    size = args.resolution or cfg.get("eval_resolution") or cfg.get("resolution") or 1024
    label = "+".join(r or p.parent.name for p, r in loras)
    out = Path(args.out) if args.out else _default_out(runs, label, weights, args.fuse)
    gen = GenSettings(
        base_model=base,
        width=size,
        height=size,
        num_inference_steps=args.steps or cfg.get("num_inference_steps", 28),
        max_sequence_length=cfg.get("max_sequence_length", 512),
        revision=cfg.get("revision"),
        loras=[{"path": str(p), "weight": w, "run": r} for (p, r), w in zip(loras, weights, strict=True)],
        fused=args.fuse,
    )
    prompts = args.prompt or cfg.get("eval_prompts") or []
    if not prompts:
        raise GenerateError("no prompt: give --prompt TEXT (repeatable)")
    guidance = args.guidance if args.guidance is not None else (cfg.get("guidance_scales") or [3.5])[0]
    jobs = eval_jobs(prompts, [guidance], args.images, args.seed)
    pipe = load_pipeline(base, args.device, gen.revision)
    set_loras(pipe, [(p, w) for (p, _), w in zip(loras, weights, strict=True)], fuse=args.fuse)
    print(f"generate: {len(jobs)} image(s) with {label} (weights {', '.join(f'{w:g}' for w in weights)}) -> {out}")
    paths = generate_images(pipe, jobs, out, gen, batch_size=args.batch_size,
                            on_image=lambda p, j, i, n: print(f"  [{i}/{n}] {p.name}: {j.prompt}", flush=True))  # fmt: skip
    del pipe
    for against in args.score_against or []:
        run = RunDir(Path(against).expanduser())
        ref_cfg = run.config()
        ref = ref_cfg.get("data_dir") if ref_cfg else against
        result = scoring.score_paths(
            paths,
            reference_dir=Path(ref),
            clip_model=args.clip_model or ref_cfg.get("clip_model") or cfg.get("clip_model") or scoring.DEFAULT_CLIP,
            face_weights=args.face_weights or ref_cfg.get("face_weights") or cfg.get("face_weights"),
            cache_dir=Path(run.read_run()["cache_dir"]) if run.exists() else None,
        )
        dest = out / f"scores-{run.name}.json"
        scoring.write_scores(dest, result)
        print(f"\nscored against {run.name} ({ref}) -> {dest}")
        print(scoring.format_report(result))
    return 0


def _default_out(runs: Sequence[RunDir], label: str, weights: Sequence[float], fused: bool = False) -> Path:
    """<workspace>/merges/<a>+<b>-w0.8,0.7 beside runs/ when the LoRAs come from run folders, else ./merges;
    `-fused` appended for --fuse, so fused images never overwrite the unfused ones of the same call."""
    root = next((Path(r.read_run()["workspace"]) for r in runs if r.exists() and r.read_run().get("workspace")),
                Path.cwd())  # fmt: skip
    return root / "merges" / f"{label}-w{','.join(f'{w:g}' for w in weights)}{'-fused' if fused else ''}"


def generate_run(run: RunDir, device: str | None = None, batch_size: int = DEFAULT_BATCH) -> int:
    from flux_tui.engine.evaluate import ModelCache, generate_stage

    generate_stage(run, ModelCache(device), batch_size=batch_size)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.generate", description=__doc__.split("\n")[0])
    generate_args(parser)  # the same arguments as `flux-tui generate`
    args = parser.parse_args(argv)
    if bool(args.run) == bool(args.lora):
        parser.error("give either a RUN folder (its evaluation grid) or one or more --lora")
    try:
        if args.run:
            return generate_run(RunDir(Path(args.run)), args.device, args.batch_size)
        return generate_with_loras(args)
    except GenerateError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

