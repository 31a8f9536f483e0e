"""Images in the terminal: textual-image's widgets, kitty or sixel graphics where the terminal has them,
coloured half-cell blocks everywhere else.

textual-image (and numpy, which it imports) loads on first use, normally in a thread after the first frame
(`load_image_support`): `ImageWidget` and `GRAPHICS` are looked up then. It would ask the terminal what it
can draw when imported; `tui/graphics.py` asked before the app started, and textual-image is handed those
answers instead (an import while the app owns the terminal must not write to it). Where stdout is not a
terminal textual-image would fall back to grey unicode shading, which hides what a face looks like, so
that case uses half cells too. Images are decoded and shrunk in a worker thread (`load_thumbnail`) before a
widget gets them: a 1024 px PNG scaled on every repaint would stall the event loop.

A terminal cell is about twice as tall as it is wide, so an image given a pane's cells stretches; a pane
that shows one image holds a `FittedImage`, which sizes the image to the pane at its own aspect ratio.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.events import Resize
from textual.message import Message
from textual.widgets import Label

from flux_tui.tui import graphics

if TYPE_CHECKING:
    from PIL import Image as PILImage

_lock = threading.Lock()
_widget_class: type | None = None


def load_image_support() -> type:
    """textual-image's widget class for this terminal, importing textual-image on the first call (any
    thread)."""
    global _widget_class
    with _lock:
        if _widget_class is None:
            found = graphics.current()
            with _answers_given(found):
                import textual_image.widget as widgets
            _widget_class = {"kitty": widgets.TGPImage, "sixel": widgets.SixelImage}.get(
                found.kind, widgets.HalfcellImage
            )
        return _widget_class


@contextmanager
def _answers_given(found: graphics.Graphics) -> Iterator[None]:
    """While textual-image imports: its cell size set to `found`'s, and its terminal queries answered "no"
    at once without writing to the terminal (its own choice of renderer is not used)."""
    if "textual_image.renderable" in sys.modules or not textual_image_can_be_told():
        yield  # imported already (it asked the terminal then), or run_dashboard imported it before the app
        return
    from textual_image import _terminal

    @contextmanager
    def no_answer(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise _terminal.TerminalError("answered before the dashboard started")
        yield  # a generator: the raise above happens on entering the `with`, before any query is written

    asked = _terminal.capture_terminal_response
    _terminal.get_cell_size._result = _terminal.CellSize(*found.cell)  # type: ignore[attr-defined]
    _terminal.capture_terminal_response = no_answer
    try:
        yield
    finally:
        _terminal.capture_terminal_response = asked


def textual_image_can_be_told() -> bool:
    """Whether this textual-image has the internals `_answers_given` sets (checked before the app starts;
    when not, textual-image is imported then and asks the terminal itself, as it always did)."""
    try:
        from textual_image import _terminal
    except ImportError:
        return False
    return all(hasattr(_terminal, name) for name in ("capture_terminal_response", "get_cell_size", "CellSize",
                                                     "TerminalError"))  # fmt: skip


def __getattr__(name: str) -> Any:
    """`ImageWidget` (textual-image's widget class for this terminal) and `GRAPHICS` (its name), loaded on
    first use."""
    if name == "ImageWidget":
        return load_image_support()
    if name == "GRAPHICS":
        return graphics.current().label
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


THUMB_PX = 192  # a thumbnail cell grid never needs more than this many pixels
FULL_PX = 1024


def load_thumbnail(path: Path, max_px: int = THUMB_PX) -> PILImage.Image | None:
    """The image shrunk to fit `max_px`, in RGB; None when it is missing or unreadable (being written)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            im.draft("RGB", (max_px, max_px))  # JPEG: decode at a lower scale directly
            im = im.convert("RGB")
            im.thumbnail((max_px, max_px))
            return im
    except (OSError, ValueError, PILImage.DecompressionBombError):
        return None


def png_text(path: Path) -> dict[str, str]:
    """The PNG's text chunks (the evaluation writes prompt, seed, guidance there)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    except (OSError, ValueError):
        return {}


def fit_cells(image_px: tuple[int, int], pane: tuple[int, int], cell_px: tuple[int, int]) -> tuple[int, int]:
    """The largest (columns, rows) inside `pane` cells showing an `image_px` image undistorted, given the
    pixel size of one terminal cell; (0, 0) for an empty image or pane."""
    (iw, ih), (pw, ph), (cw, ch) = image_px, pane, cell_px
    if min(iw, ih, pw, ph, cw, ch) <= 0:
        return 0, 0
    scale = min(pw * cw / iw, ph * ch / ih)  # screen pixels per image pixel
    return max(1, min(pw, round(iw * scale / cw))), max(1, min(ph, round(ih * scale / ch)))


class FittedImage(Container):
    """One image as large as the pane allows at its own aspect ratio, centred in the pane.

    The pane takes its size from CSS (1fr by default); the image inside gets that many cells as the terminal's
    cell shape (graphics.py asks the terminal once; 10x20 px where it cannot) keeps undistorted.
    """

    DEFAULT_CSS = """
    FittedImage { width: 1fr; height: 1fr; align: center middle; }
    FittedImage > .fitted-image { width: 0; height: 0; }
    """

    def __init__(self, image: PILImage.Image | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._image = image

    def compose(self) -> ComposeResult:
        yield load_image_support()(self._image, classes="fitted-image")

    @property
    def image(self) -> PILImage.Image | None:
        return self._image

    @image.setter
    def image(self, value: PILImage.Image | None) -> None:
        self._image = value
        if self.is_mounted:
            self._fit()
            self.query_one(load_image_support()).image = value

    def on_mount(self) -> None:
        inner = self.query_one(load_image_support())
        if inner.image is not self._image:  # set after compose made the inner widget, before this mount
            inner.image = self._image
        self._fit()

    def on_resize(self, _event: Resize) -> None:
        self._fit()

    def cells(self) -> tuple[int, int]:
        """(columns, rows) the image takes in the pane as it is now."""
        size = (self._image.width, self._image.height) if self._image is not None else (0, 0)
        from textual_image._terminal import get_cell_size  # cached cell size in pixels; no public name for it

        cell = get_cell_size()  # the answer graphics.py got (load_image_support ran in compose)
        return fit_cells(size, (self.content_size.width, self.content_size.height), (cell.width, cell.height))

    def _fit(self) -> None:
        width, height = self.cells()
        inner = self.query_one(load_image_support())
        inner.styles.width, inner.styles.height = width, height


class Thumbnail(Vertical, can_focus=True):
    """An image with a caption. `enter` or a click asks for it full size."""

    DEFAULT_CSS = """
    Thumbnail { width: 26; height: auto; padding: 0 1; border: round $panel; }
    Thumbnail:focus { border: round $accent; }
    Thumbnail > .thumb-image { width: 24; height: 12; }
    Thumbnail > .thumb-caption { width: 100%; height: 3; color: $text-muted; }
    """
    BINDINGS = [Binding("enter", "open", "Full size", tooltip="open the focused image full size")]

    class Opened(Message):
        def __init__(self, thumbnail: Thumbnail) -> None:
            super().__init__()
            self.thumbnail = thumbnail

    def __init__(self, path: Path, caption: str, image: PILImage.Image | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.caption = caption
        self._image = image

    def compose(self) -> ComposeResult:
        yield load_image_support()(self._image, classes="thumb-image")
        yield Label(self.caption or self.path.name, classes="thumb-caption", markup=False)

    def action_open(self) -> None:
        self.post_message(self.Opened(self))

    def on_click(self) -> None:
        self.action_open()
