"""The playground's engine process and its client, with the demo workspace's tiny models: a round trip
(prompt in, image and scores out), the second prompt reusing the loaded pipeline (from the process's own
counters and timings), bad requests answered without losing the process, and a process killed mid-request."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux_tui.core import config, runs
from flux_tui.core import playground_client as pg
from flux_tui.core import playground_folder as pgf

pytestmark = pytest.mark.slow
STEPS = 3


def make_finished_run(workspace: Path, demo: Path, name: str = "exp01") -> runs.RunDir:
    """A run folder of the demo study holding a trained-looking LoRA: the trainer's own LoRA code on the
    tiny transformer, its B matrices set non-zero so the LoRA changes the images."""
    import torch
    from diffusers import FluxTransformer2DModel

    from flux_tui.engine.lora import add_lora, export_lora

    study = config.load(demo / "experiments.toml")
    exp = study.get(name)
    run = runs.RunDir(workspace / "runs" / name)
    run.write_run(exp, study)
    transformer = FluxTransformer2DModel.from_pretrained(demo / "models/tiny-flux", subfolder="transformer")
    torch.manual_seed(0)
    for p in add_lora(transformer, exp.settings):
        p.data = torch.randn_like(p) * 0.05
    export_lora(transformer, exp.settings, run.lora_dir)
    run.write_status(state=runs.DONE)
    return run


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, rid: int, kind: str = "progress") -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("id") == rid and e.get("event") == kind]


@pytest.fixture(scope="module")
def session(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory):
    workspace = tmp_path_factory.mktemp("playground-ws")
    run = make_finished_run(workspace, demo_workspace)
    events = Recorder()
    client = pg.PlaygroundClient(workspace, on_event=events)
    client.start()
    client.call(
        "configure",
        timeout=120,
        workspace=str(workspace),
        base_model=str(demo_workspace / "models/tiny-flux"),
        clip_model=str(demo_workspace / "models/tiny-clip"),
        face_weights=str(demo_workspace / "weights/vggface2-standin.pt"),
    )
    yield client, events, workspace, run, demo_workspace
    client.close()


def _generate(client: pg.PlaygroundClient, prompt: str, seed: int, **extra: Any) -> tuple[int, dict[str, Any]]:
    rid = client.request("generate", prompt=prompt, guidance=3.5, steps=STEPS, seed=seed, width=64, height=64,
                         max_sequence_length=32, **extra)  # fmt: skip
    return rid, client.wait(rid, timeout=600)


def test_round_trip_prompt_in_image_and_scores_out(session) -> None:
    client, events, workspace, run, demo = session
    added = client.call("add_reference", paths=[str(demo / "photos")], timeout=300)
    assert added["reference_photos"] == 6 and added["reference_faces"] == 6  # the astronaut's face, 6 times

    rid, out = _generate(client, "a photo of cr7man", seed=7, loras=[{"path": str(run.path), "weight": 0.8}])
    path = Path(out["path"])
    assert path.parent == pgf.playground_dir(workspace) and path.is_file()
    with Image.open(path) as im:
        assert im.size == (64, 64)
        meta = json.loads(im.text["flux_tui"])
    assert meta["prompt"] == "a photo of cr7man" and meta["seed"] == 7 and meta["num_inference_steps"] == STEPS
    assert meta["loras"] == [{"path": str(run.lora_file), "weight": 0.8, "run": "exp01"}]
    assert meta["source"] == "playground"
    # Scores: CLIP is a cosine; the tiny random FLUX draws no face, so no face distance (and it says so).
    assert -1.0 <= out["clip_score"] <= 1.0
    assert out["face"] is False and out["face_distance"] is None
    assert out["references"] == 6
    # Per-step progress for this request, in order, after the load.
    steps = [e["step"] for e in events.of(rid) if e["phase"] == "generate"]
    assert steps == list(range(STEPS + 1))
    assert [e["phase"] for e in events.of(rid)][0] == "load"
    assert out["counters"]["pipeline_loads"] == 1 and out["timings"]["load_s"] > 0
    assert out["timings"]["generate_s"] > 0
    # The index lists the image with its scores, for exports.
    (entry,) = pgf.read_index(workspace)
    assert entry["path"] == str(path) and entry["clip_score"] == out["clip_score"]


def test_second_prompt_reuses_the_loaded_pipeline(session) -> None:
    client, events, workspace, run, _ = session
    before = client.call("stats", timeout=60)["counters"]
    rid, out = _generate(client, "cr7man smiling at camera", seed=8, loras=[{"path": str(run.path), "weight": 0.8}])
    # The process's own counters: no second load, no LoRA reload (same LoRA, same weight), one more image.
    assert out["counters"]["pipeline_loads"] == before["pipeline_loads"] == 1
    assert out["counters"]["lora_loads"] == before["lora_loads"]
    assert out["counters"]["generations"] == before["generations"] + 1
    assert out["timings"]["load_s"] == 0.0 and out["timings"]["lora_s"] == 0.0
    assert [e["phase"] for e in events.of(rid)][0] == "generate"  # no "load" phase this time

    # A different weight swaps the adapters but still keeps the pipeline; the image changes with it.
    _, other = _generate(client, "cr7man smiling at camera", seed=8, loras=[{"path": str(run.path), "weight": 0.0}])
    assert other["counters"]["pipeline_loads"] == 1 and other["counters"]["lora_loads"] == before["lora_loads"] + 1
    with Image.open(out["path"]) as a, Image.open(other["path"]) as b:
        assert a.tobytes() != b.tobytes()
    assert len(pgf.read_index(workspace)) >= 3


def test_bad_requests_are_answered_and_the_process_stays(session) -> None:
    client, _, workspace, _, _ = session
    with pytest.raises(pg.PlaygroundError, match="prompt: type a prompt"):
        client.call("generate", prompt="  ", timeout=60)
    with pytest.raises(pg.PlaygroundError, match="width: must be a multiple of 16, got 70"):
        client.call("generate", prompt="x", width=70, timeout=60)
    with pytest.raises(pg.PlaygroundError, match="steps: expected an integer, got 'many'"):
        client.call("generate", prompt="x", steps="many", timeout=60)
    missing = workspace / "runs" / "nope"
    with pytest.raises(pg.PlaygroundError, match=f"{missing}: no LoRA there"):
        client.call("set_loras", loras=[{"path": str(missing), "weight": 1}], timeout=60)
    with pytest.raises(pg.PlaygroundError, match="no such file or folder"):
        client.call("add_reference", paths=["does/not/exist.jpg"], timeout=60)
    with pytest.raises(ValueError, match="unknown op"):
        client.request("dance")
    assert client.alive and client.call("stats", timeout=60)["pipeline_loaded"] is True


def test_a_killed_engine_fails_the_waiting_request_and_close_cleans_up(tmp_path: Path, demo_workspace: Path) -> None:
    events = Recorder()
    client = pg.PlaygroundClient(tmp_path, on_event=events)
    client.start()
    assert client.ready.wait(60)
    # Loading the face model takes a while: kill the process (its whole session) while it works on it.
    rid = client.request("add_reference", paths=[str(demo_workspace / "photos")])
    os.killpg(client.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(pg.PlaygroundError, match=r"exited \(code -9\); its log: .*engine.log"):
        client.wait(rid, timeout=60)
    assert client.close() == -9
    assert any(e["event"] == "exit" for e in events.events)
    # A fresh client on the same folder starts a fresh engine and shuts it down cleanly.
    again = pg.PlaygroundClient(tmp_path)
    assert again.call("stats", timeout=60)["pipeline_loaded"] is False
    assert again.close() == 0 and not again.alive


def test_image_paths_are_fresh_and_the_index_skips_a_torn_line(tmp_path: Path) -> None:
    first = pgf.new_image_path(tmp_path, 3)
    first.parent.mkdir(parents=True)
    first.touch()
    second = pgf.new_image_path(tmp_path, 3)
    assert second != first and second.name.endswith("-s3.png")
    pgf.append_index(tmp_path, {"path": str(first)})
    with open(pgf.playground_dir(tmp_path) / pgf.INDEX, "a") as fh:
        fh.write('{"path": "half')  # a writer cut off mid-line
    assert pgf.read_index(tmp_path) == [{"path": str(first)}]
