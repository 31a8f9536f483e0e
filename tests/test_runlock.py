"""The run's ownership lock, with real processes: who holds it is named, a handed-down lock outlives the
launcher, and the kernel frees it when the owner dies (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flux_tui.core import runlock

HOLD = (
    "import os, sys, time\n"
    "from flux_tui.core import runlock\n"
    "with runlock.adopt_or_acquire(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pred}")


def hold(run: Path, **kw) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, **kw)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_owner_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "exp01"
    assert runlock.holder(run) is None
    proc = hold(run)
    try:
        assert runlock.holder(run) == proc.pid
        with pytest.raises(runlock.RunLocked, match=f"pid {proc.pid}"):
            runlock.acquire(run)
        # Deleting the run folder does not free the lock: it lives beside the folder.
        run.mkdir(parents=True, exist_ok=True)
        os.rmdir(run)
        assert runlock.holder(run) == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert runlock.holder(run) is None  # the kernel freed it with its owner
    os.close(runlock.acquire(run))


def test_a_handed_down_lock_outlives_the_launcher_and_names_the_child(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "exp02"
    fd = runlock.acquire(run)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
        pass_fds=(fd,), env={**os.environ, **runlock.child_env(fd)},
    )  # fmt: skip
    os.close(fd)  # the launcher lets go: the child's copy keeps the run owned
    try:
        assert proc.stdout.readline().strip() == "held"
        assert runlock.holder(run) == proc.pid  # the child wrote its own pid into the lock
        with pytest.raises(runlock.RunLocked):
            runlock.acquire(run)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: runlock.holder(run) is None)


def test_lock_file_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        os.close(runlock.acquire(tmp_path / "runs" / "a"))
    finally:
        os.umask(old)
    assert (runlock.lock_path(tmp_path / "runs" / "a").stat().st_mode & 0o777) == 0o644
