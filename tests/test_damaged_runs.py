"""Damaged run folders (tests/damage_cases.py: every field of status.json, run.json, scores.json and each
events.jsonl record given a wrong type, a float for an int, null, a huge value, garbage; whole files
truncated, empty, not UTF-8, not an object). One run per case, in one study: the core reads every one
without raising and says what is wrong; the dashboard opens every view over them and keeps running."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from damage_cases import Case, events_cases, run_cases, scores_cases, status_cases
from textual.widgets import DataTable, Static
from tui_helpers import FixedTelemetry, scores_for, until, write_run

from flux_tui.core import analysis, config, export, report, results, runs
from flux_tui.core.runfiles import EventProblems
from flux_tui.tui.app import FluxApp
from flux_tui.tui.runview import RunTracker
from flux_tui.tui.screens.compare import CompareScreen, build_grid
from flux_tui.tui.screens.detail import RunDetailScreen
from flux_tui.tui.screens.playground import lora_runs
from flux_tui.tui.workers import log_path

FILES = ("status.json", "run.json", "scores.json", "events.jsonl")
STUDY = """\
[defaults]
base_model = "models/tiny-flux"
data_dir = "photos"
resolution = 64
max_train_steps = 20
sample_every = 10
eval_prompts = ["a photo of cr7man", "cr7man smiling at camera", "cr7man in a suit", "portrait of cr7man"]
"""


def cases_for(file: str, run: runs.RunDir) -> list[Case]:
    """The cases of `file`, made from this run's own sound file (so only the damaged value differs)."""
    if file == "events.jsonl":
        return events_cases(run.events_jsonl.read_bytes())
    base = json.loads((run.path / file).read_text())
    return {"status.json": status_cases, "run.json": run_cases, "scores.json": scores_cases}[file](base)


def damaged_study(root: Path, file: str, pick=None) -> tuple[config.Study, dict[str, Case]]:
    """A study with one run per case of `file` (or per case `pick(cases)` chooses: their indices), every run
    done and scored (with images) before the damage; the runs differ in learning rate only, so the effects
    view compares them all."""
    root.mkdir(parents=True)
    (root / "photos").mkdir()
    all_cases = cases_for(file, _probe_run(root, file))
    indices = pick(all_cases) if pick else range(len(all_cases))
    rows = "".join(f'\n[[experiment]]\nname = "c{i:03d}"\nlearning_rate = {(i + 1) * 1e-5:.5g}\n' for i in indices)
    (root / "experiments.toml").write_text(STUDY + rows)
    study = config.load(root / "experiments.toml")
    chosen = {}
    for i, exp in zip(indices, study.experiments, strict=True):
        run = write_run(study, exp.name, "done", scores=scores_for(i, 0.7 + i / 1000, 0.3), eval_images=True,
                        log_lines=3)  # fmt: skip
        case = cases_for(file, run)[i]
        (run.path / file).write_bytes(case.content)
        chosen[exp.name] = case
    return study, chosen


def _probe_run(root: Path, file: str) -> runs.RunDir:
    """A sound run in a scratch study, to count the cases."""
    scratch = root / ".probe"
    scratch.mkdir()
    (scratch / "photos").mkdir()
    (scratch / "experiments.toml").write_text(STUDY + '\n[[experiment]]\nname = "p"\n')
    return write_run(config.load(scratch / "experiments.toml"), "p", "done", scores=scores_for(0, 0.7, 0.3),
                     eval_images=True, log_lines=1)  # fmt: skip


@pytest.fixture(scope="module", params=FILES)
def damaged(request, tmp_path_factory) -> tuple[str, config.Study, dict[str, Case]]:
    file = request.param
    study, cases = damaged_study(tmp_path_factory.mktemp("damaged") / "ws", file)
    return file, study, cases


def reported(file: str, run: runs.RunDir) -> str | None:
    """What the core says is wrong with `file` of the run (None: nothing)."""
    if file in ("status.json", "run.json"):
        st = run.status()
        return st.damage if st.state == runs.DAMAGED else None
    if file == "scores.json":
        return run.read_scores().problem
    problems = EventProblems()
    list(run.iter_events(problems=problems))
    return problems.text()


def test_the_core_reads_every_damaged_file_and_says_what_is_wrong(damaged) -> None:
    file, study, cases = damaged
    wrong = []
    for name, case in cases.items():
        run = runs.run_dir(study, name)
        said = reported(file, run)
        if bool(said) != case.bad or (said and file.split(".")[0] not in said):
            wrong.append((case.label, case.bad, said))
        tracker = RunTracker(run, study.get(name))
        tracker.poll()
        view = tracker.view
        assert bool(view.problems) >= case.bad, (case.label, view.problems)
        if file == "scores.json" and not case.label.startswith("whole:"):
            assert view.score("clip_score") is not None or case.label.startswith("clip_score"), case.label
    assert not wrong, "\n".join(map(str, wrong))


def test_tables_exports_effects_and_the_report_take_every_damaged_file(damaged, tmp_path: Path) -> None:
    file, study, cases = damaged
    records = results.collect(study)
    assert [r.name for r in records][: len(cases)] == list(cases)
    for fmt in export.FORMATS:
        assert export.render(records, fmt)
    assert analysis.all_effects(records)
    assert report.write_report(records, tmp_path / "report").is_file()
    prompts, columns = build_grid([runs.run_dir(study, n) for n in cases], with_images=False)
    assert len(columns) == len(cases) and prompts
    assert lora_runs(study) == []  # the playground's list of LoRAs: none trained, whatever run.json says


def test_a_damaged_run_is_never_launched(damaged) -> None:
    file, study, cases = damaged
    if file not in ("status.json", "run.json"):
        pytest.skip("scores and events do not steer launching")
    for name, case in cases.items():
        if not case.bad:
            continue
        run = runs.run_dir(study, name)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.path.iterdir())
        with pytest.raises(runs.DamagedRunError, match=f"run {name!r} is damaged") as info:
            runs.prepare(study, study.get(name))
        assert f"flux-tui reset {name}" in str(info.value)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run.path.iterdir()) == before  # nothing touched


def sample_of_fields(cases: list[Case], n: int = 5) -> list[int]:
    """`n` bad cases of different fields, drawn with a fixed seed, and a sound one: a screen takes about a
    second to draw here, so every case would take minutes (the tests above read every one through the same
    code the screens use)."""
    by_field: dict[str, int] = {}
    for i, case in enumerate(cases):
        if case.bad:
            by_field.setdefault(case.label.split("=")[0], i)
    picked = random.Random(12).sample(sorted(by_field.values()), min(n, len(by_field)))
    sound = next(i for i, case in enumerate(cases) if not case.bad)
    return sorted({*picked, sound})


@pytest.mark.parametrize("file", FILES)
async def test_every_view_opens_over_damaged_runs(file: str, tmp_path: Path) -> None:
    study, cases = damaged_study(tmp_path / "ws", file, pick=sample_of_fields)
    app = FluxApp(study, run_queue=False, telemetry=FixedTelemetry(), interval=0.05, status_every=0.05)
    async with app.run_test(size=(160, 45)) as pilot:
        await app.ready.wait()
        for name, case in cases.items():
            if file in ("status.json", "run.json"):
                state = app.views[name].state
                assert (state == runs.DAMAGED) == case.bad, (case.label, state)
        for name, case in cases.items():
            app.open_detail(name)
            screen = await until(pilot, lambda n=name: isinstance(app.screen, RunDetailScreen)
                                 and app.screen.run_name == n and app.screen)  # fmt: skip
            await pilot.pause()
            status = str(screen.query_one("#status", Static).render())
            if case.bad:
                assert file.split(".")[0] in status, (case.label, status)
            await pilot.press("r", "escape")
            await until(pilot, lambda: app.screen.id == "dashboard")
        for key, mode in (("2", "leaderboard"), ("3", "effects")):
            await pilot.press(key)
            await until(pilot, lambda m=mode: app.current_mode == m and app.screen.loaded, what=mode)
        board = app.screen
        app.switch_mode("leaderboard")
        await until(pilot, lambda: app.screen.query_one("#lb-table", DataTable).row_count > 0)
        app.push_screen(CompareScreen(list(cases)))
        await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded, timeout=60)
        await pilot.press("escape", "1")
        assert app.is_running and board.loaded
    assert not log_path(study.workspace.root).exists(), log_path(study.workspace.root).read_text()[-3000:]
