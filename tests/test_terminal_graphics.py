"""The dashboard asks the terminal what it draws images with once, before the app owns the terminal, and
textual-image (imported after the first frame) is handed the answer instead of asking again.

The terminal is a real pseudo-terminal; this test plays the terminal's side, answering as sixel, kitty or
plain terminals do, and records every byte the program writes to it.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flux_tui.tui import graphics

REPO = Path(__file__).resolve().parents[1]

CHILD = """
from flux_tui.tui import graphics
graphics.start_asking()
found = graphics.wait_for_answer()
from flux_tui.tui.widgets import images
widget = images.load_image_support()  # textual-image imported now, as after the first frame
import textual_image.widget as widgets
from textual_image._terminal import get_cell_size
name = next(n for n in ("SixelImage", "TGPImage", "HalfcellImage") if getattr(widgets, n) is widget)
print(f"RESULT {found.kind} {name} {tuple(get_cell_size())}", flush=True)
"""


def _play_terminal(answers: dict[bytes, bytes], timeout: float = 60) -> tuple[str, bytes]:
    """Run CHILD on a pseudo-terminal; answer each query in `answers` when it appears. Returns the RESULT
    line and everything the child wrote before it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    seen, answered = b"", set()
    deadline = time.monotonic() + timeout
    try:
        while b"RESULT" not in seen or not seen.endswith(b"\n"):
            assert time.monotonic() < deadline, f"no result; the program wrote {seen!r}"
            if not select.select([master], [], [], 0.05)[0]:
                continue
            try:
                seen += os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            # answered in the order asked, as a terminal does
            for query in sorted((q for q in answers if q in seen and q not in answered), key=seen.index):
                answered.add(query)
                os.write(master, answers[query])
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    before, _, result = seen.partition(b"RESULT ")
    return result.decode().strip(), before


SIXEL = {b"\x1b[c": b"\x1b[?62;4;22c"}
KITTY = {b"\x1b_Gi=31": b"\x1b_Gi=31;OK\x1b\\", b"\x1b[c": b"\x1b[?62;22c"}
PLAIN = {b"\x1b[c": b"\x1b[?1;2c"}


@pytest.mark.parametrize(("answers", "kind", "widget"), [
    (SIXEL, "sixel", "SixelImage"), (KITTY, "kitty", "TGPImage"), (PLAIN, "halfcell", "HalfcellImage"),
], ids=["sixel", "kitty", "plain"])  # fmt: skip
def test_the_terminal_is_asked_once_and_textual_image_uses_the_answer(answers, kind, widget) -> None:
    result, written = _play_terminal(answers)
    assert result.split()[:2] == [kind, widget]
    # One round of questions (kitty graphics, then device attributes), and none from textual-image's import.
    assert written.count(b"\x1b[c") == 1 and written.count(b"\x1b_G") == 1
    assert written.index(b"\x1b_G") < written.index(b"\x1b[c")


def test_the_cell_size_is_asked_for_when_the_window_size_has_no_pixels() -> None:
    answers = {**PLAIN, b"\x1b[16t": b"\x1b[6;18;9t"}  # a pty's window size carries no pixel size
    result, written = _play_terminal(answers)
    assert written.count(b"\x1b[16t") == 1
    assert result.endswith("(9, 18)")  # width, height: what textual-image sizes images with


def test_answers_are_read_whatever_comes_around_them() -> None:
    reply = "x\x1b[6;20;10t\x1b_Gi=31;OK\x1b\\\x1b[?64;4;22c"
    assert graphics.parse(reply, None) == graphics.Graphics("sixel", (10, 20))  # sixel wins, as textual-image
    assert graphics.parse("\x1b_Gi=31;ENOTSUPPORTED:no\x1b\\\x1b[?62c", (8, 16)).kind == "halfcell"
    assert graphics.parse("", None) == graphics.Graphics("halfcell", graphics.DEFAULT_CELL)


def test_the_first_frame_leaves_images_and_plots_for_later() -> None:
    code = (
        "import sys, flux_tui.main, flux_tui.tui.app, flux_tui.tui.screens.dashboard\n"
        "print(','.join(m for m in ('numpy', 'plotext', 'textual_image', 'PIL', 'pynvml') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
