"""Export encoders for deployment: SavedModels in TF Serving's layout, and
TFLite files for LiteRT.

Only the encoder is exported (the inference path of `call`), never optimizers,
discriminators or generators. Serving signature `serving_default`, the same in
both formats:

    inputs:  the model's `serving_inputs()`, e.g. `images`: uint8 (None, H, W, C)
    outputs: `codes`: float32 (None, K), the relaxed codes in [-1, 1]
             `binary_codes`: uint8 (None, K / 8), `np.packbits(codes >= 0)`
"""

import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfhash.layers import SignPack
from tfhash.checks import check_bow, check_images
from tfhash.io import temporary_folder, write_atomically, write_bytes

SIGNATURE = "serving_default"
QUANTIZATIONS = ("float32", "dynamic_int8", "int8")


def next_version(model_dir):
    """1 + the highest integer version directory under `model_dir` (1 if none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def encoder_function(model):
    """A `tf.function` mapping the model's serving inputs to codes and packed codes."""
    specs = model.serving_inputs()
    pack = SignPack()

    def encode(*inputs):
        features = inputs[0] if len(inputs) == 1 else dict(zip(specs, inputs))
        codes = model(features, training=False)
        return {"codes": codes, "binary_codes": pack(codes)}

    return tf.function(encode, input_signature=list(specs.values()))


def _write_encoder_savedmodel(model, directory):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, encoder_function(model))
    archive.write_out(directory, verbose=False)


def write_savedmodel(model, path):
    """Writes the encoder as a SavedModel at `path` itself, with the
    `serving_default` signature (what `HashModel.export` writes;
    `export_savedmodel` puts it in TF Serving's NAME/VERSION layout).

    The folder appears whole (`write_atomically`), replacing one there.

    Args:
        model: a `tfhash.models.HashModel`.
        path: the SavedModel folder (parent folders are made).

    Returns:
        `path`.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda partial: _write_encoder_savedmodel(model, partial))
    return path


def export_savedmodel(model, base_dir, name=None, version=None):
    """Writes `base_dir/<name>/<version>/`, a SavedModel TF Serving can load.

    The version directory appears atomically (written under a hidden name,
    then renamed), so a server polling `base_dir/<name>` never loads a
    half-written version.

    Args:
        model: a `tfhash.models.HashModel`.
        base_dir: the model base path TF Serving is pointed at.
        name: model name (default: the model's `name`).
        version: positive int; default one above the highest existing version.

    Returns:
        The path of the version directory.
    """
    name = name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name must be letters, digits, '_', '.' or '-'. Received: name={name!r}")
    model_dir = os.path.join(base_dir, name)
    version = next_version(model_dir) if version is None else version
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ValueError(f"version must be a positive int. Received: version={version!r}")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists: versions are immutable, export a new one")
    os.makedirs(model_dir, exist_ok=True)
    # Written under a hidden temporary name (TF Serving only loads all-digit
    # names), synced, then renamed: a server never sees half a version.
    write_atomically(final, lambda partial: _write_encoder_savedmodel(model, partial))
    return final


def export_tflite(model, path, quantization="float32", representative_inputs=None, num_calibration=200):
    """Writes the encoder as a TFLite flatbuffer that runs on LiteRT builtin ops.

    The file has the SavedModel's signature (`serving_default`: uint8 `images`
    in, float32 `codes` and uint8 `binary_codes` out) whatever the quantization:

    - "float32": float weights and arithmetic; codes match Keras to rounding.
    - "dynamic_int8": int8 weights, activations quantized on the fly (about 4x
      smaller; no calibration data).
    - "int8": full integer internals (int8 weights and activations, ranges
      calibrated on `representative_inputs`, per-channel weights) with the
      model's inputs and outputs kept as they are, so callers and the packing
      do not change: the uint8 images are cast and quantized inside, and
      `binary_codes` are the signs of the int8 tanh outputs; tanh's int8
      output has zero point 0, so they are exactly `np.packbits(codes >= 0)`
      of the dequantized `codes`. Conversion fails rather than fall back to
      float kernels for an op with no int8 kernel (use "dynamic_int8" then).

    The file is written to a temporary name beside `path` and renamed, so a
    failed conversion leaves nothing and an existing file stays whole.

    Args:
        model: a built `tfhash.models.HashModel` (images or bag-of-words in).
        path: the .tflite file to write (parent directories are created).
        quantization: one of "float32", "dynamic_int8", "int8".
        representative_inputs: inputs the model takes (raw images (n, H, W, C),
            pixels 0-255, or bag-of-words rows), drawn like the data the
            encoder will see (e.g. training items); required for "int8",
            ignored otherwise.
        num_calibration: how many of `representative_inputs` (the first ones)
            calibrate the int8 ranges.

    Returns:
        `path`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    if os.path.isdir(path):
        raise ValueError(f"path must be a file name (e.g. encoder.tflite). Received a directory: path={path!r}")
    calibration = None
    if quantization == "int8":
        [(input_name, spec)] = model.serving_inputs().items()
        if representative_inputs is None:
            raise ValueError(
                "quantization='int8' calibrates activation ranges on sample inputs: pass "
                f"representative_inputs, {spec.dtype.name} {input_name} of shape {tuple(spec.shape)} "
                "(e.g. training items). Received: representative_inputs=None"
            )
        if not isinstance(num_calibration, int) or isinstance(num_calibration, bool) or num_calibration <= 0:
            raise ValueError(f"num_calibration must be a positive int. Received: num_calibration={num_calibration!r}")
        calibration = model.check_inputs(representative_inputs, "representative_inputs")
        if spec.dtype == tf.uint8:
            calibration = as_uint8_images(calibration, tuple(spec.shape[1:]), "representative_inputs")
        calibration = calibration[:num_calibration]

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The work folder sits beside `path`, named as a temporary of it, so a
    # killed conversion's leftovers are removed by the next write there.
    with temporary_folder(path, ".work") as workdir:
        # From a SavedModel the converter freezes the weights into constants
        # (folding /255 and batch norm into the convolutions). From the concrete
        # function it kept resource variables and, in TF 2.21, returned
        # binary_codes of all zeros.
        saved = os.path.join(workdir, "savedmodel")
        _write_encoder_savedmodel(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "int8":
            # Int8 kernels only, so no op falls back to float silently. Inputs and
            # outputs keep their types (inference_input/output_type left as is).
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ({input_name: row[None]} for row in calibration)
        with warnings.catch_warnings():
            # The converter calibrates with tf.lite.Interpreter, which warns it is deprecated.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            content = converter.convert()
    write_bytes(path, content)
    return path


def as_uint8_images(images, image_shape, name="images"):
    """Validates raw images (`check_images`) and returns them as uint8.

    Exported encoders take uint8 pixels; integer or float arrays are accepted
    when every value is a whole number in 0-255, so the cast changes nothing.
    """
    array = check_images(images, image_shape, name)  # the 0-255 range and the [0, 1] mistake
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or bool(np.all(array == np.round(array)))):
        raise ValueError(
            f"{name} must hold whole pixel values 0-255 (exported encoders take uint8). "
            f"Received: dtype={array.dtype}, values in [{array.min()}, {array.max()}], with fractional values"
        )
    return array.astype(np.uint8)


class TFLiteEncoder:
    """Runs an encoder written by `export_tflite` with LiteRT.

    Reads the `serving_default` signature, so inputs and outputs are found by
    name (`images` or `bow`, `codes`, `binary_codes`) rather than by tensor
    order; the batch dimension is resized to each chunk of `batch_size` rows.

    Args:
        path: a .tflite file written by `export_tflite`.
        num_threads: interpreter threads (None: LiteRT's default, one thread;
            pass os.cpu_count() for throughput).

    Attributes:
        bits: code length K.
        input_name, input_shape, input_dtype: the one input the file takes.
        image_shape: (height, width, channels) for image encoders, else None.

    Examples:
    >>> export_tflite(model, "dhn.tflite", quantization="dynamic_int8")
    >>> encoder = TFLiteEncoder("dhn.tflite")
    >>> encoder.encode(images)  # uint8, shape (n, bits // 8), like model.encode
    """

    def __init__(self, path, num_threads=None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No TFLite model at {path}: expected a file written by export_tflite")
        self.path = path
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        except ValueError as error:
            raise ValueError(f"{path} is not a TFLite model: {error}") from error
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise ValueError(
                f"{path} has no {SIGNATURE!r} signature (expected a file written by export_tflite). "
                f"Received signatures: {sorted(signatures)}"
            )
        self._runner = self.interpreter.get_signature_runner(SIGNATURE)
        inputs = self._runner.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one input. Received inputs: {sorted(inputs)}")
        [(self.input_name, detail)] = inputs.items()
        self.input_dtype = np.dtype(detail["dtype"])
        self.input_shape = tuple(int(d) for d in detail["shape_signature"][1:])
        is_images = self.input_dtype == np.uint8 and len(self.input_shape) == 3
        is_rows = self.input_dtype == np.float32 and len(self.input_shape) == 1
        if not (is_images or is_rows):
            raise ValueError(
                f"{path}: expected uint8 (batch, H, W, C) images or float32 (batch, features) rows. "
                f"Received: dtype={self.input_dtype}, shape={detail['shape_signature'].tolist()}"
            )
        # Image encoders keep the attribute their callers know; others have None.
        self.image_shape = self.input_shape if is_images else None
        outputs = self._runner.get_output_details()
        self._outputs = _output_names(outputs, path)
        self.bits = int(outputs[self._outputs["codes"]]["shape_signature"][-1])

    def encode(self, inputs, batch_size=256):
        """Packed uint8 codes (n, bits // 8) for raw uint8 images (n, H, W, C)
        (or, for a text encoder, float32 bag-of-words rows)."""
        return self._run(inputs, batch_size, "binary_codes")

    def encode_real(self, inputs, batch_size=256):
        """Relaxed codes (n, bits), float32 (dequantized for int8 files)."""
        return self._run(inputs, batch_size, "codes")

    def _run(self, inputs, batch_size, output):
        if self.image_shape is not None:
            inputs = as_uint8_images(inputs, self.image_shape)
        else:
            inputs = check_bow(inputs, self.input_shape[0], self.input_name)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
        name = self._outputs[output]
        # The signature runner resizes the batch dimension when a chunk's size changes.
        chunks = [
            self._runner(**{self.input_name: inputs[start : start + batch_size]})[name]
            for start in range(0, len(inputs), batch_size)
        ]
        return np.concatenate(chunks)


def _output_names(outputs, path):
    """Maps "codes" / "binary_codes" to the file's output names."""
    if {"codes", "binary_codes"} <= set(outputs):
        return {"codes": "codes", "binary_codes": "binary_codes"}
    # A converter that renamed the outputs (output_0, ...): tell them apart by dtype.
    by_dtype = {np.dtype(d["dtype"]): name for name, d in outputs.items()}
    if len(outputs) == 2 and set(by_dtype) == {np.dtype("float32"), np.dtype("uint8")}:
        return {"codes": by_dtype[np.dtype("float32")], "binary_codes": by_dtype[np.dtype("uint8")]}
    found = {name: str(np.dtype(d["dtype"])) for name, d in outputs.items()}
    raise ValueError(
        f"{path}: expected outputs 'codes' (float32) and 'binary_codes' (uint8). Received: {found}"
    )
