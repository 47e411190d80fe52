"""`from_preset`: a trained encoder from a zoo name, a `.keras` file or a folder.

As keras-hub's `from_preset`, one call takes what a user has at hand:

- a zoo entry name (`tfhash zoo list`), fetched from the zoo at
  `TFHASH_ZOO_URL` (or the packaged manifest's files), sha256-verified, cached;
- an entry of a zoo on the Hugging Face Hub, `hf://ORG/REPO/ENTRY` or
  `hf://ORG/REPO@REVISION/ENTRY` (`pip install "tfhash[hub]"`; `tfhash.zoo.hub`);
- a local `.keras` file (`encoder.save`);
- a folder: a run directory (`tfhash train --output`: `run.json` and
  `{modality}_encoder.keras`) or any folder holding exactly one `.keras` file.

Every file is loaded with `safe_mode=True`; weights come from the archive,
never from a path in its config. Keyword arguments override the saved
config (e.g. `name=`, `dtype=`), the weights being kept.
"""

import os

from tfhash import rundir


def read_keras(path):
    """`keras.saving.load_model(path, safe_mode=True)` of a tfhash encoder.

    Refused in one line, before Keras builds anything (so none of its
    warnings are printed): a file that is not a `.keras` archive (Keras says
    "File not found" for a truncated one), and an archive whose model is not
    a tfhash encoder (a class registered under "tfhash>" that has `encode`),
    naming the class it holds. A tfhash encoder that cannot be built (say,
    one whose config asks for ImageNet weights offline) is refused in one
    line too, Keras's warnings held back.
    """
    import json
    import warnings
    import zipfile

    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable .keras archive ({size} bytes): expected a zip file written by "
                         f"model.save, truncated or corrupted otherwise. Received: a file that is not a zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        held = config.get("registered_name") or config.get("class_name")
    except (zipfile.BadZipFile, KeyError, ValueError, AttributeError, OSError) as error:
        raise ValueError(f"{path} is not a readable .keras archive ({size} bytes): expected config.json written by "
                         f"model.save. Received: {type(error).__name__}: {' '.join(str(error).split())}") from None
    if not isinstance(held, str) or not held.startswith("tfhash>"):
        raise ValueError(f"{path} does not hold a tfhash encoder: expected a model saved by tfhash (e.g. "
                         f"image_encoder.keras of a run directory). Received: a {config.get('class_name', '?')} model "
                         f"({config.get('module', '?')})")
    import keras

    from tfhash.console import filtered_stderr

    try:
        with warnings.catch_warnings(), filtered_stderr(keep=False):
            warnings.simplefilter("ignore")
            model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # noqa: BLE001  (Keras raises many kinds; each is reported in one line)
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"{path} is not a readable .keras archive ({size} bytes, {held}): expected a tfhash model "
                         f"that builds here (classes registered by `import tfhash.models`). Received: "
                         f"{type(error).__name__}: {message}") from None
    if not (hasattr(model, "encode") and hasattr(model, "bits")):
        raise ValueError(f"{path} does not hold a tfhash encoder: expected a model with encode() and bits, such as "
                         f"image_encoder.keras of a run directory. Received: a {type(model).__name__}")
    return model


def load_encoder(path, modality="image"):
    """A trained encoder from a run directory (its `modality` encoder) or a `.keras` file."""
    if os.path.isdir(path):
        path = rundir.encoder_file(path, modality)
    elif not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path}: expected a run directory or a .keras file")
    return read_keras(path)


def load_preset(preset, *, expected=None, modality="image", **overrides):
    """The encoder `preset` names (see the module docstring).

    Args:
        preset: zoo entry name, `hf://ORG/REPO[@REVISION]/ENTRY`, `.keras` file or folder.
        expected: a predicate on the loaded model and a description of what
            it accepts, `(check, "a DHN encoder")`; the caller's class.
        modality: which encoder of a run directory ("image" or "text").
        **overrides: config keys to replace; the weights are kept.
    """
    from tfhash import zoo

    path = os.fspath(preset)
    if path.startswith(zoo.HF):  # before the local forms: "hf://a/b/c" has separators
        model = zoo.load(path)
    elif os.path.isdir(path):
        keras_files = sorted(f for f in os.listdir(path) if f.endswith(".keras"))
        if os.path.exists(os.path.join(path, rundir.RUN_FILE)) or len(keras_files) != 1:
            model = load_encoder(path, modality)
        else:
            model = read_keras(os.path.join(path, keras_files[0]))
    elif os.path.isfile(path):
        model = read_keras(path)
    elif path.endswith(".keras") or os.sep in path:
        raise FileNotFoundError(f"No preset at {path}: expected a zoo entry name, hf://ORG/REPO[@REVISION]/ENTRY, "
                                f"a .keras file or a folder")
    else:
        model = zoo.load(path)
    if expected is not None and not expected[0](model):
        raise ValueError(f"Preset {path!r} holds a {type(model).__name__}: expected {expected[1]}")
    return _override(model, overrides) if overrides else model


def _override(model, overrides):
    config = model.get_config()
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown config key{'s' if len(unknown) > 1 else ''} {unknown} for "
                         f"{type(model).__name__}. Expected some of: {sorted(config)}")
    new = type(model).from_config({**config, **overrides})
    if not new.built:
        new.build(None)
    try:
        new.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(f"The overrides {sorted(overrides)} change {type(model).__name__}'s weights, which the "
                         f"preset cannot fill: {error}") from None
    return new
