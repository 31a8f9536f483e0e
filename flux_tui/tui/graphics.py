"""What the terminal draws images with (kitty graphics, sixel, or coloured half-cell blocks) and the size of
its cells in pixels: asked once, before the dashboard takes the terminal over.

textual-image asks the same questions when it is imported, which therefore had to happen before the app
started: that put its imports (numpy among them) before the first frame, and its kitty-graphics question
waits a tenth of a second for an answer most terminals never give. Here the questions go out in one write,
followed by a device-attributes request (DA1) that every terminal answers, in order: once that answer is in,
any other answer has come too, so nothing waits for a timeout (what kitty's documentation recommends). The
asking runs in a thread while the dashboard's modules import, so a slow SSH round trip is hidden too.
`widgets/images.py` imports textual-image after the first frame and hands it these answers.
"""

from __future__ import annotations

import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass

KITTY_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"  # a 1x1 RGB image, query only: nothing is shown
CELL_QUERY = "\x1b[16t"  # cell size in pixels, for terminals whose window size gives none
DA1_QUERY = "\x1b[c"
DEFAULT_CELL = (10, 20)  # VT340's, what textual-image assumes when nothing says otherwise
TIMEOUT = 0.5  # for a terminal that does not answer DA1 at all

_DA1 = re.compile(r"\x1b\[\?([0-9;]*)c")
_KITTY = re.compile(r"\x1b_Gi=31;([^\x1b]*)\x1b\\")
_CELL = re.compile(r"\x1b\[6;(\d+);(\d+)t")


@dataclass(frozen=True)
class Graphics:
    kind: str  # "kitty", "sixel" or "halfcell"
    cell: tuple[int, int]  # pixels per cell: width, height

    @property
    def label(self) -> str:
        return {"kitty": "kitty graphics", "sixel": "sixel"}.get(self.kind, "half-cell blocks")


def parse(reply: str, cell: tuple[int, int] | None) -> Graphics:
    """The graphics the answers in `reply` announce. Sixel wins over kitty graphics, as in textual-image:
    terminals that answer the kitty query but draw its placeholders wrongly (Konsole, WezTerm) have sixel."""
    da1 = _DA1.search(reply)
    kitty = _KITTY.search(reply)
    size = _CELL.search(reply)
    if cell is None and size is not None and int(size[1]) and int(size[2]):
        cell = (int(size[2]), int(size[1]))
    if da1 is not None and "4" in da1[1].split(";"):
        kind = "sixel"
    elif kitty is not None and kitty[1] == "OK":
        kind = "kitty"
    else:
        kind = "halfcell"
    return Graphics(kind, cell or DEFAULT_CELL)


def window_cell() -> tuple[int, int] | None:
    """The cell size from the window size the kernel knows, when the terminal filled in its pixels."""
    import fcntl
    import struct
    import termios

    try:
        rows, cols, width, height = struct.unpack("HHHH", fcntl.ioctl(sys.__stdout__, termios.TIOCGWINSZ, bytes(8)))
    except (OSError, TypeError, ValueError):
        return None
    return (width // cols, height // rows) if rows and cols and width and height else None


def ask(stdin: int, stdout: int, timeout: float = TIMEOUT) -> Graphics:
    """Ask the terminal on these descriptors; returns when it has answered DA1 (or after `timeout`)."""
    import termios
    import tty

    cell = window_cell()
    saved = termios.tcgetattr(stdin)
    reply = ""
    try:
        tty.setcbreak(stdin, termios.TCSANOW)  # no echo, no line buffering: the answers arrive as they come
        os.write(stdout, (KITTY_QUERY + (CELL_QUERY if cell is None else "") + DA1_QUERY).encode())
        deadline = time.monotonic() + timeout
        while not _DA1.search(reply) and (left := deadline - time.monotonic()) > 0:
            if select.select([stdin], [], [], left)[0]:
                reply += os.read(stdin, 1024).decode("utf-8", errors="replace")
    finally:
        termios.tcsetattr(stdin, termios.TCSANOW, saved)
    return parse(reply, cell)


class _Asker:
    """The answer, asked for in a thread at most once per process."""

    def __init__(self) -> None:
        self.result: Graphics | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread is not None or self.result is not None:
                return
            if not _is_terminal():
                self.result = fallback()
                return
            self.thread = threading.Thread(target=self._run, name="terminal-graphics", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self.result = ask(sys.__stdin__.fileno(), sys.__stdout__.fileno())
        except (OSError, ValueError, AttributeError):  # not a terminal after all, or closed
            self.result = fallback()

    def answer(self) -> Graphics | None:
        thread = self.thread
        if thread is not None:
            thread.join(TIMEOUT + 0.5)
        return self.result


_ASKER = _Asker()


def start_asking() -> None:
    """Ask the terminal in a thread; `wait_for_answer` must run before the app starts reading the terminal."""
    _ASKER.start()


def wait_for_answer() -> Graphics:
    start_asking()
    return _ASKER.answer() or fallback()


def current() -> Graphics:
    """The answer when the terminal was asked (this never asks: the app may own the terminal by now),
    otherwise `fallback()`."""
    return _ASKER.answer() or fallback()


def fallback() -> Graphics:
    """Half-cell blocks (they work everywhere), with the cell size the window size or textual-serve's
    TEXTUAL_CELL_WIDTH/HEIGHT give."""
    env = os.environ.get("TEXTUAL_CELL_WIDTH", ""), os.environ.get("TEXTUAL_CELL_HEIGHT", "")
    env_cell = (int(env[0]), int(env[1])) if all(v.isdigit() and int(v) for v in env) else None
    return Graphics("halfcell", window_cell() or env_cell or DEFAULT_CELL)


def _is_terminal() -> bool:
    if os.name != "posix":
        return False
    try:
        return bool(sys.__stdin__ and sys.__stdout__ and sys.__stdin__.isatty() and sys.__stdout__.isatty())
    except (AttributeError, ValueError):
        return False
