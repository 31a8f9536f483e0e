"""A process owns a run (engine/run_owner.py), seen from outside with real processes: a run a live process
owns is refused by name, a stop signal gives the same exit code in every engine command (and stops a trainer
at once before training), and a standalone evaluation keeps the run's training record, even when it is
killed, and cleans up after a killed one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_lora_workspace

from flux_tui.core import config, launch, runlock
from flux_tui.core.fsutil import file_lock
from flux_tui.core.runs import CANCELLED, DONE, FAILED, RUNNING, RunDir, run_dir
from flux_tui.engine.imagemeta import temp_path
from flux_tui.engine.run_owner import EXIT_BUSY

HOLD = (
    "import sys, time\n"
    "from flux_tui.core import runlock\n"
    "with runlock.adopt_or_acquire(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(300)\n"
)


def _env(tmp: Path) -> dict[str, str]:
    # Nothing may be downloaded: an empty torch hub and offline mode make any attempt fail loudly.
    return {**os.environ, "TORCH_HOME": str(tmp / "torch-home"), "HF_HUB_OFFLINE": "1", "FLUX_TUI_OFFLINE": "1"}


def engine(module: str, *args: str, tmp: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"flux_tui.engine.{module}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp), **kw)  # fmt: skip


def wait_for(pred, proc: subprocess.Popen | None = None, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"the process ended ({proc.returncode}) first:\n{err}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pred}")


@pytest.fixture(scope="module")
def study(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> config.Study:
    return config.load(make_lora_workspace(demo_workspace, tmp_path_factory.mktemp("owner") / "ws", {"exp01": 1}))


def _grid(study: config.Study, images_per_prompt: int) -> RunDir:
    """exp01 with `images_per_prompt` images per prompt, written the way the study file would be."""
    exp = study.get("exp01")
    exp = dataclasses.replace(exp, settings=exp.settings.model_copy(update={"images_per_prompt": images_per_prompt}))
    run = run_dir(study, "exp01")
    run.write_run(exp, study)
    return run


def _images_made(run: RunDir) -> int:
    return sum(1 for _ in run.iter_events("eval_image"))


def _trained(run: RunDir) -> dict:
    """The record a trainer leaves, written through the same calls the trainer makes."""
    run.mark_started("prepare", device="cuda:3")
    run.mark_finished(DONE, "trained and evaluated", 0)
    return _training_record(run)


def _training_record(run: RunDir) -> dict:
    st = run.status()
    return {"started_at": st.started_at, "finished_at": st.finished_at, "device": st.device}


@pytest.mark.parametrize("module", ["evaluate", "train"])
def test_a_run_held_by_a_live_process_is_refused_by_name_and_left_alone(study: config.Study, tmp_path: Path,
                                                                        module: str) -> None:  # fmt: skip
    run = _grid(study, 1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = run.status_json.read_bytes() if run.status_json.exists() else None
        proc = engine(module, str(run.path), tmp=tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == EXIT_BUSY, err
        assert f"pid {holder.pid}" in err and "still running" in err
        assert (run.status_json.read_bytes() if run.status_json.exists() else None) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_reevaluation_keeps_the_training_record_and_adds_its_own(study: config.Study, tmp_path: Path) -> None:
    run = _grid(study, 1)
    training = _trained(run)
    proc = engine("evaluate", str(run.path), tmp=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    st = run.status()
    assert (st.state, st.exit_code) == (DONE, 0)
    assert _training_record(run) == training and st.message == "trained and evaluated"
    ev = st.evaluation
    assert (ev["state"], ev["exit_code"], ev["device"], ev["stage"]) == (DONE, 0, "cpu", "score")
    assert training["finished_at"] <= ev["started_at"] <= ev["finished_at"]
    # What the CLI shows of the run still describes its training.
    export = subprocess.run([sys.executable, "-m", "flux_tui.main", "export", "-f", str(study.file), "--format",
                             "json"], capture_output=True, text=True, env=_env(tmp_path), timeout=120)  # fmt: skip
    assert export.returncode == 0, export.stderr
    [row] = [r for r in json.loads(export.stdout) if r["name"] == "exp01"]
    assert row["state"] == DONE
    assert row["duration_s"] == pytest.approx(training["finished_at"] - training["started_at"])


@pytest.mark.slow
def test_sigterm_cancels_an_evaluation_with_128_plus_the_signal(study: config.Study, tmp_path: Path) -> None:
    run = _grid(study, 100)  # long enough to be stopped half-way
    training = _trained(run)
    before = _images_made(run)
    proc = engine("evaluate", str(run.path), "--batch-size", "1", tmp=tmp_path)
    wait_for(lambda: _images_made(run) > before, proc)  # generating: the run's handlers are in place
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    st = run.status()
    assert (st.state, st.exit_code, st.message) == (CANCELLED, 143, "stopped by SIGTERM")
    assert (st.evaluation["state"], st.evaluation["stage"]) == (CANCELLED, "generate")
    assert _training_record(run) == training
    assert runlock.holder(run.path) is None


@pytest.mark.slow
def test_the_trainer_on_a_trained_run_only_evaluates_it_and_a_stop_says_a_relaunch_evaluates(study: config.Study,
                                                                                            tmp_path: Path) -> None:  # fmt: skip
    """What a relaunch of a trained run starts: the trainer takes it as an evaluation (the training record
    stays, its own goes under `evaluation`), and a stop while it generates says what a relaunch will do."""
    run = _grid(study, 100)
    training = _trained(run)
    before = _images_made(run)
    proc = engine("train", str(run.path), tmp=tmp_path)
    wait_for(lambda: _images_made(run) > before, proc)  # generating: the run's handlers are in place
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "only evaluating it" in out + err
    st = run.status()
    assert (st.state, st.message) == (CANCELLED, "stopped by SIGTERM; relaunch to evaluate it (its LoRA is kept)")
    assert (st.evaluation["state"], st.evaluation["stage"], st.evaluation["device"]) == (CANCELLED, "generate", "cpu")
    assert _training_record(run) == training


@pytest.mark.slow
def test_a_killed_evaluation_keeps_the_training_record_and_the_next_start_cleans_up(study: config.Study,
                                                                                      tmp_path: Path) -> None:  # fmt: skip
    run = _grid(study, 100)
    training = _trained(run)
    before = _images_made(run)
    proc = engine("evaluate", str(run.path), "--batch-size", "1", tmp=tmp_path)
    wait_for(lambda: _images_made(run) > before, proc)  # generating: the run's handlers are in place
    proc.kill()  # SIGKILL: no handler runs, nothing is recorded
    proc.communicate(timeout=60)
    assert run.status().state == RUNNING
    st = run.reconcile()  # what the dashboard and the CLI do with a run whose process vanished
    assert st.state == FAILED and "vanished while generate" in st.message
    assert st.evaluation["state"] == FAILED and st.evaluation["finished_at"]
    assert _training_record(run) == training

    # A kill inside imagemeta.save_png leaves its temporary file beside the images (one was planted here,
    # where it would be: the moment of a kill cannot be chosen). The next owner removes such files.
    leftovers = [temp_path(run.eval_dir / "p01-g3.5-s0.png"), temp_path(run.checkpoint_eval_dir(5) / "p01-g3.5-s0.png")]
    for tmp in leftovers:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"\x89PNG half an image")
    run = _grid(study, 1)
    proc = engine("evaluate", str(run.path), "--score-only", tmp=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert not any(p.exists() for p in leftovers)
    assert "left half-written by a process that was stopped" in run.train_log.read_text()
    assert _training_record(run) == training and run.status().state == DONE


@pytest.mark.slow
def test_a_stop_before_training_ends_the_run_at_once(study: config.Study) -> None:
    """The trainer's handlers are in place before torch loads: a stop during start-up ends it `cancelled`."""
    run = _grid(study, 1)
    supervisor = launch.start(run)  # the dashboard's way: a supervisor, the trainer in its own session
    wait_for(lambda: run.status().stage == "prepare", supervisor)
    trainer = run.status()
    assert runlock.holder(run.path) == trainer.pid  # the lock handed down, the trainer's pid in it
    os.killpg(trainer.pgid, signal.SIGTERM)  # what a stop sends: the trainer's group
    assert supervisor.wait(timeout=120) == 128 + signal.SIGTERM  # the supervisor exits with the trainer's code
    st = run.status()
    assert (st.state, st.exit_code) == (CANCELLED, 143) and st.message.startswith("stopped by SIGTERM"), st
    assert runlock.holder(run.path) is None


@pytest.mark.slow
def test_a_stop_while_the_run_is_being_taken_is_not_lost(study: config.Study, tmp_path: Path) -> None:
    """The handlers are in before the run is marked running: a signal that comes while the process waits to
    mark it (here: a launcher holding the launch lock) ends the run cancelled as soon as it is marked."""
    run = _grid(study, 1)
    _trained(run)
    before = _images_made(run)
    with file_lock(run.path / ".launch.lock"):  # what launch.start holds while it writes the first status
        proc = engine("evaluate", str(run.path), tmp=tmp_path)
        wait_for(lambda: runlock.holder(run.path) == proc.pid, proc)  # it has the lock, waits for ours
        proc.send_signal(signal.SIGTERM)  # pending in the process before it can mark the run: noted, not raised
        assert proc.poll() is None
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    st = run.status()
    assert (st.state, st.exit_code, st.message) == (CANCELLED, 143, "stopped by SIGTERM")
    assert st.evaluation["state"] == CANCELLED and _images_made(run) == before
