"""`torch_compile = true`: the transformer's blocks compiled with torch.compile while it trains.

Regional compilation: each block's `forward` is compiled, not the whole model. FLUX repeats two kinds of
block (19 double-stream and 38 single-stream on FLUX.1-dev), and torch.compile treats a module's weights as
inputs, so each kind compiles once and serves every block of it: minutes of compiling for the whole model
become a wait of one or two minutes at the first step. The compiled kernels fuse the LoRA's small
operations with the attention and MLP around them (on the demo's CPU model a step takes half the time).

Only the training step runs compiled. Samples and the evaluation's images run the same weights eagerly
(`eager`): without gradients and at the evaluation's resolution, they would each compile again. When the
compiler fails (no C++ compiler on a CPU-only machine, an operation it does not support), torch.compile is
told to fall back to eager execution with a warning in the log instead of failing the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def blocks(transformer: Any) -> list[torch.nn.Module]:
    """The repeated blocks of a FLUX transformer (both kinds)."""
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def compile_blocks(transformer: Any) -> int:
    """Compile each block's forward in place (state-dict keys stay as they are); returns how many."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a compiler failure runs that code eagerly, with a warning
    found = blocks(transformer)
    for block in found:
        block.forward = torch.compile(block.forward, dynamic=False)  # an instance attribute: `eager` undoes it
    return len(found)


@contextlib.contextmanager
def eager(transformer: Any) -> Iterator[None]:
    """The blocks run their own (uncompiled) forward inside the `with`; compiled ones come back after."""
    compiled = {b: b.__dict__.pop("forward") for b in blocks(transformer) if "forward" in b.__dict__}
    try:
        yield
    finally:
        for block, forward in compiled.items():
            block.forward = forward
