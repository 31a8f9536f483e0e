"""Images in the terminal: textual-image's widgets, kitty or sixel graphics where the terminal has them,
coloured half-cell blocks everywhere else.

textual-image picks its renderer when it is imported (it asks the terminal); where stdout is not a terminal
it falls back to grey unicode shading, which hides what a face looks like, so that case uses half cells too.
Images are decoded and shrunk in a worker thread (`load_thumbnail`) before a widget gets them: a 1024 px
PNG scaled on every repaint would stall the event loop.
"""

from __future__ import annotations

from pathlib import Path

import textual_image.renderable as _renderables
import textual_image.widget as _widgets
from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label

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
