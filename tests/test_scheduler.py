"""The on-disk queue: order, per-device limits, placement, stopping, and two dashboards on one workspace.

Processes are real (own session, output to train.log, launched by `launch.start`); only the command is
swapped for tests/standin_trainer.py, which speaks the trainer's folder protocol in a second. The real
trainer drives the same paths in test_tui_e2e.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tui_helpers import make_study, write_run

from flux_tui.core import launch
from flux_tui.core.runs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, RunDir
from flux_tui.core.scheduler import CPU, Scheduler, choose_device, device_env
from flux_tui.core.telemetry import GiB, GpuStat

STANDIN = Path(__file__).with_name("standin_trainer.py").resolve()


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """launch.start runs the stand-in trainer; returns the file where every launch is recorded."""
    launches = tmp_path / "launches.txt"
    monkeypatch.setattr(
        launch, "engine_command", lambda run, *extra: [sys.executable, "-u", str(STANDIN), str(run.path)]
    )
    monkeypatch.setenv("STANDIN_LAUNCHES", str(launches))
    monkeypatch.setenv("STANDIN_STEPS", "20")
    monkeypatch.setenv("STANDIN_SLEEP", "0.05")
    return launches


def wait_for(pred, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {pred}")


def gpu(i: int, free_gib: float, total_gib: float = 80) -> GpuStat:
    return GpuStat(i, "H100", int((total_gib - free_gib) * GiB), int(total_gib * GiB), 0, 40)


# -- placement (pure) ----------------------------------------------------------------------------------


def test_a_run_goes_to_the_gpu_with_the_most_free_memory() -> None:
    gpus = [gpu(0, 10), gpu(1, 70), gpu(2, 40)]
    assert choose_device(gpus, Counter(), 1) == "cuda:1"
    assert choose_device(gpus, Counter({"cuda:1": 1}), 1) == "cuda:2"
    assert choose_device(gpus, Counter({"cuda:0": 1, "cuda:1": 1, "cuda:2": 1}), 1) is None


def test_with_two_runs_per_gpu_an_idle_gpu_is_preferred_then_free_memory() -> None:
    gpus = [gpu(0, 70), gpu(1, 60)]
    assert choose_device(gpus, Counter(), 2) == "cuda:0"
    assert choose_device(gpus, Counter({"cuda:0": 1}), 2) == "cuda:1"
    assert choose_device(gpus, Counter({"cuda:0": 1, "cuda:1": 1}), 2) == "cuda:0"
    assert choose_device(gpus, Counter({"cuda:0": 2, "cuda:1": 2}), 2) is None


def test_without_a_gpu_runs_go_to_the_cpu_up_to_the_limit() -> None:
    assert choose_device([], Counter(), 2) == CPU
    assert choose_device([], Counter({CPU: 1}), 2) == CPU
    assert choose_device([], Counter({CPU: 2}), 2) is None


def test_a_gpu_run_is_pinned_in_nvml_order() -> None:
    assert device_env("cuda:3") == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert device_env(CPU) == {}


# -- the queue on disk ---------------------------------------------------------------------------------


def test_the_queue_is_on_disk_in_order_and_a_new_scheduler_carries_it_on(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    first = Scheduler(study)
    assert all(o.ok for o in first.enqueue(["exp03", "exp01", "exp02"]))
    for name in ("exp03", "exp01", "exp02"):
        assert RunDir(study.workspace.runs_dir / name).status().state == QUEUED
    # a dashboard restarted (a new Scheduler) reads the same queue back
    again = Scheduler(study)
    assert again.queue() == ["exp03", "exp01", "exp02"]
    # enter on a queued run moves it to the front
    assert again.enqueue(["exp02"], first=True)[0].ok
    assert again.queue() == ["exp02", "exp03", "exp01"]


def test_queue_all_skips_done_running_and_queued_runs(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    write_run(study, "exp01", "done")
    write_run(study, "exp02", "queued")
    write_run(study, "exp05", "failed")
    outcomes = Scheduler(study).queue_all()
    assert sorted(o.name for o in outcomes) == ["exp03", "exp04", "exp05", "exp06"]
    assert RunDir(study.workspace.runs_dir / "exp01").status().state == DONE


def test_a_done_run_is_not_queued_again(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    write_run(study, "exp01", "done")
    out = Scheduler(study).submit("exp01")
    assert not out.ok and "done" in out.message


def test_taking_a_queued_run_off_the_queue(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.enqueue(["exp01", "exp02"])
    out = s.stop("exp01")
    assert out.ok
    st = s.run("exp01").status()
    assert st.state == CANCELLED and "off the queue" in st.message
    assert s.queue() == ["exp02"]


# -- launching -----------------------------------------------------------------------------------------


def test_tick_fills_the_cpu_slots_in_queue_order_then_the_rest_follow(tmp_path: Path, standin: Path) -> None:
    study = make_study(tmp_path, runs_per_gpu=2)
    s = Scheduler(study)
    s.enqueue(["exp04", "exp02", "exp03"])
    assert s.tick() == ["exp04", "exp02"]
    for name in ("exp04", "exp02"):
        st = s.run(name).status()
        assert st.state == RUNNING and st.device == CPU
        assert os.getpgid(st.pid) == st.pid  # its own session and process group
    assert s.run("exp03").status().state == QUEUED
    assert s.tick() == []  # both slots busy
    wait_for(lambda: s.run("exp04").status().state == DONE and s.run("exp02").status().state == DONE)
    assert s.tick() == ["exp03"]
    wait_for(lambda: s.run("exp03").status().state == DONE)
    started = standin.read_text().split()[::2]  # the first two run at once: either may write first
    assert sorted(started[:2]) == ["exp02", "exp04"] and started[2:] == ["exp03"]
    assert "step 20/20" in s.run("exp03").train_log.read_text()


def test_runs_are_placed_on_gpus_through_cuda_visible_devices(tmp_path: Path, standin: Path) -> None:
    study = make_study(tmp_path)
    # No GPU here: the GPU list is given, as telemetry would read it on a two-GPU server.
    s = Scheduler(study, gpus=lambda: [gpu(0, 20), gpu(1, 60)])
    s.enqueue(["exp01", "exp02", "exp03"])
    assert s.tick() == ["exp01", "exp02"]
    assert s.run("exp01").status().device == "cuda:1"  # the most free memory
    assert s.run("exp02").status().device == "cuda:0"
    import json

    env = wait_for(lambda: (s.run("exp01").path / "standin_env.json").exists() and s.run("exp01").path)
    assert json.loads((env / "standin_env.json").read_text())["CUDA_VISIBLE_DEVICES"] == "1"
    assert s.run("exp03").status().state == QUEUED


def test_submit_starts_now_when_a_slot_is_free_else_puts_the_run_first(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "0.3")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.enqueue(["exp02", "exp03"])
    s.enqueue(["exp01"])
    out = s.submit("exp04")  # queued first, and the one free slot takes it
    assert out.ok and "started on cpu" in out.message
    assert s.run("exp04").status().state == RUNNING
    out = s.submit("exp05")
    assert out.ok and "next in the queue" in out.message
    assert s.queue()[0] == "exp05"
    s.stop("exp04", kill=True)


def test_sigterm_lets_the_run_checkpoint_and_end_cancelled(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "0.2")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.submit("exp01")
    wait_for(lambda: list(s.run("exp01").iter_events("step")))
    out = s.stop("exp01")
    assert out.ok and "SIGTERM" in out.message
    st = wait_for(lambda: (st := s.run("exp01").status()).state == CANCELLED and st)
    assert "stopped by SIGTERM" in st.message


def test_sigkill_stops_a_run_that_ignores_sigterm_and_marks_it_cancelled(tmp_path: Path, monkeypatch) -> None:
    # A process that ignores SIGTERM, as a trainer stuck in a long step would seem to.
    stubborn = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "pathlib.Path('ready').touch(); time.sleep(60)"
    )
    monkeypatch.setattr(launch, "engine_command", lambda run, *extra: [sys.executable, "-c", stubborn])
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.submit("exp01")
    pid = s.run("exp01").status().pid
    wait_for(lambda: (s.run("exp01").path / "ready").exists())
    assert s.stop("exp01").ok
    time.sleep(0.3)
    assert s.run("exp01").status().state == RUNNING  # it ignored SIGTERM
    out = s.stop("exp01", kill=True)
    assert out.ok and "SIGKILL" in out.message
    st = s.run("exp01").status()
    assert st.state == CANCELLED and "SIGKILL" in st.message
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_process_that_dies_without_a_word_is_failed_with_its_exit_code(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_CRASH", "3")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.submit("exp01")
    st = wait_for(
        lambda: (s.reconcile(), s.run("exp01").status())[1].state == FAILED and s.run("exp01").status()
    )
    assert st.exit_code == 3 and "code 3" in st.message


def test_a_run_whose_process_vanished_is_failed_on_reconcile(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_run(study, "exp01", "running", upto=5, pid=proc.pid)
    statuses = Scheduler(study).reconcile()
    assert statuses["exp01"].state == FAILED and "vanished" in statuses["exp01"].message


TWO_DASHBOARDS = """
import sys, time
from pathlib import Path
from flux_tui.core import config, launch
from flux_tui.core.scheduler import Scheduler
launch.engine_command = lambda run, *extra: [sys.executable, "-u", {standin!r}, str(run.path)]
s = Scheduler(config.load(Path({file!r})))
deadline = time.monotonic() + 12
while time.monotonic() < deadline and (s.queue() or s.running()):
    s.tick()
    time.sleep(0.01)
"""


def test_two_dashboards_never_launch_a_run_twice_nor_overfill_the_cpu(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_STEPS", "5")
    study = make_study(tmp_path, runs_per_gpu=2)
    Scheduler(study).queue_all()
    code = TWO_DASHBOARDS.format(standin=str(STANDIN), file=str(study.file))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    # While they race, never more than two runs at once.
    peak = 0
    while any(p.poll() is None for p in procs):
        running = sum(
            RunDir(d).status().state == RUNNING for d in study.workspace.runs_dir.iterdir() if d.is_dir()
        )
        peak = max(peak, running)
        time.sleep(0.02)
    launched = [line.split()[0] for line in standin.read_text().splitlines()]
    assert sorted(launched) == sorted(study.names), launched  # each exactly once
    assert peak <= 2
    assert all(RunDir(study.workspace.runs_dir / n).status().state == DONE for n in study.names)


def test_a_stop_reaches_the_whole_process_group(tmp_path: Path, monkeypatch) -> None:
    # The run's process starts a child (a data loader, a helper): SIGTERM reaches it too.
    family = (
        "import subprocess, sys, time, pathlib;"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "pathlib.Path('child.pid').write_text(str(c.pid)); time.sleep(60)"
    )
    monkeypatch.setattr(launch, "engine_command", lambda run, *extra: [sys.executable, "-c", family])
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.submit("exp01")
    pidfile = s.run("exp01").path / "child.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text())
    child = int(pidfile.read_text())
    s.stop("exp01")

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # reap it if it became our zombie (it is not our child, so just check its state)
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    wait_for(gone, timeout=5)

    def reconciled() -> bool:  # the run's own process may outlive its child by a moment
        s.reconcile()
        return s.run("exp01").status().state == FAILED

    wait_for(reconciled, timeout=10)  # it had no handler: the vanished run is failed
