"""The selected run's latest sample image, with its step and prompt."""

from __future__ import annotations

from pathlib import Path

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from flux_tui.tui.widgets.images import FittedImage, load_thumbnail
from flux_tui.tui.workers import RelayWorkerErrors, background


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

    def compose(self) -> ComposeResult:
        yield FittedImage(id="sample-image")
        yield Label("no sample yet", id="sample-caption", markup=False)

    def show(self, path: Path | None, caption: str) -> None:
        if path == self.path and path is not None:
            return
        self.path = path
        self.query_one("#sample-caption", Label).update(caption if path else "no sample yet")
        if path is None:
            self.query_one("#sample-image", FittedImage).image = None
        else:
            self._load(path)

    @background(group="sample")
    def _load(self, path: Path) -> None:
        image = load_thumbnail(path, 256)
        self.app.call_from_thread(self._set, path, image)

    def _set(self, path: Path, image: PILImage.Image | None) -> None:
        if path == self.path:
            self.query_one("#sample-image", FittedImage).image = image
