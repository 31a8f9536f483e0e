"""Machine gauges: memory, utilisation and temperature of each GPU (pynvml), each run's GPU memory by pid,
host CPU and RAM (psutil). Without an NVIDIA GPU the panel says so; the rest of the dashboard is unaffected.
With Slurm runs (a login node has no GPU) it says the runs are on the cluster, with each running job's node
and the peak GPU memory from the run's own step events."""

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


NARROW = 100  # below this many columns: shorter names and bars, the runs on a line of their own


def _gpu_line(g, runs: list[RunGpu], narrow: bool) -> Text:
    name_w, bar_w = (12, 8) if narrow else (20, BAR)
    line = Text(f"GPU{g.index} ", style="bold") + Text(f"{g.name.removeprefix('NVIDIA ')[:name_w]:<{name_w}} ")
    line += bar(g.mem_used / g.mem_total if g.mem_total else 0.0, bar_w)
    line += Text(f" {gib(g.mem_used)}/{gib(g.mem_total)} GiB")
    line += Text(f" {'' if narrow else ' '}util {g.util if g.util is not None else '?':>3}%")
    line += Text(f"  {g.temperature if g.temperature is not None else '?'}°C")
    mine = [r for r in runs if r.device == f"cuda:{g.index}"]
    if mine:
        line += Text("  " + ", ".join(f"{r.name} {gib(r.gpu_mem)} GiB" for r in mine), style="cyan")
    return line


def _host_line(sample: Sample, narrow: bool) -> Text:
    h, bar_w = sample.host, 8 if narrow else BAR
    out = Text("host ", style="bold") + Text(f"CPU {h.cpu_percent:5.1f}% of {h.n_cpus} ")
    out += bar(h.cpu_percent / 100, bar_w) + Text("  RAM ") + bar(h.ram_used / h.ram_total if h.ram_total else 0, bar_w)
    return out + Text(f" {gib(h.ram_used)}/{gib(h.ram_total)} GiB")


def render_gauges(sample: Sample | None, runs: list[RunGpu], width: int = 160, cluster: bool = False) -> Text:
    """The panel's lines for a pane `width` columns wide; each line is cut, never wrapped. `cluster`: the
    runs go to Slurm, so this machine's GPUs (a login node has none) are not theirs."""
    if sample is None:
        return Text("reading the machine…", style="dim")
    narrow = width < NARROW
    jobs = [r for r in runs if r.job_id]
    runs = [r for r in runs if not r.job_id]
    lines = [cluster_line(jobs)] if cluster or jobs else []
    lines += [_gpu_line(g, runs, narrow) for g in sample.gpus]
    if not sample.gpus and (cluster or jobs):
        lines.append(Text("No NVIDIA GPU on this machine", style="dim"))
    elif not sample.gpus:
        lines.append(Text("No NVIDIA GPU", style="bold yellow") + Text(
            f" ({sample.gpu_error or 'none found'}); runs train on the CPU", style="yellow"))  # fmt: skip
    host = _host_line(sample, narrow)
    running = [r for r in runs if r.pid]
    if running:
        listed = Text(", ".join(f"{r.name} pid {r.pid}" + (f" {gib(r.gpu_mem)} GiB" if r.gpu_mem else "")
                                for r in running), style="cyan")  # fmt: skip
        if narrow:
            lines += [host, Text("runs ", style="bold") + listed]
        else:
            lines.append(host + Text("  runs: ") + listed)
    else:
        lines.append(host)
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return Text("\n").join(lines)


def cluster_line(jobs: list[RunGpu]) -> Text:
    """The runs on the cluster: each running job's node and the peak GPU memory its step events report."""
    line = Text("Slurm ", style="bold") + Text("the runs train on the cluster", style="cyan")
    if not jobs:
        return line + Text("; none is running now", style="dim")
    parts = []
    for r in jobs:
        where = f" on {r.node}" + (f" {r.device}" if r.device and r.device != "cpu" else "") if r.node else ""
        mem = f", peak {gib(r.gpu_mem)} GiB" if r.gpu_mem else ""
        parts.append(f"{r.name} (job {r.job_id}{where}{mem})")
    return line + Text(": " + ", ".join(parts), style="cyan")


class GaugesPanel(Static):
    DEFAULT_CSS = """
    GaugesPanel { height: auto; max-height: 8; padding: 0 1; border: round $panel; border-title-color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(Text("reading the machine…", style="dim"), **kwargs)
        self.border_title = "machine"
        self._last: tuple[Sample | None, list[RunGpu]] = (None, [])

    def show(self, sample: Sample | None, runs: list[RunGpu]) -> None:
        self._last = (sample, runs)
        self.update(render_gauges(sample, runs, self.size.width or 160, self._cluster()))

    def on_resize(self) -> None:
        self.update(render_gauges(*self._last, self.size.width or 160, self._cluster()))

    def _cluster(self) -> bool:
        """The study's runs go to Slurm (the app's study file says so)."""
        study = getattr(self.app, "study", None)
        return getattr(getattr(study, "workspace", None), "executor", None) == "slurm"
