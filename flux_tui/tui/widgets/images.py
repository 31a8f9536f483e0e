"""Images in the terminal: textual-image's widgets, kitty or sixel graphics where the terminal has them,
coloured half-cell blocks everywhere else.

textual-image picks its renderer when it is imported (it asks the terminal); where stdout is not a terminal
it falls back to grey unicode shading, which hides what a face looks like, so that case uses half cells too.
Images are decoded and shrunk in a worker thread (`load_thumbnail`) before a widget gets them: a 1024 px
PNG scaled on every repaint would stall the event loop.

A terminal cell is about twice as tall as it is wide, so an image given a pane's cells stretches; a pane
that shows one image holds a `FittedImage`, which sizes the image to the pane at its own aspect ratio.
"""

from __future__ import annotations

from pathlib import Path

import textual_image.renderable as _renderables
import textual_image.widget as _widgets
from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.events import Resize
from textual.message import Message
from textual.widgets import Label
from textual_image._terminal import get_cell_size  # cached cell size in pixels; no public name for it

if _renderables.Image is _renderables.UnicodeImage:
    ImageWidget: type = _widgets.HalfcellImage
    GRAPHICS = "half-cell blocks"
elif _renderables.Image is _renderables.SixelImage:
    ImageWidget = _widgets.Image
    GRAPHICS = "sixel"
elif _renderables.Image is _renderables.TGPImage:
    ImageWidget = _widgets.Image
    GRAPHICS = "kitty graphics"
else:
    ImageWidget = _widgets.Image
    GRAPHICS = "half-cell blocks"

THUMB_PX = 192  # a thumbnail cell grid never needs more than this many pixels
FULL_PX = 1024


def load_thumbnail(path: Path, max_px: int = THUMB_PX) -> PILImage.Image | None:
    """The image shrunk to fit `max_px`, in RGB; None when it is missing or unreadable (being written)."""
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
    cell shape (textual-image asks the terminal once; 10x20 px where it cannot) keeps undistorted.
    """

    DEFAULT_CSS = """
    FittedImage { width: 1fr; height: 1fr; align: center middle; }
    FittedImage > .fitted-image { width: 0; height: 0; }
    """

    def __init__(self, image: PILImage.Image | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._image = image

    def compose(self) -> ComposeResult:
        yield ImageWidget(self._image, classes="fitted-image")

    @property
    def image(self) -> PILImage.Image | None:
        return self._image

    @image.setter
    def image(self, value: PILImage.Image | None) -> None:
        self._image = value
        if self.is_mounted:
            self._fit()
            self.query_one(ImageWidget).image = value

    def on_mount(self) -> None:
        self._fit()

    def on_resize(self, _event: Resize) -> None:
        self._fit()

    def cells(self) -> tuple[int, int]:
        """(columns, rows) the image takes in the pane as it is now."""
        size = (self._image.width, self._image.height) if self._image is not None else (0, 0)
        cell = get_cell_size()
        return fit_cells(size, (self.content_size.width, self.content_size.height), (cell.width, cell.height))

    def _fit(self) -> None:
        width, height = self.cells()
        inner = self.query_one(ImageWidget)
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
        yield ImageWidget(self._image, classes="thumb-image")
        yield Label(self.caption or self.path.name, classes="thumb-caption", markup=False)

    def action_open(self) -> None:
        self.post_message(self.Opened(self))

    def on_click(self) -> None:
        self.action_open()
