"""Where the engine computes, and the one rule for "the device ran out of memory".

torch is imported only when a device is chosen, so that importing this module stays cheap (the playground
server says it is ready before torch loads).
"""

from __future__ import annotations

import os
import sys


def default_device() -> str:
    """'cuda' when torch sees a GPU (the one CUDA_VISIBLE_DEVICES lets it see first), else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose(device: str | None) -> str:
    """`device` when one was asked for (cpu, cuda, cuda:N), else the default."""
    return device or default_device()


def device_label(device: str) -> str:
    """What status.json records: 'cpu', or 'cuda:N' with N the physical index. The scheduler picks a GPU
    through CUDA_VISIBLE_DEVICES, so torch's 'cuda' (index 0) may be the machine's GPU 3."""
    if device == "cpu":
        return "cpu"
    index = int(device[5:]) if device.startswith("cuda:") and device[5:].isdigit() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return f"cuda:{visible[index]}"
    return f"cuda:{index}"


def is_oom(exc: BaseException) -> bool:
    """True when `exc` means the accelerator ran out of memory: torch's OutOfMemoryError (CUDA's, raised
    by the caching allocator), or a RuntimeError saying "out of memory" (what cuBLAS, cuDNN, a CUDA context
    that cannot be created, or the MPS backend raise instead)."""
    torch = sys.modules.get("torch")  # an exception cannot be torch's if torch was never imported
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: str) -> None:
    """Give cached accelerator memory back (after a model is dropped), so the next one fits."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if device != "cpu" and torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
