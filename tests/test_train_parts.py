"""The trainer's parts, in process and fast: photo handling, model access errors, optional libraries, faults."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from flux_tui.engine.data import face_square, load_rgb
from flux_tui.engine.faults import Faults, FaultSpecError


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


def test_a_hub_model_that_cannot_be_had_says_what_to_do() -> None:
    from flux_tui.engine.models import ModelError, resolve_model

    lines: list[str] = []
    # Offline here: "not in the local cache ... local folder"; with internet and no token: the gated message.
    with pytest.raises(ModelError, match=r"(hub cannot be reached.*local folder|gated model.*hf auth login)"):
        resolve_model("black-forest-labs/FLUX.1-dev", None, lines.append)
    assert any("downloading black-forest-labs/FLUX.1-dev" in line for line in lines)
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
