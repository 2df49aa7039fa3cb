"""Datasets on disk and the images in them; every name other code uses is re-exported here.

images: safe decoding, RGB, [0, 1] tensors. layouts: Kaggle / CUB / folders layouts, splits, samples.
loading: torch datasets and streamed batches. check: the `data check` health report.
"""

from __future__ import annotations

from .check import check, format_check
from .decoded import DecodedImages, as_float
from .images import (
    DECODED_FORMATS,
    IMAGE_EXTENSIONS,
    MAX_ASPECT,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    BadImageError,
    load_pixels,
    load_tensor,
    read_rgb,
    to_pixels,
    to_tensor,
)
from .layouts import (
    SPLITS,
    DataError,
    Dataset,
    Sample,
    discover,
    list_images,
    samples_for_model,
    stratified_subset,
)
from .loading import ImageDataset, collate_skip_bad, read_batches

__all__ = [
    "DECODED_FORMATS",
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "SPLITS",
    "as_float",
    "BadImageError",
    "DataError",
    "Dataset",
    "DecodedImages",
    "ImageDataset",
    "Sample",
    "check",
    "collate_skip_bad",
    "discover",
    "format_check",
    "list_images",
    "load_pixels",
    "load_tensor",
    "read_batches",
    "read_rgb",
    "samples_for_model",
    "stratified_subset",
    "to_pixels",
    "to_tensor",
]
