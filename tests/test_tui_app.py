"""The dashboard driven from the keyboard (Textual Pilot) over run folders written by hand: the matrix,
sorting and filtering, the live log, gauges, stopping runs, the detail screen, help, quitting."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static, TabbedContent
from tui_helpers import FixedTelemetry, make_study, populated_study, sleeper, until, write_run

from flux_tui.core.runs import NEW, QUEUED, RunDir
from flux_tui.tui.app import FluxApp
from flux_tui.tui.screens.detail import ImageScreen, RunDetailScreen
from flux_tui.tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from flux_tui.tui.screens.help import HelpScreen
from flux_tui.tui.widgets.curveplot import CurvePanel, ScoreCurve
from flux_tui.tui.widgets.gauges import GaugesPanel
from flux_tui.tui.widgets.images import FittedImage, ImageWidget, Thumbnail
from flux_tui.tui.widgets.logpane import LogPane
from flux_tui.tui.widgets.lossplot import LossPlot
from flux_tui.tui.widgets.matrix import MatrixTable

SIZE = (160, 45)


@pytest.fixture
def workspace(tmp_path: Path):
    proc = sleeper()
    study = populated_study(tmp_path / "ws", running_pid=proc.pid)
    yield study, proc
    proc.kill()
    proc.wait()


def matrix(app: FluxApp) -> MatrixTable:
    return app.screen.query_one(MatrixTable)


def cell(app: FluxApp, name: str, column: str) -> str:
    return str(matrix(app).get_cell(name, column))


def fast_app(study, **kwargs) -> FluxApp:
    kwargs.setdefault("run_queue", False)
    kwargs.setdefault("telemetry", FixedTelemetry())
    kwargs.setdefault("status_every", 0.05)
    return FluxApp(study, interval=0.05, telemetry_every=0.2, **kwargs)


async def test_matrix_shows_each_runs_state_progress_and_scores_with_the_best_marked(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert cell(app, "exp01", "state") == "done"
        assert cell(app, "exp03", "state") == "running:train"
        assert cell(app, "exp03", "progress") == "23/40"
        assert cell(app, "exp04", "progress") == "queue #1"
        assert cell(app, "exp05", "state") == "failed"
        assert cell(app, "exp06", "state") == "new"
        assert cell(app, "exp01", "face_distance") == "0.7571"
        assert cell(app, "exp02", "clip_score") == "0.2945"
        assert cell(app, "exp03", "eta") == "8s"  # (40 - 23) steps x 0.5 s
        # lower face distance and higher CLIP score are marked best
        best = matrix(app).get_cell("exp01", "face_distance")
        assert "green" in str(best.style)
        assert "green" not in str(getattr(matrix(app).get_cell("exp02", "face_distance"), "style", ""))
        summary = str(app.screen.query_one("#summary", Static).render())
        assert "1 running" in summary and "2 done" in summary and "1 queued" in summary


async def test_sort_from_the_keyboard_and_again_to_reverse(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.press("s")
        assert isinstance(app.screen, ChoiceScreen)
        keys = [o.id for o in app.screen.query_one("OptionList").options]
        assert keys[-4:] == ["face_distance", "clip_score", "faceless", "best_step"]
        await pilot.press("end", "up", "up", "up", "enter")
        await pilot.pause()
        order = matrix(app).visible_names()
        assert order[:2] == ["exp01", "exp02"]  # 0.7571 < 0.7933; runs without a score after
        await pilot.press("s", "enter")  # the dialog opens on the current column: enter reverses
        await pilot.pause()
        assert matrix(app).visible_names()[:2] == ["exp02", "exp01"]
        assert "sorted by face↓ ↓" in str(app.screen.query_one("#summary", Static).render())


async def test_a_click_on_a_header_sorts_by_it(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE):
        await app.ready.wait()
        table = matrix(app)
        table.sort_by("steps")
        steps = [int(cell(app, n, "steps")) for n in table.visible_names()]
        assert steps == sorted(steps)
        table.sort_by("steps")
        assert [int(cell(app, n, "steps")) for n in table.visible_names()] == sorted(steps, reverse=True)


async def test_filter_by_text_and_escape_clears_it(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"step count")
        await until(pilot, lambda: matrix(app).visible_names() == ["exp05", "exp06"])
        await pilot.press(*" fail")  # every word must match
        await until(pilot, lambda: matrix(app).visible_names() == ["exp05"])
        assert "1 shown" in str(app.screen.query_one("#summary", Static).render())
        await pilot.press(*"zzz")  # nothing matches: no run's loss, log or sample stays on show
        await until(pilot, lambda: matrix(app).visible_names() == [])
        assert app.screen.query_one(LossPlot).border_title == "loss"
        await until(pilot, lambda: app.screen.query_one(LogPane).border_title == "train.log")
        await pilot.press(*["backspace"] * 4)
        await pilot.press("escape")
        await until(pilot, lambda: len(matrix(app).visible_names()) == 6)
        assert app.focused is matrix(app)


async def test_the_log_pane_follows_new_lines_and_keeps_the_users_place(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    log_file = RunDir(study.workspace.runs_dir / "exp03").train_log
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        matrix(app).select("exp03")
        log = app.screen.query_one(LogPane)
        await until(pilot, lambda: log.run_name == "exp03" and log.line_count == 23)
        with open(log_file, "a") as fh:
            fh.writelines(f"new line {i}\n" for i in range(100))
        await until(pilot, lambda: log.line_count == 123)
        assert log.is_vertical_scroll_end  # it followed
        log.scroll_to(y=10, animate=False, immediate=True)
        with open(log_file, "a") as fh:
            fh.writelines(f"more {i}\n" for i in range(50))
        await until(pilot, lambda: log.line_count == 173)
        await pilot.pause()
        assert log.scroll_y == 10  # the user scrolled up: the view stays where they read
        # another run selected: its own log, from the start
        matrix(app).select("exp01")
        await until(pilot, lambda: log.run_name == "exp01" and log.line_count == 20)
        assert "[exp01]" in log.lines[0]
        plot = app.screen.query_one(LossPlot)
        await until(pilot, lambda: len(plot._points) == 20)


async def test_gauges_without_nvidia_say_so_and_show_the_host(workspace) -> None:
    study, _ = workspace
    app = FluxApp(study, run_queue=False, telemetry_every=0.1)  # this machine's real telemetry
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one(GaugesPanel)
        text = await until(pilot, lambda: "host" in str(panel.render()) and str(panel.render()))
        assert "No NVIDIA GPU" in text and "runs train on the CPU" in text
        assert "RAM" in text and "exp03 pid" in text


async def test_gauges_on_a_gpu_server_show_each_gpu_and_each_runs_memory(workspace) -> None:
    study, proc = workspace
    app = fast_app(study, telemetry=FixedTelemetry(gpus=True, pid_mem={proc.pid: 21 * 2**30}))
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one(GaugesPanel)
        text = await until(pilot, lambda: "GPU0" in str(panel.render()) and str(panel.render()))
        assert "H100 80GB HBM3" in text and "52.0/80.0 GiB" in text and "util  97%" in text and "71°C" in text
        assert f"exp03 pid {proc.pid} 21.0 GiB" in text


async def test_x_takes_a_queued_run_off_the_queue_back_to_new(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        matrix(app).select("exp04")
        await pilot.press("x")
        await until(pilot, lambda: cell(app, "exp04", "state") == "new")  # it never ran: not cancelled
        assert RunDir(study.workspace.runs_dir / "exp04").status().state == NEW


async def test_x_sends_sigterm_then_a_second_x_offers_sigkill(tmp_path: Path) -> None:
    study = make_study(tmp_path / "ws")
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert stubborn.stdout.readline().strip() == "ready"
    write_run(study, "exp01", "running", upto=3, pid=stubborn.pid)
    app = fast_app(study)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await app.ready.wait()
            matrix(app).select("exp01")
            await pilot.press("x")
            await until(pilot, lambda: "SIGTERM" in " ".join(str(n.message) for n in app._notifications))
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")  # wait longer: nothing happens
            await pilot.pause(0.2)
            assert stubborn.poll() is None
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: cell(app, "exp01", "state") == "cancelled")
            assert stubborn.wait(5) == -9
            assert "SIGKILL" in RunDir(study.workspace.runs_dir / "exp01").status().message
    finally:
        stubborn.kill()


async def test_detail_screen_shows_config_timeline_scores_and_image_grid(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        matrix(app).select("exp01")
        await pilot.press("d")
        screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        config = screen.query_one("#config", DataTable)
        assert str(config.get_cell("learning_rate", "v")) == "0.001"
        assert str(config.get_cell("lora_rank", "v")) == "8"
        timeline = str(screen.query_one("#timeline", Static).render())
        assert all(s in timeline for s in ("prepare", "train", "generate", "score", "done"))
        assert screen.query_one("#per-prompt", DataTable).row_count == 4
        assert "0.7571" in str(screen.query_one("#scores-summary", Static).render())
        screen.query_one(TabbedContent).active = "tab-eval"
        grid = screen.query_one("#eval-grid")
        thumbs = await until(pilot, lambda: len(grid.query(Thumbnail)) == 4 and list(grid.query(Thumbnail)))
        assert [t.caption.split("\n")[0] for t in thumbs][:2] == ["a photo of cr7man", "cr7man smiling at camera"]
        assert thumbs[0].query_one(ImageWidget).image is not None
        screen.query_one("#detail-tabs Tabs").focus()
        await pilot.press("tab")  # from the tabs, the first tab stop is the first image (no invisible frame)
        assert app.focused is thumbs[0]
        thumbs[1].focus()
        await pilot.press("enter")
        full = await until(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen)
        await until(pilot, lambda: full.query_one("#full-image", FittedImage).image is not None)
        assert "smiling" in str(full.query_one("#full-caption", Static).render())
        await pilot.press("right")
        assert full.index == 2
        await pilot.press("escape", "escape")
        await until(pilot, lambda: app.screen.id == "dashboard")


async def test_the_loss_tab_shows_the_score_curve_with_its_best_step_and_best_at_follows_it_live(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert cell(app, "exp01", "best_step") == "15"  # scored at 5, 10, 15, 20: lowest face distance at 15
        assert cell(app, "exp03", "best_step") == "20"  # running: its curve so far (10, 20)
        assert cell(app, "exp02", "best_step") == ""  # no curve
        # A new evaluation of the running run moves its best step as it is recorded.
        RunDir(study.workspace.runs_dir / "exp03").append_event(
            "curve", step=30, face_distance=0.70, clip_score=0.3, faceless=0, n_images=3
        )  # fmt: skip
        await until(pilot, lambda: cell(app, "exp03", "best_step") == "30", what="best@ of the running run")

        app.open_detail("exp01")
        screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        await pilot.pause()
        screen.query_one(TabbedContent).active = "tab-loss"
        await pilot.pause()
        panel = screen.query_one(CurvePanel)
        assert panel.display
        charts = {c.metric.key: c for c in panel.query(ScoreCurve)}
        assert list(charts) == ["face_distance", "clip_score", "faceless"]  # beside the loss plot
        assert [x for x, _ in charts["face_distance"].points] == [5, 10, 15, 20]
        assert all(c.best == 15 and "best step 15" in str(c.border_title) for c in charts.values())
        note = str(panel.query_one("#curve-note", Static).render())
        assert "score curve at steps 5, 10, 15, 20" in note and "best step 15" in note
        assert screen.query_one("#loss-full", LossPlot).has_points
        await pilot.press("escape")

        app.open_detail("exp02")  # no curve: the loss alone
        screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        await pilot.pause()
        assert not screen.query_one(CurvePanel).display


async def test_a_curve_without_faces_shows_clip_and_faceless_and_says_why_face_distance_is_missing(
    workspace,
) -> None:
    study, _ = workspace
    # The demo's random model: every image of the curve faceless, CLIP scores only.
    curve = [{"step": s, "face_distance": None, "clip_score": c, "faceless": 3, "n_images": 3}
             for s, c in ((5, 0.111), (10, 0.109), (15, 0.110))]  # fmt: skip
    write_run(study, "exp06", "done", scores={"clip_score": 0.1, "faceless": 4, "n_images": 4, "curve": curve},
              curve=curve)  # fmt: skip
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.pause()
        assert cell(app, "exp06", "best_step") == "no face"
        app.open_detail("exp06")
        screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        await pilot.pause()
        screen.query_one(TabbedContent).active = "tab-loss"
        await pilot.pause()
        charts = {c.metric.key: c for c in screen.query(ScoreCurve)}
        assert charts["face_distance"].points == () and charts["face_distance"].best is None
        assert "no face in the curve's images" in str(charts["face_distance"].border_title)
        assert [y for _, y in charts["clip_score"].points] == [0.111, 0.109, 0.110]
        assert [y for _, y in charts["faceless"].points] == [3, 3, 3]
        note = str(screen.query_one("#curve-note", Static).render())
        assert "no face distance and no best step" in note and "random-weight model" in note


async def test_detail_of_a_failed_run_says_why(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        app.open_detail("exp05")
        screen = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen)
        await pilot.pause()
        status = str(screen.query_one("#status", Static).render())
        assert "failed" in status and "illegal memory access" in status and "exit code 1" in status


async def test_help_lists_the_keys_and_q_quits_saying_runs_keep_going(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()
    farewell = app.farewell()
    assert "1 run(s) keep going in the background: exp03" in farewell
    assert "1 queued run(s) will start as slots free, with no dashboard open: exp04" in farewell
    assert "Reopen with: " in farewell and f" {study.file}   (or from a shell: " in farewell


async def test_the_command_palette_offers_every_key_sorting_and_each_runs_detail(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for expected in ("Launch", "Queue all", "Stop", "Detail", "Filter", "Sort", "Help",
                         "Sort by loss", "Sort by CLIP↑", "Detail of exp03"):  # fmt: skip
            assert expected in titles, expected
        await pilot.press("ctrl+p")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette")
        await pilot.press("escape")
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Sort by steps")
        command.callback()
        assert matrix(app).sort_column == "steps"


async def test_a_dashboard_started_with_the_collector_off_turns_it_on_after_the_first_frame(workspace) -> None:
    """flux_tui.main turns Python's garbage collector off for the start. Left off, every reference cycle the
    dashboard makes while it runs (each refresh of a widget) would stay in memory until it quits."""
    study, _ = workspace
    gc.disable()
    try:
        app = fast_app(study, gc_paused=True)
        async with app.run_test(size=SIZE):
            await app.drawn.wait()
            assert gc.isenabled()
            assert gc.get_freeze_count() > 10_000  # what the start made is not walked by later collections
    finally:
        gc.unfreeze()
        gc.enable()


def test_without_a_graphics_terminal_thumbnails_are_half_cell_blocks() -> None:
    from textual_image.widget import HalfcellImage

    assert ImageWidget is HalfcellImage  # pytest's stdout is no terminal: not the grey unicode shading


def test_the_dashboard_process_never_imports_torch(tmp_path: Path) -> None:
    """Run the whole app headless in a fresh interpreter, open every screen, and look at sys.modules."""
    study = populated_study(tmp_path / "ws")
    code = f"""
import asyncio, sys
from flux_tui.core import config
from flux_tui.tui.app import FluxApp

async def main():
    app = FluxApp(config.load({str(study.file)!r}), run_queue=False, telemetry_every=0.1)
    async with app.run_test(size=(160, 45)) as pilot:
        await app.ready.wait()
        await pilot.press("d")
        await pilot.pause(0.5)
        for tab in ("tab-loss", "tab-scores", "tab-eval", "tab-samples"):
            app.screen.query_one("#detail-tabs").active = tab
            await pilot.pause(0.3)
        await pilot.press("escape", "question_mark")
        await pilot.pause(0.2)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                   ("torch", "diffusers", "transformers", "peft", "accelerate", "facenet_pytorch"))
    print("HEAVY:" + ",".join(heavy))

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY:\n" in out.stdout or out.stdout.strip().endswith("HEAVY:"), out.stdout


async def test_a_queued_runs_state_lives_on_disk(tmp_path: Path) -> None:
    """`a` queues every run not done; the folders say `queued` (no runs start: run_queue=False)."""
    study = make_study(tmp_path / "ws")
    write_run(study, "exp01", "done")
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        await pilot.press("a")
        await until(pilot, lambda: cell(app, "exp06", "progress") == "queue #5")
        states = {n: RunDir(study.workspace.runs_dir / n).status().state for n in study.names}
        assert states == {"exp01": "done", **{n: QUEUED for n in study.names[1:]}}


def notices(app: FluxApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


STANDIN = Path(__file__).with_name("standin_trainer.py").resolve()
ADDED_ROW = '\n[[experiment]]\nnumber = 7\nname = "exp07"\ngroup = "Added live"\nlearning_rate = 2e-4\nlora_rank = 4\n'


async def test_the_study_file_is_live_rows_problems_and_launches_use_the_file_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flux_tui.core import launch

    # Launches start the stand-in trainer (the trainer's folder protocol in a second, no torch).
    monkeypatch.setenv(launch.TRAINER_ENV, str(STANDIN))
    monkeypatch.setenv("STANDIN_STEPS", "5")
    study = make_study(tmp_path / "ws")
    original = study.file.read_text()
    # The watcher looks at the file only when poked here, so the launch below must find the edit by itself.
    app = fast_app(study, run_queue=True, status_every=3600)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        assert app.watcher is not None
        # An added row appears without a restart.
        study.file.write_text(original + ADDED_ROW)
        app.watcher.poke()
        await until(pilot, lambda: "exp07" in matrix(app).visible_names(), what="the new row")
        assert cell(app, "exp07", "rank") == "4" and cell(app, "exp07", "lr") == "0.0002"
        # A broken file: its problems with file:line, and the last good matrix stays.
        broken = original.replace("lora_rank = 32", "lora_rank = 0", 1) + ADDED_ROW
        study.file.write_text(broken)
        app.watcher.poke()
        box = app.screen.query_one("#study-problems", Static)
        await until(pilot, lambda: box.display, what="the problems")
        line = broken.splitlines().index("lora_rank = 0") + 1
        assert f"{study.file}:{line}: [[experiment]] #2.lora_rank: expected an integer >= 1" in str(box.render())
        assert "exp07" in matrix(app).visible_names() and cell(app, "exp02", "rank") == "32"
        matrix(app).select("exp02")
        await pilot.press("enter")  # nothing launches from a file with problems
        await until(pilot, lambda: "fix it first; nothing was launched" in notices(app))
        assert not RunDir(study.workspace.runs_dir / "exp02").run_json.exists()
        # Fixed with another rank, then launched at once: the launch reads the file, not the matrix's copy.
        study.file.write_text(original.replace("lora_rank = 32", "lora_rank = 24", 1) + ADDED_ROW)
        await pilot.press("enter")
        run = RunDir(study.workspace.runs_dir / "exp02")
        await until(pilot, lambda: run.status().state == "done", 30, "the launched run to finish")
        assert run.config()["lora_rank"] == 24
        app.watcher.poke()
        await until(pilot, lambda: cell(app, "exp02", "rank") == "24" and not box.display)


async def test_R_resets_a_run_after_asking_and_keeps_its_folder(workspace) -> None:
    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=SIZE) as pilot:
        await app.ready.wait()
        matrix(app).select("exp03")  # running: refused without a question
        await pilot.press("R")
        await until(pilot, lambda: "exp03 is running: stop it first" in notices(app))
        matrix(app).select("exp05")
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = str(app.screen.query_one("Label").render())
        assert "runs/.old/exp05-" in question and "kept, not deleted" in question
        await pilot.press("n")
        assert RunDir(study.workspace.runs_dir / "exp05").exists()
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: cell(app, "exp05", "state") == "new")
        (kept,) = (study.workspace.runs_dir / ".old").iterdir()
        assert kept.name.startswith("exp05-") and (kept / "status.json").is_file()
        assert f"exp05 reset: its old folder is kept as runs/.old/{kept.name}" in notices(app)


def test_help_lists_every_binding_of_every_screen() -> None:
    import importlib
    import inspect
    import pkgutil

    from textual.screen import Screen

    import flux_tui.tui.screens as screens
    from flux_tui.tui.screens.help import as_bindings, help_markdown, key_label

    text = help_markdown()
    classes = [FluxApp, Thumbnail]
    for info in pkgutil.iter_modules(screens.__path__):
        module = importlib.import_module(f"flux_tui.tui.screens.{info.name}")
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                    if issubclass(c, Screen) and c.__module__ == module.__name__ and "BINDINGS" in c.__dict__]  # fmt: skip
    assert len(classes) >= 10
    for cls in classes:
        for b in as_bindings(list(cls.BINDINGS)):
            assert f"| {key_label(b)} | **{b.description}**" in text, (cls.__name__, b.key)
    # The leaderboard's keys that were missing, and what the scheduler really does with a run.
    assert "| `i` | **Identity**" in text and "then move down a row" in text
    prose = " ".join(text.split())
    assert "goes to the least busy GPU" in prose and "to the GPU with the most free memory" in prose


async def test_at_80x24_every_view_keeps_help_and_quit_in_its_key_bar(workspace) -> None:
    from flux_tui.tui.widgets.keybar import KeyBar

    study, _ = workspace
    app = fast_app(study)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.ready.wait()
        for key in ("1", "2", "3", "4"):
            await pilot.press("escape", key)
            await pilot.pause(0.2)
            bar = str(app.screen.query_one(KeyBar).render())
            if key == "4":  # the playground starts in its prompt field, where q and ? are typed: esc leaves it
                assert " esc Leave form " in bar and " q Quit " not in bar
                await pilot.press("escape")
                await pilot.pause(0.2)
                bar = str(app.screen.query_one(KeyBar).render())
            assert " ? Help " in bar and " q Quit " in bar, (key, bar)
            assert len(bar) <= 80
        await pilot.press("escape", "1")
        bar = str(app.screen.query_one(KeyBar).render())
        assert bar.startswith(" ⏎ Launch  a Queue all  x Stop  d Detail  / Filter  s Sort ")
        # The matrix keeps the columns that matter most: state, progress, loss and the scores.
        shown = [c.key for c in matrix(app).columns_shown]
        assert {"name", "state", "progress", "loss", "face_distance", "clip_score"} <= set(shown)
        assert cell(app, "exp01", "face_distance") == "0.7571"


def test_the_key_bar_makes_room_in_order_and_never_drops_help_or_quit() -> None:
    from textual.binding import Binding

    from flux_tui.tui.widgets.keybar import Entry, fit

    sort, views = Binding.Group("sort", compact=True), Binding.Group("views", compact=True)
    own = [Entry("f", "f", "Face dist", group=sort), Entry("c", "c", "CLIP", group=sort), Entry("v", "v", "Compare")]
    shared = [Entry("?", "?", "Help", kept=True), Entry("q", "q", "Quit", kept=True),
              Entry("1", "1", "Matrix", group=views), Entry("2", "2", "Leaderboard", group=views)]  # fmt: skip
    palette = Entry("ctrl+p", "^p", "palette")

    def shown(width: int) -> str:
        entries, pal = fit(own + shared, palette, width)
        return " ".join(f"{e.label} {e.description}" for e in entries) + (" | ^p" if pal else "")

    assert shown(86) == "f Face dist c CLIP v Compare ? Help q Quit 1 Matrix 2 Leaderboard | ^p"
    assert shown(85) == "f Face dist c CLIP v Compare ? Help q Quit 12 views | ^p"  # the last group folds first
    assert shown(70) == "fc sort v Compare ? Help q Quit 12 views | ^p"
    assert shown(58) == "fc sort v Compare ? Help q Quit 12 views"  # then the palette key goes
    assert shown(45) == "fc sort v Compare ? Help q Quit"  # then the views, then the view's keys from the last
    assert shown(30) == "fc sort ? Help q Quit"
    assert shown(5) == "? Help q Quit"
