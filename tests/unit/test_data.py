"""Tests of birdshield.data: image decoding, layouts, splits, torch access and dataset checks."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BIRDS_MINI
from PIL import Image, ImageEnhance

from birdshield import data
from birdshield.data import BadImageError, DataError, Sample
from birdshield.data.check import _near_pairs
from birdshield.data.images import _as_rgb, _shrunk, _to_8bit

ODD_NAMES = ["BLACK & YELLOW bROADBILL", "MIKADO  PHEASANT", "ZEBRA DOVE"]


# ------------------------------------------------------------------------------------------------- helpers


def _png(width: int, height: int, rows: int | None = None) -> bytes:
    """8-bit greyscale PNG of zeros; `rows` < height makes a header-only 'bomb' with a short IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(1)
    row, left, idat = b"\0" * (width + 1), height if rows is None else rows, []
    while left:
        n = min(left, 256)
        idat.append(packer.compress(row * n))
        left -= n
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ------------------------------------------------------------------------------------------ reading images


def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)


def _rgba() -> Image.Image:
    img = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    img.paste((0, 0, 255, 0), (0, 0, 20, 30))  # left half fully transparent blue
    return img


def _palette_transparent() -> Image.Image:
    img = Image.new("P", (40, 30), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.paste(0, (0, 0, 10, 30))
    return img


READABLE = {
    "grey.png": lambda: Image.new("L", (40, 30), 128),
    "grey_alpha.png": lambda: Image.new("LA", (40, 30), (50, 100)),
    "palette.png": lambda: Image.new("RGB", (40, 30), (10, 200, 30)).convert("P"),
    "palette_transparent.png": _palette_transparent,
    "rgba.png": _rgba,
    "cmyk.jpg": lambda: Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
    "sixteen.png": lambda: Image.fromarray(_gradient16()),
    "int32.tif": lambda: Image.fromarray(_gradient16().astype(np.int32)),
    "float.tif": lambda: Image.fromarray(np.linspace(0, 1, 1200, dtype=np.float32).reshape(30, 40)),
    "bilevel.png": lambda: Image.new("1", (40, 30), 1),
    "picture.webp": lambda: Image.new("RGB", (40, 30), (1, 2, 3)),
    "picture.gif": lambda: Image.new("RGB", (40, 30), (1, 2, 3)),
    "picture.bmp": lambda: Image.new("RGB", (40, 30), (1, 2, 3)),
    "UPPER.JPG": lambda: Image.new("RGB", (40, 30), (1, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_read_rgb_gives_loaded_rgb_of_right_size(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    READABLE[name]().save(path)
    img = data.read_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "sixteen.png"
    Image.fromarray(_gradient16()).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(data.read_rgb(path))
    assert pixels.min() == 0 and pixels.max() == 255
    assert 110 < pixels.mean() < 145  # a clipped conversion would be almost all white


def test_big_endian_sixteen_bit_and_float_are_scaled() -> None:
    big = Image.frombytes("I;16B", (40, 30), _gradient16().astype(">u2").tobytes())
    assert 110 < data.to_tensor(big, 16).mean() * 255 < 145
    wide = Image.fromarray(np.linspace(-5e3, 5e3, 1200, dtype=np.float32).reshape(30, 40))
    assert 110 < data.to_tensor(wide, 16).mean() * 255 < 145


def test_transparency_goes_onto_white(tmp_path: Path) -> None:
    rgba, palette = tmp_path / "rgba.png", tmp_path / "palette.png"
    _rgba().save(rgba)
    _palette_transparent().save(palette)
    pixels = np.asarray(data.read_rgb(rgba))
    assert tuple(pixels[5, 5]) == (255, 255, 255) and tuple(pixels[5, 35]) == (255, 0, 0)
    pixels = np.asarray(data.read_rgb(palette))
    assert tuple(pixels[5, 5]) == (255, 255, 255) and tuple(pixels[5, 35]) == (0, 255, 0)


def test_cmyk_colour_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(path, quality=95)
    red, green, blue = np.asarray(data.read_rgb(path)).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees
    Image.new("RGB", (40, 20), (0, 128, 0)).save(path, exif=exif)
    assert data.read_rgb(path).size == (20, 40)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = _jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    rng = np.random.default_rng(0)
    return {
        "truncated": (_write(tmp_path / "truncated.jpg", good[: len(good) // 2]), "truncated or corrupt"),
        "random": (_write(tmp_path / "random.jpg", rng.bytes(4000)), "not an image file"),
        "garbage_after_header": (
            _write(tmp_path / "garbage.jpg", good[: good.index(b"\xff\xda") + 14] + rng.bytes(4000)),
            "truncated or corrupt",
        ),
        "text": (
            _write(tmp_path / "notes.jpg", b"these are field notes, not a picture\n"),
            "not an image file",
        ),
        "empty": (_write(tmp_path / "empty.png", b""), "empty file"),
        "missing": (tmp_path / "missing.jpg", "file not found"),
        "folder": (_write(tmp_path / "folder.jpg" / "x", b"").parent, "is a folder"),
    }


@pytest.mark.parametrize(
    "kind", ["truncated", "random", "garbage_after_header", "text", "empty", "missing", "folder"]
)
def test_bad_files_raise_bad_image_error(tmp_path: Path, kind: str) -> None:
    path, reason = _bad_files(tmp_path)[kind]
    with pytest.raises(BadImageError) as info:
        data.read_rgb(path)
    assert str(path) in str(info.value) and reason in info.value.reason
    assert info.value.path == path and str(info.value) == f"{path}: {info.value.reason}"


def test_decompression_bombs_are_rejected_before_decoding(tmp_path: Path) -> None:
    huge = _write(tmp_path / "huge.png", _png(20_000, 20_000, rows=2))  # over Pillow's own error limit
    large = _write(tmp_path / "large.png", _png(12_000, 10_000))  # a real, complete, compressible PNG
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        for path in (huge, large):
            with pytest.raises(BadImageError, match="image too large") as info:
                data.read_rgb(path)
            assert str(path) in str(info.value)
    assert "12000 x 10000 pixels" in info.value.reason
    small = _write(tmp_path / "small.png", _png(100, 100))
    assert data.read_rgb(small).size == (100, 100)
    with pytest.raises(BadImageError, match="100 x 100 pixels exceeds"):
        data.read_rgb(small, max_pixels=5_000)


def test_extreme_aspect_ratios_are_refused_from_the_header(tmp_path: Path, monkeypatch) -> None:
    strip = _write(tmp_path / "strip.png", _png(10, 10_000_000, rows=2))  # header only: never decoded
    with pytest.raises(BadImageError, match=r"extreme aspect ratio: 10 x 10000000 pixels") as info:
        data.read_rgb(strip)
    assert info.value.path == strip
    assert data.read_rgb(_write(tmp_path / "ok.png", _png(500, 10))).size == (500, 10)  # exactly 50:1
    with pytest.raises(BadImageError, match="extreme aspect ratio"):
        data.read_rgb(_write(tmp_path / "thin.png", _png(511, 10)))


def test_to_tensor_crops_the_centred_square_of_extreme_images_first() -> None:
    img = Image.new("RGB", (20_000, 10), (0, 0, 0))
    img.paste((255, 255, 255), (9_995, 0, 10_005, 10))  # only the centred 10 x 10 square is white
    tensor = data.to_tensor(img, 16)
    assert tensor.shape == (3, 16, 16) and float(tensor.min()) == 1.0


def test_file_size_is_capped_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path / "big.png", _png(100, 100))
    monkeypatch.setattr("birdshield.data.images.MAX_FILE_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the whole file"))
    with pytest.raises(BadImageError, match=f"file too large: {path.stat().st_size:,} bytes") as info:
        data.read_rgb(path)
    assert info.value.path == path


def test_a_named_pipe_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(BadImageError, match="not a regular file"):
        data.read_rgb(fifo)


def test_animated_images_give_their_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    for name in ("anim.gif", "anim.png", "anim.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert Image.open(tmp_path / name).n_frames == 3
        red, green, blue = np.asarray(data.read_rgb(tmp_path / name))[10, 10].tolist()
        assert red > 240 and green < 15 and blue < 15  # WebP is lossy


# ------------------------------------------------------------------------------------------ formats

READS = "birdshield reads JPEG, PNG, WebP, BMP, TIFF and GIF"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n%%EndComments\n0 0 moveto 40 30 lineto stroke\n"


def _icon_around(png: bytes) -> bytes:
    """An ICO file whose one entry declares 16 x 16 pixels and holds `png`."""
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    return header + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), len(header) + 16) + png


@pytest.mark.parametrize("fmt", ["ICO", "ICNS", "PPM", "PCX", "SGI", "JPEG2000", "DDS"])
def test_formats_no_photo_comes_in_are_refused_by_name(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "bird.jpg"  # the name says JPEG; the bytes decide
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path, format=fmt)
    assert Image.open(path).format == fmt  # Pillow alone would decode it
    with pytest.raises(BadImageError) as info:
        data.read_rgb(path)
    assert info.value.path == path and info.value.reason == f"unsupported image format ({fmt}); {READS}"


def test_eps_is_refused_without_reaching_ghostscript(tmp_path: Path, monkeypatch) -> None:
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        pytest.fail("the EPS file was handed to Ghostscript")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", ghostscript)
    path = _write(tmp_path / "poster.jpg", EPS)
    assert Image.open(path).format == "EPS"
    with pytest.raises(BadImageError) as info:
        data.read_rgb(path)
    assert info.value.reason == f"unsupported image format (EPS); {READS}"


def test_an_icon_around_a_huge_png_is_refused_before_anything_is_decoded(tmp_path: Path, monkeypatch) -> None:
    """The icon's header says 16 x 16; Pillow would decode the PNG inside at its own 13,000 x 13,000."""
    from PIL import IcoImagePlugin

    monkeypatch.setattr(
        IcoImagePlugin.IcoFile, "getimage", lambda *a, **k: pytest.fail("the embedded image was decoded")
    )
    path = _write(tmp_path / "icon.png", _icon_around(_png(13_000, 13_000, rows=2)))
    with pytest.raises(BadImageError) as info:
        data.read_rgb(path)
    assert info.value.reason == f"unsupported image format (ICO); {READS}"


def test_a_gif_frame_beyond_its_screen_counts_against_the_pixel_limit(tmp_path: Path) -> None:
    """A GIF's first frame may be larger than the screen size its header declares: Pillow grows the image
    to the frame when it opens the file, so the limit sees the size that would be decoded."""
    buf = io.BytesIO()
    Image.new("P", (100, 100)).save(buf, format="GIF")
    gif = bytearray(buf.getvalue())
    descriptor = gif.index(b",")  # the frame's left, top, width, height
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 12_000, 12_000)
    path = _write(tmp_path / "screen.gif", bytes(gif))
    assert gif[6:10] == struct.pack("<HH", 100, 100)
    with pytest.raises(BadImageError, match="image too large: 12000 x 12000 pixels"):
        data.read_rgb(path)


def test_image_extensions_name_the_decoded_formats_only() -> None:
    Image.init()
    formats = {ext: Image.registered_extensions()[ext] for ext in data.IMAGE_EXTENSIONS}
    assert set(formats.values()) == set(data.DECODED_FORMATS)


def test_a_camera_jpeg_with_more_pictures_inside_is_read(tmp_path: Path) -> None:
    """Cameras write JPEGs with a multi-picture block (stereo, previews): Pillow calls them MPO."""
    path = tmp_path / "camera.jpg"
    first, second = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (0, 0, 0))
    first.save(path, format="MPO", save_all=True, append_images=[second])
    assert Image.open(path).format == "MPO"
    red, green, blue = np.asarray(data.read_rgb(path))[10, 10].tolist()
    assert red > 180 and green < 40 and blue < 40


def test_a_file_name_that_is_not_utf8_is_read_checked_and_reported(tmp_path: Path, make_kaggle) -> None:
    root = make_kaggle(tmp_path / "data", ["a", "b"])
    photo = _jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    for split in ("train", "test"):  # the same file in two splits: the report names it as a duplicate
        fd = os.open(os.fsencode(root / split / "a") + b"/bird\xff.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(photo)
    path = root / "train" / "a" / os.fsdecode(b"bird\xff.jpg")
    assert data.read_rgb(path).size == (64, 64)
    report = data.check(root)
    assert report["unreadable"] == [] and len(report["exact_duplicates"]) == 1
    name = "train/a/" + os.fsdecode(b"bird\xff.jpg")
    assert name in report["exact_duplicates"][0]["paths"] and name in data.format_check(report)
    assert json.loads(json.dumps(report)) == report  # escaped in JSON, back exactly as it was


def test_sixteen_bit_conversion_in_blocks_is_exact(monkeypatch) -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    monkeypatch.setattr("birdshield.data.images._BLOCK_ELEMENTS", 1000)  # 4 rows per block
    pixels = np.asarray(_to_8bit(Image.fromarray(values)))
    assert np.array_equal(pixels, np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
    wide = np.linspace(-5e3, 5e3, 256 * 256, dtype=np.float32).reshape(256, 256)
    wide[0, 0], wide[0, 1] = np.nan, np.inf
    pixels = np.asarray(_to_8bit(Image.fromarray(wide)))
    lo, hi = float(np.nanmin(wide[np.isfinite(wide)])), float(wide[np.isfinite(wide)].max())
    stretched = np.nan_to_num((wide.astype(np.float64) - lo) * (255.0 / (hi - lo)), posinf=255)
    assert np.array_equal(pixels, np.clip(np.rint(stretched), 0, 255).astype(np.uint8))


def _photo_like(width: int, height: int) -> Image.Image:
    """Smooth colour gradients with some texture: what a downscaled photo looks like."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 100 * np.sin(xx / 97) * np.cos(yy / 131)
    g = 127 + 100 * np.cos((xx + yy) / 173)
    b = 127 + 60 * np.sin(xx / 23) + 30 * np.sin(yy / 41)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "RGB")])
def test_large_images_shrunk_while_decoding_give_the_same_tensor(tmp_path: Path, fmt: str, mode: str) -> None:
    """A 2400 x 1800 image is reduced 2x (PNG) or decoded at 1/2 scale (JPEG) before the resize to 224:
    the tensor is the one a full-size decode gives, to within what the eye or a model can tell."""
    img = _photo_like(2400, 1800)
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    path = tmp_path / f"big.{fmt.lower()}"
    img.save(path, quality=95) if fmt == "JPEG" else img.save(path)
    shrunk = data.load_tensor(path, 224)
    full = data.to_tensor(data.read_rgb(path), 224)
    assert shrunk.shape == full.shape == (3, 224, 224)
    assert (shrunk - full).abs().mean() < 0.5 / 255 and (shrunk - full).abs().max() < 3 / 255


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16"])
def test_reducing_in_blocks_of_rows_is_exact(monkeypatch, mode: str) -> None:
    """Blocks of 3 rows (the factor) and a last block of 2: the same pixels as reducing the whole image."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (47, 61), dtype=np.uint16))
        whole = _to_8bit(img).reduce(3)
    else:
        img = Image.fromarray(rng.integers(0, 256, (47, 61, 4), dtype=np.uint8)).convert(mode)
        whole = img.reduce(3)
    monkeypatch.setattr("birdshield.data.images._BLOCK_ELEMENTS", 100)
    blocks = _shrunk(img, min_side=5)  # 47 // (3 x 5): factor 3
    assert blocks.mode == whole.mode and np.array_equal(np.asarray(blocks), np.asarray(whole))


def test_transparency_onto_white_in_blocks_is_exact(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 256, (61, 41), dtype=np.uint8), "P")
    palette.putpalette(rng.integers(0, 256, 768).tolist())
    palette.info["transparency"] = bytes(rng.integers(0, 256, 256).astype(np.uint8))
    cases = [Image.fromarray(rng.integers(0, 256, (61, 41, 4), dtype=np.uint8)), palette]
    monkeypatch.setattr("birdshield.data.images._BLOCK_ELEMENTS", 100)  # 2 rows per block
    for img in cases:
        rgba = img.convert("RGBA")
        whole = Image.new("RGB", img.size, (255, 255, 255))
        whole.paste(rgba, mask=rgba.getchannel("A"))
        assert np.array_equal(np.asarray(_as_rgb(img)), np.asarray(whole))


@pytest.mark.parametrize(
    "error", [MemoryError(), RuntimeError("decoder bug"), Image.DecompressionBombError("x")]
)
def test_any_decoder_failure_is_a_bad_image_naming_the_file(tmp_path: Path, monkeypatch, error) -> None:
    path = _write(tmp_path / "odd.png", _png(40, 30))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "load", fail)
    with pytest.raises(BadImageError) as info:
        data.read_rgb(path)
    assert info.value.path == path and info.value.reason


@pytest.mark.parametrize("error", [MemoryError(), ValueError("resize bug")])
def test_any_resize_failure_is_a_bad_image_naming_the_file(tmp_path: Path, monkeypatch, error) -> None:
    path = _write(tmp_path / "odd.png", _png(40, 30))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "resize", fail)
    with pytest.raises(BadImageError, match="cannot resize to 16 x 16") as info:
        data.load_tensor(path, 16)
    assert info.value.path == path
    dataset = data.ImageDataset([Sample(path, 0)], size=16)
    assert dataset[0] is None
    transformed = data.ImageDataset([Sample(path, 0)], size=16, transform=fail)
    assert transformed[0] is None
    [(good, x, bad)] = data.read_batches([path], 16, 4)
    assert (good, x) == ([], None) and bad[0][0] == path and "cannot resize" in bad[0][1]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_read_batches_gives_the_same_chunks_with_decode_threads(tmp_path: Path, make_image, workers) -> None:
    paths = [make_image(tmp_path / f"{i}.png", seed=i, size=(30 + i, 20)) for i in range(7)]
    paths.insert(3, _write(tmp_path / "bad.jpg", b"not an image"))
    chunks = list(data.read_batches(paths, 16, 3, workers=workers))
    assert [good for good, _, _ in chunks] == [[0, 1, 2], [4, 5], [6, 7]]
    assert [[path for path, _ in bad] for _, _, bad in chunks] == [[], [paths[3]], []]
    for good, x, _ in chunks:
        assert torch.equal(x, torch.stack([data.load_tensor(paths[i], 16) for i in good]))


def test_bad_image_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(BadImageError(Path("a/b.jpg"), "not an image file")))
    assert err.path == Path("a/b.jpg") and err.reason == "not an image file"


@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (20, 20), (300, 17)])
def test_to_tensor_resizes_and_centre_crops(shape: tuple[int, int]) -> None:
    img = Image.new("RGB", shape, (255, 0, 128))
    tensor = data.to_tensor(img, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 16, 16], torch.tensor([1.0, 0.0, 128 / 255]))
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def test_to_tensor_crops_the_centre() -> None:
    img = Image.new("RGB", (90, 30), (0, 0, 0))
    img.paste((255, 255, 255), (30, 0, 60, 30))  # white middle third survives the centre crop
    assert float(data.to_tensor(img, 30).min()) == 1.0


# ------------------------------------------------------------------------------------------------- layouts


def test_kaggle_layout_keeps_class_names_exactly(tmp_path: Path, make_kaggle, make_image) -> None:
    root = make_kaggle(tmp_path / "birds", ODD_NAMES)
    (root / "birds.csv").write_text("filepaths,labels,data set\nnonsense,WRONG,train\n")
    make_image(root / "train" / ODD_NAMES[0] / ".hidden.jpg")
    make_image(root / "train" / ODD_NAMES[0] / "._resource.jpg")
    (root / "train" / ODD_NAMES[0] / "notes.txt").write_text("not an image")
    ds = data.discover(root)
    assert ds.layout == "kaggle" and ds.root == root
    assert ds.class_names == sorted(ODD_NAMES)
    assert [len(ds.splits[s]) for s in data.SPLITS] == [12, 6, 6]
    for split, samples in ds.splits.items():
        assert samples == sorted(samples, key=lambda s: s.path)
        for sample in samples:
            assert sample.path.parent.name == ds.class_names[sample.label]
            assert sample.path.parent.parent.name == split


def test_kaggle_accepts_val_alias_and_missing_test(tmp_path: Path, make_kaggle) -> None:
    root = make_kaggle(tmp_path, ["A", "B"], {"train": 3, "val": 1})
    ds = data.discover(root)
    assert len(ds.splits["valid"]) == 2 and ds.splits["test"] == []


def test_kaggle_class_missing_from_train_is_an_error(tmp_path: Path, make_kaggle, make_image) -> None:
    root = make_kaggle(tmp_path, ["MIKADO  PHEASANT", "ZEBRA DOVE"])
    make_image(root / "valid" / "MIKADO PHEASANT" / "1.jpg")  # single space: a typo of the train class
    with pytest.raises(DataError) as info:
        data.discover(root)
    message = str(info.value)
    assert (
        "'MIKADO PHEASANT'" in message and "valid" in message and "did you mean 'MIKADO  PHEASANT'" in message
    )


def test_empty_class_folder_is_an_error(tmp_path: Path, make_kaggle) -> None:
    root = make_kaggle(tmp_path, ["A", "B"])
    (root / "test" / "B" / "readme.txt").unlink(missing_ok=True)
    empty = root / "train" / "C"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="remove them or add images") as info:
        data.discover(root)
    assert str(empty) in str(info.value)


def test_unrecognised_layouts_explain_what_is_accepted(tmp_path: Path, make_image) -> None:
    with pytest.raises(DataError, match="Accepted layouts"):
        data.discover(tmp_path)
    make_image(tmp_path / "loose.jpg")
    with pytest.raises(DataError, match="kaggle"):
        data.discover(tmp_path)
    make_image(tmp_path / "valid" / "A" / "1.jpg")
    with pytest.raises(DataError, match="no train/ folder"):
        data.discover(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        data.discover(tmp_path / "nowhere")


def _folders(root: Path, make_image, sizes: dict[str, int]) -> Path:
    for tint, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            make_image(root / name / f"{i:02d}.png", seed=100 * tint + i, size=(8, 8), tint=tint)
    return root


def test_folders_layout_split_is_stratified_deterministic_and_disjoint(tmp_path: Path, make_image) -> None:
    root = _folders(tmp_path, make_image, {"big": 40, "three": 3, "two": 2, "one": 1})
    ds = data.discover(root, seed=7)
    assert ds.layout == "folders" and ds.class_names == ["big", "one", "three", "two"]
    per_class = {
        split: np.bincount([s.label for s in samples], minlength=4).tolist()
        for split, samples in ds.splits.items()
    }
    assert per_class == {"train": [28, 1, 1, 2], "valid": [6, 0, 1, 0], "test": [6, 0, 1, 0]}
    paths = [{s.path for s in ds.splits[split]} for split in data.SPLITS]
    assert sum(map(len, paths)) == len(set().union(*paths)) == 46
    assert data.discover(root, seed=7) == ds
    assert data.discover(root, seed=8).splits != ds.splits
    custom = data.discover(root, seed=7, valid_fraction=0.5, test_fraction=0.25)
    assert [len(custom.splits[s]) for s in data.SPLITS] == [14, 21, 11]
    with pytest.raises(ValueError, match="sum < 1"):
        data.discover(root, valid_fraction=0.6, test_fraction=0.4)


def _cub(root: Path, make_image, classes: list[str], per_class: int = 6) -> Path:
    images, labels, split = [], [], []
    image_id = 0
    for class_id, name in enumerate(classes, 1):
        for i in range(per_class):
            image_id += 1
            rel = f"{name}/{name}_{i:04d}.jpg"
            make_image(root / "images" / rel, seed=image_id, size=(8, 8))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(i % 3 != 0)}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    return root


def test_cub_layout(tmp_path: Path, make_image) -> None:
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty Albatross"]
    root = _cub(tmp_path, make_image, classes)
    ds = data.discover(root, seed=3)
    assert ds.layout == "cub" and ds.class_names == classes
    assert [len(ds.splits[s]) for s in data.SPLITS] == [9, 3, 6]  # 4 train per class -> 3 train + 1 valid
    for sample in ds.splits["test"]:
        assert sample.path.parent.name == classes[sample.label] and int(sample.path.stem[-4:]) % 3 == 0
    assert data.discover(root, seed=3) == ds


def test_cub_mismatched_files_are_errors(tmp_path: Path, make_image) -> None:
    root = _cub(tmp_path, make_image, ["001.A", "002.B"], per_class=3)
    with open(root / "train_test_split.txt", "a") as f:
        f.write("99 1\n")
    with pytest.raises(DataError, match="train_test_split.txt.*do not match images.txt"):
        data.discover(root)
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match="train_test_split.txt: missing"):
        data.discover(root)


def test_cub_missing_image_is_an_error(tmp_path: Path, make_image) -> None:
    root = _cub(tmp_path, make_image, ["001.A", "002.B"], per_class=3)
    (root / "images" / "002.B" / "002.B_0001.jpg").unlink()
    with pytest.raises(DataError, match="002.B_0001.jpg"):
        data.discover(root)


def test_list_images_keeps_files_and_walks_folders_for_images(tmp_path: Path, make_image) -> None:
    odd = _write(tmp_path / "given.txt", b"not an image")
    folder = tmp_path / "in"
    for rel in ("b.jpg", "a/c.png", "a/.hidden.jpg", ".git/x.jpg", "z.weird"):
        _write(folder / rel, b"x")
    skipped: list[Path] = []
    found = data.list_images([odd, str(folder)], skipped)
    assert found == [odd, folder / "a" / "c.png", folder / "b.jpg"]  # a given file is kept as given
    assert skipped == [folder / "z.weird"]  # a folder's non-image file is not an image to predict
    assert data.list_images(folder) == found[1:]
    with pytest.raises(DataError, match="no such file"):
        data.list_images([tmp_path / "nope.jpg"])


# --------------------------------------------------------------------------------------------- torch access


def test_image_dataset_skips_bad_images(tmp_path: Path, make_image, caplog) -> None:
    good = make_image(tmp_path / "good.jpg", size=(50, 40))
    bad = _write(tmp_path / "bad.jpg", b"garbage")
    dataset = data.ImageDataset([Sample(good, 1), Sample(bad, 0)], size=24)
    image, label = dataset[0]
    assert image.shape == (3, 24, 24) and label == 1
    with caplog.at_level("WARNING", logger="birdshield"):
        assert dataset[1] is None
    assert str(bad) in caplog.text
    images, labels = data.collate_skip_bad([dataset[0], dataset[1], dataset[0]])
    assert images.shape == (2, 3, 24, 24) and labels.tolist() == [1, 1] and labels.dtype == torch.long
    assert data.collate_skip_bad([None, None]) is None
    with pytest.raises(BadImageError):
        data.ImageDataset([Sample(bad, 0)], size=24, strict=True)[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=data.collate_skip_bad)
    assert [batch[0].shape[0] for batch in loader] == [1]


def test_strict_error_keeps_its_type_through_dataloader_workers(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jpg", b"garbage")
    strict = data.ImageDataset([Sample(bad, 0)], size=24, strict=True)
    batches = iter(torch.utils.data.DataLoader(strict, batch_size=1, num_workers=1))
    try:
        with pytest.raises(BadImageError, match="not an image file") as info:
            next(batches)
        assert str(bad) in str(info.value)
    finally:
        batches._shutdown_workers()  # now: left to garbage collection the worker shutdown costs ~5 s


# ------------------------------------------------------------------------------------------------- checking


def test_near_pair_search_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (300, 3)).astype(np.uint64)
    hashes = np.concatenate([base, base[:100] ^ flips[:100, 0] ^ flips[:100, 1], rng.permutation(base)[:50]])
    groups = rng.integers(0, 3, len(hashes))
    found = {(a, b) for a, b, _ in _near_pairs(hashes, groups, 4)}
    expected = {
        (min(i, j), max(i, j)) if groups[min(i, j)] < groups[max(i, j)] else (max(i, j), min(i, j))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if groups[i] != groups[j] and bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 4
    }
    assert found == expected and len(found) > 50


def test_check_reports_each_problem(tmp_path: Path, make_kaggle, make_image) -> None:
    root = make_kaggle(tmp_path, ["A", "B  B", "C"])
    train_a = root / "train" / "A" / "000.jpg"
    _write(root / "test" / "A" / "copy.jpg", train_a.read_bytes())  # exact duplicate across splits
    original = Image.open(root / "train" / "B  B" / "001.jpg").convert("RGB")
    brighter = ImageEnhance.Brightness(original).enhance(1.08)
    _write(root / "valid" / "B  B" / "near.jpg", _jpeg_bytes(brighter, quality=75))  # near duplicate
    bad = _write(root / "train" / "C" / "broken.jpg", _jpeg_bytes(original)[:300])
    for path in (root / "test" / "C").iterdir():
        path.unlink()  # C now has an empty test folder
    make_image(root / "valid" / "D" / "1.jpg", seed=999)  # class not in train
    report = data.check(root)
    json.dumps(report)
    assert report["layout"] == "kaggle" and report["classes"] == ["A", "B  B", "C"]
    assert report["totals"] == {"train": 13, "valid": 8, "test": 5}
    assert report["counts"]["test"] == {"A": 3, "B  B": 2, "C": 0}
    assert report["unreadable"] == [
        {"path": "train/C/broken.jpg", "reason": report["unreadable"][0]["reason"]}
    ]
    assert "truncated" in report["unreadable"][0]["reason"]
    assert report["empty_classes"] == ["test/C"]
    assert report["missing"] == {"valid": [], "test": ["C"]} and report["extra"] == {
        "valid": ["D"],
        "test": [],
    }
    assert report["exact_duplicates"] == [
        {"paths": ["train/A/000.jpg", "test/A/copy.jpg"], "splits": ["train", "test"]}
    ]
    near = report["near_duplicates"]
    assert [(d["a"], d["b"]) for d in near] == [("train/B  B/001.jpg", "valid/B  B/near.jpg")]
    assert near[0]["distance"] <= 4 and report["problems"] == 6
    text = data.format_check(report)
    for needle in ("train 13", "broken.jpg", "test/C", "D", "copy.jpg", "near.jpg", "6 problem"):
        assert needle in text
    assert str(bad.name) in text and "no problems found" not in text


def test_check_on_clean_folders_layout(tmp_path: Path, make_image) -> None:
    root = _folders(tmp_path, make_image, {"x": 10, "y": 10})
    report = data.check(root)
    assert report["layout"] == "folders" and report["problems"] == 0
    assert report["totals"] == {"train": 12, "valid": 4, "test": 4}
    assert "no problems found" in data.format_check(report)


@pytest.fixture
def birds_root(tmp_path: Path, make_kaggle) -> tuple[Path, int, dict[str, int]]:
    """Real birds-mini when the shared folder has it, else a small generated Kaggle tree."""
    if (BIRDS_MINI / "train").is_dir():
        return BIRDS_MINI, 30, {"train": 750, "valid": 150, "test": 150}
    return make_kaggle(tmp_path, ODD_NAMES), 3, {"train": 12, "valid": 6, "test": 6}


def test_check_on_birds(birds_root: tuple[Path, int, dict[str, int]]) -> None:
    root, n_classes, totals = birds_root
    report = data.check(root)
    assert len(report["classes"]) == n_classes and report["totals"] == totals
    assert report["unreadable"] == [] and report["exact_duplicates"] == []
    assert report["empty_classes"] == [] and not any(report["missing"].values())
    ds = data.discover(root)
    assert len(ds.class_names) == n_classes and {s: len(v) for s, v in ds.splits.items()} == totals


def test_cub_subset_with_commas_and_ids_from_zero(tmp_path: Path, make_image) -> None:
    """Public CUB-200 subsets write '0, Black_footed_Albatross/0000.jpg': comma-separated, 0-based ids."""
    root = _cub(tmp_path, make_image, ["001.A", "002.B"], per_class=3)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        lines = (root / name).read_text().splitlines()
        shifted = []
        for line in lines:
            key, value = line.split(" ", 1)
            value = str(int(value) - 1) if name == "image_class_labels.txt" else value
            shifted.append(f"{int(key) - 1}, {value}")
        (root / name).write_text("\n".join(shifted) + "\n")
    ds = data.discover(root)
    assert ds.layout == "cub" and ds.class_names == ["001.A", "002.B"]
    assert sum(len(ds.splits[s]) for s in data.SPLITS) == 6
    assert all(s.path.parent.name == ds.class_names[s.label] for s in ds.splits["test"])


def test_unreadable_cub_metadata_offers_the_species_folders(tmp_path: Path, make_image) -> None:
    root = _cub(tmp_path, make_image, ["001.A", "002.B"], per_class=3)
    (root / "images.txt").write_text("this is not a table\n")
    with pytest.raises(DataError, match=r"line 1: expected(.|\n)*plain tree of species folders") as e:
        data.discover(root)
    assert str(root / "images") in str(e.value)
    assert data.discover(root / "images").layout == "folders"  # what the message offers works
