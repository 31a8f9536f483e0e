"""The trainer's parts, in process and fast: photo handling, model access errors, optional libraries, faults."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from flux_tui.core.runs import RunDir
from flux_tui.engine.data import face_square, load_rgb
from flux_tui.engine.faults import Faults, FaultSpecError
from flux_tui.engine.train_loop import _Progress


def test_the_crop_is_the_largest_square_centred_on_the_face_within_the_photo() -> None:
    assert face_square(400, 300, (180, 130, 220, 170)) == (50, 0, 350, 300)  # centred on the face
    assert face_square(400, 300, (0, 100, 40, 140)) == (0, 0, 300, 300)  # pushed back inside the photo
    assert face_square(300, 500, None) == (0, 100, 300, 400)  # no face: a centre crop


def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    Image.new("RGB", (40, 20), "red").save(tmp_path / "p.jpg", exif=exif.tobytes())
    im = load_rgb(tmp_path / "p.jpg")
    assert (im.size, im.mode) == ((20, 40), "RGB")


def test_fault_switch_is_parsed_strictly() -> None:
    assert Faults.from_env({}) == Faults()
    assert Faults.from_env({"FLUX_TUI_FAULT": "oom_at_step:3, step_delay:0.5"}) == Faults(3, 0.5)
    with pytest.raises(FaultSpecError, match="unknown fault 'oom_at'"):
        Faults.from_env({"FLUX_TUI_FAULT": "oom_at:3"})
    with pytest.raises(FaultSpecError, match="needs a number"):
        Faults.from_env({"FLUX_TUI_FAULT": "oom_at_step:soon"})


def test_engine_processes_drop_known_harmless_notices_and_progress_bars_but_keep_real_warnings() -> None:
    code = (
        "import sys, warnings, flux_tui.engine, tqdm\n"
        "warnings.warn('`torch_dtype` is deprecated and will be removed in version 1.0.0.', FutureWarning)\n"
        "warnings.warn('a real problem with the run', UserWarning)\n"
        "warnings.warn('some other deprecation', FutureWarning)\n"
        "for _ in tqdm.tqdm(range(3), desc='Loading weights'): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "a real problem with the run" in proc.stderr and "some other deprecation" in proc.stderr
    assert "torch_dtype" not in proc.stderr and "Loading weights" not in proc.stderr


def test_a_hub_model_that_cannot_be_had_says_what_to_do() -> None:
    from flux_tui.engine.models import ModelError, resolve_model

    lines: list[str] = []
    # Offline here: "not in the local cache ... local folder", said before any download is tried (the hub
    # client would retry for minutes); with internet and no token: the gated message, after trying.
    with pytest.raises(ModelError, match=r"(cannot be reached.*HF_HUB_OFFLINE=1.*local folder|gated model.*hf auth)"):
        resolve_model("black-forest-labs/FLUX.1-dev", None, lines.append)
    with pytest.raises(ModelError, match="neither a folder nor a hub id"):
        resolve_model("./no/such/folder", None, lines.append)


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path: Path) -> None:
    from flux_tui.engine.models import ModelError, resolve_model

    with pytest.raises(ModelError, match="no model_index.json"):
        resolve_model(str(tmp_path), None, print)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_nf4_without_bitsandbytes_names_the_library(demo_workspace: Path) -> None:
    import torch

    from flux_tui.engine.models import MissingLibraryError, load_transformer

    with pytest.raises(MissingLibraryError, match="nf4' needs bitsandbytes"):
        load_transformer(demo_workspace / "models" / "tiny-flux", "nf4", torch.float32)


@pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None and importlib.util.find_spec("optimum") is None,
    reason="neither torchao nor optimum-quanto is installed",
)
def test_int8_base_trains_a_full_precision_lora_on_the_cpu(demo_workspace: Path) -> None:
    import torch

    from flux_tui.core.config import Settings
    from flux_tui.engine.lora import add_lora
    from flux_tui.engine.models import load_transformer

    model = load_transformer(demo_workspace / "models" / "tiny-flux", "int8", torch.float32)
    base_weight = model.transformer_blocks[0].attn.to_q.weight
    assert type(base_weight) not in (torch.Tensor, torch.nn.Parameter)  # a quantized tensor subclass
    params = add_lora(model, Settings(lora_rank=4, lora_target_modules=["to_q", "to_v"]))
    assert params and all(p.dtype == torch.float32 for p in params)
    dtype = next(model.parameters()).dtype
    out = model(
        hidden_states=torch.randn(1, 16, 64, dtype=dtype), timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]), pooled_projections=torch.randn(1, 32, dtype=dtype),
        encoder_hidden_states=torch.randn(1, 8, 32, dtype=dtype), txt_ids=torch.zeros(8, 3),
        img_ids=torch.zeros(16, 3), return_dict=False,
    )[0]  # fmt: skip
    out.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def _save_checkpoints(run_path: Path, steps: list[int]):
    """Real checkpoints of a one-parameter model trained a step between saves."""
    import torch

    from flux_tui.core.runs import RunDir
    from flux_tui.engine import checkpoint

    run = RunDir(run_path)
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in steps:
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
        checkpoint.save(run, step, 10, {"w": param.detach().clone()}, opt, sched, torch.Generator(), keep=5)
    return run


@pytest.mark.parametrize("part", ["lora.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"])
def test_a_checkpoint_with_any_part_cut_short_is_set_aside_and_the_one_before_resumed(tmp_path: Path,
                                                                                      part: str) -> None:  # fmt: skip
    from flux_tui.engine import checkpoint

    run = _save_checkpoints(tmp_path / "run", [2, 4])
    cut = run.checkpoints_dir / "checkpoint-4" / part
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    damaged = cut.read_bytes()
    (run.checkpoints_dir / ".checkpoint-6.999.tmp").mkdir()  # a save killed mid-write
    lines: list[str] = []
    applied: list[int] = []
    restored = checkpoint.resume(run, lambda r: applied.append(r.step), lines.append)
    assert restored is not None and restored.step == 2 and applied == [2]
    assert [p.name for p in run.checkpoints()] == ["checkpoint-2"]
    [aside] = run.checkpoints_dir.glob("checkpoint-4.broken-*")
    assert (aside / part).read_bytes() == damaged  # kept as it was, for the user to look at
    assert any("WARNING: checkpoint-4 is damaged" in line and aside.name in line for line in lines), lines
    assert not (run.checkpoints_dir / ".checkpoint-6.999.tmp").exists()


def test_a_checkpoint_that_does_not_apply_is_set_aside_and_with_none_left_training_starts_over(tmp_path: Path) -> None:
    from flux_tui.engine import checkpoint

    run = _save_checkpoints(tmp_path / "run", [2, 4])

    def refuse(restored) -> None:
        raise ValueError(f"checkpoint holds LoRA weights this model does not have (step {restored.step})")

    lines: list[str] = []
    assert checkpoint.resume(run, refuse, lines.append) is None
    assert run.checkpoints() == [] and len(list(run.checkpoints_dir.glob("checkpoint-*.broken-*"))) == 2
    assert lines[-1] == "train: WARNING: no checkpoint could be restored; training starts again from step 0"


def test_the_time_per_step_and_eta_leave_out_the_warm_up_of_the_first_report(tmp_path: Path) -> None:
    """A trainer process's first step holds torch.compile's wait (minutes for FLUX.1-dev on a GPU) or CUDA's
    warm-up; in the rolling mean it would inflate the ETA for the next 20 steps. Stand-ins, because a real
    compile's time is not steady enough to assert on beside other work: the step durations are set on the
    reporter's clock (a 30 s first step, then 0.5 s steps), and the training is reduced to what the reporter
    reads of it (the learning rate, the device)."""
    run = RunDir(tmp_path / "run")
    training = SimpleNamespace(lr_scheduler=SimpleNamespace(get_last_lr=lambda: [1e-4]), device=torch.device("cpu"))
    progress = _Progress(run, training, total=100)  # type: ignore[arg-type]
    for step, seconds in [(1, 30.0), (2, 0.5), (3, 0.5), (4, 0.5)]:
        progress.add(step, torch.tensor(0.5), torch.tensor(1.0))
        progress.clock = time.perf_counter() - seconds
        progress.report()
    events = list(run.iter_events("step"))
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert events[0]["sec_per_step"] == pytest.approx(30.0, rel=0.01)
    assert events[-1]["sec_per_step"] == pytest.approx(0.5, rel=0.02)
    assert events[-1]["eta_s"] == pytest.approx(0.5 * 96, rel=0.02)
