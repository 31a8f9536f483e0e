"""A dashboard whose terminal hangs up ends, even where SIGHUP is ignored (started under `nohup`): a real
`python -m flux_tui` in a pseudo-terminal whose other end is closed, as when an SSH connection drops.
Without tui/terminal_watch.py such a dashboard spun a whole core reading end-of-file, for ever."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tui_helpers import make_study

from flux_tui.tui.workers import log_path


def _dashboard(file: Path, sighup: signal.Handlers) -> tuple[subprocess.Popen, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "flux_tui", str(file)], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env={**os.environ, "TERM": "xterm-256color"}, cwd=file.parent,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, sighup))  # fmt: skip
    os.close(slave)
    screen, deadline = b"", time.monotonic() + 60
    while b"exp01" not in screen:  # the first frame is on the terminal
        assert time.monotonic() < deadline, f"no first frame in 60 s: {screen[-500:]!r}"
        if select.select([master], [], [], 0.1)[0]:
            screen += os.read(master, 65536)
    return proc, master


@pytest.mark.parametrize("sighup", [signal.SIG_DFL, signal.SIG_IGN], ids=["sighup", "sighup-ignored"])
def test_a_dashboard_whose_terminal_hangs_up_ends(tmp_path: Path, sighup: signal.Handlers) -> None:
    study = make_study(tmp_path / "ws")
    proc, master = _dashboard(study.file, sighup)
    try:
        proc.send_signal(signal.SIGHUP)  # what the terminal's session gets when the connection drops
        os.close(master)  # and the terminal is gone
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sighup == signal.SIG_DFL:
        assert code == -signal.SIGHUP
    else:  # it noticed the terminal itself, said so in its log, and ended with SIGHUP's status
        assert code == 128 + signal.SIGHUP
        assert "the terminal hung up" in log_path(study.workspace.root).read_text()
