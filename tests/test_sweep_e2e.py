"""A sweep runs to its end with no dashboard open: the real trainer on the demo's tiny model, real processes.

Each test builds a small study over the demo workspace's models and photos (a few steps, one evaluation
image) so that a run takes seconds of work; what is checked is who starts runs and when, not the model."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

from flux_tui.core import config, procs
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import CANCELLED, DONE, FAILED, NEW, QUEUED, RUNNING, RunDir

pytestmark = pytest.mark.slow

STUDY = """\
[workspace]
runs_per_gpu = 1

[defaults]
base_model = "models/tiny-flux"
clip_model = "models/tiny-clip"
face_weights = "weights/vggface2-standin.pt"
data_dir = "photos"
instance_prompt = "a photo of cr7man"
trigger_token = "cr7man"
resolution = 64
learning_rate = 1e-3
lora_rank = 4
max_train_steps = {steps}
max_sequence_length = 32
checkpointing_steps = 2
sample_every = 0
eval_prompts = ["a photo of cr7man"]
images_per_prompt = 1
num_inference_steps = 2
"""


def workspace(demo: Path, dest: Path, names: list[str], steps: int = 4) -> config.Study:
    """The demo's models and photos (linked, read-only) with a small study of `names` and runs of our own."""
    dest.mkdir(parents=True)
    for name in ("models", "weights", "photos"):
        (dest / name).symlink_to(demo / name)
    rows = "".join(f'\n[[experiment]]\nname = "{n}"\nlora_rank = {4 + i}\n' for i, n in enumerate(names))
    (dest / "experiments.toml").write_text(STUDY.format(steps=steps) + rows)
    return config.load(dest / "experiments.toml")


def run_of(study: config.Study, name: str) -> RunDir:
    return RunDir(study.workspace.runs_dir / name)


def until(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def flux_tui(study: config.Study, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flux_tui", *args, "-f", str(study.file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def all_done_with_scores(study: config.Study) -> bool:
    return all(run_of(study, n).status().state == DONE and run_of(study, n).scores() for n in study.names)


def assert_each_started_once(study: config.Study) -> None:
    """One launch per run, and the trainer that ran it is the pid status.json names."""
    for name in study.names:
        run = run_of(study, name)
        log = run.train_log.read_text()
        assert log.count("=== launched") == 1, log
        assert re.findall(rf"run {name}: pid (\d+)", log) == [str(run.status().pid)], log


def dashboards(study: config.Study) -> list[psutil.Process]:
    """Dashboard processes open on this study (not its runs' supervisors or trainers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if str(study.file) in cmd and cmd[1:3] == ["-m", "flux_tui"] and len(cmd) == 4:
            found.append(proc)
    return found


def open_dashboard(study: config.Study) -> tuple[subprocess.Popen, int]:
    """`python -m flux_tui FILE` in a 160x45 pseudo-terminal of its own session, as over SSH."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "flux_tui", str(study.file)], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True, env={**os.environ, "TERM": "xterm-256color"})  # fmt: skip
    os.close(slave)
    screen = b""

    def drawn() -> bool:
        nonlocal screen
        import select

        while select.select([master], [], [], 0)[0]:
            try:
                screen += os.read(master, 65536)
            except OSError:
                break
        return b"exp01" in screen

    until(drawn, 60, "the dashboard's first frame")
    return proc, master


@pytest.fixture(autouse=True)
def _no_stray_runs(tmp_path: Path):
    """Whatever a failing test leaves is taken off the queue, then killed by its recorded process group."""
    yield
    runs_dir = tmp_path / "ws" / "runs"
    if not runs_dir.is_dir():
        return
    folders = [RunDir(d) for d in runs_dir.iterdir() if (d / "run.json").exists()]
    with file_lock(runs_dir / ".queue.lock"):
        for run in folders:
            if run.status().state == QUEUED:
                run.write_status(state=NEW)
    for run in folders:
        st = run.status()
        if st.state == RUNNING and procs.is_alive(st.pid, st.process_start):
            procs.signal_group(st.pgid, st.pid, signal.SIGKILL)


def test_a_dashboard_and_two_submits_at_once_then_the_connection_drops_and_the_sweep_completes(
    demo_workspace: Path, tmp_path: Path
) -> None:
    """Two `flux-tui submit --all` and a dashboard's `a` at once: every run starts exactly once, never two
    at a time on the one slot. Then the dashboard gets SIGHUP (an SSH connection dropping): it is gone,
    and the queue carries on through the runs' supervisors until every run is done with scores."""
    study = workspace(demo_workspace, tmp_path / "ws", ["exp01", "exp02", "exp03"])
    dash, master = open_dashboard(study)
    try:
        submits = [flux_tui(study, "submit", "--all") for _ in range(2)]
        os.write(master, b"a")
        outs = [p.communicate(timeout=120)[0] for p in submits]
        assert all(p.returncode == 0 for p in submits), outs
        until(lambda: run_of(study, "exp01").status().state == RUNNING, 60, "exp01 to start")
        dash.send_signal(signal.SIGHUP)
        os.close(master)
        dash.wait(30)
    finally:
        if dash.poll() is None:
            dash.kill()
    assert dashboards(study) == []  # no dashboard is left to start anything
    peak = 0

    def finished() -> bool:
        nonlocal peak
        peak = max(peak, sum(run_of(study, n).status().state == RUNNING for n in study.names))
        return all_done_with_scores(study)

    until(finished, 600, "every run done with scores")
    assert peak <= 1
    assert_each_started_once(study)
    logs = "".join(run_of(study, n).train_log.read_text() for n in study.names)
    assert logs.count("started the next queued run(s)") == 2  # exp02 and exp03 each by its predecessor


def test_submit_all_from_a_shell_that_exits_completes_the_sweep(demo_workspace: Path, tmp_path: Path) -> None:
    study = workspace(demo_workspace, tmp_path / "ws", ["exp01", "exp02"])
    shell = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m flux_tui submit --all -f {study.file}; exit"],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert "exp01 started on cpu" in shell.stdout and "exp02 queued" in shell.stdout
    until(lambda: all_done_with_scores(study), 600, "every run done with scores")
    assert_each_started_once(study)
    # Everything its processes printed, long after the shell left: the trainer's lines, then its supervisor's.
    log = until(lambda: "ended: done" in (text := run_of(study, "exp02").train_log.read_text()) and text, 30,
                "exp02's supervisor's last line")  # fmt: skip
    assert "run exp02: pid" in log and "DEMO: these scores show mechanics only" in log


def test_sigkill_of_a_trainer_fails_it_the_next_run_starts_and_stop_cancels_or_unqueues(
    demo_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow steps (the trainer's documented fault switch, inherited by every run) so signals land mid-training.
    monkeypatch.setenv("FLUX_TUI_FAULT", "step_delay:1")
    study = workspace(demo_workspace, tmp_path / "ws", ["exp01", "exp02", "exp03"], steps=8)
    assert flux_tui(study, "submit", "--all").communicate(timeout=120)[0]

    out = flux_tui(study, "stop", "exp03").communicate(timeout=60)[0]
    assert "exp03 taken off the queue (back to new)" in out
    assert run_of(study, "exp03").status().state == NEW  # it never ran

    first = run_of(study, "exp01")
    until(lambda: list(first.iter_events("step")), 180, "exp01's first step")
    os.kill(first.status().pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    st = until(lambda: (st := first.status()).state == FAILED and st, 30, "exp01 failed")
    assert "killed by SIGKILL" in st.message
    second = run_of(study, "exp02")
    until(lambda: second.status().state == RUNNING, 30, "exp02 started by exp01's supervisor")

    until(lambda: list(second.iter_events("step")), 180, "exp02's first step")
    out = flux_tui(study, "stop", "exp02").communicate(timeout=60)[0]
    assert "sent SIGTERM to exp02" in out
    st = until(lambda: (st := second.status()).state == CANCELLED and st, 120, "exp02 cancelled")
    assert "stopped by SIGTERM" in st.message
    ckpt = second.latest_checkpoint()
    assert ckpt is not None and ckpt.name in st.message  # "relaunch to resume from checkpoint-N"
    assert run_of(study, "exp03").status().state == NEW  # nothing was left to start
