"""Large images keep their aspect ratio: a FittedImage (the full-size view, the latest sample, the playground)
draws its picture as large as the pane allows without stretching it, centred. Measured on what is rendered."""

from __future__ import annotations

import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual.containers import Container
from textual_image._terminal import get_cell_size
from tui_helpers import until

from flux_tui.tui.widgets.images import FittedImage, ImageWidget, fit_cells


class Pane(App[None]):
    """A pane of `size` cells holding one FittedImage, somewhere in a larger screen."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.pane_size = size

    def compose(self) -> ComposeResult:
        with Container(id="pane"):
            yield FittedImage(id="img")

    def on_mount(self) -> None:
        pane = self.query_one("#pane")
        pane.styles.width, pane.styles.height = self.pane_size


def drawn_cells(widget: ImageWidget) -> tuple[int, int]:
    """(columns, rows) of half-cell blocks the widget renders (pytest's stdout is no terminal: half cells)."""
    lines = [strip.text for strip in widget.render_lines(widget.region.reset_offset)]
    rows = [line for line in lines if "▀" in line]
    return max((line.count("▀") for line in rows), default=0), len(rows)


@pytest.mark.parametrize("pane", [(198, 46), (40, 12)], ids=["big", "small"])
@pytest.mark.parametrize("picture", [(64, 64), (256, 64)], ids=["square", "wide"])
async def test_an_image_keeps_its_aspect_ratio_centred_in_its_pane(pane, picture) -> None:
    app = Pane(pane)
    async with app.run_test(size=(220, 60)) as pilot:
        fitted = app.query_one("#img", FittedImage)
        fitted.image = Image.new("RGB", picture, (200, 40, 40))
        inner = fitted.query_one(ImageWidget)
        await until(pilot, lambda: inner.region.width > 0 and drawn_cells(inner)[0] > 0)
        cols, rows = drawn_cells(inner)
        assert (cols, rows) == inner.region.size  # what is drawn is what was laid out
        cell = get_cell_size()
        # on screen the picture is as wide for its height as the image (within one cell of rounding)
        on_screen = cols * cell.width / (rows * cell.height)
        assert abs(on_screen / (picture[0] / picture[1]) - 1) <= 1 / cols + 1 / rows
        # as large as the pane allows: it fills one of the pane's dimensions and overflows neither
        assert cols <= pane[0] and rows <= pane[1] and (cols == pane[0] or rows == pane[1])
        # centred: the margins left and right (top and bottom) differ by at most one cell
        left = inner.region.x - fitted.region.x
        top = inner.region.y - fitted.region.y
        assert abs(left - (pane[0] - cols - left)) <= 1 and abs(top - (pane[1] - rows - top)) <= 1


async def test_a_square_image_in_a_wide_pane_is_not_stretched_to_fill_it() -> None:
    """The reported case: a 64x64 image filled 198x46 cells, twice as wide as it is tall on screen."""
    app = Pane((198, 46))
    async with app.run_test(size=(220, 60)) as pilot:
        fitted = app.query_one("#img", FittedImage)
        fitted.image = Image.new("RGB", (64, 64), (0, 90, 200))
        inner = fitted.query_one(ImageWidget)
        await until(pilot, lambda: drawn_cells(inner)[1] == 46)
        cell = get_cell_size()
        assert drawn_cells(inner) == (round(46 * cell.height / cell.width), 46)  # 92x46 with 10x20 px cells


async def test_the_image_refits_when_its_pane_shrinks_and_clears_when_unset() -> None:
    app = Pane((198, 46))
    async with app.run_test(size=(220, 60)) as pilot:
        fitted = app.query_one("#img", FittedImage)
        fitted.image = Image.new("RGB", (64, 64), (0, 90, 200))
        inner = fitted.query_one(ImageWidget)
        await until(pilot, lambda: drawn_cells(inner)[1] == 46)
        pane = app.query_one("#pane")
        pane.styles.width, pane.styles.height = 40, 12
        await until(pilot, lambda: drawn_cells(inner)[1] == 12, what="the image to shrink with its pane")
        assert drawn_cells(inner)[0] <= 40
        fitted.image = None
        await until(pilot, lambda: drawn_cells(inner) == (0, 0), what="no picture")


def test_fit_cells_fills_the_limiting_dimension() -> None:
    assert fit_cells((64, 64), (198, 46), (10, 20)) == (92, 46)
    assert fit_cells((256, 64), (198, 46), (10, 20)) == (198, 25)
    assert fit_cells((64, 64), (40, 12), (10, 20)) == (24, 12)
    assert fit_cells((64, 256), (40, 12), (10, 20)) == (6, 12)
    assert fit_cells((0, 0), (40, 12), (10, 20)) == (0, 0)
    assert fit_cells((64, 64), (0, 12), (10, 20)) == (0, 0)


async def test_an_image_set_between_compose_and_mount_is_shown() -> None:
    # A loader thread's call_from_thread can land after compose made the inner widget and before the mount:
    # the image must still reach the inner widget (it was lost, and the sample pane stayed empty).
    picture = Image.new("RGB", (64, 64), "red")

    class SetWhileComposing(FittedImage):
        def compose(self) -> ComposeResult:
            yield from super().compose()
            self.image = picture

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield SetWhileComposing(id="img")

    app = Host()
    async with app.run_test(size=(80, 24)) as pilot:
        inner = app.query_one("#img").query_one(ImageWidget)
        await until(pilot, lambda: drawn_cells(inner) != (0, 0), what="the picture drawn")
        assert inner.image is picture
