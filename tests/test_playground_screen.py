"""The playground screen (Pilot) with the real engine process and the demo's tiny models: type a prompt,
press ctrl+g, the image appears with its scores; the screen answers keys while the engine works; the second
prompt reuses the loaded pipeline; reference photos are added by path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar, SelectionList, Static
from tui_helpers import ScreenHost, until

from flux_tui.core import config
from flux_tui.tui.screens.playground import PlaygroundScreen, parse_weights
from flux_tui.tui.widgets.images import FittedImage

pytestmark = pytest.mark.slow


@pytest.fixture
def study(demo_workspace: Path, tmp_path: Path) -> config.Study:
    """The demo study (models, photos) with its workspace moved to a scratch folder: images land there."""
    study = config.load(demo_workspace / "experiments.toml")
    ws = dataclasses.replace(study.workspace, root=tmp_path, runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    return dataclasses.replace(study, workspace=ws)


async def test_prompt_in_image_and_scores_out_with_the_pipeline_kept(study: config.Study) -> None:
    app = ScreenHost(study, PlaygroundScreen)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen)
        assert not list(screen.query_one("#pg-loras", SelectionList).selected)  # no runs yet: base model
        await until(pilot, lambda: screen.engine_ready, 120)

        # The study's training photos are the reference from the start; more can be added by path.
        refs = screen.query_one("#pg-refs")
        await until(pilot, lambda: "6 reference photo(s), 6 with a face" in str(refs.render()), 300)
        assert screen.query_one("#pg-ref", Input).value == str(study.experiments[0].settings.data_dir)
        await pilot.click("#pg-ref")
        await pilot.press("enter")  # the same folder again: no photo counted twice
        await pilot.pause(1.0)
        await until(pilot, lambda: not screen.busy, 300)
        assert "6 reference photo(s), 6 with a face" in str(refs.render())

        screen.query_one("#pg-steps", Input).value = "3"
        prompt = screen.query_one("#pg-prompt", Input)
        assert prompt.value == study.experiments[0].settings.instance_prompt  # ready to press ctrl+g
        prompt.focus()
        await pilot.press("ctrl+g")
        assert screen.busy
        # The dashboard stays responsive while the engine works: keys still reach the form.
        await pilot.press("ctrl+n")
        assert screen.query_one("#pg-seed", Input).value == "1"
        await pilot.press("ctrl+g")  # a second press while busy is refused, not queued
        await until(pilot, lambda: len(screen.results) == 1, 300)
        first = screen.results[0]
        assert Path(first["path"]).parent == study.workspace.root / "playground"
        assert first["seed"] == 0 and first["steps"] == 3 and first["loras"] == []
        assert first["counters"]["pipeline_loads"] == 1
        scores = str(screen.query_one("#pg-scores", Static).render())
        assert f"CLIP score {first['clip_score']:.4f}" in scores and "face found no" in scores
        assert "loaded the model in" in scores
        await until(pilot, lambda: screen.query_one("#pg-image", FittedImage).image is not None, 30)
        assert screen.query_one("#pg-progress", ProgressBar).percentage == 1.0

        # Enter in the prompt generates again (seed now 1): the pipeline stays loaded.
        prompt.focus()
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.results) == 2, 300)
        second = screen.results[1]
        assert second["seed"] == 1
        assert second["counters"]["pipeline_loads"] == 1 and second["timings"]["load_s"] == 0.0
        assert "model reused" in str(screen.query_one("#pg-scores", Static).render())
        assert screen.query_one("#pg-history", DataTable).row_count == 2

        # A bad field is named before anything is sent.
        screen.query_one("#pg-size", Input).value = "70"
        await pilot.press("ctrl+g")
        assert not screen.busy and len(screen.results) == 2
        client = screen.client
    assert client is not None and not client.alive  # leaving the screen shut the process down


def test_weights_one_per_lora() -> None:
    assert parse_weights("", 2) == [1.0, 1.0]
    assert parse_weights("0.8, 0.7", 2) == [0.8, 0.7]
    with pytest.raises(ValueError, match="1 given for 2 chosen LoRA"):
        parse_weights("0.5", 2)
    with pytest.raises(ValueError, match="expected numbers"):
        parse_weights("a,b", 2)


async def test_the_form_is_ready_for_the_keyboard_and_idle_costs_nothing(study: config.Study) -> None:
    from flux_tui.core import runs

    run = runs.run_dir(study, study.experiments[0].name)  # a finished run with a LoRA file, as the list needs
    run.write_run(study.experiments[0], study)
    run.lora_file.parent.mkdir(parents=True)
    run.lora_file.write_bytes(b"not read unless chosen")
    app = ScreenHost(study, PlaygroundScreen)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        # The field holds the training photos: the line under it says they are being added, not "none yet".
        refs = str(screen.query_one("#pg-refs", Static).render())
        assert "the training photos" in refs and "no reference photos yet" not in refs
        # The progress bar has a total while idle: an indeterminate one animates, redrawing all the time.
        assert screen.query_one("#pg-progress", ProgressBar).total == 1
        # The LoRA list has a highlighted row, so the first space chooses it.
        loras = screen.query_one("#pg-loras", SelectionList)
        loras.focus()
        await pilot.press("space")
        assert list(loras.selected) == [str(run.path)]
        # At 80 columns the image pane keeps most of the width (the form narrows).
        await pilot.pause()
        assert screen.query_one("#pg-image").size.width >= 38
