"""Dashboard speed: time to the first frame, and event-loop lag and memory while 8 runs write 1,000 log lines
a second each.

    python bench/tui_load.py [--seconds 20] [--starts 5] [--first-frame-only] [--compile]

Takes about 30 s (5 starts, then 20 s of load).

First frame: `python -m flux_tui FILE` in a 160x45 pseudo-terminal, from the moment the process is spawned
until the matrix's first row is drawn. The harness answers the terminal queries textual-image sends at import
(device attributes, cell size) the way tmux or xterm do; without an answer each query waits for its timeout.
Whether flux_tui's modules have current bytecode is printed first: without it each start compiles them (~50 ms
here), which is every start where PYTHONDONTWRITEBYTECODE is set. `--compile` writes it first, as `make` does.

Load: the app in this process (Textual's headless driver, which still lays out and renders every frame), a
study of 8 runs, 8 writer processes appending 1,000 lines/s each to their train.log (plus a step event every
100 ms to events.jsonl). The selected run changes every 2 s, so its log is re-read from the end. A probe task
sleeps 10 ms at a time and records how late it wakes: that lateness is what a key press would wait.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import psutil
from code_under_test import bytecode, describe

REPO = Path(__file__).resolve().parents[1]

STUDY = """\
[workspace]
runs_per_gpu = 1
[defaults]
data_dir = "photos"
resolution = 64
max_train_steps = 100000
"""
WRITER = r"""
import json, sys, time
run, rate = sys.argv[1], int(sys.argv[2])
log = open(f"{run}/train.log", "a", buffering=1)
ev = open(f"{run}/events.jsonl", "a", buffering=1)
n, step, t0 = 0, 0, time.monotonic()
while True:
    due = int((time.monotonic() - t0) * rate)
    while n < due:
        n += 1
        log.write(f"{time.strftime('%H:%M:%S')} step {n:8d} loss {1 / n:.6f} lr 1.0e-04 some padding to look real\n")
    if (time.monotonic() - t0) * 10 >= step:
        step += 1
        ev.write(json.dumps({"type": "step", "step": step, "total": 100000, "loss": 1 / step, "lr": 1e-4,
                             "sec_per_step": 0.1, "eta_s": 1000.0, "t": time.time()}) + "\n")
    time.sleep(0.01)
"""


def make_workspace(root: Path, n: int) -> Path:
    (root / "photos").mkdir(parents=True)
    rows = "".join(
        f'\n[[experiment]]\nname = "run{i:02d}"\nnumber = {i}\nlearning_rate = 1e-4\n'
        for i in range(1, n + 1)
    )
    (root / "experiments.toml").write_text(STUDY + rows)
    return root / "experiments.toml"


# -- first frame ------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far: steadier than wall time on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_frame(file: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the dashboard's process) from spawn to the first matrix row."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 160, 1600, 900))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_tui", str(file)], stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, env={**os.environ, "TERM": "xterm-256color"},
        cwd=file.parent,  # never the checkout: `-m` would put its flux_tui ahead of PYTHONPATH's
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        while time.perf_counter() - t0 < 30:
            if not select.select([master], [], [], 0.005)[0]:
                continue
            chunk = os.read(master, 65536)
            seen += chunk
            # answer like a terminal without sixel or kitty graphics (tmux, xterm)
            if b"\x1b[c" in chunk:
                os.write(master, b"\x1b[?62;22c")
            if b"\x1b[16t" in chunk:
                os.write(master, b"\x1b[6;20;10t")
            if b"run01" in seen:
                return time.perf_counter() - t0, cpu_seconds(proc.pid)
        raise RuntimeError("no first frame in 30 s")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


# -- lag and memory under load ----------------------------------------------------------------------------


async def load(file: Path, seconds: float, rate: int) -> dict:
    from flux_tui.core import config
    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.widgets.logpane import LogPane

    study = config.load(file)
    for exp in study.experiments:
        d = study.workspace.runs_dir / exp.name
        d.mkdir(parents=True)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(study.workspace.runs_dir / e.name), str(rate)])
        for e in study.experiments
    ]
    me = psutil.Process()
    lags: list[float] = []
    rss: list[int] = []
    try:
        app = FluxApp(study, run_queue=False)
        async with app.run_test(size=(160, 45)) as pilot:
            await app.ready.wait()
            table = app.screen.query_one("#matrix")
            log = app.screen.query_one(LogPane)
            t_end = time.monotonic() + seconds
            next_switch = next_rss = time.monotonic()
            i = 0
            while time.monotonic() < t_end:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)
                now = time.monotonic()
                if now >= next_switch:
                    next_switch = now + 2
                    table.select(study.experiments[i % len(study.experiments)].name)
                    i += 1
                if now >= next_rss:
                    next_rss = now + 1
                    rss.append(me.memory_info().rss)
            lines_shown = log.line_count
            await pilot.pause()
    finally:
        for w in writers:
            w.kill()
            w.wait()
    written = sum((study.workspace.runs_dir / e.name / "train.log").stat().st_size for e in study.experiments)
    lags.sort()
    return {
        "lag_p50_ms": 1000 * lags[len(lags) // 2],
        "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)],
        "lag_max_ms": 1000 * lags[-1],
        "rss_first_mib": rss[1] / 2**20 if len(rss) > 1 else rss[0] / 2**20,
        "rss_last_mib": rss[-1] / 2**20,
        "rss_max_mib": max(rss) / 2**20,
        "log_mib_written": written / 2**20,
        "log_lines_in_pane": lines_shown,
        "rss_series_mib": [round(r / 2**20) for r in rss[:: max(1, len(rss) // 12)]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the load runs")
    parser.add_argument("--starts", type=int, default=5, help="how many cold starts to time")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rate", type=int, default=1000, help="log lines a second per run")
    parser.add_argument("--first-frame-only", action="store_true", help="time the starts, skip the load part")
    parser.add_argument("--compile", action="store_true",
                        help="write the code under test's bytecode first, as `make` does at install")  # fmt: skip
    args = parser.parse_args()
    print(
        f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; Python {sys.version.split()[0]}"
    )
    print(describe())
    print(bytecode(compile_first=args.compile))
    with tempfile.TemporaryDirectory(prefix="flux-tui-bench-") as tmp:
        file = make_workspace(Path(tmp) / "start", 11)
        frames = [first_frame(file) for _ in range(args.starts)]
        times, cpu = [f[0] for f in frames], [f[1] for f in frames]
        print(f"first frame (spawn to first matrix row, {args.starts} starts): median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; CPU time of the dashboard's "
              f"process by then: median {statistics.median(cpu) * 1000:.0f} ms")  # fmt: skip
        if args.first_frame_only:
            return 0
        file = make_workspace(Path(tmp) / "load", args.runs)
        r = asyncio.run(load(file, args.seconds, args.rate))
        print(f"under load ({args.runs} runs x {args.rate} lines/s for {args.seconds:.0f} s, "
              f"{r['log_mib_written']:.0f} MiB of logs written):")  # fmt: skip
        print(
            f"  event-loop lag: p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms, max {r['lag_max_ms']:.1f} ms"
        )
        print(f"  memory (RSS): after 1 s {r['rss_first_mib']:.0f} MiB, at the end {r['rss_last_mib']:.0f} MiB, "
              f"max {r['rss_max_mib']:.0f} MiB; log pane holds {r['log_lines_in_pane']} lines")  # fmt: skip
        print(f"  RSS over time (MiB): {r['rss_series_mib']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
