"""The selected run's latest sample image, with its step and prompt.

The image (a `FittedImage`: textual-image) mounts once textual-image has loaded, in a thread after the first
frame, so the first frame shows the box and its caption without waiting for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from flux_tui.tui.widgets.images import FittedImage, load_image_support, load_thumbnail
from flux_tui.tui.workers import RelayWorkerErrors, after_first_frame, background

if TYPE_CHECKING:
    from PIL import Image as PILImage


class SampleView(RelayWorkerErrors, Vertical):
    DEFAULT_CSS = """
    SampleView { height: 1fr; border: round $panel; border-title-color: $text-muted; }
    SampleView > #sample-image { width: 1fr; height: 1fr; }
    SampleView > #sample-caption { height: 1; color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "latest sample"
        self.path: Path | None = None
        self._image: PILImage.Image | None = None
        self._loading = False  # a thumbnail is being read
        self._widget: FittedImage | None = None  # once textual-image has loaded

    @property
    def ready(self) -> bool:
        """The image widget is mounted and shows the latest sample (or none, when there is none)."""
        return self._widget is not None and not self._loading

    def compose(self) -> ComposeResult:
        yield Label("no sample yet", id="sample-caption", markup=False)

    def on_mount(self) -> None:
        after_first_frame(self, self._load_support)

    @background(group="image-support")
    def _load_support(self) -> None:
        load_image_support()
        self.app.call_from_thread(self._mount_image)

    def _mount_image(self) -> None:
        if self._widget is None and self.is_attached:
            self._widget = FittedImage(self._image, id="sample-image")
            self.mount(self._widget, before="#sample-caption")

    def show(self, path: Path | None, caption: str) -> None:
        if path == self.path and path is not None:
            return
        self.path = path
        self.query_one("#sample-caption", Label).update(caption if path else "no sample yet")
        if path is None:
            self._set(None, None)
        else:
            self._loading = True
            self._load(path)

    @background(group="sample")
    def _load(self, path: Path) -> None:
        image = load_thumbnail(path, 256)
        self.app.call_from_thread(self._set, path, image)

    def _set(self, path: Path | None, image: PILImage.Image | None) -> None:
        if path != self.path:
            return
        self._image, self._loading = image, False
        if self._widget is not None:
            self._widget.image = image
