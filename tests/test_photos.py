"""Reading the user's photos: real files made here (a truncated JPEG, a 16-bit PNG written with numpy, a FIFO,
symlink loops, pictures past Pillow's decompression-bomb limit), the demo's photos and the real MTCNN.

Every photo the engine takes from the user goes through engine/photos.py: the training photos
(engine/data.py) and the face reference of the scores (engine/score.py), so both skip the same files and
name them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from flux_tui.engine import photos, score
from flux_tui.engine.data import NoImagesError, TrainImage, prepare_images


def _png_stream(path: Path, width: int, height: int) -> None:
    """A grey PNG written row by row (no picture of that size is ever held in memory): a huge picture in a
    file of a few hundred kilobytes, which is what a decompression bomb is."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp, row, parts = zlib.compressobj(1), b"\0" + bytes(width), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _truncated(src: Path, dest: Path) -> None:
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])


def _in_thread(fn: Callable[[], object], timeout: float = 180) -> object:
    """Run `fn` where a hang (opening a FIFO blocks until a writer comes) fails the test instead of
    freezing the suite."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "reading the photos blocked"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


@pytest.fixture(scope="module")
def messy(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's photos plus every kind of file a photos folder collects."""
    root = tmp_path_factory.mktemp("messy")
    folder = root / "photos"
    shutil.copytree(demo_workspace / "photos", folder)
    ImageOps.mirror(Image.open(folder / "01.jpg")).save(folder / "01.png")  # same stem, other picture
    shutil.copy(folder / "03.jpg", folder / "copy-of-03.jpg")  # the same bytes under another name
    _truncated(demo_workspace / "photos" / "05.jpg", folder / "cut.jpg")
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    os.symlink("nowhere.jpg", folder / "gone.jpg")
    (folder / "album.jpg").mkdir()
    (folder / "notes.txt").write_text("not a photo")
    outside = root / "elsewhere.jpg"
    shutil.copy(folder / "05.jpg", outside)
    Image.open(outside).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(outside)
    os.symlink(outside, folder / "linked.jpg")  # a link to a real photo is used
    return folder


SKIPPED = {
    "cut.jpg": "cannot read it as an image (OSError: image file is truncated",
    "pipe.jpg": "a named pipe (FIFO), not a photo",
    "loop-a.jpg": "a symlink loop",
    "loop-b.jpg": "a symlink loop",
    "gone.jpg": "a dangling link (to nowhere.jpg, which does not exist)",
    "album.jpg": "a folder, not a photo",
    "notes.txt": "not a jpg, png or webp file",
    "copy-of-03.jpg": "the same bytes as 03.jpg",
}
USED = ["01.jpg", "01.png", "02.png", "03.jpg", "04.png", "05.jpg", "06.png", "linked.jpg"]


@pytest.fixture(scope="module")
def prepared(messy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[TrainImage], list[str], Path]:
    root = tmp_path_factory.mktemp("prepared")
    lines: list[str] = []
    images = _in_thread(lambda: prepare_images(messy, 64, root / "data", root / "cache", lines.append))
    return images, lines, root  # type: ignore[return-value]


def test_every_unusable_entry_is_named_with_its_reason_and_none_blocks(prepared) -> None:
    images, lines, _ = prepared
    assert [i.name for i in images] == USED
    for name, why in SKIPPED.items():
        assert any(line.startswith(f"data: skipping {name}: {why}") for line in lines), (name, lines)
    assert lines[-1].endswith(f"{len(USED)} photo(s) at 64x64 px in {prepared[2] / 'data'}, {len(SKIPPED)} skipped")


def test_photos_with_one_stem_keep_their_own_prepared_image_and_key(prepared, messy: Path, tmp_path: Path) -> None:
    images, _, root = prepared
    by_name = {i.name: i for i in images}
    jpg, png = by_name["01.jpg"], by_name["01.png"]
    assert jpg.key != png.key and jpg.path != png.path
    for img in (jpg, png):
        sha = hashlib.sha256((messy / img.name).read_bytes()).hexdigest()
        assert img.path.name == f"01-{sha[:8]}.png"
    assert sorted(p.name for p in (root / "data").iterdir()) == sorted(i.path.name for i in images)
    # Each prepared image is what its own photo gives alone, not the other's.
    for img in (jpg, png):
        alone = tmp_path / img.name
        alone.mkdir()
        shutil.copy(messy / img.name, alone / img.name)
        [own] = prepare_images(alone, 64, tmp_path / f"{img.name}-out", tmp_path / "cache", lambda _: None)
        assert own.key == img.key
        assert np.array_equal(np.asarray(Image.open(own.path)), np.asarray(Image.open(img.path)))
    assert not np.array_equal(np.asarray(Image.open(jpg.path)), np.asarray(Image.open(png.path)))


def test_a_photo_replaced_under_its_name_is_prepared_again(tmp_path: Path, demo_workspace: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(demo_workspace / "photos" / "01.jpg", folder / "a.jpg")
    [first] = prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lambda _: None)
    shutil.copy(demo_workspace / "photos" / "03.jpg", folder / "a.jpg")
    [second] = prepare_images(folder, 64, tmp_path / "data2", tmp_path / "cache", lambda _: None)
    assert first.key != second.key and first.path.name != second.path.name
    assert not np.array_equal(np.asarray(Image.open(second.path)), np.asarray(Image.open(first.path)))


def test_a_damaged_cached_crop_is_made_again(tmp_path: Path, demo_workspace: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(demo_workspace / "photos" / "01.jpg", folder / "a.jpg")
    [first] = prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lambda _: None)
    expected = np.asarray(Image.open(first.path))
    crop = tmp_path / "cache" / "crops" / f"{first.key}.png"
    crop.write_bytes(crop.read_bytes()[:40])
    [again] = prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lambda _: None)
    assert np.array_equal(np.asarray(Image.open(again.path)), expected)


def test_a_truncated_jpeg_is_refused_even_where_a_library_lets_pillow_load_it(
    tmp_path: Path, demo_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    _truncated(demo_workspace / "photos" / "01.jpg", tmp_path / "cut.jpg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what some libraries do at import
    Image.open(tmp_path / "cut.jpg").load()  # Pillow alone: half a photo, grey below
    with pytest.raises(photos.PhotoError, match="image file is truncated"):
        photos.load_photo(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the library's choice is back


def test_a_16_bit_png_is_scaled_by_its_range_not_clipped_white(tmp_path: Path, demo_workspace: Path) -> None:
    grey = np.asarray(Image.open(demo_workspace / "photos" / "01.jpg").convert("L"), dtype=np.uint16)
    deep = grey * 257  # the same picture at 16 bits: 0..65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"  # what Pillow gives for a 16-bit grey PNG
    assert grey.mean() < 160 and np.asarray(Image.open(tmp_path / "deep.png").convert("RGB")).mean() > 240  # Pillow: white
    im = photos.load_photo(tmp_path / "deep.png")
    assert im.mode == "RGB"
    assert np.abs(np.asarray(im)[..., 0].astype(int) - grey).max() <= 1

    # A 32-bit integer or float picture outside 0..65535 or 0..1 is stretched over its own range.
    for arr in (np.linspace(-1000, 5000, 64 * 32).reshape(32, 64).astype(np.int32),
                np.linspace(-2.0, 3.0, 64 * 32).reshape(32, 64).astype(np.float32)):  # fmt: skip
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="TIFF")
        got = np.asarray(photos.decode(buf.getvalue()))[..., 0]
        assert (got.min(), got.max()) == (0, 255) and got[0, 0] < got[-1, -1]


def test_a_16_bit_png_trains_as_the_picture_it_holds(tmp_path: Path, demo_workspace: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    grey = np.asarray(Image.open(demo_workspace / "photos" / "01.jpg").convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(folder / "deep.png")
    Image.fromarray(grey.astype(np.uint8)).save(folder / "plain.png")
    deep, plain = prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lambda _: None)
    a, b = np.asarray(Image.open(deep.path), dtype=int), np.asarray(Image.open(plain.path), dtype=int)
    assert np.abs(a - b).max() <= 2 and a.mean() < 200


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((10, 10, 29, 29), fill=(200, 0, 0, 255))
    im.save(tmp_path / "cut-out.png")
    arr = np.asarray(photos.load_photo(tmp_path / "cut-out.png"))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[20, 20]) == (200, 0, 0)


def test_a_jpeg_past_the_bomb_limit_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    big = Image.new("L", (14000, 12800), 90)  # 179.2 Mpx: past twice Pillow's MAX_IMAGE_PIXELS
    ImageDraw.Draw(big).ellipse((4000, 3000, 10000, 9000), fill=200)
    big.save(tmp_path / "huge.jpg", quality=70)
    del big
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "huge.jpg")  # Pillow alone refuses it
    im = photos.load_photo(tmp_path / "huge.jpg")
    assert im.width * im.height <= photos.WORK_PIXELS and min(im.size) >= 1024
    assert im.width / im.height == pytest.approx(14000 / 12800, rel=0.01)
    arr = np.asarray(im)[..., 0]
    assert abs(int(arr[im.height // 2, im.width // 2]) - 200) < 10 and abs(int(arr[5, 5]) - 90) < 10
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own limit is back for everyone else


def test_a_png_past_the_bomb_limit_is_skipped_with_its_size(tmp_path: Path, demo_workspace: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _png_stream(folder / "bomb.png", 14000, 13000)  # 182 Mpx, about 200 kB
    shutil.copy(demo_workspace / "photos" / "02.png", folder / "ok.png")
    lines: list[str] = []
    [only] = prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lines.append)
    assert only.name == "ok.png"
    assert "data: skipping bomb.png: 14000x13000 pixels is more than flux-tui decodes (179 Mpx)" in "\n".join(lines)


def test_a_png_past_pillows_warning_limit_is_reduced(tmp_path: Path) -> None:
    _png_stream(tmp_path / "wide.png", 10000, 9000)  # 90 Mpx: Pillow warns, decodes it whole
    im = photos.load_photo(tmp_path / "wide.png")
    assert im.size == (5000, 4500) and im.mode == "RGB"  # halved: 22.5 Mpx


def test_a_folder_of_nothing_usable_says_what_was_skipped(tmp_path: Path, demo_workspace: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _truncated(demo_workspace / "photos" / "01.jpg", folder / "cut.jpg")
    os.mkfifo(folder / "pipe.png")
    with pytest.raises(NoImagesError, match=r"no usable training photo .*skipped cut\.jpg, pipe\.png"):
        _in_thread(lambda: prepare_images(folder, 64, tmp_path / "data", tmp_path / "cache", lambda _: None))
    with pytest.raises(NoImagesError, match="is not a folder"):
        prepare_images(folder / "cut.jpg", 64, tmp_path / "data", tmp_path / "cache", lambda _: None)


@pytest.fixture(scope="module")
def face(demo_workspace: Path) -> score.FaceEmbedder:
    return score.FaceEmbedder(demo_workspace / "weights" / "vggface2-standin.pt", "cpu")


def test_the_face_reference_skips_and_names_the_same_files(messy: Path, face: score.FaceEmbedder,
                                                           tmp_path: Path) -> None:  # fmt: skip
    lines: list[str] = []
    ref = _in_thread(lambda: score.reference_embedding(messy, face, tmp_path, lines.append))
    for name, why in SKIPPED.items():
        assert any(line.startswith(f"score: reference: skipping {name}: {why}") for line in lines), (name, lines)
    assert ref.summary()["skipped"] == sorted(SKIPPED)
    assert ref.n_photos == len(USED) and not ref.cached
    # From the cache: the same photos skipped, named again, the same embedding.
    again_lines: list[str] = []
    again = _in_thread(lambda: score.reference_embedding(messy, face, tmp_path, again_lines.append))
    assert again.cached and sorted(again_lines) == sorted(lines)
    assert again.summary() == ref.summary()


def test_a_reference_of_only_broken_photos_is_a_clear_error(tmp_path: Path, demo_workspace: Path,
                                                            face: score.FaceEmbedder) -> None:  # fmt: skip
    _truncated(demo_workspace / "photos" / "01.jpg", tmp_path / "cut.jpg")
    with pytest.raises(score.ScoreError, match=r"holds no usable photo \(jpg, png or webp\); skipped cut\.jpg"):
        score.reference_embedding(tmp_path, face, None, lambda _: None)
