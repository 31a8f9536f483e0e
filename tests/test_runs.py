"""Run folders: status, events, staleness, and telling live processes from vanished ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flux_tui.core import config, launch, procs, runlock, runs
from flux_tui.core.fsutil import TailReader, atomic_write_json

STUDY_TOML = """
[defaults]
data_dir = "photos"
[[experiment]]
name = "a"
learning_rate = 1e-4
"""


@pytest.fixture
def study(tmp_path: Path) -> config.Study:
    (tmp_path / "photos").mkdir()
    path = tmp_path / "experiments.toml"
    path.write_text(STUDY_TOML)
    return config.load(path)


def test_events_tolerate_a_half_written_last_line(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    run.append_event("step", step=1, loss=0.5)
    run.append_event("step", step=2, loss=0.4)
    with open(run.events_jsonl, "a") as fh:
        fh.write('{"type": "step", "step": 3, "lo')  # the writer was killed mid-line
    events = run.events()
    assert [e["step"] for e in events] == [1, 2]
    assert list(run.iter_events("step"))[-1]["loss"] == 0.4


def test_the_next_writer_ends_a_half_written_line_so_its_first_record_survives(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    run.append_event("step", step=1, loss=0.5)
    tail = TailReader(run.events_jsonl)
    assert len(tail.read_lines()) == 1
    with open(run.events_jsonl, "a") as fh:
        fh.write('{"type": "step", "step": 2, "lo')  # the writer was killed mid-line
    assert tail.read_lines() == []  # held back until its newline comes
    # The next launch, a process of its own, opens the log and writes its first record.
    code = "import sys; from flux_tui.core.runs import RunDir; RunDir(sys.argv[1]).append_event('stage', stage='prepare')"
    subprocess.run([sys.executable, "-c", code, str(run.path)], check=True, timeout=60)
    run.append_event("step", step=1, loss=0.45)
    assert [e["type"] for e in run.events()] == ["step", "stage", "step"]
    lines = run.events_jsonl.read_text().split("\n")
    assert lines[1] == '{"type": "step", "step": 2, "lo' and lines[-1] == ""  # the torn line kept, alone
    followed = [json.loads(line) for line in tail.read_lines()[1:]]
    assert [e["type"] for e in followed] == ["stage", "step"]


def test_status_merges_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    assert run.status().state == runs.NEW
    run.write_status(state=runs.QUEUED, queued_at=1.0)
    run.write_status(message="waiting for a GPU")
    st = run.status()
    assert (st.state, st.queued_at, st.message) == (runs.QUEUED, 1.0, "waiting for a GPU")
    assert not list(run.path.glob(".status.json.*"))  # no temp files left behind
    run.status_json.write_text('{"state": "runn')  # a torn file (not ours: ours are atomic)
    st = run.status()
    assert st.state == runs.DAMAGED and "status.json unreadable" in (st.damage or "")
    # Unknown keys from a newer version are ignored, not fatal.
    atomic_write_json(run.status_json, {"state": "done", "future_field": 1})
    assert run.status().state == runs.DONE


def test_stale_run_is_detected_and_never_silently_reused(study: config.Study, tmp_path: Path) -> None:
    exp = study.experiments[0]
    run = runs.prepare(study, exp)
    assert run.exists() and run.stale(exp) is None
    assert json.loads(run.run_json.read_text())["train_hash"] == exp.train_hash

    (tmp_path / "experiments.toml").write_text(STUDY_TOML + "lora_rank = 4\n")
    changed = config.load(tmp_path / "experiments.toml").experiments[0]
    assert "lora_rank" in (run.stale(changed) or "")
    # No LoRA yet: preparing again simply adopts the new settings.
    runs.prepare(config.load(tmp_path / "experiments.toml"), changed)
    assert run.config()["lora_rank"] == 4

    # With a trained LoRA, a training change is refused with a message that says what to do.
    run.lora_dir.mkdir()
    run.lora_file.write_bytes(b"x")
    with pytest.raises(runs.StaleRunError, match="lora_rank.*flux-tui reset a"):
        runs.prepare(study, exp)
    # An evaluation-only change keeps the LoRA and updates run.json.
    (tmp_path / "experiments.toml").write_text(STUDY_TOML + 'lora_rank = 4\neval_prompts = ["x"]\n')
    ev = config.load(tmp_path / "experiments.toml")
    assert "evaluation settings changed" in (run.stale(ev.experiments[0]) or "")
    runs.prepare(ev, ev.experiments[0])
    assert run.config()["eval_prompts"] == ["x"]


def test_vanished_process_is_marked_failed(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mark_started("train", pid=proc.pid)
        assert run.reconcile().state == runs.RUNNING  # alive: untouched
    finally:
        proc.kill()
        proc.wait()
    st = run.reconcile()
    assert st.state == runs.FAILED and f"process {proc.pid} vanished while train" in st.message


HOLD_LOCK = (
    "import sys, time\n"
    "from flux_tui.core import runlock\n"
    "with runlock.adopt_or_acquire(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def test_a_gone_trainer_is_left_to_whoever_still_owns_the_run(tmp_path: Path) -> None:
    """Its supervisor holds the run's lock while it records how the trainer ended: reconcile waits for it.
    Once nobody owns the run, a kill that a stop asked for is `cancelled`, not `failed`."""
    run = runs.RunDir(tmp_path / "runs" / "r")
    trainer = subprocess.Popen([sys.executable, "-c", "pass"])
    trainer.wait()
    run.mark_started("train", pid=trainer.pid)
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        assert run.is_owned() and run.reconcile().state == runs.RUNNING
    finally:
        owner.kill()
        owner.wait()
    run.write_status(stop_signal="SIGKILL")
    st = run.reconcile()
    assert st.state == runs.CANCELLED and "killed with SIGKILL on request" in st.message


def test_a_reused_pid_is_not_trusted(tmp_path: Path) -> None:
    run = runs.RunDir(tmp_path / "r")
    # Our own pid is alive, but with another start time it is some other process.
    run.mark_started("train", pid=os.getpid())
    assert run.is_process_alive()
    run.write_status(process_start=procs.start_time(os.getpid()) - 3600)
    assert not run.is_process_alive()
    assert run.reconcile().state == runs.FAILED


def test_launch_refuses_a_run_that_a_live_process_owns(study: config.Study) -> None:
    run = runs.prepare(study, study.experiments[0])
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mark_started("train", pid=owner.pid)
        with pytest.raises(launch.AlreadyRunning, match="already running"):
            launch.start(run)
    finally:
        owner.kill()
        owner.wait()


def test_tail_reader_returns_only_whole_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    tail = TailReader(path)
    assert tail.read_lines() == []
    path.write_text("one\ntw")
    assert tail.read_lines() == ["one"]
    with open(path, "a") as fh:
        fh.write("o\nthree\n")
    assert tail.read_lines() == ["two", "three"]
    assert tail.read_lines() == []
    path.write_text("fresh\n")  # truncated and rewritten: start again
    assert tail.read_lines() == ["fresh"]


def test_tail_reader_starts_near_the_end_of_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    lines = TailReader(path, max_initial_bytes=4096).read_lines()
    assert lines[-1] == "line 99999" and len(lines) < 500
    assert all(line.startswith("line ") for line in lines)  # no torn first line


def test_a_missing_data_folder_is_an_error_at_launch(study: config.Study, tmp_path: Path) -> None:
    (tmp_path / "photos").rmdir()
    with pytest.raises(runs.LaunchError, match=r"run 'a': data_dir .*photos does not exist"):
        runs.prepare(study, study.experiments[0])
    assert not study.workspace.runs_dir.exists()  # nothing written


# -- damaged folders: say so, lose nothing, launch nothing --------------------------------------------


def done_and_scored(study: config.Study) -> runs.RunDir:
    run = runs.prepare(study, study.experiments[0])
    run.mark_started("train")
    run.append_event("stage", stage="train")
    run.append_event("step", step=20, total=20, loss=0.1)
    run.append_event("stage", stage="score")
    atomic_write_json(run.scores_json, {"face_distance": 0.71, "clip_score": 0.3, "faceless": 0, "scored_at": 5.0})
    run.mark_finished(runs.DONE)
    return run


@pytest.mark.parametrize("damage", [b"", b'{"state": "do', b"\x00garbage", b"[]", b'{"state": "done", "pid": "x"}'])
def test_a_damaged_status_of_a_done_run_says_so_and_what_the_folder_still_shows(
    study: config.Study, damage: bytes
) -> None:
    run = done_and_scored(study)
    run.status_json.write_bytes(damage)
    st = run.status()
    assert (st.state, st.recovered, st.label) == (runs.DAMAGED, runs.DONE, "damaged (done)")
    assert st.damage.startswith("status.json unreadable")
    assert "events.jsonl reached step 20/20" in st.message and "scores.json holds its scores" in st.message
    assert st.started_at is not None and st.finished_at == 5.0  # the times the events and scores keep
    assert run.reconcile() == st and run.status_json.read_bytes() == damage  # shown, never written back
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    with pytest.raises(runs.DamagedRunError, match="is damaged .*status.json unreadable.*flux-tui reset a"):
        runs.prepare(study, study.experiments[0])
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before  # nothing touched


def test_a_lost_status_with_events_is_damaged_and_without_them_new(study: config.Study) -> None:
    run = done_and_scored(study)
    run.status_json.unlink()
    st = run.status()
    assert st.state == runs.DAMAGED and st.damage == "status.json is missing" and st.recovered == runs.DONE
    assert runs.RunDir(run.path.parent / "other").status().state == runs.NEW  # nothing says it ran


def test_a_truncated_run_json_no_longer_hides_changed_settings(study: config.Study, tmp_path: Path) -> None:
    run = done_and_scored(study)
    run.run_json.write_text(run.run_json.read_text()[:40])
    st = run.status()
    assert st.state == runs.DAMAGED and st.recovered == runs.DONE and st.damage.startswith("run.json unreadable")
    (tmp_path / "experiments.toml").write_text(STUDY_TOML + "lora_rank = 4\n")
    changed = config.load(tmp_path / "experiments.toml")
    with pytest.raises(runs.DamagedRunError, match="run.json"):
        runs.prepare(changed, changed.experiments[0])  # before: run.json rewritten, the old settings lost
    assert len(run.run_json.read_text()) == 40
    with pytest.raises(ValueError, match="run.json holds no settings"):  # a trainer never falls back on defaults
        config.settings_from_dict(run.config())


def test_a_live_run_whose_status_is_lost_reads_running_from_its_lock(study: config.Study) -> None:
    run = runs.prepare(study, study.experiments[0])
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fd = runlock.acquire(run.path, pid=owner.pid)  # as launch.start hands it to the trainer
    try:
        run.mark_started("train", pid=owner.pid)
        run.append_event("stage", stage="train")
        run.status_json.write_text("{garbage")
        st = run.status()
        assert (st.state, st.pid, st.stage) == (runs.RUNNING, owner.pid, "train")
        assert "status.json unreadable" in st.damage
        assert run.reconcile().state == runs.RUNNING  # not failed: its owner is alive
        # The owner writes on: the damaged file is kept aside, never lost.
        run.write_status(stage="generate")
        assert (run.status().state, run.status().stage, run.status().damage) == (runs.RUNNING, "generate", None)
        (aside,) = run.path.glob("status.json.damaged-*")
        assert aside.read_text() == "{garbage"
    finally:
        os.close(fd)
        owner.kill()
        owner.wait()
    run.status_json.unlink()
    assert run.status().state == runs.DAMAGED  # the lock is free: nothing runs it, and its events say it ran


def test_a_trained_run_being_evaluated_shows_its_training_time() -> None:
    training = dict(started_at=1000.0, finished_at=1600.0)
    evaluating = runs.Status(state=runs.RUNNING, **training, evaluation={"state": runs.RUNNING, "started_at": 9000.0})
    assert runs.elapsed(evaluating, now=9500.0) == 600.0
    training_again = runs.Status(state=runs.RUNNING, started_at=9000.0)  # a training under way: its time so far
    assert runs.elapsed(training_again, now=9500.0) == 500.0
