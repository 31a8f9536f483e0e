"""Reading the user's photos safely: which files of a folder are photos, and decoding one into RGB.

One reader for every photo the engine takes from the user (training photos, the face reference of the
scores), so a file is used or skipped the same way everywhere, with the reason in the log:

- Only regular files are opened, and opened without blocking: a FIFO named `a.jpg` would hang a plain
  `open` forever. Symlinks are followed; a loop, a dangling link, a folder, a pipe or a device is named
  and skipped. Hidden files (`.DS_Store`, `._01.jpg`) are left out silently.
- A file is read into memory once: its SHA-256 and the decoded picture come from the same bytes, so
  everything derived from a photo (prepared image, cache keys) follows from its content, never its name.
- Decoding never trusts the header: a JPEG larger than the working size is decoded at 1/2..1/8 scale
  (`Image.draft`), anything still over Pillow's decompression-bomb limit is skipped with its size, and
  what is decoded is reduced to at most WORK_PIXELS. 16-bit and float pictures are scaled by their value
  range (Pillow's own convert clips them to near-white); transparency is flattened onto white.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Pillow refuses more than twice its MAX_IMAGE_PIXELS (2 x 89.5 Mpx by default) as a decompression bomb;
# no decode here goes over that, whatever Pillow's setting in this process.
DECODE_LIMIT = 2 * 89_478_485
WORK_PIXELS = 24_000_000  # a decoded photo is reduced to this (about 6000x4000): ample for any crop
MAX_FILE_BYTES = 512 * 2**20  # no photo is this big; reading one into memory would be a hazard
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_PILLOW_SETTINGS = threading.Lock()


class PhotoError(Exception):
    """A file that cannot be used as a photo; the message says why (the caller adds the name)."""


@dataclass(frozen=True)
class PhotoFile:
    path: Path
    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


SkipFn = Callable[[str, str], None]  # (file name, reason)


def photo_files(folder: Path, on_skip: SkipFn, suffixes: tuple[str, ...] = PHOTO_SUFFIXES) -> Iterator[PhotoFile]:
    """The photos of `folder` by name, each read into memory (one at a time, as the caller iterates).
    Every entry that is not used, except hidden files, is reported through `on_skip(name, reason)`; a file
    with the same bytes as one before it is the same photo, so it is skipped too. Raises PhotoError when
    the folder itself cannot be listed."""
    folder = Path(folder)
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except NotADirectoryError:
        raise PhotoError(f"{folder} is not a folder") from None
    except OSError as exc:
        raise PhotoError(f"cannot list {folder} ({exc.strerror or exc})") from None
    seen: dict[str, str] = {}  # sha256 -> the first name it was found under
    for name in names:
        if name.startswith("."):
            continue
        path = folder / name
        try:
            why = _not_a_photo_file(path, suffixes)
            if why is None:
                data = read_file(path)
                sha = hashlib.sha256(data).hexdigest()
                why = f"the same bytes as {seen[sha]}" if sha in seen else None
        except PhotoError as exc:
            why = str(exc)
        if why is not None:
            on_skip(name, why)
            continue
        seen[sha] = name
        yield PhotoFile(path, data, sha)


def _not_a_photo_file(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """Why `path` is not a photo file, from its metadata alone (nothing is opened); None when it may be."""
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            with contextlib.suppress(OSError):
                return f"a dangling link (to {os.readlink(path)}, which does not exist)"
            return "a dangling link"
        return f"cannot read it ({exc.strerror or exc})"
    kind = _kind(st.st_mode)
    if kind:
        return f"{kind}, not a photo"
    if path.suffix.lower() not in suffixes:
        return f"not a {describe(suffixes)} file"
    return None


def describe(suffixes: tuple[str, ...] = PHOTO_SUFFIXES) -> str:
    """The kinds of file read, in words: 'jpg, png or webp'."""
    words = list(dict.fromkeys(s.lstrip(".").lower().replace("jpeg", "jpg") for s in suffixes))
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_file(path: Path) -> bytes:
    """The bytes of a regular file, opened without blocking (a FIFO or device swapped in after a check is
    refused, not waited on). Raises PhotoError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PhotoError(f"cannot read it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind:
            raise PhotoError(f"{kind}, not a photo")
        if st.st_size > MAX_FILE_BYTES:
            raise PhotoError(f"{st.st_size / 2**20:.0f} MiB is too big for a photo (at most {MAX_FILE_BYTES // 2**20} MiB)")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise PhotoError(f"more than {MAX_FILE_BYTES // 2**20} MiB: too big for a photo")
        return b"".join(chunks)
    except OSError as exc:
        raise PhotoError(f"cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def load_photo(path: Path, min_side: int = 1024) -> Image.Image:
    """One photo file, decoded as `decode` does. Raises PhotoError."""
    return decode(read_file(Path(path)), min_side)


def decode(data: bytes, min_side: int = 1024) -> Image.Image:
    """The picture in `data` upright (EXIF orientation applied), in RGB, reduced to at most WORK_PIXELS
    while keeping its short side at least `min_side` where it had that. Raises PhotoError."""
    try:
        with _pillow_settings():
            src = Image.open(io.BytesIO(data))  # not closed: an in-memory file; `im` may be `src` itself
            orientation = _orientation(src)
            im = _flatten(_to_8bit(_load_reduced(src, min_side)))
            factor = _reduction(im.width, im.height, min_side)
            if factor > 1:
                im = im.reduce(factor)
            if orientation in _TRANSPOSE:
                im = im.transpose(_TRANSPOSE[orientation])
            return im
    except PhotoError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "not usable"
        raise PhotoError(f"cannot read it as an image ({type(exc).__name__}: {exc})") from None


@contextmanager
def _pillow_settings() -> Iterator[None]:
    """Pillow's decompression-bomb check off while decoding: `decode` enforces DECODE_LIMIT itself, after
    reading the size, and can then decode a large JPEG at reduced scale instead of failing. Truncated files
    refused even where a library switched LOAD_TRUNCATED_IMAGES on (half a photo would train as grey).
    Both settings are process-wide, so decodes here take turns."""
    with _PILLOW_SETTINGS:
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF: use the picture as stored
        return 1


def _reduction(width: int, height: int, min_side: int) -> int:
    """The integer factor that brings width x height to at most WORK_PIXELS, short side kept >= min_side."""
    if width * height <= WORK_PIXELS:
        return 1
    factor = max(2, math.isqrt(width * height // WORK_PIXELS))
    while math.ceil(width / factor) * math.ceil(height / factor) > WORK_PIXELS:
        factor += 1
    return max(1, min(factor, min(width, height) // max(min_side, 1)))


def _load_reduced(src: Image.Image, min_side: int) -> Image.Image:
    """Decode `src`: a JPEG over WORK_PIXELS at the smallest DCT scale that keeps it at least that big
    divided by the reduction still to come; refuse anything over DECODE_LIMIT before decoding it."""
    width, height = src.size
    factor = _reduction(width, height, min_side)
    if factor > 1:
        src.draft(None, (max(1, width // factor), max(1, height // factor)))  # a no-op except for JPEG
    if src.width * src.height > DECODE_LIMIT:
        raise PhotoError(f"{width}x{height} pixels is more than flux-tui decodes ({DECODE_LIMIT / 1e6:.0f} Mpx); "
                         "save a smaller copy")  # fmt: skip
    src.load()
    return src


def _to_8bit(im: Image.Image) -> Image.Image:
    """8-bit grey from 16-bit and 32-bit grey by their value range: the full 16-bit scale when the values
    fit it (a 16-bit PNG), else the picture's own minimum..maximum (floats in 0..1 map to 0..255)."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    import numpy as np

    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    lo, hi = float(arr.min()), float(arr.max())
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return Image.fromarray((arr.astype(np.int64) >> 8).astype(np.uint8), mode="L")
    if im.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scaled = (arr.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _flatten(im: Image.Image) -> Image.Image:
    """RGB; transparent parts onto white (what is under them in the file is arbitrary, often black)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
