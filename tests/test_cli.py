"""Headless commands as a user runs them: a real subprocess, its exit code, what it prints (check, export,
and the queue's submit, status and stop)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_helpers import make_study, scores_for, write_run

from flux_tui.core import procs
from flux_tui.core.runs import RunDir
from flux_tui.core.scheduler import Scheduler

REPO = Path(__file__).resolve().parents[1]


def flux_tui(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_tui", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_check_prints_the_matrix_of_the_shipped_file() -> None:
    out = flux_tui("check")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == 11
    assert rows[10].split()[:2] == ["11", "exp11"] and "constant" in rows[10]
    assert "11 experiment(s)" in out.stdout


def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "experiments.toml"
    bad.write_text('[defaults]\nlora_rank = 0\nlearning_rate = -1.0\n\n[[experiment]]\nname = "a/b"\n')
    out = flux_tui("check", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{bad}:2: [defaults].lora_rank: expected an integer >= 1, got 0" in out.stderr
    assert f"{bad}:3: [defaults].learning_rate: expected a number > 0" in out.stderr
    assert f"{bad}:6: [[experiment]] #1.name: unsafe run name" in out.stderr
    assert "nothing was written" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.toml"]


def test_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    out = flux_tui("check", cwd=tmp_path)
    assert out.returncode == 2 and "experiments.toml: file not found" in out.stderr


def test_dashboard_on_a_bad_file_exits_cleanly_with_the_messages(tmp_path: Path) -> None:
    bad = tmp_path / "experiments.toml"
    bad.write_text("[defaults]\nresolution = 1000\n")
    out = flux_tui(str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{bad}:2: [defaults].resolution: must be a multiple of 16 (try 992 or 1008)" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_command_takes_the_study_file_as_dash_f(tmp_path: Path) -> None:
    out = flux_tui("check", "-f", str(REPO / "experiments.toml"), cwd=tmp_path)
    assert out.returncode == 0 and "11 experiment(s)" in out.stdout
    out = flux_tui("export", "-f", str(REPO / "experiments.toml"), "--format", "csv", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.count("\n") == 12


# -- submit, status, stop: the queue from a shell (the stand-in trainer: tests/standin_trainer.py) -------


def queue_cli(ws: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    standin = Path(__file__).with_name("standin_trainer.py").resolve()
    extra = {"FLUX_TUI_TRAINER": str(standin), "STANDIN_STEPS": "100", "STANDIN_SLEEP": "0.1", **env}
    return subprocess.run([sys.executable, "-m", "flux_tui", *args, "-f", str(ws / "experiments.toml")],
                          cwd=ws, capture_output=True, text=True, timeout=120, env={**os.environ, **extra})  # fmt: skip


def until(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pred}")


@pytest.fixture
def ws(tmp_path: Path):
    study = make_study(tmp_path / "ws")
    yield tmp_path / "ws"
    for run in Scheduler(study).folders():  # nothing left queued or running
        st = run.status()
        if st.state == "queued":
            run.write_status(state="new")
        elif st.state == "running" and procs.is_alive(st.pid, st.process_start):
            procs.signal_group(st.pgid, st.pid, signal.SIGKILL)


def test_submit_queues_starts_what_fits_and_returns_at_once(ws: Path) -> None:
    out = queue_cli(ws, "submit", "exp02", "exp03")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("exp02 started on cpu (pid ") and lines[1] == "exp03 queued: waits for a free slot"
    assert f"runs in {ws / 'runs'}" in out.stdout
    pid = int(lines[0].split("pid ")[1].rstrip(")"))
    assert procs.is_alive(pid, None)  # the run outlives the command that started it

    status = queue_cli(ws, "status")
    assert status.returncode == 0, status.stderr
    row = {line.split()[1]: line for line in status.stdout.splitlines()[1:7]}
    assert "running:" in row["exp02"] and "cpu" in row["exp02"] and f"pid {pid}" in row["exp02"]
    assert "queued #1" in row["exp03"] and row["exp01"].split()[2] == "new"
    js = json.loads(queue_cli(ws, "status", "--json").stdout)
    by = {r["name"]: r for r in js}
    assert by["exp02"]["pid"] == pid and by["exp02"]["device"] == "cpu" and by["exp02"]["executor"] == "local"
    assert by["exp03"]["queue_position"] == 1 and by["exp03"]["state"] == "queued"


def test_submit_of_unknown_names_or_neither_names_nor_all_is_a_usage_error(ws: Path) -> None:
    out = queue_cli(ws, "submit", "exp99")
    assert out.returncode == 2 and "no experiment named exp99" in out.stderr
    out = queue_cli(ws, "submit")
    assert out.returncode == 2 and "give experiment NAMEs or --all" in out.stderr
    assert not (ws / "runs").exists()  # nothing written


def test_stop_takes_queued_runs_back_to_new_and_stops_running_ones(ws: Path) -> None:
    assert queue_cli(ws, "submit", "--all").returncode == 0
    run = RunDir(ws / "runs" / "exp01")
    until(lambda: list(run.iter_events("step")))
    out = queue_cli(ws, "stop", "exp03")
    assert out.returncode == 0 and "exp03 taken off the queue (back to new)" in out.stdout
    assert RunDir(ws / "runs" / "exp03").status().state == "new"
    out = queue_cli(ws, "stop", "--all")
    assert out.returncode == 0, out.stderr
    assert "sent SIGTERM to exp01" in out.stdout and "exp06 taken off the queue" in out.stdout
    st = until(lambda: (st := run.status()).state == "cancelled" and st)
    assert "stopped by SIGTERM" in st.message
    states = {r["name"]: r["state"] for r in json.loads(queue_cli(ws, "status", "--json").stdout)}
    assert states == {"exp01": "cancelled", **{f"exp0{i}": "new" for i in range(2, 7)}}
    out = queue_cli(ws, "stop", "exp01")
    assert out.returncode == 1 and "exp01 is not running (cancelled)" in out.stderr


def test_status_shows_scores_failures_and_every_state(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    write_run(study, "exp01", "done", scores=scores_for(1, 0.7571, 0.2988, faceless=2))
    write_run(study, "exp05", "failed", upto=12, message="CUDA error: an illegal memory access was encountered")
    out = queue_cli(tmp_path / "ws", "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:8] == ["#", "name", "state", "step", "device", "pid/job", "face", "dist"]
    row = {line.split()[1]: line.split() for line in lines[1:7]}
    assert row["exp01"][2:] == ["done", "20/20", "0.7571", "0.2988", "2"]
    assert row["exp05"][2:5] == ["failed", "12/30", "CUDA"]
    assert row["exp02"][2:] == ["new", "0/40"]
    assert "4 new, 1 done, 1 failed" in out.stdout
    js = {r["name"]: r for r in json.loads(queue_cli(tmp_path / "ws", "status", "--json").stdout)}
    assert js["exp01"]["face_distance"] == 0.7571 and js["exp01"]["faceless"] == 2
    assert js["exp05"]["message"].startswith("CUDA error") and js["exp05"]["step"] == 12


def test_reset_moves_runs_aside_and_refuses_running_ones(tmp_path: Path) -> None:
    from tui_helpers import make_study, sleeper, write_run

    ws = tmp_path / "ws"
    study = make_study(ws)
    write_run(study, "exp01", "done")
    proc = sleeper()
    try:
        write_run(study, "exp03", "running", upto=3, pid=proc.pid)
        out = flux_tui("reset", "exp01", "exp03", "exp06", cwd=ws)
        assert out.returncode == 1, out.stderr
        moved = list((ws / "runs" / ".old").iterdir())
        assert [p.name.split("-")[0] for p in moved] == ["exp01"] and (moved[0] / "run.json").is_file()
        assert f"exp01: folder moved to runs/.old/{moved[0].name}; the run is new again" in out.stdout
        assert "exp06: no folder yet, nothing to reset" in out.stdout
        assert f"exp03 is running (pid {proc.pid}): stop it first" in out.stderr
        assert (ws / "runs" / "exp03" / "run.json").is_file()
    finally:
        proc.kill()
        proc.wait()
    out = flux_tui("reset", "nosuch", cwd=ws)
    assert out.returncode == 2 and "no experiment or run folder named nosuch" in out.stderr


def test_the_command_messages_print_works_as_typed_with_or_without_flux_tui_on_path(tmp_path: Path) -> None:
    """After `make demo` flux-tui sits in .venv/bin, off PATH: the quit message must not say a bare
    `flux-tui` then. Whatever it says is run here by a shell with that PATH, as the user would type it."""
    import sysconfig

    (tmp_path / "experiments.toml").write_text((REPO / "experiments.toml").read_text())
    scripts = sysconfig.get_path("scripts")
    code = "from pathlib import Path; from flux_tui.core.console import reopen_line; print(reopen_line(Path('x y')))"
    said = {}
    for label, path in (("off PATH", "/usr/bin:/bin"), ("on PATH", f"{scripts}:/usr/bin:/bin")):
        env = {**os.environ, "PATH": path}
        line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert line.returncode == 0, line.stderr
        command = line.stdout.strip().removeprefix("Reopen with: ").split(" 'x y'")[0]  # the file, quoted
        said[label] = command
        typed = subprocess.run(["/bin/sh", "-c", f"{command} check experiments.toml"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert typed.returncode == 0 and "11 experiment(s)" in typed.stdout, (label, command, typed.stderr)
    assert said["on PATH"] == "flux-tui"
    assert said["off PATH"] == str(Path(scripts) / "flux-tui")  # the console script, by its absolute path


def test_a_damaged_run_is_shown_refused_and_reset_from_a_shell(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    ws = tmp_path / "ws"
    run = write_run(study, "exp01", "done", scores=scores_for(1, 0.7571, 0.2988))
    run.status_json.write_text('{"state": "done", "finished_at": 17')  # cut short
    out = queue_cli(ws, "status")
    row = next(line for line in out.stdout.splitlines() if " exp01 " in line)
    assert "damaged (done)" in row and "status.json unreadable" in row
    js = {r["name"]: r for r in json.loads(queue_cli(ws, "status", "--json").stdout)}
    assert (js["exp01"]["state"], js["exp01"]["recovered"]) == ("damaged", "done")
    assert js["exp01"]["face_distance"] == 0.7571  # the scores are not lost with the status
    submit = queue_cli(ws, "submit", "exp01")
    assert submit.returncode != 0 and "exp01' is damaged" in submit.stdout + submit.stderr
    assert "flux-tui reset exp01" in submit.stdout + submit.stderr
    assert run.status_json.read_text() == '{"state": "done", "finished_at": 17'  # untouched
    exported = {r["name"]: r for r in json.loads(flux_tui("export", "--format", "json", cwd=ws).stdout)}
    assert exported["exp01"]["state"] == "damaged" and "status.json unreadable" in exported["exp01"]["problems"]
    assert flux_tui("reset", "exp01", cwd=ws).returncode == 0
    assert RunDir(ws / "runs" / "exp01").status().state == "new"
