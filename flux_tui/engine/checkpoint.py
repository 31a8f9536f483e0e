"""Training checkpoints: everything needed for a relaunched run to continue exactly where it stopped.

    checkpoints/checkpoint-<step>/
        lora.safetensors   the adapter's weights (peft names, float32)
        optimizer.pt       the optimizer's state (moments and step counts)
        scheduler.pt       the learning-rate scheduler's state
        rng.pt             torch (CPU and CUDA), numpy and Python RNG states and the trainer's generator
        state.json         step, total steps, time

A checkpoint is written to a hidden temporary folder, synced to disk and renamed into place, so a crash
mid-write never leaves a half checkpoint under a real name; after it lands, the oldest beyond the limit
go. A relaunch still trusts nothing it has not loaded (a disk can fill, a copy can be cut short): `resume`
loads the newest checkpoint and restores it, and when that fails it logs a warning, keeps the damaged one
aside as `checkpoint-<step>.broken-<time>` (never deleted, never listed as a checkpoint again) and tries the
one before. Hidden temporary folders left by a save that was killed are removed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flux_tui.core.fsutil import follow_umask
from flux_tui.core.runs import RunDir


@dataclass
class Restored:
    path: Path
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
    follow_umask(tmp)  # safetensors writes 0600; teammates read checkpoints too
    _sync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _sync_dir(run.checkpoints_dir)
    for old in run.checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _sync(folder: Path) -> None:
    """Every file of `folder` on disk before the folder is renamed into place (a power cut must not leave a
    checkpoint-N whose files are empty)."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> Restored:
    """Load every part of a checkpoint and check that they agree. Raises on any damage."""
    state = json.loads((path / "state.json").read_text())
    step = int(state["step"])
    if f"checkpoint-{step}" != path.name:
        raise ValueError(f"state.json says step {step}")
    lora = load_file(path / "lora.safetensors")
    if not lora:
        raise ValueError("lora.safetensors holds no tensors")
    bad = next((k for k, t in lora.items() if not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"lora.safetensors: {bad} is not finite")
    restored = Restored(
        path=path,
        step=step,
        lora=lora,
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        scheduler=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False),
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=False),
    )
    _check_parts(restored)
    return restored


def _check_parts(r: Restored) -> None:
    if not isinstance(r.optimizer, dict) or not {"state", "param_groups"} <= r.optimizer.keys():
        raise ValueError("optimizer.pt does not hold an optimizer's state")
    if not isinstance(r.scheduler, dict) or not math.isfinite(float(r.scheduler.get("last_epoch", math.nan))):
        raise ValueError("scheduler.pt does not hold a learning-rate scheduler's state")
    if not isinstance(r.rng, dict) or not {"torch", "numpy", "python", "generator"} <= r.rng.keys():
        raise ValueError("rng.pt does not hold the random number generators' states")


def resume(run: RunDir, apply: Callable[[Restored], None], log: Callable[[str], None]) -> Restored | None:
    """Restore the newest checkpoint that loads and applies (`apply` puts it into the model, optimizer,
    scheduler and generators). Each one that fails is logged, set aside and the one before it tried.
    None when there is none left: training starts from step 0."""
    discard_partial(run, log)
    candidates = run.checkpoints()
    for path in reversed(candidates):
        try:
            restored = load(path)
            apply(restored)
        except Exception as exc:  # noqa: BLE001 - any damage means "not this one"; it is kept, renamed
            aside = set_aside(path, log)
            log(f"train: WARNING: {path.name} is damaged ({type(exc).__name__}: {str(exc)[:300]}); "
                f"kept as {aside.name}, trying the checkpoint before it")  # fmt: skip
            continue
        return restored
    if candidates:
        log("train: WARNING: no checkpoint could be restored; training starts again from step 0")
    return None


def set_aside(path: Path, log: Callable[[str], None]) -> Path:
    """Rename a damaged checkpoint out of the way (its files are kept for the user to look at)."""
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}.{n}")
    try:
        os.rename(path, aside)
    except OSError as exc:
        log(f"train: WARNING: cannot rename {path} ({exc.strerror or exc}); it stays, and is skipped")
        return path
    return aside


def discard_partial(run: RunDir, log: Callable[[str], None]) -> None:
    """Remove the hidden temporary folders of saves that were killed mid-write (never a real checkpoint)."""
    if not run.checkpoints_dir.is_dir():
        return
    for tmp in run.checkpoints_dir.glob(".checkpoint-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"train: removed {tmp.name}, left by a checkpoint save that was cut short")
