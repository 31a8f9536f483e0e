"""`torch_compile = true`: the trainer with its transformer blocks compiled by torch.compile (inductor, on the
CPU), as real subprocesses on the tiny demo model.

The compiled run must train what the eager run trains (the same seed gives weights equal up to the kernels'
rounding), keep its samples and evaluation working (they run the blocks eagerly), and resume from a
checkpoint to exactly the weights of an uninterrupted compiled run. Each trainer process compiles once
(inductor's cache on disk makes the later ones quicker).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from flux_tui.core import config, launch, runs
from flux_tui.core.runs import CANCELLED, DONE, RunDir

pytestmark = [
    pytest.mark.slow,
    # inductor compiles C++ for the CPU: without a compiler torch.compile falls back to eager (tested here only
    # through the weights differing from the eager run's)
    pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler for inductor"),
]

STUDY = """\
[workspace]
runs_dir = "runs"
cache_dir = "cache"

[defaults]
base_model = "models/tiny-flux"
data_dir = "photos"
resolution = 64
learning_rate = 1e-3
lora_rank = 4
gradient_accumulation_steps = 2
max_train_steps = 6
lr_scheduler = "constant"
mixed_precision = "no"
max_sequence_length = 32
seed = 3
checkpointing_steps = 3
sample_every = 3
sample_prompts = ["a photo of cr7man"]
num_inference_steps = 2
guidance_scales = [3.5]
eval_every = 0
face_weights = "weights/vggface2-standin.pt"
clip_model = "models/tiny-clip"

[[experiment]]
name = "eager"

[[experiment]]
name = "compiled"
torch_compile = true

[[experiment]]
name = "resumed"
torch_compile = true
"""


@pytest.fixture(scope="module")
def ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compile") / "ws"
    for part in ("models", "photos", "weights"):
        shutil.copytree(demo_workspace / part, root / part)
    (root / "experiments.toml").write_text(STUDY)
    return root


def _run(ws: Path, name: str) -> RunDir:
    study = config.load(ws / "experiments.toml")
    return runs.prepare(study, study.get(name))


def _lora(run: RunDir) -> dict:
    from safetensors.torch import load_file

    return load_file(run.lora_file)


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def compiled(ws: Path) -> RunDir:
    run = _run(ws, "compiled")
    assert launch.start(run).wait(timeout=900) == 0, run.train_log.read_text()
    return run


def test_a_compiled_run_trains_what_the_eager_run_trains_and_samples_and_scores(ws: Path, compiled: RunDir) -> None:
    eager = _run(ws, "eager")
    assert launch.start(eager, extra_args=("--no-eval",)).wait(timeout=300) == 0, eager.train_log.read_text()
    log = compiled.train_log.read_text()
    assert "torch.compile on the transformer's" in log
    assert compiled.status().state == DONE
    assert [e["step"] for e in compiled.iter_events("sample")] == [3, 6]  # made eagerly, between steps
    assert compiled.scores_json.exists()
    worst = _worst(_lora(eager), _lora(compiled))
    assert 0 < worst <= 1e-4  # other kernels round differently, by little


def test_a_compiled_run_stopped_and_relaunched_ends_with_the_uninterrupted_weights(
    ws: Path, compiled: RunDir
) -> None:
    run = _run(ws, "resumed")
    proc = launch.start(run, env={"FLUX_TUI_FAULT": "step_delay:0.5"}, extra_args=("--no-eval",))
    deadline = time.monotonic() + 900  # the first step waits for the compiler
    while not any(e.get("step", 0) >= 3 for e in run.iter_events("step")):
        assert proc.poll() is None, run.train_log.read_text()
        assert time.monotonic() < deadline, run.train_log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert run.status().state == CANCELLED
    stopped_at = max(e["step"] for e in run.iter_events("step"))
    assert stopped_at < 6

    again = launch.start(run, extra_args=("--no-eval",))
    assert again.wait(timeout=900) == 0, run.train_log.read_text()
    assert [e["step"] for e in run.iter_events("resume")] == [stopped_at]
    assert _worst(_lora(compiled), _lora(run)) <= 1e-6


def test_switching_torch_compile_does_not_make_a_finished_run_stale(ws: Path, compiled: RunDir) -> None:
    toml = ws / "experiments.toml"
    text = toml.read_text()
    toml.write_text(text.replace('name = "compiled"\ntorch_compile = true', 'name = "compiled"'))
    try:
        study = config.load(toml)
        exp = study.get("compiled")
        assert exp.settings.torch_compile is False
        assert compiled.changed_keys(exp) == []
        assert compiled.stale(exp) is None
        assert compiled.read_run()["train_hash"] == exp.train_hash
    finally:
        toml.write_text(text)
