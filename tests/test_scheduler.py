"""The on-disk queue: order, per-device limits, placement, stopping, the queue advancing through the runs'
supervisors with nobody else looking, and two schedulers on one workspace.

Processes are real (a supervisor and a trainer, each in its own session, output to train.log, launched by
`launch.start`); only the trainer is swapped for tests/standin_trainer.py (launch's FLUX_TUI_TRAINER switch,
inherited by the supervisors), which speaks the trainer's folder protocol in a second. The real trainer drives
the same paths in test_sweep_e2e.py and test_tui_e2e.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from tui_helpers import make_study, write_run

from flux_tui.core import launch, procs
from flux_tui.core.fsutil import file_lock
from flux_tui.core.local_executor import CPU, choose_device, device_env
from flux_tui.core.runs import CANCELLED, DONE, FAILED, NEW, QUEUED, RUNNING, RunDir
from flux_tui.core.scheduler import Scheduler
from flux_tui.core.telemetry import GiB, GpuStat

STANDIN = Path(__file__).with_name("standin_trainer.py").resolve()


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Runs start the stand-in trainer; returns the file where every launch is recorded."""
    launches = tmp_path / "launches.txt"
    monkeypatch.setenv(launch.TRAINER_ENV, str(STANDIN))
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


@pytest.fixture(autouse=True)
def _no_stray_runs(tmp_path: Path):
    """Whatever a test leaves queued or running is taken off the queue first (so no supervisor starts it),
    then killed by its recorded process group."""
    yield
    runs_dir = tmp_path / "runs"
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


def trainer_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: str) -> None:
    """Runs start `code` (a Python script, run in the run's folder) as their trainer."""
    script = tmp_path / "trainer.py"
    script.write_text(code)
    monkeypatch.setenv(launch.TRAINER_ENV, str(script))


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


def test_taking_a_queued_run_off_the_queue_puts_it_back_where_it_was(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    write_run(study, "exp03", "cancelled", upto=5)
    s = Scheduler(study)
    s.enqueue(["exp01", "exp02", "exp03"])
    out = s.stop("exp01")
    assert out.ok and "back to new" in out.message
    st = s.run("exp01").status()
    assert st.state == NEW and "off the queue" in st.message  # it never ran: not `cancelled`
    assert s.stop("exp03").ok
    assert s.run("exp03").status().state == CANCELLED  # it had run: back to how it stopped, resumable
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
    # Nobody ticks from here on: the supervisor of the first run to end starts exp03.
    wait_for(lambda: s.run("exp03").status().state == DONE)
    assert all(s.run(n).status().state == DONE for n in ("exp04", "exp02"))
    started = standin.read_text().split()[::2]  # the first two run at once: either may write first
    assert sorted(started[:2]) == ["exp02", "exp04"] and started[2:] == ["exp03"]
    log = wait_for(lambda: "ended: done" in (text := s.run("exp03").train_log.read_text()) and text)
    assert "step 20/20" in log  # the trainer's output and its supervisor's, in one log
    assert "started the next queued run(s): exp03" in (
        s.run("exp04").train_log.read_text() + s.run("exp02").train_log.read_text()
    )


def test_runs_are_placed_on_gpus_through_cuda_visible_devices(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "1")  # still running when the test looks (its supervisor sees no GPU)
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
    trainer_script(monkeypatch, tmp_path, (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "pathlib.Path('ready').touch(); time.sleep(60)"
    ))  # fmt: skip
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
    assert st.state == CANCELLED and "SIGKILL" in st.message and "on request" in st.message
    assert st.exit_code == 128 + signal.SIGKILL
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


def test_a_trained_run_relaunched_keeps_its_training_record_when_its_evaluation_dies_without_a_word(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    """A run whose LoRA is trained (its evaluation failed before) is only evaluated when launched: the launch
    and its end, recorded by the supervisor here, go under `evaluation`; the top stays the training's."""
    monkeypatch.setenv("STANDIN_CRASH", "3")
    study = make_study(tmp_path)
    run = write_run(study, "exp01", "failed", message="evaluation failed (the LoRA is kept): no CLIP")
    run.lora_file.parent.mkdir(parents=True, exist_ok=True)
    run.lora_file.write_bytes(b"a trained LoRA")
    before = run.status()
    s = Scheduler(study)
    assert s.submit("exp01").message.startswith("exp01 evaluating its trained LoRA on cpu (pid ")
    st = wait_for(lambda: (s.reconcile(), run.status())[1].state == FAILED and run.status().evaluation and run.status())
    assert (st.started_at, st.finished_at, st.device) == (before.started_at, before.finished_at, before.device)
    assert st.exit_code == 3 and "code 3" in st.message
    ev = st.evaluation
    assert ev["state"] == FAILED and ev["exit_code"] == 3 and "code 3" in ev["message"]
    assert ev["started_at"] > before.finished_at and ev["finished_at"] >= ev["started_at"]


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
from flux_tui.core import config
from flux_tui.core.scheduler import Scheduler
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
    code = TWO_DASHBOARDS.format(file=str(study.file))
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
    trainer_script(monkeypatch, tmp_path, (
        "import subprocess, sys, time, pathlib;"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "pathlib.Path('child.pid').write_text(str(c.pid)); time.sleep(60)"
    ))  # fmt: skip
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

    # It had no handler, so SIGTERM ended it before any checkpoint; its supervisor says so.
    st = wait_for(lambda: (st := s.run("exp01").status()).state == CANCELLED and st, timeout=10)
    assert "stopped by SIGTERM before it could save a checkpoint" in st.message


# -- the supervisor: the run's real end, and the queue advancing with nobody else looking ----------------


def supervisor_of(run: RunDir) -> psutil.Process:
    """The run's supervisor: the parent of its trainer, in a session of its own."""
    trainer = psutil.Process(run.status().pid)
    parent = trainer.parent()
    assert parent is not None and "flux_tui.core.supervisor" in " ".join(parent.cmdline())
    assert os.getsid(parent.pid) == parent.pid and os.getsid(trainer.pid) == trainer.pid  # two sessions
    return parent


def test_a_sigkilled_trainer_is_failed_naming_the_signal_and_the_next_run_starts(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "0.5")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.enqueue(["exp01", "exp02"])
    assert s.tick() == ["exp01"]
    run = s.run("exp01")
    wait_for(lambda: list(run.iter_events("step")))
    os.kill(run.status().pid, signal.SIGKILL)  # as the kernel's out-of-memory killer does: no word from it
    st = wait_for(lambda: (st := run.status()).state == FAILED and st, timeout=10)
    assert "killed by SIGKILL" in st.message and "out-of-memory killer" in st.message
    assert st.exit_code == 128 + signal.SIGKILL and st.log_tail  # the last lines it printed
    wait_for(lambda: s.run("exp02").status().state == RUNNING, timeout=20)  # nobody but its supervisor ticked


def test_the_next_run_starts_with_the_settings_the_file_has_when_it_starts(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "0.2")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.enqueue(["exp01", "exp02"])
    assert s.tick() == ["exp01"]
    assert s.run("exp02").config()["learning_rate"] == 1e-4  # as queued
    text = study.file.read_text()
    study.file.write_text(text.replace('name = "exp02"\ngroup = "Extreme parameters"\nlearning_rate = 1e-4',
                                       'name = "exp02"\ngroup = "Extreme parameters"\nlearning_rate = 3e-4'))  # fmt: skip
    wait_for(lambda: s.run("exp02").status().state in (RUNNING, DONE))
    assert s.run("exp02").config()["learning_rate"] == 3e-4  # its supervisor read the file afresh


def test_while_the_file_is_broken_queued_runs_wait_and_say_why(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.enqueue(["exp01"])
    good = study.file.read_text()
    study.file.write_text(good.replace("lora_rank = 8", "lora_rank = 0"))
    assert s.tick() == []
    st = s.run("exp01").status()
    assert st.state == QUEUED and "experiments.toml cannot be used" in st.message and "lora_rank" in st.message
    study.file.write_text(good)
    assert s.tick() == ["exp01"]


def test_the_supervisor_ignores_sighup_and_passes_sigterm_to_its_trainer(
    tmp_path: Path, standin: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "0.2")
    study = make_study(tmp_path)
    s = Scheduler(study)
    s.submit("exp01")
    run = s.run("exp01")
    wait_for(lambda: list(run.iter_events("step")))
    sup = supervisor_of(run)
    # No torch in the supervisor: it is a small process whatever the trainer loads.
    assert "torch" not in Path(f"/proc/{sup.pid}/maps").read_text()
    sup.send_signal(signal.SIGHUP)  # a hangup (it has no terminal, but a user may send one)
    steps = len(list(run.iter_events("step")))
    wait_for(lambda: len(list(run.iter_events("step"))) > steps + 2)
    assert sup.is_running() and run.status().state == RUNNING
    sup.send_signal(signal.SIGTERM)  # `kill <supervisor>`: the run stops as a stop would stop it
    st = wait_for(lambda: (st := run.status()).state == CANCELLED and st, timeout=10)
    assert "stopped by SIGTERM" in st.message
    assert sup.wait(10) == 128 + signal.SIGTERM  # it exits with its trainer's code
