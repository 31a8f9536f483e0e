"""The effects view (Pilot): on a matrix built for the test, it finds the runs that differ in one
hyperparameter only, charts each score against the values, and says what the comparisons show."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Static, TabbedContent
from tui_helpers import ScreenHost

from flux_tui.core import config, runs
from flux_tui.tui.screens.effects import EffectChart, EffectsScreen

# name -> (overrides, (face_distance, clip_score, faceless)). Designed pairs:
#   learning rate: a-b (rank 4), c-d (rank 8)   rank: a-c, b-d   steps: a-e   alpha: a-g
#   f differs from d in steps AND scheduler, so it pairs with nothing; no scheduler comparison exists.
MATRIX = {
    "a": ("learning_rate = 1e-3\nlora_rank = 4", (0.80, 0.290, 1)),
    "b": ("learning_rate = 5e-3\nlora_rank = 4", (0.75, 0.300, 0)),
    "c": ("learning_rate = 1e-3\nlora_rank = 8", (0.78, 0.310, 0)),
    "d": ("learning_rate = 5e-3\nlora_rank = 8", (0.70, 0.280, 2)),
    "e": ("learning_rate = 1e-3\nlora_rank = 4\nmax_train_steps = 40", (0.77, 0.295, 0)),
    "f": ('learning_rate = 5e-3\nlora_rank = 8\nmax_train_steps = 40\nlr_scheduler = "cosine"', (0.69, 0.300, 0)),
    "g": ("learning_rate = 1e-3\nlora_rank = 4\nlora_alpha = 8", (0.79, 0.292, 0)),
}
STUDY = """\
[defaults]
base_model = "models/tiny-flux"
resolution = 64
max_train_steps = 20
lr_scheduler = "constant"
eval_prompts = ["a photo of cr7man"]
guidance_scales = [3.5, 5.0]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> config.Study:
    root = tmp_path_factory.mktemp("effects")
    rows = "".join(f'\n[[experiment]]\nname = "{name}"\n{over}\n' for name, (over, _) in MATRIX.items())
    (root / "experiments.toml").write_text(STUDY + rows)
    (root / "photos").mkdir()
    study = config.load(root / "experiments.toml")
    for exp in study.experiments:
        fd, clip, faceless = MATRIX[exp.name][1]
        run = runs.prepare(study, exp)
        run.write_status(state=runs.DONE)
        scores = {"face_distance": fd, "clip_score": clip, "faceless": faceless, "identity_similarity": 0.5,
                  "n_images": 2}  # fmt: skip
        if exp.name == "e":  # a score curve (eval_every 10): best at 30, worse at the last step
            scores["curve"] = [{"step": st, "face_distance": fd, "clip_score": 0.3, "faceless": 0}
                               for st, fd in ((10, 0.80), (20, 0.76), (30, 0.74), (40, 0.77))]  # fmt: skip
        if exp.name == "a":  # two guidance scales, as engine.score writes them
            scores["per_guidance"] = [
                {"guidance_scale": 5.0, "face_distance": 0.82, "clip_score": 0.295, "faceless": 1},
                {"guidance_scale": 3.5, "face_distance": 0.78, "clip_score": 0.285, "faceless": 0},
            ]
        run.scores_json.write_text(json.dumps(scores))
    return study


async def _loaded(pilot, screen: EffectsScreen) -> None:
    for _ in range(100):
        if screen.loaded:
            return
        await pilot.pause(0.05)
    raise AssertionError("the effects never loaded")


async def test_effects_view_finds_the_designed_pairs_and_reads_them(study: config.Study) -> None:
    app = ScreenHost(study, EffectsScreen)
    async with app.run_test(size=(180, 60)) as pilot:
        screen = app.screen
        assert isinstance(screen, EffectsScreen)
        await _loaded(pilot, screen)
        found = {e.key: sorted(c.runs for c in e.comparisons) for e in screen.effects}
        assert found == {
            "learning_rate": [["a", "b"], ["c", "d"]],
            "lora_rank": [["a", "c"], ["b", "d"]],
            "lora_alpha": [["a", "g"]],
            "max_train_steps": [["a", "e"]],
            "lr_scheduler": [],
            "guidance": [["a", "a"]],
        }
        tabs = screen.query_one(TabbedContent)
        labels = {pane.id: str(tabs.get_tab(pane).label) for pane in tabs.query("TabPane")}
        assert labels["fx-learning_rate"] == "learning rate (2)"
        assert labels["fx-lr_scheduler"] == "scheduler (0)"

        # The learning-rate tab (the first): its readings, and one chart per score with a line per pair.
        pane = screen.query_one("#fx-learning_rate")
        readings = str(pane.query_one(".fx-readings", Static).render())
        assert "higher learning rate lowered face distance in 2 of 2 comparisons" in readings
        assert "higher learning rate raised CLIP score in 1 and lowered it in 1 of 2 comparisons" in readings  # one up, one down
        # The rule that tells an effect from noise is stated under the readings.
        assert "a difference below 0.005 in face distance or CLIP score reads as no clear effect" in readings
        charts = list(pane.query(EffectChart))
        assert [c.score for c in charts] == ["face_distance", "clip_score", "faceless"]
        assert charts[0].series() == [("rank 4 · steps 20 · constant", [0, 1], [0.80, 0.75]),
                                      ("rank 8 · steps 20 · constant", [0, 1], [0.78, 0.70])]  # fmt: skip
        runs_text = str(pane.query_one(".fx-runs", Static).render())
        assert "1e-3 (a) → 5e-3 (b)" in runs_text and "1e-3 (c) → 5e-3 (d)" in runs_text

        # `]` walks the tabs; the scheduler has no pair and says what would make one.
        for _ in range(4):
            await pilot.press("right_square_bracket")
        assert tabs.active == "fx-lr_scheduler"
        sched = screen.query_one("#fx-lr_scheduler")
        assert not list(sched.query(EffectChart))
        assert "No runs differ only in scheduler" in str(sched.query_one(".fx-runs", Static).render())

        # Guidance is compared within run a, from its per-guidance scores, values in order.
        await pilot.press("right_square_bracket")
        assert tabs.active == "fx-guidance"
        guidance = next(e for e in screen.effects if e.key == "guidance")
        assert guidance.comparisons[0].values == [3.5, 5.0]
        assert "higher guidance scale raised face distance in 1 of 1 comparisons" in str(
            screen.query_one("#fx-guidance .fx-readings", Static).render()
        )
        await pilot.press("left_square_bracket")
        assert tabs.active == "fx-lr_scheduler"
        await pilot.pause()


async def test_the_steps_tab_reads_each_runs_curve_beside_the_comparison_across_runs(study: config.Study) -> None:
    app = ScreenHost(study, EffectsScreen)
    async with app.run_test(size=(180, 60)) as pilot:
        screen = app.screen
        assert isinstance(screen, EffectsScreen)
        await _loaded(pilot, screen)
        for _ in range(3):
            await pilot.press("right_square_bracket")
        tabs = screen.query_one(TabbedContent)
        assert tabs.active == "fx-max_train_steps"
        pane = screen.query_one("#fx-max_train_steps")
        assert "20 (a) → 40 (e)" in str(pane.query_one(".fx-runs", Static).render())  # across runs
        within = str(pane.query_one("#fx-within", Static).render())  # and within one
        assert "Within runs" in within and "e: face distance best at step 30 (0.7400), worse by 0.0300 at 40" in within
        assert not screen.query("#fx-learning_rate #fx-within")  # only the steps tab has it
