"""Image files to pixels: safe decoding, any colour mode to RGB, and RGB to float tensors in [0, 1].

Only the formats a bird photo comes in are decoded (DECODED_FORMATS): Pillow knows many more, and some of
them run Ghostscript (EPS) or decode an embedded image larger than their header says (ICO, ICNS). Memory is
bounded before anything large is allocated: the file size is capped before it is read, and the pixel count
and aspect ratio are checked from the header before any pixel is decoded. `read_rgb` turns every failure
(missing, empty, truncated, not an image, another format, too large, odd mode, out of memory, any decoder
error) into a BadImageError that names the file and the reason; `to_tensor` resizes and centre-crops to the
(3, size, size) float tensors every model takes; `load_tensor` does both and names the file on any failure.
"""

from __future__ import annotations

import io
import logging
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "DECODED_FORMATS",
    "BadImageError",
    "load_pixels",
    "load_tensor",
    "read_image_bytes",
    "read_rgb",
    "to_pixels",
    "to_tensor",
]

log = logging.getLogger("birdshield")

# Pillow's format name -> the name a message gives it. Pillow is asked for these only (GIF and multi-page
# TIFF give their first frame; a JPEG with a multi-picture block opens as Pillow's MPO, a kind of JPEG).
DECODED_FORMATS: dict[str, str] = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "GIF": "GIF",
}
# The file names datasets and folders are read by: the usual extensions of DECODED_FORMATS.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
_READS = ", ".join(list(DECODED_FORMATS.values())[:-1]) + " and " + list(DECODED_FORMATS.values())[-1]
MAX_FILE_BYTES: int = 64 * 1024 * 1024  # a 100 MP photo is ~30 MB as JPEG; bigger files are refused unread
MAX_PIXELS: int = 100_000_000  # 300 MB as 8-bit RGB once decoded
# Longer side over shorter side. Beyond it an image is refused: no photo is a 50:1 strip, and the limit
# bounds to_tensor's resized intermediate (size x at most 50 * size pixels) without changing its numbers.
MAX_ASPECT: int = 50
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_BLOCK_ELEMENTS = 1 << 22  # 32 MB of float64 per block when scaling high bit depths


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, or BadImageError: not a regular file, unreadable, or over MAX_FILE_BYTES
    (checked before reading, so a huge file or a named pipe never gets read into memory)."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise BadImageError(path, "is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImageError(path, "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise BadImageError(path, _too_big(info.st_size))
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat()
    except OSError as e:
        raise BadImageError(path, _os_reason(e)) from e
    if len(data) > MAX_FILE_BYTES:
        raise BadImageError(path, _too_big(None))
    return data


def _too_big(n_bytes: int | None) -> str:
    size = "it" if n_bytes is None else f"{n_bytes:,} bytes"
    return f"file too large: {size} exceeds the limit of {MAX_FILE_BYTES:,} bytes"


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode an image file fully into an RGB image, or raise BadImageError saying why it cannot be used.

    The size limits are checked from the header before any pixel is decoded. Pillow's own, process-global
    decompression-bomb check still runs first inside ``Image.open``; it is reported as "image too large" too.
    Animated and multi-page files give their first frame. With ``min_side`` (the caller resizes to that
    shorter side next) a large image is shrunk as it is decoded, see ``_shrunk``.
    """
    path = Path(path)
    data = read_image_bytes(path)
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's warning, which would otherwise escape to the caller.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(path, data, max_pixels, min_side)


def load_tensor(path: str | Path, size: int) -> torch.Tensor:
    """``to_tensor(read_rgb(path), size)``; any failure, resizing too, is a BadImageError naming the file."""
    return load_pixels(path, size).float().div_(255.0)


def load_pixels(path: str | Path, size: int) -> torch.Tensor:
    """``to_pixels(read_rgb(path), size)``, uint8; any failure is a BadImageError naming the file."""
    img = read_rgb(path, min_side=size)
    try:
        return to_pixels(img, size)
    except Exception as e:  # MemoryError included: one odd file must not stop a long job
        raise BadImageError(path, f"cannot resize to {size} x {size} ({_describe(e)})") from e


def _describe(e: BaseException) -> str:
    return "out of memory" if isinstance(e, MemoryError) else f"{type(e).__name__}: {e}"


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read file ({e.strerror or e})"


def _decode(path: Path, data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Decode bytes read from `path`. Warning filters are up to the caller (check() decodes in threads)."""
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    img = _open_image(path, data, max_pixels)
    try:
        if min_side:  # JPEG: decode at 1/2 .. 1/8 scale straight away (Pillow's thumbnail() does the same)
            img.draft(img.mode, _kept_size(img.size, min_side))
        img.load()  # decode now so truncated or corrupt data fails here, not later in a DataLoader worker
        img = _shrunk(img, min_side)
    except Image.DecompressionBombError as e:  # some plugins check sizes again while loading
        raise BadImageError(path, f"image too large: {e}") from e
    except MemoryError as e:
        raise BadImageError(path, "out of memory decoding the image") from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({_describe(e)})") from e
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy when nothing turns
    except MemoryError as e:
        raise BadImageError(path, "out of memory applying the EXIF orientation") from e
    except Exception as e:  # a broken EXIF block must not make good pixels unusable
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
    mode = img.mode
    try:
        if _is_wide(img):
            img = _to_8bit(img)  # rebinding frees the 16/32-bit pixels before the RGB copy is made
        return _as_rgb(img)
    except Exception as e:
        raise BadImageError(path, f"cannot convert colour mode {mode} to RGB ({_describe(e)})") from e


# An image is shrunk while its shorter side stays at least this many times the size it is resized to
# next: the final antialiased resize then gives practically the same pixels (Pillow's `reducing_gap`).
REDUCING_GAP = 3


def _kept_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The smallest (width, height) with the image's aspect whose shorter side is REDUCING_GAP x min_side."""
    scale = REDUCING_GAP * min_side / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _shrunk(img: Image.Image, min_side: int) -> Image.Image:
    """`img` reduced by an integer factor (box filter) in its own mode, before any full-size copy is made
    (orientation, bit depth, RGB: a 100 MP RGBA image would need another 400 MB as RGB).

    Reduced a block of rows at a time (a multiple of the factor, so the result is the same): Pillow reduces
    RGBA and LA through a premultiplied full-size copy, and 16-bit data has to become 8 bit first.
    """
    factor = min(img.size) // (REDUCING_GAP * min_side) if min_side else 0
    if factor < 2 or img.mode in ("1", "P"):  # 1 and P: converted at full size
        return img
    width, height = img.size
    blocks = _row_blocks(img, multiple=factor)
    to_8bit = _scaler(img, blocks) if img.mode in _SIXTEEN_BIT else None  # reduce() takes no 16-bit modes
    out = None
    for top, bottom in blocks:
        block = img.crop((0, top, width, bottom))
        if to_8bit:
            block = Image.fromarray(to_8bit(np.asarray(block)))
        block = block.reduce(factor)
        if out is None:
            out = Image.new(block.mode, (block.width, -(-height // factor)))
        out.paste(block, (0, top // factor))
    return out


def _open_image(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read, its size checked against the limits."""
    try:
        img = Image.open(io.BytesIO(data), formats=list(DECODED_FORMATS))
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        raise BadImageError(path, _unidentified_reason(data)) from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({_describe(e)})") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise BadImageError(path, f"image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise BadImageError(
            path, f"image too large: {width} x {height} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise BadImageError(
            path, f"extreme aspect ratio: {width} x {height} pixels is longer than {MAX_ASPECT}:1"
        )
    return img


def _unidentified_reason(data: bytes) -> str:
    """Why bytes none of DECODED_FORMATS opened are refused: the format Pillow would take them for, if any.

    Only Pillow's prefix tests run on the first bytes (as in ``Image.open``); no other plugin parses the file.
    """
    Image.init()
    prefix = data[:16]  # what Image.open gives the prefix tests
    for name in (n for n in Image.ID if n not in DECODED_FORMATS):  # those failed to open already
        accept = Image.OPEN[name][1]
        try:
            known = bool(accept and accept(prefix))
        except Exception:  # a prefix test that fails on short input says nothing
            known = False
        if known:
            return f"unsupported image format ({name}); birdshield reads {_READS}"
    return "not an image file (unknown or unsupported format)"


def _as_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency goes onto white, high bit depths are scaled, not clipped."""
    if _is_wide(img):
        img = _to_8bit(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    return _onto_white(img)


def _onto_white(img: Image.Image) -> Image.Image:
    """Composite onto white a block of rows at a time: an RGBA copy of a 100 MP image would take 400 MB."""
    out = Image.new("RGB", img.size, (255, 255, 255))
    for top, bottom in _row_blocks(img):
        rgba = img.crop((0, top, img.width, bottom)).convert("RGBA")
        out.paste(rgba, (0, top), mask=rgba.getchannel("A"))
    return out


def _row_blocks(img: Image.Image, multiple: int = 1) -> list[tuple[int, int]]:
    """(top, bottom) of blocks of about _BLOCK_ELEMENTS pixels, whole rows, a multiple of `multiple` rows."""
    rows = multiple * max(1, _BLOCK_ELEMENTS // (img.width * multiple))
    return [(top, min(top + rows, img.height)) for top in range(0, img.height, rows)]


def _is_wide(img: Image.Image) -> bool:
    return img.mode in _SIXTEEN_BIT or img.mode in ("I", "F")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bit, by nominal range (else the actual range).

    Converted a block of rows at a time, so a 100 MP image never has a full-size copy in float64 (800 MB).
    """
    width, height = img.size
    blocks = _row_blocks(img)
    scale = _scaler(img, blocks)
    out = np.empty((height, width), dtype=np.uint8)
    for top, bottom in blocks:
        out[top:bottom] = scale(np.asarray(img.crop((0, top, width, bottom))))
    return Image.fromarray(out)


def _scaler(img: Image.Image, blocks: list[tuple[int, int]]) -> Callable[[np.ndarray], np.ndarray]:
    """The map from this image's pixel values to 0..255 (the range of "I" and "F" images is read first)."""
    if img.mode in _SIXTEEN_BIT:
        # Exactly rint(v / 257) for integers 0..65535 (no v / 257 lies half-way), without floats.
        return lambda a: ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    lo, hi = _finite_range(img, blocks)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        return _float_map(lambda a: a * 255.0)  # float images are usually 0..1
    if lo >= 0.0 and hi <= 65535.0 and hi > 255.0:
        return _float_map(lambda a: a / 257.0)  # 16-bit data that Pillow opened as 32-bit "I"
    if lo < 0.0 or hi > 255.0:
        return _float_map(lambda a: (a - lo) * (255.0 / (hi - lo)))  # no nominal range: stretch it
    return _float_map(lambda a: a)


def _finite_range(img: Image.Image, blocks: list[tuple[int, int]]) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for top, bottom in blocks:
        a = np.asarray(img.crop((0, top, img.width, bottom)))
        finite = a[np.isfinite(a)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _float_map(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def scale(a: np.ndarray) -> np.ndarray:
        a = np.nan_to_num(f(a.astype(np.float64)), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)

    return scale


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: shorter side resized to `size` (bilinear, antialiased), centred.

    An image beyond MAX_ASPECT (read_rgb refuses those; this guards images from elsewhere) is cropped to
    its centred square first, so the resized intermediate stays small.
    """
    return to_pixels(img, size).float().div_(255.0)


def to_pixels(img: Image.Image, size: int) -> torch.Tensor:
    """`to_tensor`'s pixels before scaling: (3, size, size) uint8, a quarter of the memory (what the
    decoded-image cache keeps; `pixels.float() / 255` is exactly `to_tensor`)."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if img.mode != "RGB":
        img = _as_rgb(img)
    width, height = img.size
    if max(width, height) > MAX_ASPECT * min(width, height):
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        # Pillow's bilinear filter widens its support when shrinking, i.e. it is antialiased.
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
