"""Image files to pixels: safe decoding, any colour mode to RGB, and RGB to float tensors in [0, 1].

`read_rgb` checks the size limit from the header before decoding and turns every failure (missing, empty,
truncated, not an image, too large, odd mode) into a BadImageError that names the file and the reason;
`to_tensor` resizes and centre-crops to the (3, size, size) float tensors every model takes.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "BadImageError", "read_rgb", "to_tensor"]

log = logging.getLogger("birdshield")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
MAX_PIXELS: int = 100_000_000
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file fully into an RGB image, or raise BadImageError saying why it cannot be used.

    The size limit is checked from the header before any pixel is decoded. Pillow's own, process-global
    decompression-bomb check still runs first inside ``Image.open``; it is reported as "image too large" too.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImageError(path, _os_reason(e)) from e
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's warning, which would otherwise escape to the caller.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(path, data, max_pixels)


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read file ({e.strerror or e})"


def _decode(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes read from `path`. Warning filters are up to the caller (check() decodes in threads)."""
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    img = _open_image(path, data, max_pixels)
    try:
        img.load()  # decode now so truncated or corrupt data fails here, not later in a DataLoader worker
    except Image.DecompressionBombError as e:  # some plugins check sizes again while loading
        raise BadImageError(path, f"image too large: {e}") from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({e})") from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a broken EXIF block must not make good pixels unusable
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, e)
    try:
        return _as_rgb(img)
    except (ValueError, OSError) as e:
        raise BadImageError(path, f"unsupported colour mode {img.mode} ({e})") from e


def _open_image(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        raise BadImageError(path, "not an image file (unknown or unsupported format)") from e
    except Exception as e:
        raise BadImageError(path, f"truncated or corrupt image data ({e})") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise BadImageError(path, f"image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise BadImageError(
            path, f"image too large: {width} x {height} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    return img


def _as_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency goes onto white, high bit depths are scaled, not clipped."""
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        img = _to_8bit(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", img.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bit, by nominal range (else the actual range)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode in _SIXTEEN_BIT:
        a /= 257.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a *= 255.0  # float images are usually 0..1
        elif lo >= 0.0 and hi <= 65535.0 and hi > 255.0:
            a /= 257.0  # 16-bit data that Pillow opened as 32-bit "I"
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) * (255.0 / (hi - lo))  # no nominal range: stretch what is there
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: shorter side resized to `size` (bilinear, antialiased), centred."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if img.mode != "RGB":
        img = _as_rgb(img)
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        # Pillow's bilinear filter widens its support when shrinking, i.e. it is antialiased.
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
