"""The decoded-image cache: pixels bit for bit what decoding the files gives, unreadable files skipped and
named, nothing decoded twice, and a training on it the same as one that decodes every epoch."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from birdshield import data
from birdshield.data import decoded

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def samples(tmp_path: Path, make_image) -> list[data.Sample]:
    paths = [
        make_image(tmp_path / "img" / f"{i}.png", seed=i, size=(40 + 7 * i, 30 + 5 * i)) for i in range(5)
    ]
    broken = tmp_path / "img" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    return [data.Sample(p, i % 2) for i, p in enumerate([*paths, broken])]


def test_cached_pixels_are_exactly_the_decoded_tensors(samples, tmp_path: Path, caplog) -> None:
    images = data.DecodedImages(samples, 24, tmp_path / "cache", workers=2)
    for i, s in enumerate(samples[:-1]):
        x, label = images[i]
        assert x.dtype == torch.uint8 and label == s.label
        assert torch.equal(data.as_float(x[None])[0], data.load_tensor(s.path, 24))
    assert images[len(samples) - 1] is None and "broken.jpg" in caplog.text  # skipped and named
    assert len(pickle.dumps(images)) < 10_000  # workers get the file's name, never a copy of the pixels
    with pytest.raises(data.BadImageError, match="broken.jpg"):
        data.DecodedImages(samples, 25, tmp_path / "strict", strict=True)


def test_a_file_name_that_is_not_utf8_is_cached(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "img" / os.fsdecode(b"bird\xff.png"), seed=1, size=(40, 30))
    images = data.DecodedImages([data.Sample(path, 0)], 24, tmp_path / "cache", workers=1)
    x, _ = images[0]
    assert torch.equal(data.as_float(x[None])[0], data.load_tensor(path, 24))


def test_a_second_cache_of_the_same_images_decodes_nothing(samples, tmp_path: Path, monkeypatch) -> None:
    first = data.DecodedImages(samples, 24, tmp_path / "cache")
    monkeypatch.setattr(decoded, "load_pixels", lambda *a: pytest.fail("decoded again"))
    again = data.DecodedImages(samples, 24, tmp_path / "cache")
    assert again.folder == first.folder and torch.equal(again[0][0], first[0][0])


def test_a_cache_killed_mid_fill_resumes_at_the_chunk_in_flight(samples, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(decoded, "CHUNK", 2)
    calls: list[Path] = []
    real = decoded.load_pixels

    def dies_on_the_fourth(path: Path, size: int) -> torch.Tensor:
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during the second chunk
        return real(path, size)

    monkeypatch.setattr(decoded, "load_pixels", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        data.DecodedImages(samples, 24, tmp_path / "cache", workers=1)
    calls.clear()
    monkeypatch.setattr(decoded, "load_pixels", lambda path, size: (calls.append(path), real(path, size))[1])
    images = data.DecodedImages(samples, 24, tmp_path / "cache", workers=1)
    assert calls == [s.path for s in samples[2:]]  # the first chunk was final; the rest decoded once
    assert all(torch.equal(images[i][0], real(s.path, 24)) for i, s in enumerate(samples[:-1]))
