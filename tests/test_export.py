"""The export contract, checked for every model in FACTORIES: SavedModels (TF
Serving) and TFLite files (LiteRT) give the Keras model's codes, under the
names, dtypes and layout the serving side is written against."""

import argparse
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhash import export_cli
from tfhash.data import load_protocol, pairwise_batches
from tfhash.export import QUANTIZATIONS, TFLiteEncoder, encoder_function, export_savedmodel, export_tflite
from tfhash.models import DHN


def tiny_dhn(data):
    """16-bit DHN on 8x8 digits, 2 epochs: trained, so most codes sit away from 0."""
    keras.utils.set_random_seed(0)
    model = DHN(bits=16, input_shape=(8, 8, 1), alpha=0.25, balanced=True)
    model.build((None, 8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = data.subset("train")
    model.fit(pairwise_batches(images, labels, 50, seed=0), epochs=2, verbose=0)
    return model


def tiny_bgan_encoder(data):
    """BGAN's exported part: its encoder, after 10 unsupervised epochs on digits."""
    from tfhash.callbacks import BetaSchedule
    from tfhash.data import neighbour_batches
    from tfhash.models import BGAN
    from tfhash.neighbours import neighbour_structure

    keras.utils.set_random_seed(0)
    model = BGAN(bits=16, input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-4))
    images, _ = data.subset("train")
    neighbours = neighbour_structure(images.reshape(len(images), -1).astype("float32"), k1=20, k2=30)
    # Until beta reaches 20: codes then sit away from 0, as after real training.
    schedule = BetaSchedule.steps([2, 5, 10, 15, 20])
    model.fit(neighbour_batches(images, neighbours, 50), epochs=10, verbose=0, callbacks=[schedule])
    return model.encoder


def tiny_ssah_image_encoder(data):
    """SSAH's image encoder after two rounds on digits paired with their thresholded
    pixels as "text" (the text encoder's export is tested in tests/test_ssah.py)."""
    from tfhash.data.pipelines import cross_modal_batches
    from tfhash.models import SSAH

    keras.utils.set_random_seed(0)
    images, labels = data.subset("train")
    texts = (images.reshape(len(images), -1) >= 128).astype("float32")
    model = SSAH(bits=16, num_labels=10, vocabulary_size=64, num_train=len(images), input_shape=(8, 8, 1),
                 hidden_units=64, feature_units=32, discriminator_units=16,
                 label_epochs=2, image_epochs=8, text_epochs=1, balanced=True)
    model.compile(image_optimizer=keras.optimizers.Adam(1e-3))
    model.fit(cross_modal_batches(images, texts, np.eye(10)[labels], 50), epochs=2 * model.round_epochs, verbose=0)
    return model.image_encoder


def tiny_dsh_gan_encoder(data):
    """DSH-GAN's exported part: the shared CNN and hash head, after 8 epochs on
    digits with 20% of the labels."""
    from tfhash.data import semi_supervised_batches
    from tfhash.models import DSHGAN

    keras.utils.set_random_seed(0)
    model = DSHGAN(bits=16, input_shape=(8, 8, 1), num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = data.subset("train")
    model.fit(semi_supervised_batches(images, labels, 50, labelled_fraction=0.2), epochs=8, verbose=0)
    return model.encoder


def tiny_ugach_image_encoder(data):
    """UGACH's exported image network (PixelPCA features inside), after 6 epochs
    on digits paired with their thresholded pixels as "text"; no labels."""
    from tfhash.data import graph_batches
    from tfhash.models import UGACH
    from tfhash.neighbours import correlation_graph

    keras.utils.set_random_seed(0)
    images, _ = data.subset("train")
    texts = (images.reshape(len(images), -1) >= 128).astype("float32")
    model = UGACH(bits=16, input_shape=(8, 8, 1), vocabulary_size=64, feature_dims=32, hidden_units=64,
                  pretrain_steps=30)
    model.adapt(images)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    graph = correlation_graph(model.image_features(images), texts, k=3)
    model.fit(graph_batches(images, texts, graph, 50), epochs=6, verbose=0)
    return model.image_encoder


# Every test here trains its models (the module's fixtures).
pytestmark = pytest.mark.slow

# Every exportable image model, as a function of the digits data returning a
# trained model on 8x8x1 images. A new method adds its factory here.
FACTORIES = [tiny_dhn, tiny_bgan_encoder, tiny_ssah_image_encoder, tiny_dsh_gan_encoder, tiny_ugach_image_encoder]

# Fraction of code bits equal to the Keras model's, on the 1,797 query + database digits.
MIN_BIT_AGREEMENT = {"float32": 0.999, "dynamic_int8": 0.98, "int8": 0.98}


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


@pytest.fixture(scope="module", params=FACTORIES, ids=lambda factory: factory.__name__)
def model(request, digits):
    return request.param(digits)


@pytest.fixture(scope="module")
def images(digits):
    (queries, _), (database, _) = digits.subset("query"), digits.subset("database")
    return np.concatenate([queries, database])


@pytest.fixture(scope="module")
def serving(model, tmp_path_factory):
    path = export_savedmodel(model, str(tmp_path_factory.mktemp("serving")), name="tiny")
    return path, tf.saved_model.load(path)


@pytest.fixture(scope="module")
def tflite_files(model, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    train, _ = digits.subset("train")
    return {
        q: export_tflite(model, str(out / f"{q}.tflite"), q, representative_inputs=train)
        for q in QUANTIZATIONS
    }


def _bit_agreement(a, b):
    return float(np.mean(np.unpackbits(a) == np.unpackbits(b)))


# SavedModel


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_savedmodel_gives_the_keras_codes(model, serving, images, batch):
    signature = serving[1].signatures["serving_default"]
    x = images[:batch]
    out = signature(images=tf.constant(x))
    np.testing.assert_array_equal(out["binary_codes"].numpy(), model.encode(x))
    np.testing.assert_allclose(out["codes"].numpy(), model.encode_real(x), atol=1e-5)


def test_savedmodel_signature_names_dtypes_and_free_batch(model, serving):
    signature = serving[1].signatures["serving_default"]
    args, inputs = signature.structured_input_signature
    assert args == () and list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8
    assert inputs["images"].shape.as_list() == [None, *model.image_shape]
    outputs = signature.structured_outputs
    assert set(outputs) == {"codes", "binary_codes"}
    assert (outputs["codes"].dtype, outputs["codes"].shape.as_list()) == (tf.float32, [None, model.bits])
    assert (outputs["binary_codes"].dtype, outputs["binary_codes"].shape.as_list()) == (
        tf.uint8,
        [None, model.bits // 8],
    )


def _signature_def(path):
    """What TF Serving reads: the serve graph's `serving_default` SignatureDef in
    saved_model.pb, parsed as the protocol buffer it is (not the Python objects), as
    (sorted (side, name, dtype, shape) tensors, method name), in saved_model_cli's spelling."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    (graph,) = [g for g in saved.meta_graphs if list(g.meta_info_def.tags) == ["serve"]]
    signature = graph.signature_def["serving_default"]
    tensors = [(side, name, types_pb2.DataType.Name(info.dtype), ", ".join(str(d.size) for d in info.tensor_shape.dim))
               for side, infos in (("inputs", signature.inputs), ("outputs", signature.outputs))
               for name, info in infos.items()]
    return sorted(tensors), signature.method_name


def _contract(model):
    side = ", ".join(str(d) for d in model.image_shape)
    return [
        ("inputs", "images", "DT_UINT8", f"-1, {side}"),
        ("outputs", "binary_codes", "DT_UINT8", f"-1, {model.bits // 8}"),
        ("outputs", "codes", "DT_FLOAT", f"-1, {model.bits}"),
    ]


def test_saved_model_pb_holds_the_contract(model, serving):
    assert _signature_def(serving[0]) == (_contract(model), "tensorflow/serving/predict")


@pytest.mark.slow
def test_saved_model_cli_shows_the_contract(tmp_path):
    # TF Serving's own tool shows what saved_model.pb holds (above, for every model). It
    # reads the file, not the weights: an untrained model's export shows the same.
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.build((None, 8, 8, 1))
    path = export_savedmodel(model, str(tmp_path), name="tiny")
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = [cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    tensors = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: \(([^)]*)\)", shown)
    assert sorted(tensors) == _contract(model), shown
    assert "Method name is: tensorflow/serving/predict" in shown
    assert _signature_def(path) == (sorted(tensors), "tensorflow/serving/predict")


def test_savedmodel_holds_only_the_encoder_variables(model, serving):
    def described(variables):
        return sorted((v.name.removesuffix(":0"), tuple(v.shape)) for v in variables)

    saved = described(serving[1].variables)
    # What the encoder reads, plus the model's own non-trainable state (e.g. BGAN's
    # beta, which inference does not read); no optimizer state, and no trainable
    # weight the encoder does not use (a discriminator or generator carried along).
    read = described(encoder_function(model).get_concrete_function().variables)
    state = {(w.path, tuple(w.shape)) for w in model.non_trainable_weights}
    assert set(read) <= set(saved) <= set(read) | state
    assert set(saved) <= {(w.path, tuple(w.shape)) for w in model.weights}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        assert not {name for name, _ in saved} & {v.path for v in optimizer.variables}


def test_savedmodel_versions_are_numbered_and_immutable(model, tmp_path):
    base = str(tmp_path)
    assert export_savedmodel(model, base, name="m") == os.path.join(base, "m", "1")
    assert export_savedmodel(model, base, name="m") == os.path.join(base, "m", "2")
    assert export_savedmodel(model, base, name="m", version=5) == os.path.join(base, "m", "5")
    assert export_savedmodel(model, base) == os.path.join(base, model.name, "1")
    existing = re.escape(os.path.join(base, "m", "2"))
    with pytest.raises(FileExistsError, match=existing + " exists: versions are immutable"):
        export_savedmodel(model, base, name="m", version=2)
    # Only the version directories TF Serving loads: no temporary left behind.
    assert sorted(os.listdir(os.path.join(base, "m"))) == ["1", "2", "5"]


@pytest.mark.parametrize("name", ["a/b", "../up", "with space"])
def test_savedmodel_bad_name_is_refused(model, tmp_path, name):
    with pytest.raises(ValueError, match=re.escape(f"Received: name={name!r}")):
        export_savedmodel(model, str(tmp_path), name=name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("version", [0, -1, "3", True, 1.5])
def test_savedmodel_bad_version_is_refused(model, tmp_path, version):
    with pytest.raises(ValueError, match=re.escape(f"version must be a positive int. Received: version={version!r}")):
        export_savedmodel(model, str(tmp_path), name="m", version=version)


def test_failed_exports_leave_nothing_behind(model, tmp_path, monkeypatch):
    def write_half_then_fail(obj, export_dir, **kwargs):
        os.makedirs(os.path.join(export_dir, "variables"))
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(tf.saved_model, "save", write_half_then_fail)
        with pytest.raises(OSError, match="disk full"):
            export_savedmodel(model, str(tmp_path), name="m")
    assert os.listdir(tmp_path / "m") == []

    # TFLite: a failed write keeps the previous file whole and removes the temporary.
    path = tmp_path / "encoder.tflite"
    path.write_bytes(b"previous")

    def fail_to_rename(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail_to_rename)
        with pytest.raises(OSError, match="disk full"):
            export_tflite(model, str(path), "float32")
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["encoder.tflite", "m"]


# TFLite


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_tflite_runs_builtins_only_and_agrees_with_keras(model, tflite_files, images, quantization):
    path = tflite_files[quantization]
    with open(path, "rb") as f:
        # TF ops outside the builtins would be custom ops named "Flex<Op>".
        assert b"Flex" not in f.read()
    encoder = TFLiteEncoder(path)
    assert (encoder.bits, encoder.image_shape) == (model.bits, model.image_shape)
    int8_tensors = [t for t in encoder.interpreter.get_tensor_details() if t["dtype"] == np.int8]
    assert bool(int8_tensors) == (quantization != "float32")

    codes = encoder.encode(images)
    assert codes.dtype == np.uint8 and codes.shape == (len(images), model.bits // 8)
    agreement = _bit_agreement(codes, model.encode(images))
    assert agreement >= MIN_BIT_AGREEMENT[quantization], agreement
    real = encoder.encode_real(images)
    assert real.dtype == np.float32 and real.shape == (len(images), model.bits)
    # binary_codes are the packed signs of the file's own codes in every mode (for
    # int8, tanh's output zero point is exactly 0).
    np.testing.assert_array_equal(codes, np.packbits(real >= 0, axis=-1))
    if quantization == "float32":
        np.testing.assert_allclose(real, model.encode_real(images), atol=1e-4)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_tflite_codes_keep_the_retrieval_quality(model, tflite_files, digits, quantization):
    # Quantization may flip a few bits; what users feel is mAP. It must stay within
    # 0.01 of the Keras model's mAP@all on the digits protocol (Fashion-MNIST: bench/tflite.py).
    from tfhash import metrics

    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    keras_map = metrics.mean_average_precision(model.encode(xq), model.encode(xd), yq, yd)
    encoder = TFLiteEncoder(tflite_files[quantization])
    tflite_map = metrics.mean_average_precision(encoder.encode(xq), encoder.encode(xd), yq, yd)
    assert abs(tflite_map - keras_map) <= 0.01, (keras_map, tflite_map)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_tflite_batch_size_does_not_change_codes(tflite_files, images, quantization):
    encoder = TFLiteEncoder(tflite_files[quantization])
    x = images[:100]
    whole = encoder.encode(x, batch_size=100)
    np.testing.assert_array_equal(encoder.encode(x, batch_size=1), whole)
    np.testing.assert_array_equal(encoder.encode(x, batch_size=33), whole)  # 33, 33, 33, 1
    np.testing.assert_array_equal(encoder.encode_real(x, batch_size=33), encoder.encode_real(x, batch_size=100))


def test_int8_needs_representative_inputs(model, tmp_path):
    path = str(tmp_path / "encoder.tflite")
    expected = re.escape(f"pass representative_inputs, uint8 images of shape {(None, *model.image_shape)}")
    with pytest.raises(ValueError, match=expected + ".*Received: representative_inputs=None"):
        export_tflite(model, path, "int8")
    with pytest.raises(ValueError, match=r"representative_inputs must have shape .* Received: shape=\(5, 3\)"):
        export_tflite(model, path, "int8", representative_inputs=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="quantization must be one of .*Received: quantization='int4'"):
        export_tflite(model, path, "int4")
    with pytest.raises(ValueError, match="path must be a file name"):
        export_tflite(model, str(tmp_path), "float32")
    assert os.listdir(tmp_path) == []


def test_tflite_encoder_refuses_bad_inputs(model, tflite_files, images, tmp_path):
    encoder = TFLiteEncoder(tflite_files["float32"])
    expected = re.escape(f"shape {(None, *model.image_shape)}. Received: shape={images[:4, ..., 0].shape}")
    with pytest.raises(ValueError, match=expected):
        encoder.encode(images[:4, ..., 0])
    nan = images[:5].astype("float32")
    nan[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"must be finite. Received NaN or inf in 1 image\(s\), first at index \[3\]"):
        encoder.encode(nan)
    with pytest.raises(ValueError, match=r"whole pixel values 0-255.*Received: dtype=float32.*with fractional values"):
        encoder.encode(np.full(images[:2].shape, 100.5, np.float32))
    # The range check is the Keras encoders' own (`check_images`), message included.
    with pytest.raises(ValueError, match=r"pixel values 0-255. Received: dtype=int64, values in \[0, 300\]"):
        encoder.encode(np.concatenate([images[:1], np.full(images[:1].shape, 300)]).astype(np.int64))
    with pytest.raises(ValueError, match="batch_size must be a positive int. Received: batch_size=0"):
        encoder.encode(images[:2], batch_size=0)
    # Whole-valued floats are the same pixels.
    np.testing.assert_array_equal(encoder.encode(images[:5].astype("float32")), encoder.encode(images[:5]))

    with pytest.raises(FileNotFoundError, match="No TFLite model at"):
        TFLiteEncoder(str(tmp_path / "missing.tflite"))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ValueError, match="is not a TFLite model"):
        TFLiteEncoder(str(garbage))


# Command line (`tfhash export ...`)


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="tfhash")
    export_cli.add_export_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.run(args)


def test_cli_exports_savedmodel_and_int8_tflite(model, images, tmp_path, capsys):
    keras_file = str(tmp_path / "model.keras")
    model.save(keras_file)
    base = str(tmp_path / "serving")
    _run_cli(["export", "savedmodel", keras_file, "--base-dir", base, "--name", "tiny"])
    _run_cli(["export", "savedmodel", keras_file, "--base-dir", base, "--name", "tiny", "--version", "5"])
    printed = capsys.readouterr().out.splitlines()
    contract = f"images uint8 {(None, *model.image_shape)} -> codes float32 (None, {model.bits})"
    first = os.path.join(base, "tiny", "1")
    assert printed[0].startswith(f"wrote SavedModel {first} (signature serving_default: {contract}")
    assert printed[1].startswith(f"wrote SavedModel {os.path.join(base, 'tiny', '5')}")
    signature = tf.saved_model.load(os.path.join(base, "tiny", "5")).signatures["serving_default"]
    served = signature(images=tf.constant(images[:10]))["binary_codes"].numpy()
    np.testing.assert_array_equal(served, model.encode(images[:10]))

    output = str(tmp_path / "int8.tflite")
    argv = ["export", "tflite", keras_file, "--output", output, "--quantization", "int8", "--protocol", "digits"]
    _run_cli([*argv, "--num-calibration", "100"])
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {output} (int8, ")
    assert "calibrated on 100 digits training images (seed 0)" in printed and contract in printed
    assert _bit_agreement(TFLiteEncoder(output).encode(images), model.encode(images)) >= MIN_BIT_AGREEMENT["int8"]

    with pytest.raises(ValueError, match="--num-calibration must be positive. Received: 0"):
        _run_cli([*argv, "--num-calibration", "0"])
    with pytest.raises(ValueError, match=r"the fashion_mnist training images, of shape \(28, 28, 1\), but the model"):
        _run_cli(["export", "tflite", keras_file, "--output", output, "--quantization", "int8"])
    with pytest.raises(FileNotFoundError, match="No model at"):
        _run_cli(["export", "tflite", str(tmp_path / "nothing"), "--output", output])


def test_cli_tflite_defaults_to_export_models_and_the_runs_protocol(model, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(str(run_dir / "image_encoder.keras"))
    # A run directory records its recipe's protocol: int8 calibrates on that one without --protocol.
    (run_dir / "run.json").write_text(json.dumps({"recipe": {"protocol": "digits"}}))
    monkeypatch.chdir(tmp_path)
    _run_cli(["export", "tflite", "run", "--quantization", "int8", "--num-calibration", "20"])
    expected = os.path.join("export", "models", f"{model.name}_int8.tflite")
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {expected} (int8, ") and "calibrated on 20 digits training images" in printed
    assert os.path.isfile(tmp_path / expected)


def test_cli_and_library_offer_the_same_quantizations():
    assert export_cli.QUANTIZATIONS == QUANTIZATIONS
