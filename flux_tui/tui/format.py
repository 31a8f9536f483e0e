"""Short human formats for figures on screen: durations, learning rates, byte sizes."""

from __future__ import annotations

GiB = 1024**3


def duration(seconds: float | None) -> str:
    """3s, 4m05s, 2h07m, 3d04h."""
    if seconds is None:
        return ""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def lr_text(lr: float) -> str:
    """1e-3, 5e-4, 2.5e-5, 0.01."""
    if lr == 0 or abs(lr) >= 0.01:
        return f"{lr:g}"
    mant, exp = f"{lr:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def gib(n: int | float | None) -> str:
    return "" if n is None else f"{n / GiB:.1f}"
