"""Sweep-shared caches of VAE latents and text embeddings, under the workspace's `cache_dir`.

Every run of a sweep trains on the same photos and prompt, so the encodes are done once:

    cache_dir/latents/<key>.safetensors   the VAE's latent distribution (mean, std) of one prepared image
    cache_dir/text/<key>.safetensors      CLIP pooled and T5 embeddings of one prompt
    cache_dir/index.jsonl                 one line per encode actually computed (kind, key, run, time)

Keys hash everything the result depends on: the base model's fingerprint (its files' names, sizes and
modification times and its configs), the image (its key from the photo's bytes, crop version and
resolution, see data.py; never its file name, so `01.jpg` and `01.png` never share an entry) or the prompt
and T5 sequence length, and the dtype the encoder ran in. Files are written to a temporary name and
renamed, so two runs encoding the same thing at once both leave a whole file; an entry that does not load
whole, with the tensors it should hold, is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flux_tui.core.fsutil import append_jsonl, follow_umask

# The pipeline parts whose files decide what an encode gives.
ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
TENSORS = {"latents": ("mean", "std"), "text": ("t5", "pooled")}  # what an entry of each kind holds


def model_fingerprint(model_dir: Path, parts: tuple[str, ...] = ENCODER_PARTS) -> str:
    """A hash of a local pipeline folder's encoder files: same files, same fingerprint (a hub snapshot's
    folder name is its commit, so two revisions differ too)."""
    h = hashlib.sha256(str(Path(model_dir).resolve()).encode())
    for part in parts:
        folder = Path(model_dir) / part
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            st = f.stat()
            h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:24]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    """What this run encoded and what it found already encoded."""

    latents_encoded: int = 0
    latents_reused: int = 0
    text_encoded: int = 0
    text_reused: int = 0
    keys: dict[str, list[str]] = field(default_factory=lambda: {"latents": [], "text": []})


class FeatureCache:
    def __init__(self, root: Path, model_fp: str, run_name: str = ""):
        self.root = Path(root)
        self.model_fp = model_fp
        self.run_name = run_name
        self.stats = CacheStats()

    # -- keys
    def latent_key(self, image_key: str, flipped: bool, dtype: torch.dtype) -> str:
        return _key("latents", self.model_fp, image_key, flipped, dtype)

    def text_key(self, prompt: str, max_sequence_length: int, dtype: torch.dtype) -> str:
        return _key("text", self.model_fp, prompt, max_sequence_length, dtype)

    # -- storage
    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The cached tensors, or None when absent or damaged (the caller encodes again)."""
        path = self._path(kind, key)
        if not path.exists():
            return None
        try:
            tensors = load_file(path)
        except Exception:  # noqa: BLE001 - a damaged file (disk full, killed mid-copy): encode again
            return None
        if not set(TENSORS[kind]) <= tensors.keys() or not all(t.numel() for t in tensors.values()):
            return None
        self._count(kind, reused=True, key=key)
        return tensors

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        follow_umask(tmp)  # safetensors writes 0600
        os.replace(tmp, path)
        self._count(kind, reused=False, key=key)
        append_jsonl(self.root / "index.jsonl",
                     {"kind": kind, "key": key, "run": self.run_name, "t": round(time.time(), 3), **meta})  # fmt: skip

    def _count(self, kind: str, reused: bool, key: str) -> None:
        name = f"{kind}_{'reused' if reused else 'encoded'}"
        setattr(self.stats, name, getattr(self.stats, name) + 1)
        self.stats.keys[kind].append(key)
