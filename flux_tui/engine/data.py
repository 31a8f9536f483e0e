"""Training photos: crop a square around the face, resize, and keep what was trained on.

Photos are read by `engine/photos.py` (regular files only, never blocking; EXIF orientation applied; huge
pictures reduced while decoding; 16-bit by value range); what cannot be used is named in the log and
skipped. MTCNN finds the face; the crop is the largest square inside the photo centred on it as far as the
borders allow (a plain centre crop when no face is found), resized to the training resolution.
Everything that follows from a photo is keyed by its bytes, never its name: the crop in the workspace
cache (so a sweep of runs on one data set runs MTCNN once), the latents made from it, and the copy in
`runs/<name>/data/` (`<stem>-<first 8 hex digits of the SHA-256>.png`), which shows what was trained on.
Two files with the same bytes are one photo: the second is skipped (photos.py).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flux_tui.engine.errors import EngineError
from flux_tui.engine.photos import PhotoError, PhotoFile, decode, describe, load_photo, photo_files

# Bump when the cropping or decoding changes, so cached crops (and the latents made from them) are not reused.
CROP_VERSION = 2


class NoImagesError(EngineError):
    """The data folder holds no usable photo."""


@dataclass(frozen=True)
class TrainImage:
    name: str  # the source file's name
    key: str  # hash of the source bytes, crop version and resolution: the cache key of everything after
    path: Path  # the prepared square image (PNG) in the run folder
    face_found: bool


def load_rgb(path: Path) -> Image.Image:
    """The photo upright (EXIF orientation applied) in RGB. Raises PhotoError naming what is wrong."""
    return load_photo(path)


def face_square(width: int, height: int, face_box: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
    """The largest square inside a width x height picture centred on `face_box` (x0, y0, x1, y1) as far as
    the borders allow; centred on the picture when there is no face."""
    side = min(width, height)
    if face_box is None:
        cx, cy = width / 2, height / 2
    else:
        cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


class FaceFinder:
    """MTCNN, loaded on first use (a data set whose crops are all cached never loads it). Faces are looked
    for on a copy whose longer side is at most DETECT_SIDE (MTCNN's time grows with the pixels: seconds
    for a phone photo at full size), and the box is scaled back to the photo."""

    DETECT_SIDE = 1280

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._mtcnn = None

    def __call__(self, im: Image.Image) -> tuple[float, float, float, float] | None:
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(keep_all=True, device=self.device)
        factor = math.ceil(max(im.size) / self.DETECT_SIDE)
        small = im.reduce(factor) if factor > 1 else im
        boxes, probs = self._mtcnn.detect(small)
        if boxes is None or len(boxes) == 0:
            return None
        # The most confident face; ties go to the larger one.
        best = max(range(len(boxes)), key=lambda i: (float(probs[i]), _area(boxes[i])))
        sx, sy = im.width / small.width, im.height / small.height
        x0, y0, x1, y1 = (float(v) for v in boxes[best])
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _area(box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def prepare_images(
    data_dir: Path,
    resolution: int,
    out_dir: Path,
    cache_dir: Path,
    log: Callable[[str], None],
    device: str = "cpu",
) -> list[TrainImage]:
    """Crop every usable photo of `data_dir` to a `resolution` square into `out_dir`. Unusable files are
    named in the log and skipped; raises NoImagesError when none is left."""
    crops = Path(cache_dir) / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    finder = FaceFinder(device)
    images: list[TrainImage] = []
    skipped: list[str] = []

    def skip(name: str, why: str) -> None:
        log(f"data: skipping {name}: {why}")
        skipped.append(name)

    try:
        for photo in photo_files(Path(data_dir), skip):
            try:
                key, crop, face_found = _crop(photo, resolution, crops, finder)
            except PhotoError as exc:
                skip(photo.name, str(exc))
                continue
            dest = out_dir / prepared_name(photo, out_dir)
            shutil.copyfile(crop, dest)
            images.append(TrainImage(photo.name, key, dest, face_found))
            log(f"data: {photo.name} -> {dest.name} ({'face-centred' if face_found else 'no face found: centre crop'})")
    except PhotoError as exc:
        raise NoImagesError(f"data_dir: {exc}") from None
    if not images:
        why = f"; skipped {', '.join(skipped)}" if skipped else ""
        raise NoImagesError(f"no usable training photo in {data_dir} ({describe()}){why}")
    log(f"data: {len(images)} photo(s) at {resolution}x{resolution} px in {out_dir}"
        + (f", {len(skipped)} skipped" if skipped else ""))  # fmt: skip
    return images


def prepared_name(photo: PhotoFile, out_dir: Path) -> str:
    """The prepared copy's name: the stem for the reader, the content hash so that `01.jpg` and `01.png`
    (or any two different photos) never share a file."""
    name = f"{photo.path.stem}-{photo.sha256[:8]}.png"
    return name if not (out_dir / name).exists() else f"{photo.path.stem}-{photo.sha256}.png"


def _crop(photo: PhotoFile, resolution: int, crops: Path, finder: FaceFinder) -> tuple[str, Path, bool]:
    """(key, the cached square crop, whether a face was found), made now unless the cache holds it whole."""
    key = hashlib.sha256(f"{photo.sha256}:{CROP_VERSION}:{resolution}".encode()).hexdigest()[:24]
    cached, meta = crops / f"{key}.png", crops / f"{key}.face"
    found = _cached_face(cached, meta, resolution)
    if found is not None:
        return key, cached, found
    im = decode(photo.data, min_side=resolution)
    box = finder(im)
    square = im.crop(face_square(im.width, im.height, box))
    square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    _atomic_save(square, cached)
    _atomic_write(meta, "1" if box is not None else "0")
    return key, cached, box is not None


def _cached_face(cached: Path, meta: Path, resolution: int) -> bool | None:
    """Whether the cached crop had a face; None when the crop is missing or damaged (make it again)."""
    try:
        flag = meta.read_text()
        with Image.open(cached) as im:
            im.load()
            if flag not in ("0", "1") or im.size != (resolution, resolution):
                return None
    except Exception:  # noqa: BLE001 - missing, truncated, not an image: all mean "crop again"
        return None
    return flag == "1"


def _atomic_save(im: Image.Image, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, dest)


def _atomic_write(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, dest)


def to_tensor(path: Path):  # -> torch.Tensor (3, H, W) in [-1, 1]
    import numpy as np
    import torch

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
