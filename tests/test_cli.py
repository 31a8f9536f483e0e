"""`flux-tui check` as a user runs it: a real subprocess, its exit code, what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
