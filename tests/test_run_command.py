"""The foreground `flux-tui run` as a script runs it: its run in a session of its own, so a stop (the
dashboard's `x`, `flux-tui stop`) reaches the run and nothing else of the script; Ctrl-C still reaches the
run (passed on); a SIGKILL'd run is recorded; queued runs start when it is done. Real processes; the trainer
is the stand-in (tests/standin_trainer.py), which speaks the trainer's folder protocol in a second. The real
trainer's Ctrl-C is in test_train.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_helpers import make_study

from flux_tui.core import launch, procs
from flux_tui.core.runs import CANCELLED, FAILED, NEW, QUEUED, RUNNING, RunDir
from flux_tui.core.scheduler import Scheduler

STANDIN = Path(__file__).with_name("standin_trainer.py").resolve()


def wait_for(pred, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {pred}")


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(launch.TRAINER_ENV, str(STANDIN))
    monkeypatch.setenv("STANDIN_STEPS", "200")
    monkeypatch.setenv("STANDIN_SLEEP", "0.1")
    study = make_study(tmp_path / "ws")
    yield study
    for run in Scheduler(study).folders():
        st = run.status()
        if st.state == QUEUED:
            run.write_status(state=NEW)
        elif st.state == RUNNING and procs.is_alive(st.pid, st.process_start):
            procs.signal_group(st.pgid, st.pid, signal.SIGKILL)


def script(study, body: str) -> subprocess.Popen:
    """A shell script in a process group of its own (as a terminal would run it), with a helper process of
    its own beside `flux-tui run`. It prints the helper's pid first."""
    cmd = f"sleep 120 & echo helper $!\n{sys.executable} -m flux_tui run {body} -f {study.file}\necho run-exited $?\nwait"
    return subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def steps(run: RunDir) -> int:
    return len(list(run.iter_events("step")))


def test_stopping_a_foreground_run_spares_the_script_that_started_it(study) -> None:
    sh = script(study, "exp01")
    helper = int(sh.stdout.readline().split()[1])
    run = RunDir(study.workspace.runs_dir / "exp01")
    wait_for(lambda: steps(run) >= 2)
    st = run.status()
    assert st.pgid == st.pid != os.getpgid(sh.pid)  # the run's own group, not the script's
    out = Scheduler(study).stop("exp01")  # the dashboard's `x`
    assert out.ok, out.message
    st = wait_for(lambda: (st := run.status()).state == CANCELLED and st)
    assert "stopped by SIGTERM" in st.message
    assert sh.poll() is None and procs.is_alive(helper, None), "the script or its helper died with the run"
    os.kill(helper, signal.SIGKILL)  # the script waits for it
    text = sh.communicate(timeout=30)[0]
    assert "run-exited 130" in text  # flux-tui run says the run was interrupted, and the script went on


def test_ctrl_c_reaches_the_run_through_flux_tui_run(study) -> None:
    sh = script(study, "exp01")
    helper = int(sh.stdout.readline().split()[1])
    run = RunDir(study.workspace.runs_dir / "exp01")
    wait_for(lambda: steps(run) >= 2)
    os.kill(helper, signal.SIGKILL)
    os.killpg(sh.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the foreground group, not the run's
    text = sh.communicate(timeout=60)[0]
    st = run.status()
    assert st.state == CANCELLED and "stopped by SIGINT" in st.message, (st, text)
    assert "run-exited 130" in text


def test_a_foreground_run_killed_by_sigkill_is_failed_naming_it_then_queued_runs_start(study) -> None:
    s = Scheduler(study)
    s.enqueue(["exp02"])  # waits: the one slot is the foreground run's
    proc = subprocess.Popen([sys.executable, "-m", "flux_tui", "run", "exp01", "-f", str(study.file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    run = RunDir(study.workspace.runs_dir / "exp01")
    wait_for(lambda: steps(run) >= 2)
    assert s.tick() == [] and s.run("exp02").status().state == QUEUED
    os.kill(run.status().pid, signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    st = run.status()
    assert st.state == FAILED and "killed by SIGKILL" in st.message, out
    assert "started queued run(s): exp02" in out
    assert s.run("exp02").status().state in (RUNNING, "done")
