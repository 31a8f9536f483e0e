"""The dashboard never exits on its own: keys that arrive together (SSH batches them), thousands of random
keys from every screen's bindings, and background work that fails."""

from __future__ import annotations

import ast
import asyncio
import os
import random
import shutil
from pathlib import Path

import pytest
from textual import events
from textual.binding import Binding
from textual.widgets import Static
from tui_helpers import FixedTelemetry, populated_study, sleeper, until

from flux_tui.core import runs
from flux_tui.tui import app as app_module
from flux_tui.tui.app import FluxApp
from flux_tui.tui.screens.base import StudyScreen
from flux_tui.tui.screens.closing import ClosesOnce
from flux_tui.tui.screens.compare import CompareScreen
from flux_tui.tui.screens.dashboard import DashboardScreen
from flux_tui.tui.screens.detail import ImageScreen, RunDetailScreen
from flux_tui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from flux_tui.tui.screens.effects import EffectsScreen
from flux_tui.tui.screens.help import HelpScreen
from flux_tui.tui.screens.leaderboard import LeaderboardScreen
from flux_tui.tui.screens.playground import PlaygroundScreen
from flux_tui.tui.widgets.images import Thumbnail
from flux_tui.tui.widgets.matrix import MatrixTable
from flux_tui.tui.workers import RelayWorkerErrors, background, log_path

SIZE = (160, 45)
KEYS = int(os.environ.get("FLUX_TUI_RANDOM_KEYS", "3000"))  # more for a longer hunt
SCREENS = (FluxApp, DashboardScreen, RunDetailScreen, ImageScreen, LeaderboardScreen, CompareScreen, EffectsScreen,
           PlaygroundScreen, ChoiceScreen, ConfirmScreen, HelpScreen, Thumbnail, MatrixTable)  # fmt: skip
# Keys that end the app on purpose: the test is about the app never ending on its own.
QUIT_KEYS = {"q", "ctrl+q", "ctrl+c"}
# Keys no binding names but every user presses: moving around widgets, lists and tables.
NAVIGATION = ["up", "down", "left", "right", "tab", "shift+tab", "enter", "escape", "space", "home", "end",
              "pageup", "pagedown", "backspace", "a", "7"]  # fmt: skip


def bound_keys() -> list[str]:
    """Every key a binding of the dashboard's screens names (the footer's and the hidden ones)."""
    keys = set(NAVIGATION)
    for cls in SCREENS:
        for b in getattr(cls, "BINDINGS", []):
            spec = b.key if isinstance(b, Binding) else b[0]
            keys |= {k.strip() for k in spec.split(",")}
    return sorted(keys - QUIT_KEYS - {"ctrl+p"})  # the palette runs Textual's own commands (Quit among them)


def character(key: str) -> str | None:
    named = {"space": " ", "enter": "\r", "tab": "\t", "slash": "/", "question_mark": "?",
             "left_square_bracket": "[", "right_square_bracket": "]", "backspace": "\x7f"}  # fmt: skip
    return named.get(key, key if len(key) == 1 else None)


def batch(app: FluxApp, keys: list[str]) -> None:
    """Keys posted at once, as the terminal driver posts what one read of the terminal held."""
    for key in keys:
        app.post_message(events.Key(key, character(key)))


@pytest.fixture
def workspace(tmp_path: Path):
    proc = sleeper()
    study = populated_study(tmp_path / "ws", running_pid=proc.pid)
    shutil.rmtree(tmp_path / "ws" / "photos")  # a launch is refused at once (no photos): no trainer starts
    yield study
    proc.kill()
    proc.wait()


class Recording(FluxApp):
    """The dashboard, noting each launch it asks for (and asking for it as always)."""

    CSS_PATH = str(Path(app_module.__file__).with_name(FluxApp.CSS_PATH))  # Textual reads it beside the subclass

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[str] = []

    def do_submit(self, name: str) -> None:
        self.submitted.append(name)
        super().do_submit(name)


async def handled(pilot, *nodes) -> None:
    """Until each node (in order) has handled every message queued to it so far: keys already on their way
    to a widget under a screen that opened meanwhile, which Pilot's own waits (the screen in front) miss."""
    for node in nodes:
        done = asyncio.Event()
        node.call_later(done.set)
        await until(pilot, done.is_set)


def fast_app(study, cls: type[FluxApp] = FluxApp, **kwargs) -> FluxApp:
    return cls(study, run_queue=False, telemetry=FixedTelemetry(), interval=0.05, status_every=0.05,
                   telemetry_every=0.2, **kwargs)  # fmt: skip


async def test_two_enters_in_one_read_on_the_sort_dialog_sort_once(workspace) -> None:
    app = fast_app(workspace)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.press("s")
        dialog = await until(pilot, lambda: isinstance(app.screen, ChoiceScreen) and app.screen)
        batch(app, ["enter", "enter"])  # the first picks "#", the second arrives while the dialog closes
        await until(pilot, lambda: app.screen.id == "dashboard" and not dialog.is_attached)
        await pilot.pause()
        assert app.is_running and app.screen.query_one(MatrixTable).sort_column == "number"
        assert app.screen.query_one(MatrixTable).sort_reverse is False  # picked once, not reversed by a second pick


async def test_enter_in_the_same_read_as_a_key_that_opens_a_screen_never_launches_a_run(workspace) -> None:
    app = fast_app(workspace, Recording)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        matrix = app.screen.query_one(MatrixTable)
        matrix.select("exp06")  # new: Enter on the dashboard would launch it
        await pilot.pause()
        batch(app, ["s", "enter"])  # meant for the sort dialog `s` opens: it picks there, or is dropped
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen) or matrix.sort_column == "number")
        await handled(pilot, app, matrix)  # the Enter went to the dialog, or to the matrix and was refused
        assert app.submitted == []
        if isinstance(app.screen, ChoiceScreen):
            batch(app, ["escape"])
        await until(pilot, lambda: app.screen.id == "dashboard")
        batch(app, ["d", "enter", "x"])  # the detail opens; neither Enter nor x acts on the dashboard under it
        await until(pilot, lambda: isinstance(app.screen, RunDetailScreen))
        await handled(pilot, app, matrix)
        assert app.submitted == [] and not app.term_sent
        batch(app, ["escape"])
        await until(pilot, lambda: app.screen.id == "dashboard")
        await pilot.press("enter")  # alone, on the matrix: it launches
        assert app.submitted == ["exp06"]
        await pilot.press("slash", "e", "x", "p", "enter")  # Enter in the filter box ends the filtering
        await until(pilot, lambda: matrix.has_focus)
        assert app.submitted == ["exp06"]
        await pilot.press("l", "enter")  # and from the log pane it launches too
        assert app.submitted == ["exp06", "exp06"] and app.is_running


async def test_keys_arriving_while_each_pushed_screen_closes_close_only_it(workspace) -> None:
    app = fast_app(workspace)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        app.open_detail("exp01")
        detail = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        batch(app, ["question_mark"])
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        batch(app, ["escape", "escape", "question_mark"])  # help closes, then the detail; `?` lands on the matrix
        await until(pilot, lambda: isinstance(app.screen, HelpScreen) and not detail.is_attached)
        batch(app, ["escape", "escape", "escape"])
        await until(pilot, lambda: app.screen.id == "dashboard")
        await pilot.pause()
        assert app.is_running and len(app.screen_stack) == 1
        # the same for a confirmation: `y` twice sends one SIGKILL and closes the dialog once
        answers = []
        app.push_screen(ConfirmScreen("Really?"), answers.append)
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        batch(app, ["y", "y", "n", "enter"])
        await until(pilot, lambda: app.screen.id == "dashboard")
        await pilot.pause()
        assert answers == [True] and app.is_running


async def test_thousands_of_random_keys_from_every_screen_never_end_the_app(workspace) -> None:
    """Bursts of 1-6 keys at once, drawn (seeded) from every screen's bindings and the keys that move around,
    switching views too; the app must still be running and must have reported no failed background work."""
    keys = bound_keys()
    assert {"1", "2", "3", "4", "s", "d", "v", "x", "enter", "escape", "question_mark", "r"} <= set(keys)
    rng = random.Random(20240501)
    app = fast_app(workspace)
    sent = 0
    async with app.run_test(size=(100, 30)) as pilot:  # a small terminal: every key redraws the screen
        await app.ready.wait()
        while sent < KEYS:
            burst = [rng.choice(keys) for _ in range(rng.randint(1, 6))]
            batch(app, burst)
            sent += len(burst)
            if rng.random() < 0.05:
                await pilot.pause()
            assert app.is_running, f"the app ended after {sent} keys, the last {burst}"
        await pilot.pause()
        assert app.is_running and app.return_code is None
        app.switch_mode("matrix")
        await pilot.pause()
        assert app.is_running
    log = log_path(workspace.workspace.root)
    assert not log.exists(), log.read_text()[-3000:]


class FailingScreen(ClosesOnce, StudyScreen):
    """Fault injection (no worker of the dashboard can be made to fail for real any more): a screen with one
    background job that raises."""

    BINDINGS = [("escape", "back", "Back")]

    def compose(self):
        yield Static("about to fail")

    @background(group="fail")
    def explode(self) -> None:
        raise RuntimeError("the disk went away")


async def test_a_failing_worker_is_reported_and_logged_and_the_app_goes_on(workspace) -> None:
    app = fast_app(workspace)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        screen = FailingScreen()
        await app.push_screen(screen)
        screen.explode()
        log = log_path(workspace.workspace.root)
        await until(pilot, lambda: log.exists() and "the disk went away" in log.read_text())
        text = log.read_text()
        assert "background work failed: fail (FailingScreen): RuntimeError: the disk went away" in text
        assert "Traceback" in text and "raise RuntimeError" in text
        notes = [n for n in app._notifications if n.title == "background work failed"]
        assert notes and "the disk went away" in notes[0].message and str(log) in notes[0].message
        await pilot.press("escape", "2", "1")
        await pilot.pause()
        assert app.is_running


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]  # fmt: skip


def test_every_worker_follows_the_one_rule() -> None:
    """No `@work`: `background` (exit_on_error=False) instead; `run_worker` with exit_on_error=False; every
    class with a `background` method relays its failures to the app (Textual does not bubble them)."""
    import importlib

    import flux_tui.tui as tui

    root = Path(tui.__file__).parent
    offenders, checked = [], []
    for path in sorted(root.rglob("*.py")):
        if path.name == "workers.py":
            continue
        tree = ast.parse(path.read_text())
        offenders += [f"{path.name}:{c.lineno}: @work" for c in _calls(tree, "work")]
        for call in _calls(tree, "run_worker"):
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("exit_on_error"), ast.Constant) and kw["exit_on_error"].value is False):
                offenders.append(f"{path.name}:{call.lineno}: run_worker without exit_on_error=False")
        module = ".".join(path.relative_to(root.parents[1]).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_calls(f, "background") for f in node.body
                                                      if isinstance(f, ast.FunctionDef)):  # fmt: skip
                cls = getattr(importlib.import_module(module), node.name)
                checked.append(cls.__name__)
                if not issubclass(cls, RelayWorkerErrors):
                    offenders.append(f"{path.name}: {node.name} runs workers but does not relay their failures")
    assert not offenders, offenders
    assert {"LeaderboardScreen", "EffectsScreen", "CompareScreen", "RunDetailScreen", "ImageScreen",
            "PlaygroundScreen", "SampleView"} <= set(checked), checked  # fmt: skip


async def test_a_live_run_whose_status_is_lost_shows_as_running(workspace) -> None:
    """status.json deleted under a run whose trainer still holds the run's lock: running, not new."""
    from flux_tui.core import runlock

    run = runs.run_dir(workspace, "exp06")
    run.path.mkdir(parents=True, exist_ok=True)
    fd = runlock.acquire(run.path)  # this test process stands for the trainer
    try:
        app = fast_app(workspace)
        async with app.run_test(size=SIZE) as pilot:
            await app.ready.wait()
            await until(pilot, lambda: app.views["exp06"].state == runs.RUNNING)
            assert app.views["exp06"].status.pid is not None
            app.open_detail("exp06")
            screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
            await pilot.pause()
            assert "status.json" in str(screen.query_one("#status", Static).render())
    finally:
        os.close(fd)
