"""Each screen of the dashboard in a fixed state, for the snapshot tests and scripts/screenshots.py.

A scene is an app over hand-written run folders (fixed times, fixed machine reading) and a Pilot script that
brings it to the screen to picture. Everything that could differ between two machines or two minutes is
pinned: the clock (times shown in UTC), the CPU load, the pids shown in the gauges.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from textual.pilot import Pilot
from tui_helpers import FixedTelemetry, populated_study, scored_sweep, sleeper

from flux_tui.core.telemetry import GiB
from flux_tui.tui.app import FluxApp
from flux_tui.tui.messages import TelemetryRead
from flux_tui.tui.runview import RunGpu
from flux_tui.tui.widgets.images import ImageWidget, Thumbnail
from flux_tui.tui.widgets.lossplot import LossPlot
from flux_tui.tui.widgets.sample import SampleView

SIZE = (160, 45)
SMALL = (80, 24)  # the smallest terminal the dashboard is laid out for
FAKE_PID = 48213  # what the gauges show for the running run, instead of the real (changing) pid


@dataclass(frozen=True)
class Scene:
    name: str
    title: str
    run_before: Callable[[Pilot], Awaitable[None]]
    gpus: bool = False
    sweep: bool = False  # the shipped 11-run study, all scored, instead of runs in every state


async def _wait(pilot: Pilot, pred: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scene not ready: {pred}")
        await pilot.pause(0.05)


async def _settle(pilot: Pilot) -> None:
    app: FluxApp = pilot.app  # type: ignore[assignment]
    await app.ready.wait()
    sample = FixedTelemetry(gpus=app.sample_gpus).sample()  # type: ignore[attr-defined]
    runs = [RunGpu("exp03", FAKE_PID, "cuda:0" if sample.gpus else "cpu", 21 * GiB if sample.gpus else 0)]
    app.post_message(TelemetryRead(sample, runs))
    await pilot.pause(0.7)  # the loss plot redraws at most twice a second
    await _images_loaded(pilot)


async def _images_loaded(pilot: Pilot) -> None:
    def loaded() -> bool:
        screen = pilot.app.screen
        if not all(v.ready for v in screen.query(SampleView)) or not all(p.ready for p in screen.query(LossPlot)):
            return False  # the sample's image and the loss chart mount after the first frame
        widgets = [w for w in screen.query(ImageWidget) if w.display]
        return all(w.image is not None for w in widgets if not _empty_sample(w))

    await _wait(pilot, loaded)
    await pilot.pause(0.2)


def _empty_sample(w: ImageWidget) -> bool:
    pane = w.parent.parent  # the image's FittedImage, then the sample view
    return w.parent.id == "sample-image" and str(pane.query_one("#sample-caption").render()) == "no sample yet"


async def dashboard(pilot: Pilot) -> None:
    await _settle(pilot)


async def dashboard_running(pilot: Pilot) -> None:
    await _settle(pilot)
    pilot.app.screen.query_one("#matrix").select("exp03")
    await pilot.pause(0.7)
    await _images_loaded(pilot)


async def sorted_filtered(pilot: Pilot) -> None:
    await _settle(pilot)
    await pilot.press("slash", *"done")
    await pilot.pause(0.3)
    await pilot.press("enter")
    pilot.app.screen.sort_by("face_distance")
    await pilot.pause(0.7)
    await _images_loaded(pilot)


async def sort_dialog(pilot: Pilot) -> None:
    await _settle(pilot)
    await pilot.press("s")
    await pilot.pause(0.2)


async def kill_dialog(pilot: Pilot) -> None:
    await _settle(pilot)
    pilot.app.screen.query_one("#matrix").select("exp03")
    pilot.app.term_sent["exp03"] = time.monotonic() - 30  # SIGTERM was sent half a minute ago
    await pilot.pause(0.3)
    await pilot.press("x")
    await pilot.pause(0.3)


async def help_screen(pilot: Pilot) -> None:
    await _settle(pilot)
    await pilot.press("question_mark")
    await pilot.pause(0.3)


def _detail(tab: str, run: str = "exp01") -> Callable[[Pilot], Awaitable[None]]:
    async def scene(pilot: Pilot) -> None:
        await _settle(pilot)
        pilot.app.screen.query_one("#matrix").select(run)
        await pilot.press("d")
        await pilot.pause(0.3)
        pilot.app.screen.query_one("#detail-tabs").active = tab
        if tab == "tab-eval":
            await _wait(pilot, lambda: len(pilot.app.screen.query_one("#eval-grid").query(Thumbnail)) == 4)
        if tab == "tab-samples":
            await _wait(pilot, lambda: len(pilot.app.screen.query_one("#samples-list").query(Thumbnail)) >= 2)
        await pilot.pause(0.7)
        await _images_loaded(pilot)

    return scene


async def full_image(pilot: Pilot) -> None:
    await _detail("tab-eval")(pilot)
    thumbs = list(pilot.app.screen.query_one("#eval-grid").query(Thumbnail))
    thumbs[1].focus()
    await pilot.press("enter")
    await pilot.pause(0.3)
    await _images_loaded(pilot)


def _view(key: str, *keys: str) -> Callable[[Pilot], Awaitable[None]]:
    async def scene(pilot: Pilot) -> None:
        await pilot.app.ready.wait()  # type: ignore[attr-defined]
        await pilot.pause(0.3)
        await pilot.press(key)
        await pilot.pause(0.5)
        await pilot.app.workers.wait_for_complete()  # the view's load is done before the next key acts on it
        for k in keys:
            await pilot.press(k)
            await pilot.pause(0.1)
            await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.7)
        await _images_loaded(pilot)

    return scene


SCENES = [
    Scene("dashboard", "Matrix, live log, loss plot, latest sample and gauges (no NVIDIA GPU)", dashboard),
    Scene("dashboard_gpu", "A running run selected, on a two-GPU server", dashboard_running, gpus=True),
    Scene("filter_sort", "Filtered to done runs, sorted by face distance (best marked)", sorted_filtered),
    Scene("sort_dialog", "Sort by any column", sort_dialog),
    Scene("kill_dialog", "A second x offers SIGKILL", kill_dialog),
    Scene("help", "Help: every key", help_screen),
    Scene("detail_overview", "Run detail: resolved config, status, stage timeline", _detail("tab-overview")),
    Scene("detail_loss", "Run detail: the loss, and the score curve with its best step", _detail("tab-loss")),
    Scene("detail_scores", "Run detail: scores and the per-prompt table", _detail("tab-scores")),
    Scene("detail_eval", "Run detail: evaluation images labelled with their prompts", _detail("tab-eval")),
    Scene("detail_samples", "Run detail: intermediate samples by step", _detail("tab-samples")),
    Scene("detail_failed", "Run detail of a failed run", _detail("tab-overview", "exp05")),
    Scene("full_image", "One image full size", full_image),
    Scene("leaderboard", "Leaderboard of the study's sweep: sorted by CLIP score, best marked, top picks",
          _view("2", "c"), sweep=True),
    Scene("compare", "Compare: prompt x run grid of the top picks with their scores", _view("2", "v"), sweep=True),
    Scene("effects", "Effects: steps, the runs that differ only in it, charts and readings",
          _view("3", "right_square_bracket", "right_square_bracket", "right_square_bracket"), sweep=True),
]


# The main views again at 80x24: fewer columns by priority, panes stacked, the key bar keeping ? and q.
SMALL_SCENES = [s for s in SCENES if s.name in
                ("dashboard", "dashboard_gpu", "detail_overview", "leaderboard", "compare", "effects", "help")]  # fmt: skip


class SceneWorkspace:
    """The run folders every scene shows, with a real process standing for the running run."""

    def __init__(self, root: Path):
        os.environ["TZ"] = "UTC"  # times on screen are the same everywhere
        time.tzset()
        self.proc: subprocess.Popen = sleeper()
        self.study = populated_study(root, running_pid=self.proc.pid)
        self.sweep = scored_sweep(root.parent / f"{root.name}-sweep")

    def app(self, scene: Scene) -> FluxApp:
        study = self.sweep if scene.sweep else self.study
        app = FluxApp(study, telemetry=None, run_queue=False, interval=0.05, status_every=0.05)
        app.sample_gpus = scene.gpus  # type: ignore[attr-defined]
        return app

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
