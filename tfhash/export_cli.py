"""`tfhash export`: write a trained encoder as a SavedModel or a TFLite file.

    tfhash export savedmodel runs/dhn32 --base-dir export/models --name dhn32
    tfhash export tflite runs/dhn32 --output export/models/dhn32_int8.tflite --quantization int8

Heavy imports happen inside the commands, so building the parser stays cheap.
"""

import contextlib
import os

from tfhash.console import filtered_stderr

DEFAULT_BASE_DIR = os.path.join("export", "models")
QUANTIZATIONS = ("float32", "dynamic_int8", "int8")  # tfhash.export.QUANTIZATIONS, without importing TF
# Exporting shows no progress; the flag is there so that every long command takes it.
QUIET_HELP = "no progress output, only the line saying what was written"


def add_export_commands(subparsers):
    """Registers `export savedmodel` and `export tflite` on the `tfhash` parser.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The `export` parser. Each command sets `run` to a function of the
        parsed arguments, which prints what it wrote.
    """
    export = subparsers.add_parser("export", help="export a trained encoder (SavedModel for TF Serving, TFLite)")
    formats = export.add_subparsers(dest="format", required=True)

    p = formats.add_parser("savedmodel", help="SavedModel in TF Serving's layout BASE_DIR/NAME/VERSION/")
    p.add_argument("model", help="run directory or .keras file")
    p.add_argument("--modality", choices=["image", "text"], default="image", help="which encoder of the run")
    p.add_argument("--base-dir", default=DEFAULT_BASE_DIR, help="directory that gets NAME/VERSION/ (default: %(default)s)")
    p.add_argument("--name", help="model name (default: the model's name, e.g. dhn)")
    p.add_argument("--version", type=int, help="version number (default: one above the highest existing)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_export_savedmodel)

    p = formats.add_parser("tflite", help="TFLite file for LiteRT (builtin ops only)")
    p.add_argument("model", help="run directory or .keras file")
    p.add_argument("--modality", choices=["image", "text"], default="image", help="which encoder of the run")
    p.add_argument("--output", help=f"the .tflite file (default: {DEFAULT_BASE_DIR}/NAME_QUANTIZATION.tflite)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="float32", help="default: %(default)s")
    p.add_argument(
        "--protocol",
        help="int8 only: calibrate on this protocol's training split "
        "(default: the run's protocol from run.json, else fashion_mnist)",
    )
    p.add_argument("--data-dir", default=None, help="directory with the dataset's local files")
    p.add_argument("--num-calibration", type=int, default=200, help="int8 calibration images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the calibration images (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_export_tflite)
    return export


def _export_savedmodel(args):
    from tfhash import training
    from tfhash.export import SIGNATURE, export_savedmodel

    model = training.load_model(args.model, args.modality)
    path = export_savedmodel(model, args.base_dir, name=args.name, version=args.version)
    print(f"wrote SavedModel {path} (signature {SIGNATURE}: {_contract(model)})")


def _export_tflite(args):
    from tfhash import training
    from tfhash.export import export_tflite

    model = training.load_model(args.model, args.modality)
    output = args.output or os.path.join(DEFAULT_BASE_DIR, f"{model.name}_{args.quantization}.tflite")
    calibration, n, note = None, args.num_calibration, ""
    if args.quantization == "int8":
        import numpy as np

        from tfhash.data import load_protocol

        if n <= 0:
            raise ValueError(f"--num-calibration must be positive. Received: {n}")
        protocol = args.protocol or _run_protocol(args.model) or "fashion_mnist"
        # Image-text protocols give (images, texts, labels): the modality picks the column.
        part = load_protocol(protocol, args.data_dir, **_run_data_options(args.model, protocol)).subset("train")
        images = part[0] if args.modality == "image" else part[1]
        (spec,) = model.serving_inputs().values()
        if images.shape[1:] != tuple(spec.shape[1:]):
            raise ValueError(
                f"int8 calibrates on the {protocol} training {args.modality}s, of shape {images.shape[1:]}, but "
                f"the model takes {tuple(spec.shape[1:])}: pass the protocol it was trained on with --protocol"
            )
        n = min(n, len(images))
        # A seeded sample of the training split: all classes, and the same file every time.
        calibration = images[np.random.default_rng(args.seed).choice(len(images), n, replace=False)]
        note = f", calibrated on {n} {protocol} training images (seed {args.seed})"
    # The converter prints its quantizer's settings straight to stderr; --verbose keeps them.
    with contextlib.nullcontext() if getattr(args, "verbose", False) else filtered_stderr():
        export_tflite(model, output, args.quantization, representative_inputs=calibration, num_calibration=n)
    size = os.path.getsize(output) / 1024
    print(f"wrote {output} ({args.quantization}, {size:.0f} KiB{note}; signature serving_default: {_contract(model)})")


def _contract(model):
    inputs = ", ".join(f"{name} {spec.dtype.name} {tuple(spec.shape)}" for name, spec in model.serving_inputs().items())
    return f"{inputs} -> codes float32 (None, {model.bits}), binary_codes uint8 (None, {model.bits // 8})"


def _run_recipe(model_path):
    """The recipe a run directory was trained with ({} for a bare .keras file)."""
    from tfhash.training import read_run

    return ((read_run(model_path) if os.path.isdir(model_path) else None) or {}).get("recipe", {})


def _run_protocol(model_path):
    """The protocol a run directory was trained on (None for a bare .keras file)."""
    return _run_recipe(model_path).get("protocol")


def _run_data_options(model_path, protocol):
    """The run's data loader options (e.g. image_size), when calibrating on its protocol."""
    recipe = _run_recipe(model_path)
    return recipe.get("data", {}) if recipe.get("protocol") == protocol else {}
