"""Machine gauges: memory, utilisation and temperature of each GPU (pynvml), each run's GPU memory by pid,
host CPU and RAM (psutil). Without an NVIDIA GPU the panel says so; the rest of the dashboard is unaffected."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from flux_tui.core.telemetry import Sample
from flux_tui.tui.format import gib
from flux_tui.tui.runview import RunGpu

BAR = 12


def bar(fraction: float, width: int = BAR) -> Text:
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text("█" * full, style=style) + Text("░" * (width - full), style="dim")


def render_gauges(sample: Sample | None, runs: list[RunGpu]) -> Text:
    out = Text()
    if sample is None:
        return Text("reading the machine…", style="dim")
    if sample.gpus:
        for g in sample.gpus:
            line = Text(f"GPU{g.index} ", style="bold") + Text(f"{g.name.removeprefix('NVIDIA ')[:20]:<20} ")
            line += bar(g.mem_used / g.mem_total if g.mem_total else 0.0)
            line += Text(f" {gib(g.mem_used)}/{gib(g.mem_total)} GiB")
            line += Text(f"  util {g.util if g.util is not None else '?':>3}%")
            line += Text(f"  {g.temperature if g.temperature is not None else '?'}°C")
            mine = [r for r in runs if r.device == f"cuda:{g.index}"]
            if mine:
                line += Text("  " + ", ".join(f"{r.name} {gib(r.gpu_mem)} GiB" for r in mine), style="cyan")
            out += line + Text("\n")
    else:
        out += Text("No NVIDIA GPU", style="bold yellow") + Text(
            f" ({sample.gpu_error or 'none found'}); runs train on the CPU\n", style="yellow"
        )
    h = sample.host
    out += Text("host ", style="bold") + Text(f"CPU {h.cpu_percent:5.1f}% of {h.n_cpus} ")
    out += bar(h.cpu_percent / 100) + Text("  RAM ") + bar(h.ram_used / h.ram_total if h.ram_total else 0)
    out += Text(f" {gib(h.ram_used)}/{gib(h.ram_total)} GiB")
    running = [r for r in runs if r.pid]
    if running:
        out += Text("  runs: ") + Text(
            ", ".join(
                f"{r.name} pid {r.pid}" + (f" {gib(r.gpu_mem)} GiB" if r.gpu_mem else "") for r in running
            ),
            style="cyan",
        )
    return out


class GaugesPanel(Static):
    DEFAULT_CSS = """
    GaugesPanel { height: auto; max-height: 8; padding: 0 1; border: round $panel; border-title-color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(Text("reading the machine…", style="dim"), **kwargs)
        self.border_title = "machine"

    def show(self, sample: Sample | None, runs: list[RunGpu]) -> None:
        self.update(render_gauges(sample, runs))
