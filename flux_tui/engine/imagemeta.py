"""What an image was made with, and the PNG text chunks that carry it.

A `Job` is one image to make (prompt, guidance, seed, file name); `GenSettings` what every image of a set
shares (base model, size, steps, LoRAs). Every PNG the engine writes carries both: one `flux_tui` chunk
holding every field as JSON, plus a plain chunk per scalar (`prompt`, `seed`, ...) that other tools read.
DEVELOPERS.md lists the keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from flux_tui import __version__ as VERSION

META_KEY = "flux_tui"  # the PNG text chunk holding every field as one JSON object
TEMP_SUFFIX = ".tmp"


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
    quantize: str = "none"  # the base's weights as they made the image: none, int8 or nf4 (the trainer's)


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
        "quantize": gen.quantize,
        "loras": gen.loras,
        "fused": gen.fused,
        "run": gen.run,
        "checkpoint": gen.checkpoint,
        "software": f"flux-tui {VERSION}",
    }


def temp_path(path: Path) -> Path:
    """Where `save_png` writes an image before renaming it into place: a hidden `.<name>.tmp` beside it.
    A process killed mid-image leaves this file behind (the next owner of the run removes it)."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def save_png(image: Image.Image, path: Path, meta: dict[str, Any]) -> None:
    """Save with the metadata as text chunks: one JSON chunk plus a plain chunk per scalar field."""
    info = PngInfo()
    info.add_text(META_KEY, json.dumps(meta, sort_keys=True))
    for key, value in meta.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            info.add_text(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
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
