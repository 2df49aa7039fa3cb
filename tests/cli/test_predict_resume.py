"""predict loses no work: rows stream to OUT.partial, a killed or interrupted run continues with --resume to
the very bytes of an uninterrupted one, and file names that are not UTF-8 come back as their bytes."""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers import kill_cli_when, textured_image

from birdshield import prediction_csv
from birdshield.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 photos with numeric names (the grading format sorts them as numbers) and 2 bad files. Decoding
    320-pixel photos keeps a run going for a while after its first rows: time to kill it."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(300):
        textured_image(i, size=(320, 320), tint=i % 3).save(folder / f"{i}.jpg")
    (folder / "7b.jpg").write_bytes(b"not a jpeg")
    (folder / "=cmd.png").write_bytes(b"\x89PNG cut short")
    return folder


def _argv(run: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    options = ["--batch-size", "2", "--workers", "0", *extra]
    return ["predict", str(run), str(photos), "--out", str(out), *options]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


def _data_rows(path: Path) -> int:
    """Complete rows in a file being written (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(
    ("sig", "fmt"), [(signal.SIGKILL, "csv"), (signal.SIGINT, "grading")], ids=["sigkill", "sigint"]
)
def test_killed_predict_resumes_to_the_same_csv(
    tiny_run: Path, photos: Path, tmp_path: Path, sig: int, fmt: str, capsys: pytest.CaptureFixture
) -> None:
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    assert main(_argv(tiny_run, photos, whole, "--format", fmt, "--top-k", "2")) == 0
    partial = prediction_csv.partial_path(out)
    argv = _argv(tiny_run, photos, out, "--format", fmt, "--top-k", "2")
    kill_cli_when(argv, ready=lambda: _data_rows(partial) >= 4, sig=sig)
    kept = _data_rows(partial)
    assert not out.exists() and 4 <= kept < 302  # stopped part way, its rows kept under the partial name
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert f"resuming after the {kept} rows" in capsys.readouterr().err
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not list(tmp_path.glob("*.partial*"))


def _stop_after(argv: list[str], batches: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `birdshield ARGV` in this process, stopped by Ctrl-C once `batches` batches of rows are written."""
    append, calls = prediction_csv.PartialCSV.append, []

    def append_then_stop(self: prediction_csv.PartialCSV, rows: list[dict]) -> None:
        append(self, rows)
        calls.append(len(rows))
        if len(calls) == batches:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(prediction_csv.PartialCSV, "append", append_then_stop)
        assert main(argv) == 130


@pytest.fixture
def interrupted(tiny_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OUT of a run stopped by Ctrl-C after 5 batches (10 rows in OUT.partial); the CSV of a whole run is
    tmp_path/whole.csv."""
    assert main(_argv(tiny_run, photos, tmp_path / "whole.csv")) == 0
    out = tmp_path / "out.csv"
    _stop_after(_argv(tiny_run, photos, out), 5, monkeypatch)
    assert _data_rows(prediction_csv.partial_path(out)) == 10 and not out.exists()
    return out


def test_a_row_cut_short_is_predicted_again(interrupted: Path, tiny_run: Path, photos: Path) -> None:
    partial = prediction_csv.partial_path(interrupted)
    text = partial.read_bytes()
    partial.write_bytes(text[: len(text) - 9])  # a kill in the middle of writing the 10th row
    assert main([*_argv(tiny_run, photos, interrupted), "--resume"]) == 0
    assert interrupted.read_bytes() == (interrupted.parent / "whole.csv").read_bytes()


def test_smoothing_resumes_with_the_same_votes(
    tiny_run: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image i's noise is seeded with seed + i, its index in the whole list, also when a run resumes."""
    files = [str(photos / f"{i}.jpg") for i in range(8)]
    argv = ["predict", str(tiny_run), *files, "--defense", "smoothing", "--defense-param", "0.5"]
    argv += ["--samples", "30", "--top-k", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole.csv")]) == 0
    _stop_after([*argv, "--out", str(tmp_path / "out.csv")], 3, monkeypatch)  # one row per image
    assert main([*argv, "--out", str(tmp_path / "out.csv"), "--resume"]) == 0
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_resume_refuses_rows_made_otherwise(
    interrupted: Path, tiny_run: Path, photos: Path, capsys: pytest.CaptureFixture
) -> None:
    partial = prediction_csv.partial_path(interrupted)
    before = partial.read_bytes()
    argv = [*_argv(tiny_run, photos, interrupted), "--resume"]
    assert main([*argv, "--top-k", "2"]) == 2
    assert "another top_k" in capsys.readouterr().err
    assert main([*argv, "--defense", "jpeg"]) == 2
    assert "another defense" in capsys.readouterr().err
    assert main([argv[0], "imagenet-birds", *argv[2:]]) == 2  # the built-in model instead of the run
    assert "another model" in capsys.readouterr().err
    textured_image(0).save(photos.parent / "00.jpg")  # listed first: the rows are no longer theirs
    try:
        assert main([*argv[:2], str(photos.parent / "00.jpg"), *argv[2:]]) == 2
    finally:
        (photos.parent / "00.jpg").unlink()
    err = capsys.readouterr().err
    assert "row 1 is for" in err and "00.jpg" in err and "without --resume" in err
    assert partial.read_bytes() == before  # every refusal kept the rows
    assert main(argv[:-1]) == 0  # without --resume: starts over
    assert "replacing" in capsys.readouterr().err
    assert interrupted.read_bytes() == (interrupted.parent / "whole.csv").read_bytes()


def test_interrupted_message_says_how_to_resume() -> None:
    from birdshield.cli import interrupted_message

    assert "--resume" in interrupted_message("predict")
    assert "--resume" not in interrupted_message("predict", resumable=False)  # --out -: nothing kept


@pytest.fixture
def odd_name(tmp_path: Path) -> bytes:
    """A photo whose name is not valid UTF-8 (Latin-1 bytes), as bytes; skipped where the OS refuses it."""
    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsencode(folder) + b"/gr\xfcnfink-\xff.jpg"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT)
    except OSError as e:  # e.g. a file system that takes UTF-8 names only
        pytest.skip(f"cannot create a non-UTF-8 file name here: {e}")
    buf = io.BytesIO()
    textured_image(5).save(buf, format="JPEG")
    os.write(fd, buf.getvalue())
    os.close(fd)
    textured_image(6).save(folder / "plain.jpg")
    return name


def test_a_non_utf8_name_round_trips_to_its_bytes(tiny_run: Path, odd_name: bytes, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "odd"), "--out", str(out), "--top-k", "2"]) == 0
    rows = _rows(out)[1:]
    assert [os.fsencode(r[0]) for r in rows] == [odd_name, os.fsencode(tmp_path / "odd" / "plain.jpg")]
    assert all(r[1] and not r[-1] for r in rows)  # predicted, not an error row
    raw = out.read_bytes()
    assert odd_name in raw  # the name's own bytes, no replacement character
    raw.replace(odd_name, b"").decode("utf-8")  # the rest is valid UTF-8


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_a_non_utf8_name_on_stdout(
    tiny_run: Path, odd_name: bytes, tmp_path: Path, capfdbinary: pytest.CaptureFixture
) -> None:
    assert main(["predict", str(tiny_run), str(tmp_path / "odd"), "--out", "-", "--format", "grading"]) == 0
    lines = capfdbinary.readouterr().out.splitlines()
    assert lines[0] == b"image,specie" and lines[1].startswith(os.path.basename(odd_name) + b",")
