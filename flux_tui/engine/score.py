"""The study's scores: Face Distance Score (Algorithm 1), CLIP score (Algorithm 2), faceless count.

    python -m flux_tui.engine.score IMAGES_DIR --reference REF_DIR [--prompt TEXT] [--clip-model ID_OR_PATH]
                                    [--face-weights FILE] [--cache-dir DIR] [--json] [--out FILE]

Face: MTCNN (facenet-pytorch's bundled weights) finds and crops the largest face to 160 px; InceptionResnetV1
with the vggface2 weights embeds it (a unit vector). The reference is the mean embedding of the training
photos; an image's face distance is the Euclidean distance from its embedding to that mean, and the score
is the mean over images with a face (lower is better). Images without a face are counted, named, and left
out. Identity similarity is the cosine between an embedding and the normalised reference.
CLIP: cosine similarity of CLIP's projected image and text embeddings, each image with its own prompt,
averaged (0..1 scale, as the study); `clip_score_x100` is 100 * max(cos, 0), what torchmetrics' CLIPScore
reports. Models load once per process; the reference embedding is cached per dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from flux_tui.core import metrics
from flux_tui.core.engine_args import score_args
from flux_tui.core.fsutil import atomic_write_json, file_sha256, read_json
from flux_tui.engine.demo import DEMO_NOTICE, MARKER
from flux_tui.engine.device import choose
from flux_tui.engine.errors import EngineError
from flux_tui.engine.imagemeta import read_metadata
from flux_tui.engine.photos import PhotoError, PhotoFile, decode, describe, load_photo, photo_files

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
VGGFACE2_FILE = "20180402-114759-vggface2.pt"
VGGFACE2_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{VGGFACE2_FILE}"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FACE_SIZE = 160  # MTCNN crop fed to InceptionResnetV1, as in facenet-pytorch's examples and the study
REFERENCE_VERSION = 2  # bump when the reference computation changes: old cache entries are ignored
BATCH = 16
OFFLINE_VARS = ("FLUX_TUI_OFFLINE", "HF_HUB_OFFLINE")
METHOD_NOTE = (
    "face_distance: mean Euclidean distance from each face's InceptionResnetV1 (vggface2) embedding to the "
    "mean embedding of the training photos, lower is better; clip_score: mean CLIP image-text cosine "
    "(0..1); clip_score_x100: 100*max(cos,0) as torchmetrics' CLIPScore reports it"
)


class ScoreError(EngineError):
    """Scoring cannot go on (missing weights, no faces in the reference photos...); the message says why."""


class FaceWeightsError(ScoreError):
    pass


# -- files ------------------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ScoreError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))  # fmt: skip


def load_image(path: Path) -> Image.Image:
    """An image upright in RGB, read as the training photos are (engine/photos.py). Raises ScoreError."""
    try:
        return load_photo(Path(path))
    except PhotoError as exc:
        raise ScoreError(f"{path}: {exc}") from None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stderr: `score --json` keeps stdout for the JSON


# -- face weights -----------------------------------------------------------------------------------


def hub_weights_path() -> Path:
    """Where facenet-pytorch keeps the vggface2 file: $TORCH_HOME/checkpoints (default ~/.cache/torch)."""
    torch_home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(torch_home).expanduser() / "checkpoints" / VGGFACE2_FILE


def _offline() -> bool:
    return any(os.getenv(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def _how_to_supply(where: Path) -> str:
    return (
        f"download {VGGFACE2_URL} on a machine with internet and either copy it to {where} "
        f"or set face_weights = \"/path/to/{VGGFACE2_FILE}\" in experiments.toml ([defaults]) "
        f"or pass --face-weights FILE"
    )


def resolve_face_weights(path: str | Path | None) -> Path:
    """The vggface2 weights file: `path` when given, else the torch hub cache, downloading it there on
    first use (not when FLUX_TUI_OFFLINE or HF_HUB_OFFLINE is set). Raises FaceWeightsError saying how."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FaceWeightsError(f"face weights file {p} (face_weights / --face-weights) does not exist; "
                                   + _how_to_supply(p))  # fmt: skip
        return p
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    if _offline():
        raise FaceWeightsError(f"the vggface2 face weights {VGGFACE2_FILE} are not in the torch hub cache "
                               f"({cached}) and downloads are off (offline mode); " + _how_to_supply(cached))  # fmt: skip
    import torch

    print(f"score: downloading {VGGFACE2_URL} to {cached} (once)", flush=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # a firewalled server should fail in seconds, not hang
    try:
        torch.hub.download_url_to_file(VGGFACE2_URL, str(cached), progress=True)
    except Exception as exc:
        cached.unlink(missing_ok=True)
        raise FaceWeightsError(f"could not download the vggface2 face weights {VGGFACE2_FILE} to {cached} "
                               f"({type(exc).__name__}: {exc}); " + _how_to_supply(cached)) from None  # fmt: skip
    finally:
        socket.setdefaulttimeout(old)
    return cached


# -- models -----------------------------------------------------------------------------------------


class FaceEmbedder:
    """MTCNN + InceptionResnetV1, loaded once. `embed` gives one unit vector per image, or None (no face)."""

    def __init__(self, weights: str | Path | None = None, device: str | None = None):
        import torch
        from facenet_pytorch import MTCNN, InceptionResnetV1

        self.device = choose(device)
        self.weights = resolve_face_weights(weights)
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FaceWeightsError(f"{self.weights}: cannot read it as a torch file ({exc}); "
                                   + _how_to_supply(self.weights)) from None  # fmt: skip
        net = InceptionResnetV1(pretrained=None, classify=False)
        if isinstance(state, dict) and "logits.weight" in state:
            # The vggface2 file carries its 8631-identity classifier; embeddings do not use it.
            net.logits = torch.nn.Linear(512, state["logits.weight"].shape[0])
        try:
            net.load_state_dict(state)
        except Exception as exc:
            raise FaceWeightsError(f"{self.weights} does not hold InceptionResnetV1 weights like facenet's "
                                   f"{VGGFACE2_FILE}: {str(exc)[:300]}") from None  # fmt: skip
        self.net = net.eval().to(self.device)
        self.mtcnn = MTCNN(image_size=FACE_SIZE, margin=0, post_process=True, select_largest=True, device=self.device)
        self.weights_sha = file_sha256(self.weights)

    def to(self, device: str) -> FaceEmbedder:
        """Both networks onto `device` (MTCNN also moves its inputs to its `device` attribute)."""
        import torch

        self.net.to(device)
        self.mtcnn.to(device)
        self.mtcnn.device = torch.device(device)
        self.device = device
        return self

    def faces(self, images: Sequence[Image.Image]) -> list[Any]:
        """MTCNN's face crops (3x160x160 tensors) or None per image. One image per call: facenet-pytorch
        2.5's batch mode fails under numpy 2 when a batch mixes images with and without a face."""
        return [self.mtcnn(im) for im in images]

    def embed(self, images: Sequence[Image.Image]) -> list[Any]:
        import torch

        crops = self.faces(images)
        found = [i for i, c in enumerate(crops) if c is not None]
        out: list[Any] = [None] * len(images)
        with torch.no_grad():
            for start in range(0, len(found), BATCH):
                chunk = found[start : start + BATCH]
                emb = self.net(torch.stack([crops[i] for i in chunk]).to(self.device)).cpu()
                for i, e in zip(chunk, emb, strict=True):
                    out[i] = e
        return out


class ClipScorer:
    """CLIPModel + CLIPProcessor, loaded once. `cosines` pairs each image with its own prompt."""

    def __init__(self, model: str = DEFAULT_CLIP, device: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        from flux_tui.engine import hub

        self.model_id = model
        self.device = choose(device)
        try:
            local = hub.local_files_only(model, "the CLIP model", "clip_model in experiments.toml (or --clip-model)")
            self.processor = CLIPProcessor.from_pretrained(model, local_files_only=local)
            self.model = CLIPModel.from_pretrained(model, local_files_only=local).eval().to(self.device)
        except hub.HubUnreachable as exc:
            raise ScoreError(str(exc)) from None
        except OSError as exc:
            raise ScoreError(
                f"cannot load the CLIP model {model!r} ({str(exc).splitlines()[0]}); where there is no "
                "internet, set clip_model in experiments.toml (or --clip-model) to a local folder saved with "
                "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained, or fill the Hugging Face cache"
            ) from None

    def to(self, device: str) -> ClipScorer:
        self.model.to(device)
        self.device = device
        return self

    def cosines(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                inputs = self.processor(
                    text=list(prompts[start : start + BATCH]),
                    images=list(images[start : start + BATCH]),
                    return_tensors="pt",
                    padding=True,
                    truncation=True,  # CLIP reads 77 tokens; longer prompts are cut, not an error
                ).to(self.device)
                result = self.model(**inputs)
                img = torch.nn.functional.normalize(result.image_embeds.float(), dim=-1)
                txt = torch.nn.functional.normalize(result.text_embeds.float(), dim=-1)
                out += (img * txt).sum(-1).cpu().tolist()
        return out


# -- reference --------------------------------------------------------------------------------------


@dataclass
class Reference:
    mean: Any  # torch tensor, 512
    photos_dir: str
    n_photos: int  # photos used: with a face or without
    faces: list[str]
    faceless: list[str]
    key: str
    cached: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it was not used

    def summary(self) -> dict[str, Any]:
        return {"dir": self.photos_dir, "n_photos": self.n_photos, "n_faces": len(self.faces),
                "faceless": self.faceless, "key": self.key, "skipped": sorted(self.skipped)}  # fmt: skip


def reference_key(photos: Sequence[PhotoFile], face: FaceEmbedder) -> str:
    h = hashlib.sha256(f"v{REFERENCE_VERSION}|{face.weights_sha}|mtcnn{FACE_SIZE}".encode())
    for p in photos:
        h.update(f"|{p.name}|{p.sha256}".encode())
    return h.hexdigest()[:20]


def reference_embedding(
    photos_dir: Path, face: FaceEmbedder, cache_dir: Path | None = None, log: Callable[[str], None] = _say
) -> Reference:
    """Mean embedding of the faces in the photos of `photos_dir`, cached under cache_dir/face-reference/ by
    the photos' bytes and the weights (11 runs on one dataset embed it once). Photos are read as for
    training: what cannot be used is named in the log and left out."""
    import torch

    skipped: dict[str, str] = {}

    def skip(name: str, why: str) -> None:
        log(f"score: reference: skipping {name}: {why}")
        skipped[name] = why

    try:
        files = list(photo_files(Path(photos_dir), skip))
    except PhotoError as exc:
        raise ScoreError(f"reference folder: {exc}") from None
    if not files:
        raise ScoreError(f"reference folder {photos_dir} holds no usable photo ({describe()})" + _listed(skipped))
    key = reference_key(files, face)
    cache_file = Path(cache_dir) / "face-reference" / f"{key}.json" if cache_dir else None
    data = read_json(cache_file) if cache_file is not None else None
    if isinstance(data, dict) and data.get("key") == key:
        for name, why in (data.get("undecodable") or {}).items():
            skip(name, why)
        return Reference(torch.tensor(data["mean"]), str(photos_dir), data["n_photos"], data["faces"],
                         data["faceless"], key, cached=True, skipped=skipped)  # fmt: skip
    listed = dict(skipped)
    embs = _embed_photos(files, face, skip)
    faces = [name for name, e in embs.items() if e is not None]
    if not embs:
        raise ScoreError(f"reference folder {photos_dir} holds no usable photo ({describe()})" + _listed(skipped))
    if not faces:
        raise ScoreError(f"MTCNN found no face in any of the {len(embs)} usable reference photos in {photos_dir}"
                         + _listed(skipped))  # fmt: skip
    mean = torch.stack([e for e in embs.values() if e is not None]).mean(0)
    ref = Reference(mean, str(photos_dir), len(embs), faces, [n for n, e in embs.items() if e is None], key,
                    skipped=skipped)  # fmt: skip
    if cache_file is not None:
        undecodable = {k: v for k, v in skipped.items() if k not in listed}
        atomic_write_json(cache_file, {**ref.summary(), "faces": faces, "mean": mean.tolist(),
                                       "weights": str(face.weights), "undecodable": undecodable})  # fmt: skip
    return ref


def _embed_photos(files: Sequence[PhotoFile], face: FaceEmbedder, skip: Callable[[str, str], None]) -> dict[str, Any]:
    """Each decodable photo's face embedding (None: no face), one photo in memory at a time."""
    embs: dict[str, Any] = {}
    for f in files:
        try:
            im = decode(f.data)
        except PhotoError as exc:
            skip(f.name, str(exc))
            continue
        embs[f.name] = face.embed([im])[0]
    return embs


def _listed(skipped: dict[str, str]) -> str:
    return f"; skipped {', '.join(skipped)}" if skipped else ""


# -- scoring ----------------------------------------------------------------------------------------


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return metrics.summary(rows)  # every metric of the table, from the per-image rows


def score_images(
    images: Sequence[Path],
    prompts: Sequence[str | None],
    face: FaceEmbedder,
    clip: ClipScorer | None,
    reference: Reference,
    metadata: Sequence[dict[str, Any]] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Every score of a set of images (the scores.json schema; DEVELOPERS.md documents it)."""
    import torch

    pil = [load_image(p) for p in images]
    embs = face.embed(pil)
    ref_unit = torch.nn.functional.normalize(reference.mean.float(), dim=0)
    with_prompt = [i for i, pr in enumerate(prompts) if pr]
    cos: dict[int, float] = {}
    if clip is not None and with_prompt:
        values = clip.cosines([pil[i] for i in with_prompt], [prompts[i] for i in with_prompt])
        cos = dict(zip(with_prompt, values, strict=True))
    rows = []
    for i, (path, emb) in enumerate(zip(images, embs, strict=True)):
        meta = (metadata[i] if metadata else None) or {}
        rows.append({
            "image": path.name,
            "prompt": prompts[i],
            "seed": meta.get("seed"),
            "guidance_scale": meta.get("guidance_scale"),
            "face": emb is not None,
            "face_distance": None if emb is None else float(torch.linalg.vector_norm(emb - reference.mean)),
            "identity_similarity": None if emb is None else float(emb @ ref_unit),
            "clip_score": cos.get(i),
        })  # fmt: skip
    summary = _summary(rows)
    per_prompt = []
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        group = [r for r in rows if r["prompt"] == prompt]
        s = _summary(group)
        per_prompt.append({"prompt": prompt, **{k: s[k] for k in metrics.PER_PROMPT_KEYS},
                           "images": [r["image"] for r in group]})  # fmt: skip
    result = {
        **summary,
        "faceless_images": [r["image"] for r in rows if not r["face"]],
        "face_distance_n": sum(r["face"] for r in rows),
        "per_prompt": per_prompt,
        "per_image": rows,
        "reference": reference.summary(),
        "models": {
            "clip": clip.model_id if clip else None,
            "face_weights": str(face.weights),
            "face_weights_sha256": face.weights_sha,
            "note": " ".join(x for x in (note, demo_note(face.weights, clip.model_id if clip else None),
                                         METHOD_NOTE) if x),  # fmt: skip
        },
    }
    guidances = list(dict.fromkeys(r["guidance_scale"] for r in rows if r["guidance_scale"] is not None))
    if len(guidances) > 1:
        result["per_guidance"] = [{"guidance_scale": g, **_summary([r for r in rows if r["guidance_scale"] == g])}
                                  for g in guidances]  # fmt: skip
    return result


def demo_note(face_weights: Path | None, clip_model: str | None) -> str:
    """The demo's notice when a model comes from a demo workspace (random weights: mechanics only)."""
    for item in (face_weights, clip_model):
        if not item:
            continue
        p = Path(item)
        if p.exists() and any((d / MARKER).is_file() for d in p.resolve().parents):
            return "DEMO: these scores show mechanics only. " + DEMO_NOTICE
    return ""


def write_scores(path: Path, result: dict[str, Any]) -> None:
    atomic_write_json(path, result)


def score_paths(
    images: Sequence[Path],
    *,
    reference_dir: Path,
    prompts: Sequence[str | None] | None = None,
    clip_model: str = DEFAULT_CLIP,
    face_weights: str | Path | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Load the models and score `images` (prompts from PNG metadata unless given). For one-off use;
    a process scoring many sets keeps its own FaceEmbedder and ClipScorer."""
    face = FaceEmbedder(face_weights, device)
    clip = ClipScorer(clip_model, device)
    ref = reference_embedding(reference_dir, face, cache_dir)
    meta = [read_metadata(p) for p in images]
    if prompts is None:
        prompts = [m.get("prompt") for m in meta]
    return score_images(images, prompts, face, clip, ref, meta)


# -- report -----------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_report(r: dict[str, Any]) -> str:
    faceless = r["faceless_images"]
    lines = [
        f"images               {r['n_images']}"
        + (f"  ({len(faceless)} without a face: {', '.join(faceless)})" if faceless else ""),
        f"face distance        {_f(r['face_distance'])}  (lower is better; mean over {r['face_distance_n']} face(s))",
        f"identity similarity  {_f(r['identity_similarity'])}  (cosine to the normalised reference)",
        f"CLIP score           {_f(r['clip_score'])}  (x100 as torchmetrics reports it: {_f(r['clip_score_x100'], 2)})",
        f"faceless             {r['faceless']}",
        f"reference            {r['reference']['dir']} ({r['reference']['n_faces']} face(s) in "
        f"{r['reference']['n_photos']} photo(s))",
    ]
    if len(r["per_prompt"]) > 1:
        lines += ["", f"{'CLIP':>7}  {'face':>7}  {'no face':>7}  prompt"]
        for p in r["per_prompt"]:
            lines.append(f"{_f(p['clip_score']):>7}  {_f(p['face_distance']):>7}  {p['faceless']:>7}  {p['prompt']}")
    if r["models"]["note"].startswith("DEMO"):
        lines += ["", r["models"]["note"].split(". ")[0] + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_tui.engine.score", description=__doc__.split("\n")[0])
    score_args(parser)  # the same arguments as `flux-tui score`
    args = parser.parse_args(argv)
    try:
        images = list_images(Path(args.images))
        if not images:
            raise ScoreError(f"{args.images}: no images ({', '.join(IMAGE_SUFFIXES)})")
        meta = [read_metadata(p) for p in images]
        prompts = [args.prompt] * len(images) if args.prompt else [m.get("prompt") for m in meta]
        missing = [p.name for p, pr in zip(images, prompts, strict=True) if not pr]
        if missing:
            raise ScoreError(f"{len(missing)} image(s) carry no prompt in their metadata ({', '.join(missing[:5])}"
                             f"{', ...' if len(missing) > 5 else ''}); pass --prompt TEXT")  # fmt: skip
        result = score_paths(images, reference_dir=Path(args.reference), prompts=prompts, clip_model=args.clip_model or DEFAULT_CLIP,
                             face_weights=args.face_weights, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                             device=args.device)  # fmt: skip
    except ScoreError as exc:
        print(f"score: {exc}", file=sys.stderr)
        return 1
    if args.out:
        write_scores(Path(args.out), result)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
