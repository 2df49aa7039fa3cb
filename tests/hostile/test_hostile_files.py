"""Hostile files through every command: each finishes, skips and names every bad file, stays under 2 GB of
memory and writes CSVs that a spreadsheet cannot run.

The corpus is made by the test (a few MB on disk): bombs by aspect ratio (10 x 10,000,000), shape
(100,000,000 x 1) and pixel count (11,000 x 11,000, and 20,000 x 20,000 past Pillow's own limit), a
truncated, a corrupt, an empty and a text file, formats no photo comes in under a photo's name (an EPS
file, which Pillow would hand to Ghostscript, and an icon whose header says 16 x 16 around a 13,000 x
13,000 PNG), and usable but awkward images: 16-bit greyscale at 100 MP, an animated GIF, CMYK, a JPEG
whose file name is not valid UTF-8. File and class names start with = + - @, hold '..', unicode and case
variants. A `gs` on the PATH records any call: no command may start Ghostscript.
Each command runs in its own process, started by a small wrapper that measures its peak resident memory
(see WRAPPER).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, textured_image

# Measured per command 1.15-1.39 GB (about 0.5 GB of it torch's and onnxruntime's mapped libraries; shown
# with -s). A bomb decoded whole would take > 4 GB; the 100 MP RGBA decoded at full size takes 400 MB.
PEAK_LIMIT_BYTES = 2 * 1024**3
CLASSES = ["=SUM(1+1)", "+bird", "@Grünfink 鳥", "-..plain"]
BAD = {  # name -> the reason's words
    "aspect-bomb.png": "extreme aspect ratio",
    "line-bomb.png": "extreme aspect ratio",
    "pixel-bomb.png": "image too large",
    "past-pillow-limit.png": "image too large",
    "truncated.jpg": "truncated or corrupt",
    "corrupt.jpg": "truncated or corrupt",
    "empty.png": "empty file",
    "notes.jpg": "not an image file",
    "=HYPERLINK(0).jpg": "not an image file",
    "poster.jpg": "unsupported image format (EPS)",
    "icon-bomb.png": "unsupported image format (ICO)",
}
NOT_UTF8_NAME = b"bird\xff.jpg"  # a usable JPEG; str paths carry the byte as a surrogate escape (os.fsdecode)
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n0 0 moveto 64 64 lineto stroke\n"
SPLIT_COUNTS = {"train": 4, "valid": 2, "test": 2}
HOSTILE_CLASS = CLASSES[0]  # the hostile files sit in this class folder of the train and test splits

# Each command runs in its own process, as a user runs it, and its peak resident memory is read with
# getrusage. Linux carries the parent's peak over into a child's ru_maxrss when the child is started by a
# process as big as pytest (exec records the old address space's high-water mark), so each command is
# started by WRAPPER, a small fresh interpreter, which reports its child's peak (RUSAGE_CHILDREN).
# It also polls the child's anonymous and file-backed resident memory (shown with -s), to tell the process's
# own memory from the shared libraries' pages it maps.
WRAPPER = """
import json, resource, subprocess, sys, time
proc, peaks = subprocess.Popen(sys.argv[1:]), {}
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for key, _, value in (line.partition(":") for line in f):
                if key in ("RssAnon", "RssFile"):
                    peaks[key] = max(peaks.get(key, 0), int(value.split()[0]) * 1024)
    except (OSError, ValueError):
        pass
    time.sleep(0.01)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, **peaks}))
sys.exit(proc.returncode)
"""


# ------------------------------------------------------------------------------------------ the corpus


def _png(width: int, height: int, bit_depth: int = 8, colour: int = 0, rows: int | None = None) -> bytes:
    """A PNG of zeros (colour type 0: greyscale, 6: RGBA), compressed as it is made (never held in memory
    uncompressed); `rows` below height gives a header-only file whose IDAT stops early."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + width * {0: 1, 6: 4}[colour] * bit_depth // 8)
    per_block = max(1, (1 << 20) // len(row))
    packer, idat, left = zlib.compressobj(1), [], height if rows is None else rows
    block = row * min(per_block, left)
    while left:
        n = min(left, per_block)
        idat.append(packer.compress(block if n == per_block else row * n))
        left -= n
    idat.append(packer.flush())
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def _icon_around(png: bytes) -> bytes:
    """An ICO file with one entry that declares 16 x 16 pixels and holds `png` (Pillow decodes the PNG at
    the size the PNG's own header gives)."""
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), len(header) + 16)
    return header + entry + png


def _write_bytes_named(folder: Path, name: bytes, content: bytes) -> None:
    """Write a file whose name is raw bytes (not necessarily UTF-8), as another program may have."""
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _hostile_files(folder: Path, seed: int, rgba: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "aspect-bomb.png").write_bytes(_png(10, 10_000_000))
    (folder / "line-bomb.png").write_bytes(_png(100_000_000, 1))
    (folder / "pixel-bomb.png").write_bytes(_png(11_000, 11_000))
    (folder / "past-pillow-limit.png").write_bytes(_png(20_000, 20_000, rows=16))
    good = io.BytesIO()
    textured_image(seed, size=(64, 64)).save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    header = good.getvalue()[: good.getvalue().index(b"\xff\xda") + 14]  # up to the scan's first bytes
    (folder / "corrupt.jpg").write_bytes(header + np.random.default_rng(seed).bytes(3000))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("field notes, not a picture\n")
    (folder / "=HYPERLINK(0).jpg").write_text('=HYPERLINK("http://example.invalid")\n')
    (folder / "poster.jpg").write_bytes(EPS)
    (folder / "icon-bomb.png").write_bytes(_icon_around(_png(13_000, 13_000)))
    named = io.BytesIO()
    textured_image(seed + 8, size=(50, 50)).save(named, format="JPEG")
    _write_bytes_named(folder, NOT_UTF8_NAME, named.getvalue())
    (folder / "deep-16bit-100MP.png").write_bytes(_png(10_000, 10_000, bit_depth=16))
    if rgba:
        (folder / "transparent-100MP.png").write_bytes(_png(10_000, 10_000, colour=6))
    frames = [textured_image(seed + k, size=(60, 40)) for k in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    textured_image(seed + 3, size=(50, 50)).convert("CMYK").save(folder / "cmyk.jpg")
    for k, name in enumerate(["=1+1.jpg", "a..b.jpg", "Case.jpg", "case.JPG"]):
        textured_image(seed + 4 + k, size=(50, 50)).save(folder / name, format="JPEG")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout dataset whose class names start with = + @ - (one holds '..', one unicode), with
    the hostile files in the first class of the train and test splits."""
    root = tmp_path_factory.mktemp("hostile")
    seed = 0
    for tint, name in enumerate(CLASSES):
        for split, n in SPLIT_COUNTS.items():
            for i in range(n):
                seed += 1
                path = root / split / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                textured_image(seed, tint=tint).save(path)
    for split in ("train", "test"):  # the 100 MP RGBA (the most memory per pixel) costs time: test only
        _hostile_files(root / split / HOSTILE_CLASS, seed=100, rgba=split == "test")
    return root


def _bad_paths(root: Path, split: str) -> dict[str, str]:
    return {str(root / split / HOSTILE_CLASS / name): reason for name, reason in BAD.items()}


# ------------------------------------------------------------------------------------------ running


def _commands(corpus: Path, out: Path) -> dict[str, list[str]]:
    run, folder = out / "run", corpus / "test" / HOSTILE_CLASS
    tiny = ["--arch", "test_efficientnet", "--weights", "none", "--image-size", "32", "--workers", "0"]
    # train: all its images in one batch. Skipped files could leave a batch of one image, on which batch
    # norm cannot train at 32 px (the last feature maps are 1 x 1).
    return {
        "data check": ["data", "check", str(corpus)],
        "train": ["train", str(corpus), "--out", str(run), *tiny, "--epochs", "1", "--batch-size", "64"]
        + ["--depth", "full", "--probe-epochs", "0"],
        "predict": ["predict", str(run), str(folder), "--out", str(out / "predictions.csv")],
        "evaluate": ["evaluate", str(run), str(corpus), "--out", str(out / "report"), "--attacks", "fgsm"]
        + ["--eps", "2/255", "--corruptions", "none", "--batch-size", "8"],
        "certify": ["certify", str(run), str(corpus), "--out", str(out / "cert"), "--selection-samples", "4"]
        + ["--samples", "8", "--alpha", "0.1", "--batch-size", "8"],
        "attack": ["attack", str(run), str(folder), "--out", str(out / "adv"), "--attack", "fgsm"],
    }


GHOSTSCRIPT = '#!/bin/sh\necho "$@" >> "$0.calls"\nexit 1\n'  # records its arguments in gs.calls


def _fake_ghostscript(folder: Path) -> Path:
    """A `gs` that records each call (Pillow runs `gs --version` first, then renders) and fails."""
    folder.mkdir()
    gs = folder / "gs"
    gs.write_text(GHOSTSCRIPT)
    gs.chmod(0o755)
    return gs


@pytest.fixture(scope="module")
def ran(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """Every command run once on the corpus (train before the others: they use its model); (output folder,
    command -> {"rc", "peak" (bytes), "stdout" and "stderr" (its part)}).

    Standard output is strict UTF-8, as under a UTF-8 locale such as en_US.UTF-8 (C.UTF-8, POSIX and UTF-8
    mode let surrogate escapes through): a file name that is not UTF-8 must not crash a command's output.
    """
    out = tmp_path_factory.mktemp("hostile_out")
    gs = _fake_ghostscript(out / "bin")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    env["PATH"] = os.pathsep.join([str(gs.parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    parts = {}
    for name, argv in _commands(corpus, out).items():  # each command its own process, as a user runs it
        cli = [sys.executable, "-m", "birdshield.cli", "--threads", "1", *argv]
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, *cli], env=env, capture_output=True, errors="surrogateescape"
        )
        *stdout, peaks = proc.stdout.splitlines()
        parts[name] = {"rc": proc.returncode, "stdout": "\n".join(stdout), "stderr": proc.stderr}
        parts[name] |= json.loads(peaks)
    for name, r in parts.items():  # shown with -s
        print(name, ", ".join(f"{k} {r.get(k, 0) / 1024**3:.2f} GB" for k in ("peak", "RssAnon", "RssFile")))
    return out, parts


def _finished_within_memory(results: dict[str, dict], command: str, status: int = 0) -> str:
    """Assert `command` finished (exit `status`) under PEAK_LIMIT_BYTES; its stderr."""
    result = results[command]
    assert result["rc"] == status, result["stderr"][-3000:]
    assert result["peak"] < PEAK_LIMIT_BYTES, f"{command} peaked at {result['peak'] / 1024**3:.2f} GB"
    return result["stderr"]


def _assert_named(text: str, bad: dict[str, str]) -> None:
    for path, reason in bad.items():
        lines = [line for line in text.splitlines() if path in line]
        assert lines, f"{path} not named"
        assert any(reason in line for line in lines), (path, lines)


def _assert_spreadsheet_safe(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:  # file names as written
        rows = list(csv.reader(f))
    cells = [cell for row in rows for cell in row]
    for cell in cells:
        assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
        assert not cell.startswith("-") or cell.lstrip("-").replace(".", "").isdigit(), cell
    assert any(cell.startswith("'=") for cell in cells)  # the hostile names are there, escaped
    return rows


# ------------------------------------------------------------------------------------------ the commands


def test_no_command_runs_ghostscript(ran) -> None:
    out, results = ran
    assert shutil.which("gs", path=str(out / "bin")) == str(out / "bin" / "gs")  # the recorder is in place
    assert set(results) == set(_commands(Path(), out))  # every command ran
    calls = out / "bin" / "gs.calls"
    assert not calls.exists(), f"Ghostscript was started: {calls.read_text()}"


def test_data_check_names_every_bad_file(ran, corpus: Path) -> None:
    _, results = ran
    stderr = _finished_within_memory(results, "data check", status=1)  # 1: problems found
    assert "Traceback" not in stderr, stderr[-3000:]
    report = results["data check"]["stdout"]
    for split in ("train", "test"):
        named = {str(Path(p).relative_to(corpus)): reason for p, reason in _bad_paths(corpus, split).items()}
        _assert_named(report, named)
    # Identical in train and test, so listed as a duplicate: the name comes out byte for byte.
    assert os.fsdecode(NOT_UTF8_NAME) in report


def test_train_skips_and_names_every_bad_file(ran, corpus: Path) -> None:
    out, results = ran
    stderr = _finished_within_memory(results, "train")
    _assert_named(stderr, _bad_paths(corpus, "train"))
    assert json.loads((out / "run" / "birdshield.json").read_text())["class_names"] == sorted(CLASSES)
    rows = list(csv.reader((out / "run" / "history.csv").open(newline="")))
    assert len(rows) == 2 and all(not c.startswith(("=", "+", "@")) for row in rows for c in row)


def test_predict_skips_and_names_every_bad_file(ran, corpus: Path) -> None:
    out, results = ran
    stderr = _finished_within_memory(results, "predict")
    bad = _bad_paths(corpus, "test")
    _assert_named(stderr, bad)
    rows = _assert_spreadsheet_safe(out / "predictions.csv")
    by_image = {row[0].removeprefix("'"): row for row in rows[1:]}
    assert set(by_image) == {str(p) for p in (corpus / "test" / HOSTILE_CLASS).iterdir()}
    for path, row in by_image.items():
        species, error = row[1], row[-1]
        if path in bad:
            assert bad[path] in error and not species, row
        else:
            assert not error and species.removeprefix("'") in CLASSES, row


def test_evaluate_skips_and_names_every_bad_file(ran, corpus: Path) -> None:
    out, results = ran
    stderr = _finished_within_memory(results, "evaluate")
    bad = _bad_paths(corpus, "test")
    _assert_named(stderr, bad)
    report = json.loads((out / "report" / "report.json").read_text())
    assert {b["path"] for b in report["bad_images"]} == set(bad)
    n_test = sum(1 for p in (corpus / "test").rglob("*") if p.is_file())
    assert report["n"] == n_test - len(bad)


def test_certify_skips_and_names_every_bad_file(ran, corpus: Path) -> None:
    out, results = ran
    stderr = _finished_within_memory(results, "certify")
    bad = _bad_paths(corpus, "test")
    _assert_named(stderr, bad)
    result = json.loads((out / "cert" / "certify.json").read_text())
    errors = {im["image"]: im["error"] for im in result["images"] if im.get("error")}
    assert set(errors) == set(bad) and all(bad[p] in e for p, e in errors.items())
    n_test = sum(1 for p in (corpus / "test").rglob("*") if p.is_file())
    assert len(result["images"]) == n_test


def test_attack_skips_and_names_every_bad_file(ran, corpus: Path) -> None:
    out, results = ran
    stderr = _finished_within_memory(results, "attack")
    bad = _bad_paths(corpus, "test")
    _assert_named(stderr, bad)
    rows = _assert_spreadsheet_safe(out / "adv" / "attack.csv")
    by_image = {row[0].removeprefix("'"): dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert set(by_image) == {str(p) for p in (corpus / "test" / HOSTILE_CLASS).iterdir()}
    written = sorted(p.name for p in (out / "adv").glob("*.png"))
    good = [p.name for p in (corpus / "test" / HOSTILE_CLASS).iterdir() if str(p) not in bad]
    assert written == sorted(f"{Path(name).stem}.png" for name in good)
    for path, row in by_image.items():
        assert (path in bad) == bool(row["error"]) == (not row["output"]), row
