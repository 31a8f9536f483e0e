"""Training checkpoints: everything needed for a relaunched run to continue exactly where it stopped.

    checkpoints/checkpoint-<step>/
        lora.safetensors   the adapter's weights (peft names, float32)
        optimizer.pt       the optimizer's state (moments and step counts)
        scheduler.pt       the learning-rate scheduler's state
        rng.pt             torch (CPU and CUDA), numpy and Python RNG states and the trainer's generator
        state.json         step, total steps, time

A checkpoint is written to a hidden temporary folder and renamed into place, so a crash mid-write never
leaves a half checkpoint that a relaunch would trust; after it lands, the oldest beyond the limit go.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flux_tui.core.runs import RunDir


@dataclass
class Restored:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run: RunDir, step: int, total: int, lora: dict[str, torch.Tensor], optimizer, scheduler,
         generator: torch.Generator, keep: int) -> Path:  # fmt: skip
    final = run.checkpoints_dir / f"checkpoint-{step}"
    tmp = run.checkpoints_dir / f".checkpoint-{step}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(lora, tmp / "lora.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(generator), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "total": total, "time": time.time()}) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in run.checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path) -> Restored:
    state = json.loads((path / "state.json").read_text())
    return Restored(
        step=int(state["step"]),
        lora=load_file(path / "lora.safetensors"),
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        scheduler=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False),
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=False),
    )


def latest_valid(run: RunDir) -> Path | None:
    """The newest checkpoint that was written in full (it has its state.json)."""
    for path in reversed(run.checkpoints()):
        if (path / "state.json").exists():
            return path
    return None
