"""Models: offline ImageNet weights, normalisation inside the model, checkpoints that round-trip safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import BIRDS_MINI, needs_birds_mini, tiny_model

from birdshield import data, models


def test_offline_lite0_weights_load_strictly_with_imagenet_statistics():
    model = models.create_model(["a", "b"], weights="imagenet")
    bn = model.backbone.bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # real statistics, not init
    assert model.meta["mean"] == [0.5, 0.5, 0.5] and model.meta["image_size"] == 224
    assert model.head.out_features == 2


def test_normalisation_is_inside_the_model():
    model = models.create_model(["a", "b"], arch="test_efficientnet", weights=None).eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (
        torch.tensor(model.meta["mean"]).view(1, 3, 1, 1),
        torch.tensor(model.meta["std"]).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(model(x), model.backbone((x - mean) / std))


@needs_birds_mini
@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
def test_zero_shot_imagenet_birds_on_real_photos(arch):
    """A correct key mapping + TF padding names obvious species right; a wrong one gives noise."""
    expected = {
        "ANNA HUMMINGBIRD": "hummingbird",
        "BLACK FOOTED ALBATROSS": "albatross",
        "BLUE JAY": "jay",
        "BROWN PELICAN": "pelican",
        "MALLARD": "drake",
    }
    model = models.imagenet_model(arch).eval()
    paths = [p for species in expected for p in sorted((BIRDS_MINI / "test" / species).glob("*.jpg"))]
    x = torch.stack([data.to_tensor(data.read_rgb(p), model.image_size) for p in paths])
    with torch.inference_mode():
        names = [model.class_names[i] for i in model(x).argmax(1)]
    hits = sum(expected[p.parent.name] in name for p, name in zip(paths, names, strict=True))
    assert hits >= 0.8 * len(paths), list(zip([p.parent.name for p in paths], names, strict=True))


def _tiny(tmp_path):
    model = tiny_model(["x", "y", "z"])
    models.save_checkpoint(model, tmp_path, {"metrics": {"valid_accuracy": 0.5}})
    return model


def test_saved_then_loaded_model_predicts_identically(tmp_path):
    model = _tiny(tmp_path).eval()
    loaded = models.load_checkpoint(tmp_path)
    assert not loaded.training and loaded.class_names == ["x", "y", "z"] and loaded.image_size == 32
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert json.loads((tmp_path / models.META_FILE).read_text())["metrics"]["valid_accuracy"] == 0.5


def test_flip_averaging_model_gives_a_photo_and_its_mirror_the_same_logits(tmp_path):
    plain = _tiny(tmp_path).eval()
    models.save_checkpoint(plain, tmp_path, {"tta_flip": True})
    tta = models.load_checkpoint(tmp_path)
    assert tta.tta_flip and not plain.tta_flip
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(tta(x), (plain(x) + plain(x.flip(-1))) / 2)
        torch.testing.assert_close(tta(x.flip(-1)), tta(x))
        assert not torch.allclose(plain(x.flip(-1)), plain(x), atol=1e-4)  # the single view is not symmetric
    torch.manual_seed(0)
    tta_train = tta.train()(x)
    torch.manual_seed(0)
    torch.testing.assert_close(tta_train, plain.train()(x))  # training sees the single view


def test_checkpoint_from_another_format_version_is_refused_clearly(tmp_path):
    model = _tiny(tmp_path)
    state = safetensors.torch.load_file(str(tmp_path / models.WEIGHTS_FILE))
    meta = {**model.meta, "format_version": 99, "birdshield_version": "9.0"}
    safetensors.torch.save_file(
        state, str(tmp_path / models.WEIGHTS_FILE), metadata={"birdshield": json.dumps(meta)}
    )
    with pytest.raises(models.CheckpointError, match="format 99"):
        models.load_checkpoint(tmp_path)


def test_corrupt_or_missing_checkpoint_is_refused_clearly(tmp_path):
    with pytest.raises(models.CheckpointError, match="no model.safetensors"):
        models.load_checkpoint(tmp_path)
    (tmp_path / models.WEIGHTS_FILE).write_bytes(b"\x80\x04garbage pickle-like bytes")
    with pytest.raises(models.CheckpointError, match="not a readable safetensors"):
        models.load_checkpoint(tmp_path)


def test_weights_for_another_architecture_are_refused(tmp_path):
    _tiny(tmp_path)
    meta_path = tmp_path / models.WEIGHTS_FILE
    state = safetensors.torch.load_file(str(meta_path))
    meta = {**models.read_metadata(tmp_path), "arch": "resnet18"}
    safetensors.torch.save_file(state, str(meta_path), metadata={"birdshield": json.dumps(meta)})
    with pytest.raises(models.CheckpointError, match="do not match resnet18"):
        models.load_checkpoint(tmp_path)


def _save_with(tmp_path, meta_changes: dict, state_changes: dict | None = None) -> None:
    """Rewrite the tiny checkpoint's safetensors file with changed metadata fields and tensors."""
    path = tmp_path / models.WEIGHTS_FILE
    state = {**safetensors.torch.load_file(str(path)), **(state_changes or {})}
    meta = {**models.read_metadata(tmp_path), **meta_changes}
    safetensors.torch.save_file(state, str(path), metadata={"birdshield": json.dumps(meta)})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 1_000_000),
        ("image_size", 8),
        ("image_size", "224"),
        ("image_size", 224.0),
        ("image_size", True),
        ("class_names", []),
        ("class_names", ["x", "x", "z"]),
        ("class_names", ["x", 2, "z"]),
        ("class_names", "xyz"),
        ("mean", [0.5, 0.5]),
        ("mean", [0.5, "0.5", 0.5]),
        ("std", [0.5, float("nan"), 0.5]),
        ("std", [0.5, 0.0, 0.5]),
        ("arch", None),
        ("arch", "local-dir:/tmp/model"),
        ("arch", "timm/resnet18"),
        ("arch", "no_such_architecture"),
        ("class_names", ["x", "y", "z" * 201]),
        ("class_names", ["x", "y\nz", "w"]),
        ("class_names", ["x", "y\tz", "w"]),
        ("class_names", ["x", "y\u202ez", "w"]),  # right-to-left override: a name shown as another
        ("tta_flip", "yes"),
    ],
)
def test_checkpoint_metadata_is_validated_naming_file_and_field(tmp_path, field, value):
    _tiny(tmp_path)
    _save_with(tmp_path, {field: value})
    with pytest.raises(models.CheckpointError, match=f"metadata field '{field}'") as info:
        models.load_checkpoint(tmp_path)
    assert str(tmp_path / models.WEIGHTS_FILE) in str(info.value)


def test_a_hub_architecture_is_refused_before_timm_builds_anything(tmp_path, monkeypatch):
    """timm fetches the config of "hf-hub:..." from the network (and reads "local-dir:..." from the disk)
    as it builds the model, before any weights are checked."""
    _tiny(tmp_path)
    _save_with(tmp_path, {"arch": "hf-hub:someone/model"})
    monkeypatch.setattr(models.timm, "create_model", lambda *a, **k: pytest.fail("timm built a model"))
    with pytest.raises(models.CheckpointError, match="metadata field 'arch' must be a timm architecture"):
        models.load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="architecture must be a timm architecture name"):
        models.create_model(["a", "b"], arch="hf-hub:someone/model", weights=None)


def test_class_names_are_bounded_in_number(tmp_path, monkeypatch):
    _tiny(tmp_path)
    monkeypatch.setattr(models, "MAX_CLASSES", 2)
    with pytest.raises(models.CheckpointError, match="'class_names' lists 3 classes; at most 2"):
        models.load_checkpoint(tmp_path)
    monkeypatch.undo()
    many = [f"species {i}" for i in range(100_001)]
    assert models.class_names_problem(many) == "lists 100,001 classes; at most 100,000 are allowed"
    assert models.class_names_problem(many[:100_000]) is None


def test_class_names_in_any_script_with_any_space_are_kept(tmp_path):
    names = ["Grünfink 鳥", "ヤマ\u3000ガラ", "a\u00a0b", "x | y", "z" * 200]
    model = models.create_model(names, arch="test_efficientnet", weights=None, image_size=32)
    models.save_checkpoint(model, tmp_path)
    assert models.load_checkpoint(tmp_path).class_names == names


def test_training_refuses_class_names_it_could_not_load(tmp_path):
    with pytest.raises(ValueError, match=r"class names: holds a name with the unprintable character '\\n'"):
        models.create_model(["a", "b\nc"], arch="test_efficientnet", weights=None)


def test_class_names_must_match_the_classifier_in_the_weights(tmp_path):
    _tiny(tmp_path)
    _save_with(tmp_path, {"class_names": ["x", "y"]})
    with pytest.raises(models.CheckpointError, match="'class_names' lists 2 classes.* has 3 outputs"):
        models.load_checkpoint(tmp_path)


def test_integer_weights_are_refused_not_cast(tmp_path):
    model = _tiny(tmp_path)
    key = next(k for k, v in model.backbone.state_dict().items() if v.is_floating_point())
    shape = model.backbone.state_dict()[key].shape
    _save_with(tmp_path, {}, {key: torch.ones(shape, dtype=torch.int32)})
    with pytest.raises(models.CheckpointError, match=f"tensor '{key}' is torch.int32, not floating point"):
        models.load_checkpoint(tmp_path)


def test_unreadable_json_metadata_names_its_file(tmp_path):
    model = _tiny(tmp_path)
    safetensors.torch.save_file(model.backbone.state_dict(), str(tmp_path / models.WEIGHTS_FILE))
    assert models.load_checkpoint(tmp_path).class_names == ["x", "y", "z"]  # from birdshield.json
    meta = json.loads((tmp_path / models.META_FILE).read_text())
    (tmp_path / models.META_FILE).write_text('{"arch": "test_efficientnet", ')
    with pytest.raises(models.CheckpointError, match="birdshield.json: the metadata is not valid JSON"):
        models.load_checkpoint(tmp_path)
    (tmp_path / models.META_FILE).write_text(json.dumps({**meta, "image_size": 4096}))
    with pytest.raises(models.CheckpointError, match="birdshield.json: metadata field 'image_size'"):
        models.load_checkpoint(tmp_path)


def test_auto_runtime_is_onnx_on_a_cpu_for_a_run_and_torch_for_the_built_in_model(tmp_path: Path):
    from birdshield.models import IMAGENET_BIRDS, resolve_runtime

    assert resolve_runtime("auto", "cpu", tmp_path) == "onnx"  # the export is cached in the run
    assert resolve_runtime("auto", "cpu", IMAGENET_BIRDS) == "torch"  # exported in memory on every start
    assert resolve_runtime("auto", "cpu", None) == "torch"
    assert resolve_runtime("torch", "cpu", tmp_path) == "torch" and resolve_runtime("onnx") == "onnx"
    assert resolve_runtime("auto", "cuda", tmp_path / "model.onnx") == "onnx"  # a file only onnxruntime runs
    with pytest.raises(ValueError, match="runtime"):
        resolve_runtime("tensorrt")
    with pytest.raises(ValueError, match="onnxruntime"):
        resolve_runtime("torch", "cpu", tmp_path / "model.onnx")
