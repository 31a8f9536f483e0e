"""The offline demo workspace: every piece loads with the library that will use it, and works.

Real models, real files, no network: the session fixture `demo_workspace` (tests/conftest.py) builds the
workspace once; these tests load what it wrote the way the engine and the dashboard will.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flux_tui.core import config
from flux_tui.engine import demo

PROMPTS = ["a photo of cr7man", "portrait of cr7man in studio lighting, Smiling! 😀 ÉTÉ #42"]


def _digests(root: Path) -> dict[str, str]:
    """Hashes of what the builder writes (not runs/ or caches that other tests may add)."""
    built = {"models", "weights", "photos", "experiments.toml", "README.txt", demo.MARKER}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] in built
    }


def test_layout(demo_workspace: Path) -> None:
    assert demo.is_complete(demo_workspace)
    assert sorted(p.name for p in (demo_workspace / "photos").iterdir()) == [p[0] for p in demo._PHOTOS]
    readme = (demo_workspace / "README.txt").read_text()
    assert "random weights" in readme and "flux-tui DIR/experiments.toml" in readme
    assert "random weights" in demo.DEMO_NOTICE
    # The tiny FLUX stays tiny: a few MB, not GB.
    flux_bytes = sum(p.stat().st_size for p in (demo_workspace / demo.FLUX_DIR).rglob("*") if p.is_file())
    assert flux_bytes < 5_000_000
    # No temporary sibling is left behind.
    assert [p.name for p in demo_workspace.parent.iterdir()] == [demo_workspace.name]


def test_flux_pipeline_reloads_and_generates(demo_workspace: Path) -> None:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(demo_workspace / demo.FLUX_DIR)
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.config.guidance_embeds
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels == 64
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.max_shift == 1.15
    for prompt in PROMPTS:  # both tokenizers take any text, unknown characters included
        assert pipe.tokenizer(prompt).input_ids[-1] == pipe.tokenizer.eos_token_id
        assert pipe.tokenizer_2(prompt).input_ids[-1] == pipe.tokenizer_2.eos_token_id
    started = time.monotonic()
    image = pipe(
        PROMPTS[0],
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert time.monotonic() - started < 10  # ~0.1 s; generous for a loaded CI machine
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    assert np.asarray(image).std() > 1.0  # not a constant image


def test_tiny_clip_embeds_image_and_text(demo_workspace: Path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(demo_workspace / demo.CLIP_DIR).eval()
    processor = CLIPProcessor.from_pretrained(demo_workspace / demo.CLIP_DIR)
    photo = Image.open(demo_workspace / "photos" / "01.jpg").convert("RGB")
    with torch.no_grad():
        image_emb = model.get_image_features(**processor(images=photo, return_tensors="pt"))
        text_emb = model.get_text_features(**processor(text=PROMPTS, return_tensors="pt", padding=True))
    # transformers 5 may wrap the projected features in an output object.
    image_emb = getattr(image_emb, "pooler_output", image_emb)
    text_emb = getattr(text_emb, "pooler_output", text_emb)
    assert image_emb.shape == (1, 32) and text_emb.shape == (2, 32)
    assert torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()


def test_standin_face_weights_load_like_the_real_file(
    demo_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facenet_pytorch import InceptionResnetV1

    path = demo_workspace / demo.FACE_WEIGHTS
    state = torch.load(path)
    assert state["logits.weight"].shape == (demo.VGGFACE2_CLASSES, 512)
    # As facenet's own loader does: a classifier head of 8631 classes, then a strict load.
    model = InceptionResnetV1(pretrained=None, classify=False)
    model.logits = torch.nn.Linear(512, demo.VGGFACE2_CLASSES)
    model.load_state_dict(state)
    # And from the torch hub cache under the real file's name, as on a server without internet.
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(path, tmp_path / "checkpoints" / "20180402-114759-vggface2.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = InceptionResnetV1(pretrained="vggface2").eval()
    assert torch.equal(cached.last_linear.weight, state["last_linear.weight"])
    with torch.no_grad():
        emb = cached(torch.rand(2, 3, 160, 160) * 2 - 1)
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-4)


def test_mtcnn_finds_a_face_in_every_photo(demo_workspace: Path) -> None:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=False, device="cpu")
    photos = sorted((demo_workspace / "photos").iterdir())
    assert len(photos) == 6
    sizes = set()
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        sizes.add(image.size)
        boxes, probs = mtcnn.detect(image)
        assert boxes is not None, f"no face found in {photo.name}"
        assert probs[0] > 0.95, f"{photo.name}: face probability {probs[0]}"
    assert len(sizes) > 1


def test_experiments_toml_loads_cleanly(demo_workspace: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study = config.load(demo_workspace / "experiments.toml")
    assert study.warnings == []
    assert len(study.experiments) == 4
    first = study.experiments[0].settings
    assert Path(first.base_model) == demo_workspace / demo.FLUX_DIR
    assert Path(first.clip_model) == demo_workspace / demo.CLIP_DIR
    assert Path(first.face_weights or "") == demo_workspace / demo.FACE_WEIGHTS
    assert first.resolution == 64 and first.mixed_precision == "no" and first.num_inference_steps == 4
    assert any(e.settings.alpha != e.settings.lora_rank for e in study.experiments)
    # A star design: every other run differs from exp01 in one hyperparameter, so effects have pairs.
    base = study.experiments[0].config_dict()
    changed = [sorted(k for k, v in e.config_dict().items() if base[k] != v) for e in study.experiments[1:]]
    assert changed == [["lora_alpha"], ["learning_rate"], ["lora_rank"]]
    text = (demo_workspace / "experiments.toml").read_text()
    assert text.startswith("#") and "RANDOM weights" in text.splitlines()[1]


def test_second_build_is_a_fast_no_op(demo_workspace: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo_workspace.rglob("*")}
    started = time.monotonic()
    assert demo.build_demo_workspace(demo_workspace) == demo_workspace
    assert time.monotonic() - started < 1.0
    assert {p: p.stat().st_mtime_ns for p in demo_workspace.rglob("*")} == before


def test_force_rebuild_is_deterministic_and_replaces(demo_workspace: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(demo_workspace, copy)
    (copy / "runs").mkdir()
    (copy / "runs" / "old.txt").write_text("from an earlier run")
    assert demo.main([str(copy), "--force"]) == 0
    assert not (copy / "runs").exists()
    # Same seed, same bytes: every tensor, photo and file equals the session build's.
    assert _digests(copy) == _digests(demo_workspace)
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo workspace"):
        demo.build_demo_workspace(tmp_path, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert demo.main([str(tmp_path)]) == 1


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(dest: Path, work: Path) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(demo, "_build_clip", fail)  # after the photos and the tiny FLUX are written
    with pytest.raises(RuntimeError, match="injected"):
        demo.build_demo_workspace(tmp_path / "ws")
    assert list(tmp_path.iterdir()) == []
