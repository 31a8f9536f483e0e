"""Training photos: load, orient, crop a square around the face, resize, and keep what was trained on.

Each photo is opened with its EXIF orientation applied and converted to RGB. MTCNN finds the face; the crop
is the largest square inside the photo centred on it as far as the borders allow (a plain centre crop when
no face is found), resized to the training resolution. Crops are stored in the workspace cache keyed by the
photo's bytes and the resolution, so a sweep of runs on one data set runs MTCNN once; each run also copies
its crops into `runs/<name>/data/` so the user sees exactly what was trained on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from flux_tui.core.fsutil import file_sha256

# Bump when the cropping changes, so cached crops (and the latents made from them) are not reused.
CROP_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class NoImagesError(Exception):
    """The data folder holds no usable photo."""


@dataclass(frozen=True)
class TrainImage:
    name: str  # the source file's name
    key: str  # hash of the source bytes, crop version and resolution: the cache key of everything after
    path: Path  # the prepared square image (PNG) in the run folder
    face_found: bool




def load_rgb(path: Path) -> Image.Image:
    """The photo upright (EXIF orientation applied) in RGB. Raises OSError/UnidentifiedImageError."""
    with Image.open(path) as im:
        im.load()  # decode now: a truncated file fails here, not later
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


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
    """MTCNN, loaded on first use (a data set whose crops are all cached never loads it)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._mtcnn = None

    def __call__(self, im: Image.Image) -> tuple[float, float, float, float] | None:
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(keep_all=True, device=self.device)
        boxes, probs = self._mtcnn.detect(im)
        if boxes is None or len(boxes) == 0:
            return None
        # The most confident face; ties go to the larger one.
        best = max(range(len(boxes)), key=lambda i: (float(probs[i]), _area(boxes[i])))
        return tuple(float(v) for v in boxes[best])  # type: ignore[return-value]


def _area(box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def list_photos(data_dir: Path) -> list[Path]:
    """Every visible file in the folder, sorted by name (non-images are reported by `prepare_images`)."""
    if not data_dir.is_dir():
        raise NoImagesError(f"data_dir {data_dir} is not a folder")
    return sorted(p for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))


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
    crops = cache_dir / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    finder = FaceFinder(device)
    images: list[TrainImage] = []
    skipped: list[str] = []
    for src in list_photos(Path(data_dir)):
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            log(f"data: skipping {src.name}: not a jpg, png or webp file")
            skipped.append(src.name)
            continue
        try:
            key = hashlib.sha256(f"{file_sha256(src)}:{CROP_VERSION}:{resolution}".encode()).hexdigest()[:24]
            cached = crops / f"{key}.png"
            meta = crops / f"{key}.face"
            if cached.exists() and meta.exists():
                face_found = meta.read_text() == "1"
            else:
                im = load_rgb(src)
                box = finder(im)
                face_found = box is not None
                square = im.crop(face_square(im.width, im.height, box))
                square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
                _atomic_save(square, cached)
                _atomic_write(meta, "1" if face_found else "0")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log(f"data: skipping {src.name}: cannot read it as an image ({type(exc).__name__}: {exc})")
            skipped.append(src.name)
            continue
        dest = out_dir / f"{src.stem}.png"
        shutil.copyfile(cached, dest)
        images.append(TrainImage(src.name, key, dest, face_found))
        log(f"data: {src.name} -> {dest.name} ({'face-centred' if face_found else 'no face found: centre crop'})")
    if not images:
        why = f"; skipped {', '.join(skipped)}" if skipped else ""
        raise NoImagesError(f"no usable training photo in {data_dir} (jpg, png or webp){why}")
    log(f"data: {len(images)} photo(s) at {resolution}x{resolution} px in {out_dir}"
        + (f", {len(skipped)} skipped" if skipped else ""))  # fmt: skip
    return images


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
