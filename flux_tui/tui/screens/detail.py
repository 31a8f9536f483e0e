"""One run in full: resolved config, stage timeline, loss curve with the score curve beside it (the scores at
the steps evaluated while training, the best step marked), scores with the per-prompt table, the grid of
evaluation images labelled with their prompts, intermediate samples by step, and any image full size."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Header, Label, Static, TabbedContent, TabPane, Tabs

from flux_tui.core.config import Experiment
from flux_tui.core.metrics import CLIP_SCORE, FACE_DISTANCE, HEADLINE, METRICS, N_IMAGES, Metric, metric
from flux_tui.core.runs import FINISHED, RunDir, run_dir
from flux_tui.tui.format import duration, gib
from flux_tui.tui.messages import RunsChanged, StudyChanged
from flux_tui.tui.runview import (
    EvalImage,
    RunView,
    SampleSet,
    eval_images_on_disk,
    image_name,
    per_image,
    per_prompt,
    samples_on_disk,
)
from flux_tui.tui.screens.base import StudyScreen
from flux_tui.tui.screens.closing import ClosesOnce
from flux_tui.tui.widgets.curveplot import CurvePanel
from flux_tui.tui.widgets.images import FULL_PX, FittedImage, Thumbnail, load_thumbnail, png_text
from flux_tui.tui.widgets.keybar import KeyBar
from flux_tui.tui.widgets.lossplot import LossPlot
from flux_tui.tui.widgets.matrix import state_text
from flux_tui.tui.workers import RelayWorkerErrors, background

if TYPE_CHECKING:
    from flux_tui.tui.app import FluxApp

THUMB_W = 26  # a Thumbnail's width in cells, border included


def clock(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _attempt_end(view: RunView, i: int) -> tuple[float, bool]:
    """When attempt `i` ended (or now, still going), and whether it is still going."""
    attempt, st = view.attempts[i], view.status
    if i + 1 < len(view.attempts):
        return attempt.last, False
    if st.state in FINISHED:
        end = st.finished_at if st.finished_at and st.finished_at >= attempt.start else attempt.last
        return end, False
    return max(time.time(), attempt.last), True


def _stage_lines(view: RunView, i: int) -> Text:
    attempt = view.attempts[i]
    end, live = _attempt_end(view, i)
    out = Text()
    for j, (stage, t) in enumerate(attempt.stages):
        last = j + 1 == len(attempt.stages)
        nxt = end if last else attempt.stages[j + 1][1]
        going = last and live
        out += Text(f"{stage:<9} ", style="bold") + Text(f"{'+' + duration(t - attempt.start):>8}  ")
        out += Text(f"{duration(max(0.0, nxt - t))}{' so far' if going else ''}\n", style="yellow" if going else "")
    return out


def timeline_text(view: RunView) -> Text:
    """Stages in order with when each began and how long it took, attempt by attempt: a run stopped and
    launched again shows each launch with its own start, and the time it sat stopped counts in neither."""
    st = view.status
    if not view.attempts:
        return Text(f"started   {clock(st.started_at)}\n") if st.started_at else Text("not started", style="dim")
    out = Text()
    several = len(view.attempts) > 1
    for i, attempt in enumerate(view.attempts):
        if several:
            out += Text(f"attempt {i + 1} ", style="bold") + Text(f"{clock(attempt.start)}")
            if attempt.resumed_from is not None:
                out += Text(f"  resumed from step {attempt.resumed_from}")
            if i:
                out += Text(f"  after {duration(attempt.start - view.attempts[i - 1].last)} stopped", style="dim")
            out += Text("\n")
        else:
            out += Text(f"started   {clock(attempt.start)}\n")
        out += _stage_lines(view, i)
    if st.state in FINISHED:
        active = sum(_attempt_end(view, i)[0] - a.start for i, a in enumerate(view.attempts))
        over = f" in {len(view.attempts)} attempts" if several else ""
        out += Text(f"{st.state:<9} ", style="bold") + Text(f"{clock(st.finished_at)}  total {duration(active)}{over}\n")
    return out


def status_text(view: RunView, run: RunDir, root: Path | None = None) -> Text:
    st = view.status
    out = Text("state     ") + state_text(st, view.stale) + Text("\n")
    if st.damage:
        out += Text(f"damaged   {st.damage}\n", style="bold red")
    for problem in (view.scores_problem, view.events_problem):
        if problem:
            out += Text(f"problem   {problem}\n", style="red")
    if view.stale:
        out += Text(f"stale     {view.stale}\n", style="italic red")
    if st.device:
        out += Text(f"device    {st.device}\n")
    if st.pid:
        out += Text(f"pid       {st.pid} on {st.host or '?'}\n")
    if view.step is not None:
        out += Text(f"step      {view.step}/{view.total or '?'}")
        if view.sec_per_step:
            out += Text(f"  {view.sec_per_step:.2f} s/step")
        if view.mem_peak:
            out += Text(f"  peak GPU memory {gib(view.mem_peak)} GiB")
        out += Text("\n")
    kept = [p.name.removeprefix("checkpoint-") for p in run.checkpoints()]  # on disk now, not every one saved
    if kept:
        out += Text(f"checkpoints {', '.join(kept[-5:])}" + (f" ({len(kept)} kept)" if len(kept) > 5 else "") + "\n")
    if st.exit_code is not None:
        out += Text(f"exit code {st.exit_code}\n")
    if st.message:
        style = "red" if st.state in ("failed", "oom") else "yellow" if st.state == "damaged" else ""
        out += Text(f"message   {st.message}\n", style=style)
    if st.log_tail:
        out += Text("last log lines:\n", style="bold") + Text("\n".join(st.log_tail[-10:]), style="dim")
    where = run.path.relative_to(root) if root and run.path.is_relative_to(root) else run.path
    out += Text(f"\nfolder    {where}", style="dim")
    return out


# The per-prompt table: the image count, then the headline scores.
PER_PROMPT_COLUMNS: tuple[Metric, ...] = (metric(N_IMAGES), *HEADLINE)


def scores_text(scores: dict[str, Any] | None, state: str) -> Text:
    if not scores:
        return Text("no scores yet" + (" (the run is not done)" if state != "done" else ""), style="dim")
    out = Text()
    for m in METRICS:
        value = m.format(scores.get(m.key), missing="")
        if value:
            out += Text(f"{m.title:<40}", style="bold") + Text(f"{value}\n")
    faceless = scores.get("faceless_images")
    if faceless:
        names = ", ".join(Path(str(p)).name for p in faceless)
        out += Text(f"{'no face found in':<40}", style="bold") + Text(names + "\n", style="yellow")
    return out


class ImageScreen(ClosesOnce, RelayWorkerErrors, ModalScreen[None]):
    """One image as large as the terminal allows, with its prompt and metadata; arrows step through."""

    DEFAULT_CSS = """
    ImageScreen { align: center middle; background: $background 80%; }
    ImageScreen > Vertical { width: 100%; height: 100%; border: thick $accent; background: $surface; }
    ImageScreen #full-image { width: 1fr; height: 1fr; }
    ImageScreen #full-caption { height: auto; max-height: 4; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape,q,enter", "dismiss", "Back", tooltip="close the image"),
        Binding("left", "step(-1)", "Previous", tooltip="the previous image of the same grid"),
        Binding("right", "step(1)", "Next", tooltip="the next image of the same grid"),
    ]

    def __init__(self, items: list[tuple[Path, str]], index: int = 0) -> None:
        super().__init__()
        self.items, self.index = items, index

    def compose(self) -> ComposeResult:
        with Vertical():
            yield FittedImage(id="full-image")
            yield Static(id="full-caption")

    def on_mount(self) -> None:
        self._show()

    def action_step(self, delta: int) -> None:
        self.index = (self.index + delta) % len(self.items)
        self._show()

    def _show(self) -> None:
        path, caption = self.items[self.index]
        self.query_one(Vertical).border_title = f"{path.name} ({self.index + 1}/{len(self.items)})"
        self._load(path, caption)

    @background(group="full-image")
    def _load(self, path: Path, caption: str) -> None:
        image = load_thumbnail(path, FULL_PX)
        meta = png_text(path)
        self.app.call_from_thread(self._set, image, caption, meta)

    def _set(self, image: PILImage.Image | None, caption: str, meta: dict[str, str]) -> None:
        self.query_one("#full-image", FittedImage).image = image
        text = Text(caption or "", style="bold")
        extra = "  ".join(f"{k}: {v}" for k, v in meta.items() if k != "prompt" and len(v) < 80)
        if extra:
            text += Text("\n" + extra, style="dim")
        if image is None:
            text += Text("\n(the image cannot be read)", style="red")
        self.query_one("#full-caption", Static).update(text)


class RunDetailScreen(ClosesOnce, StudyScreen):
    HELP_WIDGETS = (Tabs, Thumbnail)
    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="back to the matrix"),
        Binding("r", "reload", "Reload images", show=False, tooltip="look for new evaluation images and samples"),
    ]

    app: FluxApp

    def __init__(self, name: str) -> None:
        super().__init__(id="detail")
        self.run_name = name
        self.run: RunDir | None = None  # set on mount, when the app (and its study) is reachable
        self._eval_paths: tuple[Path, ...] | None = None
        self._sample_paths: tuple[Path, ...] | None = None
        self._experiment: Experiment | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="detail-head")
        with TabbedContent(id="detail-tabs"):
            with TabPane("Overview", id="tab-overview"), Horizontal(id="overview"):
                with VerticalScroll(id="overview-right"):
                    yield Static(id="status")
                    yield Static(id="timeline")
                yield DataTable(id="config", cursor_type="row", zebra_stripes=True)
            with TabPane("Loss", id="tab-loss"), Horizontal(id="loss-row"):
                yield LossPlot(id="loss-full")
                yield CurvePanel(id="curve-panel")
            with TabPane("Scores", id="tab-scores"), Vertical():
                yield Static(id="scores-summary")
                yield DataTable(id="per-prompt", cursor_type="row", zebra_stripes=True)
            # No tab stop on the scrolling frames: their thumbnails are, and a focused one scrolls into view.
            with TabPane("Evaluation images", id="tab-eval"), VerticalScroll(can_focus=False):
                yield Label("", id="eval-note")
                yield Container(id="eval-grid")
            with TabPane("Samples by step", id="tab-samples"):
                yield VerticalScroll(id="samples-list", can_focus=False)
        yield KeyBar()

    def on_mount(self) -> None:
        self.run = run_dir(self.study, self.run_name)
        self.sub_title = self.run_name
        self._fill_config()
        table = self.query_one("#per-prompt", DataTable)
        table.add_column("prompt", key="prompt")
        for m in PER_PROMPT_COLUMNS:
            table.add_column(m.narrow if m.is_count else m.header, key=m.key)
        self.show_view(self.view)
        self.feeds.runs.subscribe(self, self._runs_changed)
        self.feeds.study.subscribe(self, self._study_changed)

    @property
    def experiment(self) -> Experiment:
        """The run's experiment as the study file says now; the last one known if the file dropped it."""
        try:
            self._experiment = self.study.get(self.run_name)
        except KeyError:
            if self._experiment is None:
                raise
        return self._experiment

    def _study_changed(self, message: StudyChanged) -> None:
        if message.study is not None:
            self._fill_config()
            self.show_view(self.view)

    @property
    def view(self) -> RunView:
        return self.app.views.get(self.run_name, RunView(self.run_name))

    def _fill_config(self) -> None:
        assert self.run is not None
        table = self.query_one("#config", DataTable)
        table.clear(columns=True)
        table.add_column("setting", key="k")
        table.add_column("value", key="v")
        exp = self.experiment
        config = self.run.config() or exp.config_dict()
        changed = set(self.run.changed_keys(exp))
        for key in sorted(config):
            value = config[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            if key == "lora_alpha" and value is None:
                text = f"None (= lora_rank, {config.get('lora_rank')})"
            root = f"{self.study.workspace.root}{os.sep}"
            if isinstance(value, str) and value.startswith(root):
                text = value.removeprefix(root)  # short paths: the workspace is the user's cwd
            style = "italic red" if key in changed else ""
            table.add_row(Text(key, style=style), Text(text, style=style), key=key)
        table.border_title = "resolved config" + (" (red: changed in the file since)" if changed else "")

    # -- updates
    def _runs_changed(self, message: RunsChanged) -> None:
        if self.run_name in message.views:
            self.show_view(message.views[self.run_name])

    def show_view(self, view: RunView) -> None:
        assert self.run is not None
        s = self.experiment.settings
        head = Text(f"{self.run_name}", style="bold") + Text(f" · {self.experiment.group} · ")
        head += state_text(view.status, view.stale)
        head += Text(f"  · lr {s.learning_rate:g} · rank {s.lora_rank} · alpha {s.alpha} · {s.max_train_steps} steps"
                     f" · {s.lr_scheduler} · {s.resolution}px")  # fmt: skip
        self.query_one("#detail-head", Static).update(head)
        self.query_one("#status", Static).update(status_text(view, self.run, self.study.workspace.root))
        self.query_one("#timeline", Static).update(
            Text("stage timeline\n", style="bold") + timeline_text(view)
        )
        self.query_one("#loss-full", LossPlot).set_points(view.losses, f"loss · {self.run_name}")
        stop = view.early_stop or (view.scores or {}).get("early_stop")
        self.query_one(CurvePanel).show_curve(view.score_curve, view.best_step, view.curve_without_faces,
                                              stop if isinstance(stop, dict) else None)  # fmt: skip
        self.query_one("#scores-summary", Static).update(scores_text(view.scores, view.state))
        self._fill_per_prompt(view)
        self._refresh_images(view)

    def _fill_per_prompt(self, view: RunView) -> None:
        table = self.query_one("#per-prompt", DataTable)
        table.clear()
        for i, row in enumerate(per_prompt(view.scores)):
            values = (m.format(row.get(m.key), missing="") for m in PER_PROMPT_COLUMNS)
            table.add_row(str(row.get("prompt", "")), *values, key=str(i))

    def _refresh_images(self, view: RunView) -> None:
        assert self.run is not None
        evals = eval_images_on_disk(self.run, view)
        paths = tuple(e.path for e in evals)
        if paths != self._eval_paths:
            self._eval_paths = paths
            self._load_eval(evals, view.scores)
        samples = samples_on_disk(self.run, view)
        spaths = tuple(p for sset in samples for p in sset.paths)
        if spaths != self._sample_paths:
            self._sample_paths = spaths
            self._load_samples(samples)

    def action_reload(self) -> None:
        self._eval_paths = self._sample_paths = None
        self._refresh_images(self.view)

    # -- thumbnails, decoded off the event loop
    @background(group="eval")
    def _load_eval(self, evals: list[EvalImage], scores: dict[str, Any] | None) -> None:
        by_name = {image_name(i): i for i in per_image(scores)}
        items = []
        for e in evals:
            extra = by_name.get(e.path.name, {})
            prompt = e.prompt or str(extra.get("prompt") or "") or png_text(e.path).get("prompt", "")
            items.append((e.path, prompt, extra, load_thumbnail(e.path)))
        self.app.call_from_thread(self._show_eval, items)

    def _show_eval(self, items: list[tuple[Path, str, dict, PILImage.Image | None]]) -> None:
        grid = self.query_one("#eval-grid", Container)
        grid.remove_children()
        note = self.query_one("#eval-note", Label)
        if not items:
            note.update("no evaluation images yet: they are made after training")
            return
        note.update(f"{len(items)} images · enter on one opens it full size")
        thumbs = []
        for path, prompt, extra, image in items:
            fd, clip = extra.get(FACE_DISTANCE), extra.get(CLIP_SCORE)
            facts = []
            if isinstance(fd, int | float):
                facts.append(f"fd {fd:.3f}")
            elif extra.get("face") is False:
                facts.append("no face")
            if isinstance(clip, int | float):
                facts.append(f"clip {clip:.3f}")
            caption = f"{prompt}\n{' · '.join(facts)}" if facts else prompt
            thumb = Thumbnail(path, caption, image)
            thumb.tooltip = prompt
            thumbs.append(thumb)
        grid.mount_all(thumbs)
        self._fit_grid()

    @background(group="samples")
    def _load_samples(self, samples: list[SampleSet]) -> None:
        rows = [
            (s.step, [(p, s.caption(i), load_thumbnail(p)) for i, p in enumerate(s.paths)]) for s in samples
        ]
        self.app.call_from_thread(self._show_samples, rows)

    def _show_samples(self, rows: list[tuple[int, list[tuple[Path, str, PILImage.Image | None]]]]) -> None:
        box = self.query_one("#samples-list", VerticalScroll)
        box.remove_children()
        if not rows:
            box.mount(Label("no intermediate samples (sample_every = 0, or none made yet)"))
            return
        for step, images in rows:
            row = HorizontalScroll(classes="sample-row", can_focus=False)
            row.border_title = f"step {step}"
            box.mount(row)
            row.mount_all(Thumbnail(p, caption, im) for p, caption, im in images)

    def on_resize(self) -> None:
        self._fit_grid()

    def _fit_grid(self) -> None:
        grid = self.query_one("#eval-grid", Container)
        grid.styles.grid_size_columns = max(1, (self.size.width - 4) // THUMB_W)

    @on(Thumbnail.Opened)
    def _open_image(self, event: Thumbnail.Opened) -> None:
        thumbs = (
            list(event.thumbnail.parent.query(Thumbnail)) if event.thumbnail.parent else [event.thumbnail]
        )
        items = [(t.path, t.caption.split("\n")[0]) for t in thumbs]
        self.app.push_screen(ImageScreen(items, thumbs.index(event.thumbnail)))
