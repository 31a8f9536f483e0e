"""End to end on the demo workspace with the real trainer (tiny random FLUX on the CPU, real subprocesses):
launch runs from the keyboard, stop and resume one, kill the dashboard mid-run and find the run again."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from textual.widgets import Static
from tui_helpers import FixedTelemetry, until

from flux_tui.core import config, procs
from flux_tui.core.runs import CANCELLED, DONE, RUNNING, RunDir
from flux_tui.tui.app import FluxApp
from flux_tui.tui.screens.detail import RunDetailScreen
from flux_tui.tui.widgets.images import ImageWidget, Thumbnail
from flux_tui.tui.widgets.logpane import LogPane
from flux_tui.tui.widgets.matrix import MatrixTable

pytestmark = pytest.mark.slow
SIZE = (160, 45)


def workspace_copy(demo: Path, dest: Path, runs_per_gpu: int) -> config.Study:
    """The demo workspace's models and photos (linked, read-only) with a study file and runs of our own."""
    dest.mkdir(parents=True)
    for name in ("models", "weights", "photos"):
        (dest / name).symlink_to(demo / name)
    text = (
        (demo / "experiments.toml").read_text().replace("runs_per_gpu = 1", f"runs_per_gpu = {runs_per_gpu}")
    )
    (dest / "experiments.toml").write_text(text)
    return config.load(dest / "experiments.toml")


def status(study: config.Study, name: str):
    return RunDir(study.workspace.runs_dir / name).status()


async def test_launch_two_runs_stop_one_and_resume_it_then_both_finish_with_scores(
    demo_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow the tiny runs down (the trainer's documented fault switch) so the stop lands mid-training.
    monkeypatch.setenv("FLUX_TUI_FAULT", "step_delay:0.1")
    study = workspace_copy(demo_workspace, tmp_path / "ws", runs_per_gpu=2)
    app = FluxApp(study, telemetry=FixedTelemetry(), interval=0.1, status_every=0.2, tick_every=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        table = app.screen.query_one(MatrixTable)
        table.select("exp01")
        await pilot.press("enter")
        table.select("exp02")
        await pilot.press("enter")
        await until(pilot, lambda: status(study, "exp02").state == RUNNING, 60, "exp02 to start")
        assert status(study, "exp01").state == RUNNING  # two slots: both run at once
        # exp02 is training: stop it with x, it checkpoints and ends cancelled
        await until(
            pilot, lambda: app.views["exp02"].step and app.views["exp02"].step >= 3, 120, "exp02's third step"
        )
        await pilot.press("x")
        await until(pilot, lambda: app.views["exp02"].state == CANCELLED, 60, "exp02 cancelled")
        # the app has the views first; the matrix gets them through the dashboard's own message queue
        await until(pilot, lambda: str(table.get_cell("exp02", "state")) == "cancelled", 30, "exp02's state cell")
        ckpt = RunDir(study.workspace.runs_dir / "exp02").latest_checkpoint()
        assert ckpt is not None
        # enter resumes it from that checkpoint
        await pilot.press("enter")
        await until(pilot, lambda: app.views["exp02"].state == RUNNING, 60, "exp02 resumed")
        await until(
            pilot, lambda: all(app.views[n].state == DONE for n in ("exp01", "exp02")), 240, "both runs done"
        )
        for name in ("exp01", "exp02"):
            assert app.views[name].score("clip_score") is not None
            # the app has the views first; the matrix gets them through the dashboard's own message queue
            await until(pilot, lambda n=name: str(table.get_cell(n, "clip_score")) != "", 30, f"{name}'s CLIP cell")
            assert str(table.get_cell(name, "progress")) == f"{app.views[name].total}/{app.views[name].total}"
        log = RunDir(study.workspace.runs_dir / "exp02").train_log.read_text()
        assert log.count("=== launched") == 2 and ckpt.name in log  # the second launch resumed from it
        # the run's detail: scores and its evaluation images as thumbnails labelled with their prompts
        table.select("exp02")
        await pilot.press("d")
        screen = await until(
            pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen, 5, "detail"
        )
        screen.query_one("#detail-tabs").active = "tab-eval"
        grid = screen.query_one("#eval-grid")
        thumbs = await until(pilot, lambda: list(grid.query(Thumbnail)), 60, "thumbnails")
        prompts = config.load(study.file).get("exp02").settings.eval_prompts
        assert [t.caption.split("\n")[0] for t in thumbs] == prompts
        assert all(t.query_one(ImageWidget).image is not None for t in thumbs)
        assert "CLIP score" in str(screen.query_one("#scores-summary", Static).render())


def _open_dashboard(file: Path) -> tuple[subprocess.Popen, int]:
    """`python -m flux_tui FILE` in a pseudo-terminal of 160x45, as over SSH (Textual draws on stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_tui", str(file)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        # The demo's run takes about a second: slowed down (the trainer's documented fault switch, inherited by
        # the run this dashboard launches) it is still training when the new dashboard looks for it.
        env={**os.environ, "TERM": "xterm-256color", "FLUX_TUI_FAULT": "step_delay:0.2"},
    )  # fmt: skip
    os.close(slave)
    return proc, master


def _drain(master: int) -> bytes:
    import select

    out = b""
    while select.select([master], [], [], 0)[0]:
        try:
            out += os.read(master, 65536)
        except OSError:
            break
    return out


async def test_killing_the_dashboard_leaves_the_run_going_and_a_new_dashboard_finds_it(
    demo_workspace: Path, tmp_path: Path
) -> None:
    study = workspace_copy(demo_workspace, tmp_path / "ws", runs_per_gpu=1)
    dash, master = _open_dashboard(study.file)
    try:
        # wait for the first frame, then press enter on the first row (exp01)
        deadline, screen = time.monotonic() + 30, b""
        while b"exp01" not in screen and time.monotonic() < deadline:
            time.sleep(0.1)
            screen += _drain(master)
        assert b"exp01" in screen, screen[-2000:]
        os.write(master, b"\r")  # the first frame is drawn: the terminal is in raw mode, the matrix focused
        run = RunDir(study.workspace.runs_dir / "exp01")
        deadline = time.monotonic() + 120
        while not list(run.iter_events("step")) and time.monotonic() < deadline:
            time.sleep(0.2)
            _drain(master)
        st = run.status()
        assert st.state == RUNNING and st.stage == "train"
        dash.send_signal(signal.SIGKILL)  # the dashboard dies (a dropped SSH connection, kill -9)
        dash.wait(10)
    finally:
        if dash.poll() is None:
            dash.kill()
        os.close(master)
    steps_then = len(list(run.iter_events("step")))
    deadline = time.monotonic() + 60  # the run did not die with its dashboard: it goes on stepping
    while len(list(run.iter_events("step"))) == steps_then and run.status().stage == "train":
        assert procs.is_alive(st.pid, st.process_start) and time.monotonic() < deadline, run.train_log.read_text()
        time.sleep(0.1)

    # A new dashboard rebuilds itself from the folder: the run is attached, its log followed.
    app = FluxApp(config.load(study.file), telemetry=FixedTelemetry(), interval=0.1, status_every=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        table = app.screen.query_one(MatrixTable)
        assert str(table.get_cell("exp01", "state")).startswith("running")
        assert app.views["exp01"].status.pid == st.pid
        log = app.screen.query_one(LogPane)
        await until(pilot, lambda: log.run_name == "exp01" and log.line_count > 0, 60, "the log")
        before = log.line_count
        await until(pilot, lambda: app.views["exp01"].state == DONE, 180, "exp01 done")
        assert log.line_count > before  # lines kept arriving while attached
        assert app.views["exp01"].score("clip_score") is not None


@pytest.fixture(autouse=True)
def _no_stray_runs(tmp_path: Path):
    """Whatever a failing test leaves running is stopped, by its recorded process group."""
    yield
    runs_dir = tmp_path / "ws" / "runs"
    if runs_dir.is_dir():
        for d in runs_dir.iterdir():
            if not d.is_dir():
                continue
            st = RunDir(d).status()
            if st.state == RUNNING and procs.is_alive(st.pid, st.process_start):
                procs.signal_group(st.pgid, st.pid, signal.SIGKILL)
    shutil.rmtree(tmp_path / "ws" / ".flux-tui", ignore_errors=True)
