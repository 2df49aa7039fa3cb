"""ONNX export: the exported graph gives the torch model's logits (plain and with in-graph defences) on real
photos, carries its metadata, takes any batch, and `predict --runtime onnx` writes the torch CSV's species."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import BIRDS_MINI, TINY_CLASSES, textured_image

import birdshield
from birdshield import data
from birdshield.cli import main
from birdshield.defenses import Defended, make_transform
from birdshield.errors import CheckpointError
from birdshield.export import ONNX_FILE, OnnxClassifier, export_onnx, onnx_bytes
from birdshield.models import WEIGHTS_FILE, Classifier, create_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-3  # max |logit difference| allowed between onnxruntime and torch


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real test photo per birds-mini species when present, else generated photos of mixed sizes."""
    folder = tmp_path_factory.mktemp("photos")
    species = sorted(p for p in (BIRDS_MINI / "test").iterdir()) if BIRDS_MINI.is_dir() else []
    for i, source in enumerate(min(s.glob("*.jpg")) for s in species):
        shutil.copy(source, folder / f"{i}.jpg")
    if not species:
        for i in range(8):
            textured_image(i, size=(200 + 40 * i, 260), tint=i).save(folder / f"{i}.jpg")
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained head over the offline ImageNet weights of the default backbone (TF "SAME" padding)."""
    names = sorted(p.name for p in (BIRDS_MINI / "test").iterdir()) if BIRDS_MINI.is_dir() else TINY_CLASSES
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_checkpoint(create_model(names), run)
    return run


@pytest.fixture(scope="module")
def model(run_dir: Path) -> Classifier:
    return birdshield.load(run_dir)


@pytest.fixture(scope="module")
def onnx_model(run_dir: Path) -> OnnxClassifier:
    """Through the run directory's cache, as `predict --runtime onnx` gets it."""
    return birdshield.load(run_dir, runtime="onnx")


@pytest.fixture(scope="module")
def photos(photo_dir: Path) -> torch.Tensor:
    _, x, bad = next(data.read_batches(sorted(photo_dir.iterdir()), 224, 64))
    assert not bad
    return x


@pytest.fixture(scope="module")
def torch_logits(model: Classifier, photos: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(photos)


def _assert_same_predictions(onnx_logits: torch.Tensor, torch_logits: torch.Tensor) -> None:
    assert onnx_logits.shape == torch_logits.shape
    assert (onnx_logits - torch_logits).abs().max().item() <= TOLERANCE
    assert torch.equal(onnx_logits.argmax(1), torch_logits.argmax(1))


def test_export_gives_torch_logits_on_photos(onnx_model: OnnxClassifier, photos, torch_logits):
    _assert_same_predictions(onnx_model(photos), torch_logits)


def test_tf_same_padding_is_static_in_the_graph(run_dir: Path, onnx_model: OnnxClassifier):
    import onnx

    ops = {node.op_type for node in onnx.load(str(run_dir / ONNX_FILE)).graph.node}
    assert "Conv" in ops and "Pad" in ops
    assert "Shape" not in ops  # timm's dynamic SAME padding reads the input shape at every call


@pytest.mark.parametrize(("defense", "param"), [("bits", 3), ("median", 3)])
def test_in_graph_defense_equals_defended_torch(model, photos, torch_logits, tmp_path, defense, param):
    path = export_onnx(model, tmp_path / "defended.onnx", defense=defense, defense_param=param)
    defended = OnnxClassifier(path)
    assert defended.meta["defense"] == {"name": defense, {"bits": "bits", "median": "kernel"}[defense]: param}
    x = photos[:4]
    logits = defended(x)
    with torch.no_grad():
        _assert_same_predictions(logits, Defended(model, make_transform(defense, param))(x))
    assert (logits - torch_logits[:4]).abs().max() > TOLERANCE  # the transform is really in the graph


@pytest.mark.parametrize(
    ("defense", "why"), [("jpeg", "JPEG coding is not an ONNX operator"), ("smoothing", "not one graph")]
)
def test_jpeg_and_smoothing_are_refused(model, run_dir, tmp_path: Path, capsys, defense: str, why: str):
    with pytest.raises(ValueError, match=why):
        export_onnx(model, tmp_path / "x.onnx", defense=defense)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "x.onnx"), "--defense", defense]) == 2
    assert why in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_metadata_round_trips(model: Classifier, onnx_model: OnnxClassifier, run_dir: Path):
    import onnx

    assert onnx_model.class_names == model.class_names and onnx_model.image_size == 224
    meta = onnx_model.meta
    assert meta["birdshield_version"] == birdshield.__version__ and meta["batch"] == "dynamic"
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and "centre" in meta["preprocessing"]["crop"]
    assert meta["birdshield"]["arch"] == "tf_efficientnet_lite0" and meta["defense"] is None
    props = {p.key: p.value for p in onnx.load(str(run_dir / ONNX_FILE)).metadata_props}
    assert json.loads(props["class_names"]) == model.class_names  # plain JSON strings, for other tools


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(onnx_model: OnnxClassifier, photos, torch_logits, batch: int):
    _assert_same_predictions(onnx_model(photos[-batch:]), torch_logits[-batch:])


def test_flip_averaging_model_exports_with_a_dynamic_batch(model: Classifier, photos, tmp_path: Path):
    save_checkpoint(model, tmp_path, {"tta_flip": True})
    tta, onnx_tta = birdshield.load(tmp_path), birdshield.load(tmp_path, runtime="onnx")
    with torch.no_grad():
        expected = tta(photos)
    for batch in (1, 5):
        _assert_same_predictions(onnx_tta(photos[-batch:]), expected[-batch:])


def test_static_batch_export_from_the_cli(run_dir: Path, photos, tmp_path: Path):
    out = tmp_path / "static.onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--static-batch", "2"]) == 0
    static = birdshield.load(out, runtime="onnx")
    assert static.meta["batch"] == 2 and static(photos[:2]).shape == (2, len(static.class_names))
    with pytest.raises(Exception, match="images"):  # onnxruntime names the input whose shape is wrong
        static(photos[:3])


def test_predict_onnx_runtime_writes_the_torch_species(run_dir: Path, photo_dir: Path, tmp_path: Path):
    csvs = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.csv"
        assert main(["predict", str(run_dir), str(photo_dir), "--out", str(out), "--runtime", runtime]) == 0
        with open(out, newline="") as f:
            csvs[runtime] = [(r["image"], r["species"]) for r in csv.DictReader(f)]
    assert csvs["onnx"] == csvs["torch"] and len(csvs["torch"]) == len(list(photo_dir.iterdir()))


def test_cached_export_is_reused_only_for_the_weights_it_was_made_from(
    run_dir: Path, onnx_model: OnnxClassifier, tmp_path: Path
):
    cached = run_dir / ONNX_FILE
    first = cached.stat().st_mtime_ns
    birdshield.load(run_dir, runtime="onnx")
    assert cached.stat().st_mtime_ns == first  # reused
    # Other weights copied in with their (older) time kept, as `cp -p` does: a time-keyed cache trusted the
    # old export and predicted with the old model.
    run = shutil.copytree(run_dir, tmp_path / "run")
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_checkpoint(create_model(list(onnx_model.class_names)), other)
    old = (run / WEIGHTS_FILE).stat().st_mtime - 3600
    shutil.copy2(other / WEIGHTS_FILE, run / WEIGHTS_FILE)
    os.utime(run / WEIGHTS_FILE, (old, old))
    x = torch.rand(2, 3, onnx_model.image_size, onnx_model.image_size)
    fresh = birdshield.load(run, runtime="onnx")(x)
    torch.testing.assert_close(fresh, birdshield.load(other, device="cpu")(x), atol=TOLERANCE, rtol=0)
    assert not torch.allclose(fresh, onnx_model(x), atol=TOLERANCE)


@pytest.fixture(scope="module")
def tiny_onnx() -> bytes:
    return onnx_bytes(create_model(["a", "b"], arch="test_efficientnet", weights=None, image_size=32))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("class_names", ["a", "b\nc"]),
        ("class_names", ["a", "b" * 201]),
        ("class_names", [f"species {i}" for i in range(100_001)]),
        ("image_size", 1_000_000),
        ("arch", "hf-hub:someone/model"),
    ],
)
def test_onnx_metadata_is_checked_as_a_run_directorys(tiny_onnx: bytes, tmp_path: Path, field: str, value):
    """The class names and image size of an ONNX file come from its metadata: the same limits hold."""
    import onnx

    proto = onnx.load_from_string(tiny_onnx)
    (prop,) = [p for p in proto.metadata_props if p.key == field]
    prop.value = json.dumps(value)
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    assert OnnxClassifier(tiny_onnx).class_names == ["a", "b"]
    with pytest.raises(CheckpointError, match=f"metadata field '{field}'") as info:
        OnnxClassifier(path)
    assert str(info.value).startswith(f"{path}: ")
