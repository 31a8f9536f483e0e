"""Leaderboard, pick rule, hyperparameter effects, export and report, on run folders written for the test."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tui_helpers import scored_sweep

from flux_tui.core import analysis, config, curve, export, metrics, report, results


@pytest.fixture
def study(tmp_path: Path) -> config.Study:
    return scored_sweep(tmp_path)


def test_leaderboard_sorting_best_values_and_picks(study: config.Study) -> None:
    recs = results.collect(study)
    assert [r.name for r in recs] == study.names
    by_fd = sorted(recs, key=analysis.sort_key("face_distance"))
    assert [r.name for r in by_fd[:3]] == ["exp08", "exp10", "exp11"]
    by_clip = sorted(recs, key=analysis.sort_key("clip_score"))
    assert by_clip[0].name == "exp09"
    assert analysis.best_values(recs) == {"face_distance": 0.71, "clip_score": 0.305, "faceless": 0,
                                          "identity_similarity": pytest.approx(1 - 0.71 / 2)}  # fmt: skip
    # Median faceless is 0: exp08 (1) and exp10 (3) are out, exp11 then exp03 lead.
    assert [r.name for r in analysis.top_picks(recs)] == ["exp11", "exp03", "exp07"]


def test_effects_find_the_runs_that_differ_in_one_hyperparameter(study: config.Study) -> None:
    recs = results.collect(study)
    lr = analysis.find_effects(recs, "learning_rate")
    assert sorted(c.runs for c in lr.comparisons) == [["exp05", "exp08"], ["exp09", "exp04"]]
    rank = analysis.find_effects(recs, "lora_rank")
    assert sorted(c.runs for c in rank.comparisons) == [["exp01", "exp10"], ["exp04", "exp08"], ["exp09", "exp05"]]
    steps = analysis.find_effects(recs, "max_train_steps")
    assert sorted(c.runs for c in steps.comparisons) == [
        ["exp01", "exp04"], ["exp05", "exp02"], ["exp06", "exp03", "exp07"], ["exp10", "exp08"],
    ]  # fmt: skip
    sched = analysis.find_effects(recs, "lr_scheduler")
    assert [c.runs for c in sched.comparisons] == [["exp11", "exp03"]]  # constant < cosine alphabetically
    # exp09 -> exp04: 0.90 -> 0.79 (lower); exp05 -> exp08: 0.85 -> 0.71 (lower).
    assert lr.reading("face_distance") == "higher learning rate lowered face distance in 2 of 2 comparisons"
    assert sched.reading("face_distance") == "constant scheduler gave the better face distance in 1 of 1 comparisons"
    assert analysis.find_effects(recs, "guidance").comparisons == []


def test_export_matches_the_run_folders(study: config.Study) -> None:
    recs = results.collect(study)
    rows = list(csv.DictReader(io.StringIO(export.render(recs, "csv"))))
    assert len(rows) == 11
    row = next(r for r in rows if r["name"] == "exp11")
    assert (row["learning_rate"], row["lora_rank"], row["lora_alpha"], row["lr_scheduler"]) == ("0.0005", "16", "16", "constant")
    assert (row["state"], row["face_distance"], row["faceless"], row["duration_s"]) == ("done", "0.75", "0", "600.0")
    assert (row["started_at"], row["finished_at"]) == ("2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00")
    data = json.loads(export.render(recs, "json"))
    assert data[0]["max_train_steps"] == 500 and data[0]["clip_score"] == 0.29
    md = export.render(recs, "md").splitlines()
    assert md[0].startswith("| name | number | group |") and len(md) == 13


def test_export_cli_writes_a_file(study: config.Study, tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    proc = subprocess.run([sys.executable, "-m", "flux_tui", "export", str(study.file), "--format", "json",
                           "-o", str(out)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(out.read_text())] == study.names


def test_report_writes_markdown_charts_and_contact_sheet(study: config.Study, tmp_path: Path) -> None:
    path = report.write_report(results.collect(study), tmp_path / "report")
    text = path.read_text()
    assert "1. **exp11**" in text and "higher learning rate lowered face distance in 2 of 2" in text
    for name in ("effect_learning_rate.png", "effect_lora_rank.png", "effect_max_train_steps.png", "contact_sheet.png"):
        assert f"]({name})" in text
        assert Image.open(path.parent / name).size[0] > 100
    sheet = Image.open(path.parent / "contact_sheet.png")
    # 11 runs side by side, 2 prompts down: the sheet is wider than tall.
    assert sheet.size[0] > sheet.size[1]
    # the first prompt's label keeps its word spaces: its ink splits at wide gaps into its words
    first = study.experiments[0].settings.eval_prompts[0]
    assert len(first.split()) == 4  # "a photo of cr7man"
    labels = sheet.crop((0, 0, 256, sheet.size[1])).convert("L")  # the prompts' column, left of the images
    top = next(y for y in range(labels.height) if any(labels.getpixel((x, y)) < 128 for x in range(labels.width)))
    assert len(ink_words(labels.crop((0, top, 256, top + 14)))) == len(first.split())


def ink_words(strip: Image.Image, space_px: int = 4) -> list[tuple[int, int]]:
    """Runs of dark columns in a one-line strip, splitting where `space_px` or more columns are blank: the
    words a reader sees (letters sit closer than that; a word space is wider)."""
    gray = strip.convert("L")
    columns = [any(gray.getpixel((x, y)) < 128 for y in range(gray.height)) for x in range(gray.width)]
    words: list[tuple[int, int]] = []
    blank = space_px
    for x, ink in enumerate(columns):
        if ink and blank >= space_px:
            words.append((x, x))
        elif ink:
            words[-1] = (words[-1][0], x)
        blank = 0 if ink else blank + 1
    return words


def test_a_curves_best_step_follows_the_leaderboards_rule() -> None:
    curve = [
        {"step": 250, "face_distance": 0.80, "clip_score": 0.30, "faceless": 0},
        {"step": 500, "face_distance": 0.70, "clip_score": 0.30, "faceless": 2},  # lowest, but more faceless
        {"step": 750, "face_distance": 0.74, "clip_score": 0.29, "faceless": 0},
        {"step": 1000, "face_distance": 0.74, "clip_score": 0.31, "faceless": 0},  # ties with 750: CLIP decides
    ]
    assert analysis.best_step(curve) == 1000
    curve[3]["clip_score"] = 0.28
    assert analysis.best_step(curve) == 750
    # Points that are not a step with numbers are outside data: left out, never a crash.
    assert analysis.best_step([*curve, {"step": "x"}, {"step": 9, "face_distance": True}, "junk"]) == 750
    assert analysis.best_step([{**p, "face_distance": None} for p in curve]) is None
    assert analysis.best_step([]) is None


def test_early_stopping_counts_the_evaluations_since_the_lowest_face_distance() -> None:
    def pts(*fds):
        return [{"step": 10 * (i + 1), "face_distance": fd} for i, fd in enumerate(fds)]

    assert curve.evaluations_since_best_face(pts(0.8, 0.7, None, 0.75)) == 2  # no face: no improvement
    assert curve.evaluations_since_best_face(pts(0.8, 0.7, 0.7)) == 1  # equal is not better
    assert curve.evaluations_since_best_face(pts(0.8, 0.7, 0.6)) == 0
    assert curve.evaluations_since_best_face(pts(None, None)) is None  # nothing to improve on yet


def test_the_steps_analysis_reads_each_runs_curve_beside_the_across_run_one(study: config.Study,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    recs = results.collect(study)
    assert analysis.steps_readings(recs) == [
        "exp03: face distance best at step 750 (0.7200), worse by 0.0400 at 1000",
        "exp07: face distance best at step 1500 (0.7700), the last evaluated step",
        "exp10: face distance best at step 375 (0.7500), better by 0.0100 at 500 but with 1 faceless image(s)",
    ]
    demo = {"curve": [{"step": 10, "clip_score": 0.11, "faceless": 3}, {"step": 20, "clip_score": 0.10, "faceless": 3}],
            "early_stop": {"step": 20, "total": 30}}  # fmt: skip
    assert analysis.steps_reading("demo", demo) == (
        f"demo: no best step, {analysis.NO_CURVE_FACES}; CLIP score highest at step 10 (0.1100), worse by 0.0100 "
        "at 20 (stopped early at step 20 of 30)"
    )
    assert analysis.steps_reading("one", {"curve": demo["curve"][:1]}) is None
    flat = {"curve": [{"step": 10, "face_distance": 0.700}, {"step": 20, "face_distance": 0.703}]}
    assert analysis.steps_reading("flat", flat) == (
        "flat: face distance best at step 10 (0.7000), within 0.005 at 20 (no clear change)"
    )  # a difference below the metric's noise is not read as overfitting
    text = report.write_report(recs, tmp_path / "report").read_text()
    steps = text[text.index("### steps"):text.index("### scheduler")]
    assert "- exp03: face distance best at step 750 (0.7200), worse by 0.0400 at 1000" in steps
    assert "higher steps" not in steps and "more steps" in steps  # the across-run reading stays beside it


def test_runs_without_faces_are_explained_not_called_unscored(study: config.Study, tmp_path: Path) -> None:
    # The demo's random model draws no faces: CLIP scores but no face distance anywhere.
    for rec in results.collect(study):
        assert rec.run is not None
        rec.run.scores_json.write_text(json.dumps({"clip_score": 0.1, "faceless": 11, "n_images": 11}))
    recs = results.collect(study)
    assert analysis.top_picks(recs) == [] and analysis.picks_note(recs) == analysis.NO_FACES
    lr = analysis.find_effects(recs, "learning_rate")
    assert lr.reading("face_distance") == (
        "learning rate: the runs that differ only in it have no face distance (no face found in their images)"
    )
    assert lr.reading("faceless") == "higher learning rate left faceless images unchanged in 2 of 2 comparisons"
    text = report.write_report(recs, tmp_path / "r").read_text()
    assert "No run has a face distance: no face was found" in text
    # the face-distance panel says so instead of drawing empty axes; the CLIP panel still charts
    fig = report.effect_figure(lr)
    panels = dict(zip((m.key for m in report.HEADLINE), fig.axes, strict=True))
    face, clip = panels["face_distance"], panels["clip_score"]
    assert not face.axison and not face.lines and "no face found" in " ".join(t.get_text() for t in face.texts)
    assert clip.axison and len(clip.lines) == len(lr.comparisons) and not clip.texts


def test_a_run_s_figures_come_from_its_per_image_rows_as_the_study_defines_them() -> None:
    rows = [
        {"face": True, "face_distance": 0.6, "identity_similarity": 0.8, "clip_score": 0.30},
        {"face": True, "face_distance": 0.8, "identity_similarity": 0.6, "clip_score": -0.10},
        {"face": False, "face_distance": None, "identity_similarity": None, "clip_score": 0.20},
    ]
    # Face scores average the images with a face; CLIP every image; x100 clamps a negative cosine at 0.
    assert metrics.summary(rows) == {
        "face_distance": pytest.approx(0.7), "identity_similarity": pytest.approx(0.7),
        "clip_score": pytest.approx(0.4 / 3), "clip_score_x100": pytest.approx(50 / 3),
        "faceless": 1, "n_images": 3,
    }  # fmt: skip
    assert metrics.summary([])["face_distance"] is None
    # One line of figures, as the leaderboard's picks and the report show them; a count read as a float.
    values = {"face_distance": 0.75, "clip_score": 0.301, "faceless": 2.0}
    assert metrics.figures(values.get) == "face 0.7500 · CLIP 0.3010 · faceless 2"
    assert metrics.figures({}.get) == "face - · CLIP - · faceless -"


def test_a_difference_within_a_scores_noise_reads_as_no_clear_effect() -> None:
    def effect(key: str, values: list, clip: list[float], faceless: list[int]) -> analysis.Effect:
        scores = {"clip_score": clip, "faceless": faceless, "face_distance": [None] * len(values)}
        return analysis.Effect(key, [analysis.Comparison(key, {}, values, ["a", "b", "c"][: len(values)], scores)])

    # The case: 0.099002 vs 0.098983 is far below CLIP's noise (0.005, in the metric table).
    rank = effect("lora_rank", [8, 16], [0.099002, 0.098983], [2, 2])
    assert metrics.metric("clip_score").noise == metrics.metric("face_distance").noise == 0.005
    assert rank.reading("clip_score") == (
        "higher LoRA rank: no clear effect on CLIP score (1 of 1 comparisons differ by less than 0.005)"
    )
    assert rank.reading("faceless") == "higher LoRA rank left faceless images unchanged in 1 of 1 comparisons"
    # A count has no noise: one image more is a change.
    steps = effect("max_train_steps", [500, 1000, 1500], [0.290, 0.300, 0.302], [0, 1, 1])
    assert steps.reading("clip_score") == "more steps raised CLIP score in 1 of 2 comparisons (1 within 0.005: no clear change)"
    assert steps.reading("faceless") == "more steps raised faceless images in 1 of 2 comparisons"
    sched = effect("lr_scheduler", ["constant", "cosine"], [0.3001, 0.3003], [0, 0])
    assert sched.reading("clip_score") == "no clear difference in CLIP score between schedulers (1 of 1 comparisons within 0.005)"
    assert metrics.noise_rule(metrics.HEADLINE) == "a difference below 0.005 in face distance or CLIP score reads as no clear effect"


def test_a_best_mark_needs_a_run_it_is_better_than(study: config.Study) -> None:
    for rec in results.collect(study):
        assert rec.run is not None  # every run: the same faceless count and CLIP score, face distances differ
        rec.run.scores_json.write_text(json.dumps({"clip_score": 0.3, "faceless": 4, "n_images": 4,
                                                   "face_distance": 0.7 + (rec.number or 0) / 100}))  # fmt: skip
    assert analysis.best_values(results.collect(study)) == {"face_distance": 0.71}
    assert metrics.metric("faceless").best([4, 4]) is None and metrics.metric("faceless").best([4, 3]) == 3
