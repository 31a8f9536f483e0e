"""RunTracker: the dashboard's view of a run, read incrementally from its folder."""

from __future__ import annotations

from pathlib import Path

from flux_tui.core.fsutil import atomic_write_json
from flux_tui.core.runs import RunDir
from flux_tui.tui.runview import RunTracker, RunView, eval_images_on_disk, per_prompt, samples_on_disk


def test_tracker_reads_only_what_changed_and_follows_appends(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    t = RunTracker(run)
    assert t.poll() is True  # the first look: no status yet, so `new`
    assert t.view.state == "new" and t.poll() is False
    run.write_status(state="running", stage="train")
    run.append_event("stage", stage="train")
    run.append_event("step", step=1, total=10, loss=0.9, sec_per_step=2.0, eta_s=18.0)
    assert t.poll() is True
    v1 = t.view
    assert (v1.state, v1.step, v1.total, v1.loss, v1.eta_s) == ("running", 1, 10, 0.9, 18.0)
    assert t.poll() is False and t.view is v1  # nothing new: the same view object
    # a half-written record is held back until its newline arrives
    with open(run.events_jsonl, "a") as fh:
        fh.write('{"type": "step", "step": 2, "total": 10, "lo')
    assert t.poll() is False
    with open(run.events_jsonl, "a") as fh:
        fh.write('ss": 0.8}\n')
    assert t.poll() is True and t.view.losses == ((1, 0.9), (2, 0.8))
    assert v1.losses == ((1, 0.9),)  # views already handed out never change


def test_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    for step in range(1, 6):
        run.append_event("step", step=step, total=10, loss=1.0)
    t = RunTracker(run)
    t.poll()
    for step in range(4, 8):  # resumed from checkpoint-3
        run.append_event("step", step=step, total=10, loss=0.5)
    t.poll()
    assert [s for s, _ in t.view.losses] == [1, 2, 3, 4, 5, 6, 7]
    assert dict(t.view.losses)[4] == 0.5


def test_a_replaced_events_file_is_read_again_from_the_top(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    for step in range(1, 30):
        run.append_event("step", step=step, total=30, loss=1.0)
    t = RunTracker(run)
    t.poll()
    run.events_jsonl.unlink()  # the run was reset and started over
    run.append_event("step", step=1, total=30, loss=2.0)
    t.poll()
    assert t.view.losses == ((1, 2.0),)


def test_samples_eval_images_scores_and_stages(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.append_event("stage", stage="prepare")
    run.append_event("sample", step=10, paths=[str(run.path / "samples/step_10/00.png")], prompts=["a photo"])
    run.append_event("sample", step=20, paths=["samples/step_20/00.png"], prompts=["a photo"])
    run.append_event(
        "eval_image", path="samples/eval/p01.png", prompt="p one", guidance=3.5, seed=0, checkpoint=None
    )
    run.append_event("eval_image", path="samples/eval/c10-p01.png", prompt="p one", checkpoint=10)
    run.append_event("checkpoint", step=10, path="checkpoints/checkpoint-10")
    atomic_write_json(run.scores_json, {"face_distance": 0.7, "clip_score": 0.3, "faceless": 2})
    t = RunTracker(run)
    t.poll()
    v = t.view
    assert [s for s, _ in v.stages] == ["prepare"]
    sset, i = v.latest_sample
    assert (
        sset.step == 20
        and sset.paths[i] == run.path / "samples/step_20/00.png"
        and sset.caption(i) == "a photo"
    )
    assert [e.path.name for e in eval_images_on_disk(run, v)] == ["p01.png"]  # the checkpoint's are apart
    assert v.checkpoints == (10,)
    assert (v.score("face_distance"), v.score("clip_score"), v.faceless) == (0.7, 0.3, 2)


def test_images_are_found_on_disk_when_the_events_are_lost(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    (run.eval_dir).mkdir(parents=True)
    (run.eval_dir / "p01.png").write_bytes(b"")
    (run.samples_dir / "step_5").mkdir()
    (run.samples_dir / "step_5" / "00.png").write_bytes(b"")
    scores = {"per_image": [{"image": "p01.png", "prompt": "from scores"}]}
    view = RunView("r", scores=scores)
    assert [(e.path.name, e.prompt) for e in eval_images_on_disk(run, view)] == [("p01.png", "from scores")]
    assert [(s.step, [p.name for p in s.paths]) for s in samples_on_disk(run, view)] == [(5, ["00.png"])]


def test_per_prompt_rows_come_as_a_list_or_a_mapping() -> None:
    assert per_prompt({"per_prompt": [{"prompt": "a", "clip_score": 0.3}]}) == [
        {"prompt": "a", "clip_score": 0.3}
    ]
    assert per_prompt({"per_prompt": {"a": {"clip_score": 0.3}}}) == [{"prompt": "a", "clip_score": 0.3}]
    assert per_prompt(None) == []


def test_log_lines_show_what_a_terminal_would() -> None:
    from flux_tui.tui.watcher import clean_line

    assert clean_line("Loading:   0%|    | 0/36\rLoading: 100%|████| 36/36\r") == "Loading: 100%|████| 36/36"
    assert clean_line("\x1b[31mred\x1b[0m\tend") == "red    end"


def test_a_resumed_run_has_one_attempt_per_launch_and_only_checkpoints_on_disk(tmp_path: Path, monkeypatch) -> None:
    import time

    from flux_tui.core.fsutil import append_jsonl
    from flux_tui.tui.screens.detail import status_text, timeline_text

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    run = RunDir(tmp_path / "r")
    t0 = 1_767_225_600.0
    events = [  # launched, stopped after 100 s; launched again an hour later, resumed, trained, evaluated
        ("stage", {"stage": "prepare"}, 0), ("stage", {"stage": "train"}, 10), ("checkpoint", {"step": 10}, 50),
        ("checkpoint", {"step": 20}, 90), ("step", {"step": 25, "loss": 0.5}, 100),
        ("stage", {"stage": "prepare"}, 3700), ("resume", {"step": 20, "path": "checkpoints/checkpoint-20"}, 3705),
        ("stage", {"stage": "train"}, 3710), ("checkpoint", {"step": 30}, 3750), ("stage", {"stage": "generate"}, 3760),
        ("stage", {"stage": "score"}, 3790),
    ]  # fmt: skip
    run.path.mkdir()
    for kind, data, dt in events:
        append_jsonl(run.events_jsonl, {"type": kind, "t": t0 + dt, **data})
    run.write_status(state="done", started_at=t0 + 3700, finished_at=t0 + 3800)
    (run.checkpoints_dir / "checkpoint-30").mkdir(parents=True)  # the limit kept only the newest
    tracker = RunTracker(run)
    tracker.poll()
    view = tracker.view
    assert [(a.start - t0, a.last - t0, a.resumed_from) for a in view.attempts] == [(0, 100, None), (3700, 3790, 20)]
    assert [s for s, _ in view.attempts[1].stages] == ["prepare", "train", "generate", "score"]
    lines = str(timeline_text(view)).splitlines()
    assert lines[0] == "attempt 1 2026-01-01 00:00:00"
    assert lines[2].split() == ["train", "+10s", "1m30s"]  # to its last record, not to the next launch
    assert lines[3].startswith("attempt 2 2026-01-01 01:01:40  resumed from step 20  after 1h00m stopped")
    assert lines[4].split() == ["prepare", "+0s", "10s"]  # its own start, not +0s for a stage an hour later
    assert lines[-1].endswith("total 3m20s in 2 attempts")  # 100 s + 100 s; the hour stopped is not training
    assert "checkpoints 30\n" in str(status_text(view, run))  # 10 and 20 were deleted by the limit


def test_bad_records_and_scores_are_left_out_and_named(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.write_status(state="done")
    run.append_event("step", step=1, total=2, loss=0.9)
    with open(run.events_jsonl, "a") as fh:
        fh.write('{"type": "step", "step": "two", "loss": 0.8}\nnot json\n')
    run.append_event("step", step=2, total=2, loss=0.7)
    atomic_write_json(run.scores_json, {"face_distance": 0.7, "faceless": 4.0, "faceless_images": 3})
    t = RunTracker(run)
    t.poll()
    v = t.view
    assert v.losses == ((1, 0.9), (2, 0.7))
    assert v.events_problem == "events.jsonl: 2 record(s) skipped (line 2: step: Input should be a valid integer (got 'two'))"
    assert (v.faceless, v.score("face_distance")) == (4, 0.7)  # a count written as 4.0 is a count
    assert "faceless_images" in v.scores_problem and "faceless_images" not in v.scores
    assert len(v.problems) == 2


def test_a_status_recovered_from_the_lock_is_read_again_until_the_lock_goes(tmp_path: Path) -> None:
    import os

    from flux_tui.core import runlock

    run = RunDir(tmp_path / "runs" / "r")
    run.append_event("stage", stage="train")
    fd = runlock.acquire(run.path)
    t = RunTracker(run)
    t.poll()
    assert t.view.state == "running" and t.view.status.damage == "status.json is missing"
    os.close(fd)  # the trainer ended, and no file changed
    assert t.poll() is True and t.view.state == "damaged"
