"""Resetting a run (core/reset.py): the folder moves aside to runs/.old/, nothing is deleted, a running or
owned run is refused, a damaged folder is cleared too, and a stale run then launches with the new settings."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_helpers import make_study, sleeper, write_run

from flux_tui.core import config, reset, runs
from flux_tui.core.runs import NEW, RunDir, run_dir


def test_a_reset_moves_the_folder_aside_whole_and_the_run_is_new_again(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    run = write_run(study, "exp01", "done", scores={"clip_score": 0.3}, eval_images=True)
    files_before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))
    done = reset.reset_run(run, now=time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1)))
    assert done.moved_to == study.workspace.runs_dir / ".old" / "exp01-20260304-050607"
    assert not run.path.exists() and run.status().state == NEW
    assert sorted(p.relative_to(done.moved_to) for p in done.moved_to.rglob("*")) == files_before
    # a second reset in the same second does not overwrite the first one's folder
    write_run(study, "exp01", "failed")
    again = reset.reset_run(run, now=time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1)))
    assert again.moved_to is not None and again.moved_to.name == "exp01-20260304-050607-2"
    assert done.moved_to.is_dir()


def test_a_run_without_a_folder_has_nothing_to_reset(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    assert reset.reset_run(run_dir(study, "exp06")).moved_to is None


def test_a_damaged_folder_is_reset_too(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    run = write_run(study, "exp02", "failed")
    run.status_json.write_text('{"state": "runn')  # cut short
    run.run_json.write_text("not json")
    done = reset.reset_run(run)
    assert done.moved_to is not None and (done.moved_to / "run.json").read_text() == "not json"


def test_a_running_run_is_refused_and_left_in_place(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    proc = sleeper()
    try:
        run = write_run(study, "exp03", "running", upto=5, pid=proc.pid)
        with pytest.raises(reset.ResetRefused, match=f"exp03 is running \\(pid {proc.pid}\\)"):
            reset.reset_run(run)
        assert run.status().state == "running" and run.run_json.exists()
    finally:
        proc.kill()
        proc.wait()
    # its process gone (and nobody owning it), the same folder can be reset: it is a damaged leftover
    assert reset.reset_run(run).moved_to is not None


def test_a_run_whose_lock_is_held_is_refused_whatever_its_status_says(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    run = write_run(study, "exp05", "failed")  # status.json says failed, but a process owns the run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from flux_tui.core import runlock; "
         f"runlock.acquire(Path({str(run.path)!r})); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(reset.ResetRefused, match=f"exp05 is owned by pid {holder.pid}"):
            reset.reset_run(run)
        assert run.run_json.exists()
    finally:
        holder.kill()
        holder.wait()
    assert reset.reset_run(run).moved_to is not None


def test_a_stale_run_cannot_launch_until_reset_then_launches_with_the_new_settings(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    run = write_run(study, "exp01", "done")
    run.lora_file.parent.mkdir(parents=True, exist_ok=True)
    run.lora_file.write_bytes(b"trained")
    toml = study.file.read_text().replace("lora_rank = 8\n", "lora_rank = 4\n", 1)
    study.file.write_text(toml)
    edited = config.load(study.file)
    with pytest.raises(runs.StaleRunError, match="flux-tui reset exp01"):
        runs.prepare(edited, edited.get("exp01"))
    reset.reset_run(RunDir(run.path))
    prepared = runs.prepare(edited, edited.get("exp01"))
    assert prepared.config()["lora_rank"] == 4
