"""The leaderboard and compare screens (Pilot), on run folders written for the test: a real study file,
real run folders with status, scores and evaluation PNGs, and an ablation pseudo-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from textual.widgets import DataTable, Static
from tui_helpers import ScreenHost

from flux_tui.core import config, runs
from flux_tui.tui.messages import RunsChanged
from flux_tui.tui.runview import RunView
from flux_tui.tui.screens.compare import CompareScreen, build_grid
from flux_tui.tui.screens.leaderboard import BEST, LeaderboardScreen
from flux_tui.tui.widgets.images import Thumbnail

PROMPTS = ["a photo of cr7man", "cr7man smiling"]
# name -> (learning_rate, rank, face_distance, clip_score, faceless); None: done but not scored yet.
RUNS = {
    "lr1-r4": (1e-3, 4, 0.80, 0.290, 1),
    "lr5-r4": (5e-3, 4, 0.72, 0.301, 0),
    "lr1-r8": (1e-3, 8, 0.76, 0.305, 0),
    "lr5-r8": (5e-3, 8, 0.70, 0.296, 2),
    "queued": (1e-3, 16, None, None, None),
}
STUDY = f"""\
[defaults]
base_model = "models/tiny-flux"
resolution = 64
max_train_steps = 20
eval_prompts = {json.dumps(PROMPTS)}
guidance_scales = [3.5]
"""


def write_scores(run: runs.RunDir, fd: float, clip: float, faceless: int, tint: int) -> None:
    """scores.json with per-image rows, and one evaluation PNG per prompt carrying its prompt."""
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        name = f"p{i + 1:02d}-g3.5-s0.png"
        meta = PngImagePlugin.PngInfo()
        meta.add_text("prompt", prompt)
        Image.new("RGB", (64, 64), (tint, 40 * i, 90)).save(run.eval_dir / name, pnginfo=meta)
        face = i >= faceless
        rows.append({"image": name, "prompt": prompt, "face": face, "clip_score": clip + 0.001 * i,
                     "face_distance": fd + 0.01 * i if face else None})  # fmt: skip
    scores = {"face_distance": fd, "clip_score": clip, "faceless": faceless, "identity_similarity": 1 - fd / 2,
              "n_images": len(PROMPTS), "per_image": rows}  # fmt: skip
    run.scores_json.write_text(json.dumps(scores))


@pytest.fixture
def study(tmp_path: Path) -> config.Study:
    rows = "".join(
        f'\n[[experiment]]\nname = "{name}"\nlearning_rate = {lr}\nlora_rank = {rank}\n'
        for name, (lr, rank, *_) in RUNS.items()
    )
    (tmp_path / "experiments.toml").write_text(STUDY + rows)
    (tmp_path / "photos").mkdir()
    study = config.load(tmp_path / "experiments.toml")
    for i, exp in enumerate(study.experiments):
        lr, rank, fd, clip, faceless = RUNS[exp.name]
        run = runs.prepare(study, exp)
        if fd is None:
            run.write_status(state=runs.QUEUED)
            continue
        run.write_status(state=runs.DONE, started_at=1000.0, finished_at=1600.0)
        write_scores(run, fd, clip, faceless, tint=50 * i)
    # The ablation's pseudo-run: the base model without a LoRA, scored like the others.
    base = runs.RunDir(study.workspace.runs_dir / "ablation-base")
    base.write_run(study.experiments[0], study, extra={"kind": runs.KIND_ABLATION, "lora": None})
    base.write_status(state=runs.DONE)
    write_scores(base, 1.10, 0.310, 0, tint=250)
    return study


async def _until(pilot, predicate, tries: int = 100) -> None:
    for _ in range(tries):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached")


def _names(screen: LeaderboardScreen) -> list[str]:
    table = screen.query_one(DataTable)
    return [str(table.get_row_at(i)[2]) for i in range(table.row_count)]


async def test_leaderboard_sorts_by_each_score_and_marks_the_best(study: config.Study) -> None:
    app = ScreenHost(study, LeaderboardScreen)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, LeaderboardScreen)
        await _until(pilot, lambda: screen.loaded)
        # Face distance, best (lowest) first; the unscored queued run is not on the board, the pseudo-run is.
        assert _names(screen) == ["lr5-r8", "lr5-r4", "lr1-r8", "lr1-r4", "ablation-base"]
        table = screen.query_one(DataTable)
        first = table.get_row_at(0)
        kinds = {str(table.get_row_at(i)[2]): str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        assert kinds["ablation-base"] == runs.KIND_ABLATION
        fd_col = table.get_column_index("face_distance")
        assert BEST in str(first[fd_col]) and BEST not in str(table.get_row_at(1)[fd_col])

        await pilot.press("c")  # CLIP, highest first: the pseudo-run (0.310) leads and holds the best mark
        assert _names(screen) == ["ablation-base", "lr1-r8", "lr5-r4", "lr5-r8", "lr1-r4"]
        clip_col = table.get_column_index("clip_score")
        assert BEST in str(table.get_row_at(0)[clip_col])
        await pilot.press("c")  # again: reversed
        assert _names(screen)[0] == "lr1-r4"
        await pilot.press("n")  # faceless, fewest first (ties keep file order)
        assert _names(screen)[-1] == "lr5-r8"
        assert "faceless images" in str(screen.query_one("#lb-summary", Static).render())

        # Top picks by the stated rule: median faceless is 0, so lr1-r4 and lr5-r8 are out.
        picks = str(screen.query_one("#lb-picks", Static).render())
        assert "rule: lowest face distance" in picks
        assert picks.index(f"{BEST}1 lr5-r4") < picks.index(f"{BEST}2 lr1-r8") < picks.index(f"{BEST}3 ablation-base")
        assert "lr5-r8" not in picks


async def test_best_at_shows_each_runs_best_step_by_the_boards_own_rule(study: config.Study) -> None:
    def curve(*points):
        return [{"step": s, "face_distance": fd, "clip_score": 0.3, "faceless": n, "n_images": 2}
                for s, fd, n in points]  # fmt: skip

    curves = {
        # 5 has the lowest face distance but more faceless images than the median: 15 is the best step.
        "lr5-r4": curve((5, 0.60, 2), (10, 0.75, 0), (15, 0.70, 0), (20, 0.74, 0)),
        "lr1-r8": curve((10, 0.80, 0), (20, 0.76, 0)),  # best at its last step
        "lr5-r8": curve((10, None, 2), (20, None, 2)),  # no face along the curve
    }
    for name, points in curves.items():
        run = runs.run_dir(study, name)
        scores = json.loads(run.scores_json.read_text())
        run.scores_json.write_text(json.dumps({**scores, "curve": points}))
    app = ScreenHost(study, LeaderboardScreen)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, LeaderboardScreen)
        await _until(pilot, lambda: screen.loaded)
        table = screen.query_one(DataTable)
        col = table.get_column_index("best_step")
        assert str(table.columns[list(table.columns)[col]].label) == "best@"
        cells = {str(table.get_row_at(i)[2]): table.get_row_at(i)[col] for i in range(table.row_count)}
        assert {k: str(v) for k, v in cells.items()} == {
            "lr5-r8": "no face", "lr5-r4": "15", "lr1-r8": "20", "lr1-r4": "-", "ablation-base": "-",
        }  # fmt: skip
        assert "cyan" in str(cells["lr5-r4"].style) and "cyan" not in str(cells["lr1-r8"].style)  # before its end


async def test_select_runs_and_compare_them_as_a_prompt_by_run_grid(study: config.Study) -> None:
    app = ScreenHost(study, LeaderboardScreen)
    async with app.run_test(size=(160, 50)) as pilot:
        board = app.screen
        await _until(pilot, lambda: board.loaded)
        await pilot.press("space", "space")  # the two best by face distance (the default order), moving down
        assert board.selected == {"lr5-r8", "lr5-r4"}
        assert "✓" in str(board.query_one(DataTable).get_row_at(0)[0])
        await pilot.press("v")
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        await _until(pilot, lambda: compare.loaded)
        assert compare.names == ["lr5-r8", "lr5-r4"]  # in the board's order
        assert compare.prompts == PROMPTS
        thumbs = list(compare.query(Thumbnail))
        assert len(thumbs) == 4  # 2 prompts x 2 runs
        # Row by row: each prompt's image of each run, with that image's own scores under it.
        assert thumbs[0].path.parent.parent.parent.name == "lr5-r8"
        assert thumbs[0].caption == "CLIP 0.296 · no face"  # lr5-r8's first two images have no face
        assert thumbs[1].caption == "CLIP 0.301 · face 0.720"
        feet = [str(s.render()) for s in compare.query(".cmp-foot").results(Static)]
        assert feet[0].startswith("CLIP 0.2960\nface 0.7000\nfaceless 2 of 2")
        await pilot.press("enter")  # the focused thumbnail, full size
        assert type(app.screen).__name__ == "ImageScreen"
        await pilot.press("escape", "escape")
        assert app.screen is board


async def test_the_board_reads_again_when_its_feed_says_a_run_finished(study: config.Study) -> None:
    app = ScreenHost(study, LeaderboardScreen)
    async with app.run_test(size=(160, 40)) as pilot:
        board = app.screen
        assert isinstance(board, LeaderboardScreen)
        await _until(pilot, lambda: board.loaded)
        assert "queued" not in _names(board)
        run = runs.run_dir(study, "queued")
        write_scores(run, 0.65, 0.320, 0, tint=10)
        run.write_status(state=runs.DONE)
        # What the watcher would say: the run finished with scores. The board reads the folders again.
        done = RunView("queued", run.status(), scores=run.scores())
        app.feeds.runs.publish(RunsChanged({"queued": done}))
        await _until(pilot, lambda: _names(board)[:1] == ["queued"])


def test_grid_reads_prompts_from_png_metadata_when_scores_are_missing(study: config.Study) -> None:
    run = runs.run_dir(study, "lr1-r4")
    run.scores_json.unlink()
    prompts, (col,) = build_grid([run], with_images=False)
    assert prompts == PROMPTS
    assert [c.prompt for c in col.cells.values()] == PROMPTS
    assert col.cells[PROMPTS[0]].caption == "CLIP - · face -"
    assert str(col.totals()) == "not scored"


async def test_the_dashboard_switches_to_the_analysis_views_and_the_board_follows_new_scores(
    study: config.Study,
) -> None:
    from flux_tui.tui.app import FluxApp
    from flux_tui.tui.screens.effects import EffectsScreen
    from flux_tui.tui.screens.playground import PlaygroundScreen

    app = FluxApp(study, run_queue=False, telemetry=None, interval=0.05, status_every=0.05)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("2")
        board = app.screen
        assert isinstance(board, LeaderboardScreen)
        await _until(pilot, lambda: board.loaded)
        assert "queued" not in _names(board)
        # The queued run finishes and gets scores: the watcher tells the board, which reads them again.
        run = runs.run_dir(study, "queued")
        write_scores(run, 0.65, 0.320, 0, tint=10)
        run.write_status(state=runs.DONE)
        await _until(pilot, lambda: _names(board)[:1] == ["queued"])
        await pilot.press("3")
        assert isinstance(app.screen, EffectsScreen)
        await pilot.press("4")
        assert isinstance(app.screen, PlaygroundScreen)
        await pilot.press("escape", "1")  # out of the prompt field, then back to the matrix
        assert app.current_mode == "matrix"


async def test_a_tie_stars_nobody(study: config.Study) -> None:
    for path in study.workspace.runs_dir.glob("*/scores.json"):  # every scored run: 4 faceless, one CLIP score
        path.write_text(json.dumps({**json.loads(path.read_text()), "faceless": 4, "clip_score": 0.3}))
    app = ScreenHost(study, LeaderboardScreen)
    async with app.run_test(size=(160, 40)) as pilot:
        board = app.screen
        await _until(pilot, lambda: board.loaded)
        table = board.query_one(DataTable)
        for key in ("faceless", "clip_score"):
            col = table.get_column_index(key)
            assert all(BEST not in str(table.get_row_at(i)[col]) for i in range(table.row_count)), key
        assert BEST in str(table.get_row_at(0)[table.get_column_index("face_distance")])  # not all tie there
