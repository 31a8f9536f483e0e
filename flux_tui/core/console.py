"""How to type the `flux-tui` command on this machine, for messages that tell the user what to run next.

After `make demo` the console script lives in `.venv/bin/`, which is not on PATH: a message saying
"flux-tui FILE" would answer "command not found". `flux_tui_command()` says `flux-tui` when that is on PATH,
else the script's absolute path, else `python -m flux_tui.main` with this interpreter's absolute path.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

SCRIPT = "flux-tui"


def _installed_scripts() -> list[Path]:
    """Where this interpreter's installs put console scripts (a venv's bin/, then the user scheme's)."""
    dirs = [sysconfig.get_path("scripts")]
    with contextlib.suppress(KeyError):  # no user scheme on this platform
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    return [Path(d) / SCRIPT for d in dirs if d]


def flux_tui_command() -> str:
    """The command, as a shell would run it from here."""
    if shutil.which(SCRIPT):
        return SCRIPT
    for path in (*_installed_scripts(), Path(sys.argv[0]) if Path(sys.argv[0]).name == SCRIPT else None):
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return shlex.quote(str(path.absolute()))
    return f"{shlex.quote(str(Path(sys.executable).absolute()))} -m flux_tui.main"


def reopen_line(study_file: Path) -> str:
    command, file = flux_tui_command(), shlex.quote(str(study_file))
    return f"Reopen with: {command} {file}   (or from a shell: {command} status -f {file})"
