"""The study's scores on real photos: scikit-image's astronaut (the demo's photos) and its LFW subset.

The real vggface2 file cannot be downloaded here, so InceptionResnetV1 gets stand-in weights saved where
the real file would be given (`face_weights`). A randomly initialised network embeds every face almost
the same (all distances ~0.01), so the `discriminative_weights` fixture makes seeded random weights tell
faces apart: its batch-norm statistics are measured on real face crops (data-dependent initialisation),
which centres the features so that what differs between faces is what remains. With them a held-out photo
of the reference person lands closer to the reference than other people's faces.
The expected values are computed independently in this file, from the study's Algorithms 1 and 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from PIL import Image
from skimage import data

from flux_tui.engine import imagemeta, score

REFERENCE = ("01.jpg", "03.jpg", "04.png", "05.jpg")  # demo photos used as the training set
HELD_OUT = ("02.png", "06.png")  # other photos of the same person
N_FACES, N_OTHER = 8, 5


def _lfw(i: int) -> Image.Image:
    """An LFW-subset picture (25x25 grey) upscaled to 160 px, where MTCNN can see it."""
    pixels = (data.lfw_subset()[i] * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB").resize((160, 160), Image.BICUBIC)


@pytest.fixture(scope="module")
def photos(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ref/: the training photos; images/: held-out photos of that person, LFW faces and LFW non-faces
    (indices 100-199 of the subset are not faces), each PNG with its prompt in the metadata."""
    root = tmp_path_factory.mktemp("faces")
    ref, images = root / "ref", root / "images"
    ref.mkdir()
    for name in REFERENCE:
        shutil.copy(demo_workspace / "photos" / name, ref / name)
    items: list[tuple[str, Image.Image, str]] = []
    for name in HELD_OUT:
        items.append((f"same-{Path(name).stem}.png", Image.open(demo_workspace / "photos" / name).convert("RGB"),
                      "a photo of cr7man"))  # fmt: skip
    items += [(f"face-{i:03d}.png", _lfw(i), "a portrait photo of a person") for i in range(N_FACES)]
    items += [(f"other-{i:03d}.png", _lfw(i), "a photo of a landscape") for i in range(100, 100 + N_OTHER)]
    for name, im, prompt in items:
        imagemeta.save_png(im, images / name, {"prompt": prompt, "seed": 0, "guidance_scale": 3.5})
    return {"ref": ref, "images": images, "root": root}


@pytest.fixture(scope="module")
def discriminative_weights(photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(20180402)
    net = InceptionResnetV1(pretrained=None, classify=False)
    mtcnn = MTCNN(image_size=160, margin=0)
    crops = [mtcnn(_lfw(i)) for i in range(40, 80)]
    crops += [mtcnn(Image.open(p).convert("RGB")) for p in sorted(photos["ref"].iterdir())]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]
    net.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batch
        bn.train()
    with torch.no_grad():
        net(torch.stack([c for c in crops if c is not None]))
    path = tmp_path_factory.mktemp("weights") / "vggface2-discriminative.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip_dir(demo_workspace: Path) -> Path:
    return demo_workspace / "models" / "tiny-clip"


@pytest.fixture(scope="module")
def face(discriminative_weights: Path) -> score.FaceEmbedder:
    return score.FaceEmbedder(discriminative_weights, "cpu")


@pytest.fixture(scope="module")
def result(photos: dict[str, Path], face: score.FaceEmbedder, clip_dir: Path) -> dict:
    images = score.list_images(photos["images"])
    meta = [imagemeta.read_metadata(p) for p in images]
    ref = score.reference_embedding(photos["ref"], face)
    return score.score_images(images, [m["prompt"] for m in meta], face, score.ClipScorer(str(clip_dir), "cpu"),
                              ref, meta)  # fmt: skip


def test_mtcnn_finds_the_faces_and_counts_the_images_without_one(result: dict) -> None:
    assert result["n_images"] == len(HELD_OUT) + N_FACES + N_OTHER
    assert result["faceless"] == N_OTHER
    assert result["faceless_images"] == [f"other-{i:03d}.png" for i in range(100, 100 + N_OTHER)]
    assert result["face_distance_n"] == len(HELD_OUT) + N_FACES
    by_prompt = {p["prompt"]: p for p in result["per_prompt"]}
    assert by_prompt["a photo of a landscape"]["faceless"] == N_OTHER
    assert by_prompt["a photo of a landscape"]["face_distance"] is None  # faceless images are left out


def test_scores_equal_the_studys_formulas(photos: dict[str, Path], discriminative_weights: Path, clip_dir: Path,
                                          result: dict) -> None:  # fmt: skip
    from transformers import CLIPModel, CLIPProcessor

    # Algorithm 1: MTCNN crop -> InceptionResnetV1 embedding; reference = mean over the training photos.
    mtcnn = MTCNN(image_size=160, margin=0)
    resnet = InceptionResnetV1(pretrained=None).eval()
    resnet.load_state_dict(torch.load(discriminative_weights, weights_only=True))

    def embedding(path: Path) -> np.ndarray | None:
        crop = mtcnn(Image.open(path).convert("RGB"))
        if crop is None:
            return None
        with torch.no_grad():
            return resnet(crop.unsqueeze(0))[0].numpy()

    reference = np.mean([embedding(p) for p in sorted(photos["ref"].iterdir())], axis=0)
    images = sorted(photos["images"].iterdir())
    embs = {p.name: embedding(p) for p in images}
    distances = [np.linalg.norm(e - reference) for e in embs.values() if e is not None]
    cosines_id = [e @ reference / np.linalg.norm(reference) for e in embs.values() if e is not None]
    assert result["face_distance"] == pytest.approx(np.mean(distances), rel=1e-4)
    assert result["identity_similarity"] == pytest.approx(np.mean(cosines_id), rel=1e-4)
    rows = {r["image"]: r for r in result["per_image"]}
    for name, e in embs.items():
        expected = None if e is None else pytest.approx(float(np.linalg.norm(e - reference)), rel=1e-4)
        assert rows[name]["face_distance"] == expected

    # Algorithm 2: cosine of CLIP's image and text embeddings, each image with the prompt that made it.
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    cos = []
    for p in images:
        prompt = Image.open(p).text["prompt"]
        inputs = processor(text=[prompt], images=Image.open(p).convert("RGB"), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**inputs)
        cos.append(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item())
    assert result["clip_score"] == pytest.approx(np.mean(cos), abs=1e-5)
    assert result["clip_score_x100"] == pytest.approx(np.mean([100 * max(c, 0) for c in cos]), abs=1e-3)


def test_the_reference_person_is_closer_than_other_people(result: dict) -> None:
    rows = {r["image"]: r for r in result["per_image"]}
    same = [rows[f"same-{Path(n).stem}.png"] for n in HELD_OUT]
    others = [rows[f"face-{i:03d}.png"] for i in range(N_FACES)]
    assert max(r["face_distance"] for r in same) < min(r["face_distance"] for r in others)
    assert min(r["identity_similarity"] for r in same) > max(r["identity_similarity"] for r in others)


def test_the_reference_embedding_is_cached_per_dataset(photos: dict[str, Path], face: score.FaceEmbedder,
                                                       tmp_path: Path) -> None:  # fmt: skip
    first = score.reference_embedding(photos["ref"], face, tmp_path)
    again = score.reference_embedding(photos["ref"], face, tmp_path)
    assert not first.cached and again.cached and torch.allclose(first.mean, again.mean, atol=1e-6)
    assert len(list((tmp_path / "face-reference").glob("*.json"))) == 1
    other = tmp_path / "other-set"
    shutil.copytree(photos["ref"], other)
    Image.open(other / "01.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other / "01.jpg")
    changed = score.reference_embedding(other, face, tmp_path)
    assert not changed.cached and changed.key != first.key


def test_missing_face_weights_say_where_they_are_looked_for_and_how_to_supply_them(
    photos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FLUX_TUI_OFFLINE", "1")
    assert score.main([str(photos["images"]), "--reference", str(photos["ref"])]) == 1
    err = capsys.readouterr().err
    assert score.VGGFACE2_FILE in err and str(tmp_path / "torch" / "checkpoints" / score.VGGFACE2_FILE) in err
    assert "--face-weights" in err and "face_weights" in err and score.VGGFACE2_URL in err

    missing = tmp_path / "w" / "vgg.pt"
    assert score.main([str(photos["images"]), "--reference", str(photos["ref"]), "--face-weights", str(missing)]) == 1
    assert f"face weights file {missing}" in capsys.readouterr().err

    junk = tmp_path / "junk.pt"
    junk.write_text("not weights")
    with pytest.raises(score.FaceWeightsError, match=str(junk)):
        score.FaceEmbedder(junk, "cpu")


def test_images_without_a_prompt_ask_for_one(photos: dict[str, Path], tmp_path: Path, capsys) -> None:
    folder = tmp_path / "jpgs"
    folder.mkdir()
    _lfw(0).save(folder / "a.jpg")
    assert score.main([str(folder), "--reference", str(photos["ref"])]) == 1
    assert "a.jpg" in capsys.readouterr().err


@pytest.mark.slow
def test_score_command_prints_one_json_object(photos: dict[str, Path], discriminative_weights: Path, clip_dir: Path,
                                              result: dict, tmp_path: Path, capsys) -> None:  # fmt: skip
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "flux_tui.main", "score", str(photos["images"]), "--reference", str(photos["ref"]),
            "--clip-model", str(clip_dir), "--face-weights", str(discriminative_weights), "--json",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for key in ("face_distance", "identity_similarity", "clip_score", "faceless", "n_images", "per_image"):
        assert key in out
    assert out["face_distance"] == pytest.approx(result["face_distance"], rel=1e-5)
    assert out["faceless"] == N_OTHER and len(out["per_image"]) == out["n_images"]
    assert list((tmp_path / "cache" / "face-reference").glob("*.json"))

    # --prompt overrides the metadata for every image; the human report names the faceless images.
    # (in-process: one subprocess above is enough to show the command line works end to end)
    assert score.main([*args[4:-3], "--prompt", "a photo of cr7man"]) == 0
    report = capsys.readouterr().out
    assert "face distance" in report and "other-100.png" in report


# -- models of the study, and a hub that cannot be reached ------------------------------------------------
HUB_CLIP = "openai/clip-vit-large-patch14"


def _no_hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    """A real hub that cannot be reached at `endpoint`, an empty Hugging Face cache, downloads allowed."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FLUX_TUI_OFFLINE")}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "TORCH_HOME": str(tmp_path / "torch")}


def _score(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # the timeout is a backstop: an unreachable hub used to take about four minutes of retries to fail
    return subprocess.run([sys.executable, "-m", "flux_tui.main", "score", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=240)  # fmt: skip


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


def _says_how_to_work_offline(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"the CLIP model {HUB_CLIP!r} is not in the local Hugging Face cache" in proc.stderr
    assert "cannot be reached" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    assert "--clip-model) to a local folder" in proc.stderr
    assert "Retrying" not in proc.stderr  # the hub client's retry loop (5 tries per request) never started


@pytest.mark.slow
def test_a_hub_that_does_not_answer_fails_at_once_with_the_offline_advice(
    photos: dict[str, Path], discriminative_weights: Path, tmp_path: Path
) -> None:
    import socket

    # A hub that accepts connections and never answers (a firewall that drops replies): the probe times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = _no_hub_env(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}")
        proc = _score([str(photos["images"]), "--reference", str(photos["ref"]), "--clip-model", HUB_CLIP,
                       "--face-weights", str(discriminative_weights)], tmp_path, env)  # fmt: skip
    _says_how_to_work_offline(proc)


@pytest.mark.slow
def test_score_inside_a_workspace_uses_the_study_models_unless_flags_say_otherwise(
    demo_workspace: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace, ws, ignore=shutil.ignore_patterns("runs", ".flux-tui"))
    env = _no_hub_env(tmp_path, f"http://127.0.0.1:{_closed_port()}")  # the study's models need no hub
    args = ["photos", "--reference", "photos", "--prompt", "a photo of cr7man", "--json"]
    proc = _score(args, ws, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert Path(out["models"]["clip"]) == (ws / "models" / "tiny-clip").resolve()
    assert Path(out["models"]["face_weights"]) == (ws / "weights" / "vggface2-standin.pt").resolve()
    assert list((ws / ".flux-tui" / "cache" / "face-reference").glob("*.json"))  # the study's cache_dir
    assert "score: models of experiments.toml" in proc.stderr

    # -f names the study from anywhere; a flag wins over it: here a hub id, and the hub refuses connections
    photos_dir = str(ws / "photos")
    proc = _score([photos_dir, "--reference", photos_dir, "--prompt", "a photo", "-f", str(ws / "experiments.toml"),
                   "--clip-model", HUB_CLIP], tmp_path, env)  # fmt: skip
    assert f"score: models of {ws / 'experiments.toml'}: CLIP {HUB_CLIP}" in proc.stderr
    _says_how_to_work_offline(proc)
