"""Explicit fault injection for tests and demos: faults that cannot be caused for real on this machine.

Set `FLUX_TUI_FAULT` in a run's environment to a comma-separated list of:

    oom_at_step:N      raise torch.cuda.OutOfMemoryError at the start of training step N (1-based), as a
                       real CUDA out-of-memory error would, so the `oom` path can be checked on a CPU
    step_delay:SECONDS sleep this long after every training step (slows a tiny run down so a test or a
                       person can signal it mid-training; the numbers it trains are unchanged)
    curve_images:DIR   the evaluation during training at step N scores the pictures of DIR/step-N/ (in
                       name order, one per image it made, cycling) instead of the pixels it generated; names
                       and metadata stay. The demo's random model draws no face, so a test's own photos
                       decide the score curve (the best step, early stopping); the scorers are the real ones

Nothing here is active unless the variable is set; an unknown or malformed entry fails the run at start
with a message naming it, so a typo never silently disables a test.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from flux_tui.engine.errors import EngineError

ENV = "FLUX_TUI_FAULT"


class FaultSpecError(EngineError, ValueError):
    """FLUX_TUI_FAULT names an unknown fault or a malformed value."""


@dataclass(frozen=True)
class Faults:
    oom_at_step: int | None = None
    step_delay: float = 0.0
    curve_images: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Faults:
        spec = (environ if environ is not None else os.environ).get(ENV, "").strip()
        if not spec:
            return cls()
        values: dict[str, object] = {}
        for item in spec.split(","):
            name, _, arg = item.strip().partition(":")
            try:
                if name == "oom_at_step":
                    values[name] = int(arg)
                elif name == "step_delay":
                    values[name] = float(arg)
                elif name == "curve_images" and arg:
                    values[name] = arg
                elif name == "curve_images":
                    raise FaultSpecError(f"{ENV}: {item.strip()!r} needs a folder after the colon")
                else:
                    raise FaultSpecError(f"{ENV}: unknown fault {name!r} "
                                         "(known: oom_at_step:N, step_delay:SECONDS, curve_images:DIR)")  # fmt: skip
            except ValueError as exc:
                if isinstance(exc, FaultSpecError):
                    raise
                raise FaultSpecError(f"{ENV}: {item.strip()!r} needs a number after the colon") from None
        return cls(**values)  # type: ignore[arg-type]

    def before_step(self, step: int) -> None:
        if self.oom_at_step is not None and step == self.oom_at_step:
            import torch

            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by {ENV}=oom_at_step:{self.oom_at_step})"
            )

    def after_step(self) -> None:
        if self.step_delay > 0:
            time.sleep(self.step_delay)

    def replace_curve_images(self, step: int, images: list[Path]) -> None:
        """`curve_images`: the pixels of DIR/step-<step>/'s pictures into `images`, their metadata kept."""
        folder = Path(self.curve_images or "") / f"step-{step}"
        if not self.curve_images or not folder.is_dir():
            return
        from PIL import Image

        from flux_tui.engine.imagemeta import read_metadata, save_png

        pictures = sorted(p for p in folder.iterdir() if p.is_file())
        for i, path in enumerate(images):
            with Image.open(pictures[i % len(pictures)]) as im:
                save_png(im.convert("RGB"), path, read_metadata(path))
