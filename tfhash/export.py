"""Export encoders for deployment: SavedModels in TF Serving's layout.

Only the encoder is exported (the inference path of `call`), never optimizers,
discriminators or generators. Serving signature `serving_default`:

    inputs:  the model's `serving_inputs()`, e.g. `images`: uint8 (None, H, W, C)
    outputs: `codes`: float32 (None, K), the relaxed codes in [-1, 1]
             `binary_codes`: uint8 (None, K / 8), `np.packbits(codes >= 0)`
"""

import os
import re
import shutil

import keras
import tensorflow as tf

from tfhash.layers import SignPack

SIGNATURE = "serving_default"


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
    # TF Serving only loads all-digit directory names, so this one is invisible to it.
    tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, encoder_function(model))
    try:
        archive.write_out(tmp, verbose=False)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
