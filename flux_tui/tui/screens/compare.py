"""Compare runs side by side: the prompt x run grid of evaluation images, as in the study's appendix table,
with each image's CLIP score and face distance under it and each run's totals at the foot of its column."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer
from textual.widgets import Header, Label, Static

from flux_tui.core.config import Study
from flux_tui.core.metrics import CLIP_SCORE, FACE_DISTANCE, FACELESS, N_IMAGES, NO_FACE, metric
from flux_tui.core.runs import RunDir, run_dir
from flux_tui.tui.runview import image_name
from flux_tui.tui.runview import per_image as per_image_scores
from flux_tui.tui.screens.base import StudyScreen
from flux_tui.tui.screens.closing import ClosesOnce
from flux_tui.tui.widgets.images import Thumbnail, load_thumbnail, png_text
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.workers import background

CELL_W = 26  # Thumbnail's width
CLIP, FACE = metric(CLIP_SCORE), metric(FACE_DISTANCE)


@dataclass
class Cell:
    path: Path
    prompt: str
    clip_score: float | None = None
    face_distance: float | None = None
    face: bool | None = None
    image: PILImage.Image | None = None

    @property
    def caption(self) -> str:
        """`CLIP 0.296 · face 0.720`: three decimals, to fit under a thumbnail."""
        face = NO_FACE if self.face is False else f"{FACE.tag} {FACE.format(self.face_distance, spec='.3f')}"
        return f"{CLIP.tag} {CLIP.format(self.clip_score, spec='.3f')} · {face}"


@dataclass
class Column:
    run: str
    scores: dict[str, Any] | None
    cells: dict[str, Cell] = field(default_factory=dict)  # prompt -> its first image

    def totals(self) -> Text:
        s = self.scores or {}
        if not s:
            return Text("not scored", style="dim")
        lines = [f"{m.tag} {m.format(s.get(m.key))}" for m in (CLIP, FACE, metric(FACELESS))]
        return Text("\n".join(lines) + f" of {metric(N_IMAGES).format(s.get(N_IMAGES))}")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def build_grid(runs: list[RunDir], with_images: bool = True) -> tuple[list[str], list[Column]]:
    """The prompts (in the runs' evaluation order) and one column per run with its first image per prompt.
    Per-image scores come from scores.json, prompts from it or from the PNG metadata."""
    prompts: list[str] = []
    columns = []
    for run in runs:
        scores = run.scores()
        per_image = {image_name(row): row for row in per_image_scores(scores)}
        col = Column(run.name, scores)
        for p in run.config().get("eval_prompts", []):
            if p not in prompts:
                prompts.append(p)
        for path in run.eval_images():
            row = per_image.get(path.name, {})
            prompt = str(row.get("prompt") or png_text(path).get("prompt") or path.stem)
            if prompt in col.cells:
                continue  # later guidance scales and seeds of the same prompt: the first one stands
            face = row.get("face")
            col.cells[prompt] = Cell(
                path, prompt, _number(row.get(CLIP_SCORE)), _number(row.get(FACE_DISTANCE)),
                face if isinstance(face, bool) else None,
                load_thumbnail(path) if with_images else None,
            )  # fmt: skip
            if prompt not in prompts:
                prompts.append(prompt)
        columns.append(col)
    return prompts, columns


class CompareScreen(ClosesOnce, StudyScreen):
    HELP_WIDGETS = (Thumbnail,)
    DEFAULT_CSS = f"""
    CompareScreen #cmp-grid {{ height: 1fr; overflow: auto auto; }}
    CompareScreen .cmp-row {{ height: auto; width: auto; }}
    CompareScreen .cmp-prompt {{ width: 24; padding: 1 1 0 0; color: $text-muted; }}
    CompareScreen .cmp-head {{ width: {CELL_W}; text-style: bold; padding: 0 1; }}
    CompareScreen .cmp-empty {{ width: {CELL_W}; height: 15; content-align: center middle; color: $text-disabled; }}
    CompareScreen .cmp-foot {{ width: {CELL_W}; height: 3; padding: 0 1; }}
    CompareScreen #cmp-note {{ height: auto; padding: 0 1; color: $text-muted; }}
    """
    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="back to the leaderboard"),
        Binding("r", "reload", "Reload", tooltip="read the runs' images and scores again"),
    ]

    def __init__(self, names: list[str], study: Study | None = None, **kwargs: Any) -> None:
        super().__init__(study, **kwargs)
        self.names = list(names)
        self.prompts: list[str] = []
        self.columns: list[Column] = []
        self.loaded = False
        self._generation = 0  # the newest reload: an older one that finishes later draws nothing

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading images…", id="cmp-note")
        yield ScrollableContainer(id="cmp-grid", can_focus=False)  # the thumbnails are the tab stops
        yield KeyBar()

    def on_mount(self) -> None:
        self.sub_title = "compare " + ", ".join(self.names)
        self.action_reload()

    def action_reload(self) -> None:
        self._generation += 1
        self._load(self._generation)

    @background(group="compare")
    def _load(self, generation: int) -> None:
        prompts, columns = build_grid([run_dir(self.study, n) for n in self.names])
        self.app.call_from_thread(self._show, generation, prompts, columns)

    async def _show(self, generation: int, prompts: list[str], columns: list[Column]) -> None:
        if generation != self._generation:
            return
        self.prompts, self.columns = prompts, columns
        grid = self.query_one("#cmp-grid", ScrollableContainer)
        await grid.remove_children()
        if generation != self._generation:  # `r` again while the old grid went: the newer one draws
            return
        rows = [Horizontal(Label("prompt", classes="cmp-prompt"),
                           *(Label(c.run, classes="cmp-head", markup=False) for c in columns), classes="cmp-row")]  # fmt: skip
        for prompt in prompts:
            cells = []
            for col in columns:
                cell = col.cells.get(prompt)
                if cell is None:
                    cells.append(Static("no image", classes="cmp-empty"))
                else:
                    thumb = Thumbnail(cell.path, cell.caption, cell.image)
                    thumb.tooltip = f"{col.run}: {prompt}"
                    cells.append(thumb)
            rows.append(
                Horizontal(Label(prompt, classes="cmp-prompt", markup=False), *cells, classes="cmp-row")
            )
        rows.append(Horizontal(Label("run totals", classes="cmp-prompt"),
                               *(Static(c.totals(), classes="cmp-foot") for c in columns), classes="cmp-row"))  # fmt: skip
        await grid.mount_all(rows)
        n_images = sum(len(c.cells) for c in columns)
        note = f"{len(prompts)} prompt(s) x {len(columns)} run(s) · tab/shift+tab between images · enter: full size"
        if not n_images:
            note = "no evaluation images yet in these runs: they are made after training"
        self.query_one("#cmp-note", Static).update(note)
        first = next(iter(self.query(Thumbnail)), None)
        if first is not None:
            first.focus()
        self.loaded = True

    @on(Thumbnail.Opened)
    def _open(self, event: Thumbnail.Opened) -> None:
        from flux_tui.tui.screens.detail import ImageScreen

        thumbs = list(self.query(Thumbnail))
        items = [(t.path, f"{t.tooltip} · {t.caption}") for t in thumbs]
        self.app.push_screen(ImageScreen(items, thumbs.index(event.thumbnail)))
