"""The playground's protocol and its folder in the workspace: shared by the core's client
(`playground_client`) and the engine's server (`engine.playground_server`), so neither imports the other.

Ops (each request is `{"id": N, "op": OP, ...}`; the answer is a `result` or an `error` event with that id):
    configure        workspace, base_model, revision, clip_model, face_weights, cache_dir, device (any subset)
    load             load the base pipeline now (else the first generate does)
    set_loras        loras: [{path: run folder | lora folder | .safetensors, weight}] (empty: the base model)
    add_reference    paths: photo files or folders; the face distance is measured against their mean face
    clear_reference  forget the reference photos
    generate         prompt, guidance, steps, seed, width, height, max_sequence_length, and optionally
                     base_model and loras (as configure and set_loras) -> path, clip_score, face,
                     face_distance, identity_similarity, timings {load_s, lora_s, generate_s, score_s}, counters
    stats            counters, what is loaded
    shutdown         answer, then exit

Every image is saved under `<workspace>/playground/` with its metadata in the PNG (prompt, seed, guidance,
steps, size, base model, LoRAs and weights) and one line per image in `playground/index.jsonl` (with scores).
"""


from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from flux_tui.core.fsutil import append_jsonl, iter_jsonl

OPS = ("configure", "load", "set_loras", "add_reference", "clear_reference", "generate", "stats", "shutdown")
FOLDER = "playground"
INDEX = "index.jsonl"
LOG = "engine.log"


# -- the workspace's playground folder ---------------------------------------------------------------


def playground_dir(workspace: Path) -> Path:
    return Path(workspace) / FOLDER


def new_image_path(workspace: Path, seed: int) -> Path:
    """A fresh file name, in time order: playground/20250101-120000-001-s42.png."""
    folder = playground_dir(workspace)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = folder / f"{stamp}-{n:03d}-s{seed}.png"
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def append_index(workspace: Path, record: dict[str, Any]) -> None:
    folder = playground_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    append_jsonl(folder / INDEX, record)


def read_index(workspace: Path) -> list[dict[str, Any]]:
    """Every image made in the playground, oldest first, with its settings and scores."""
    return list(iter_jsonl(playground_dir(workspace) / INDEX))
