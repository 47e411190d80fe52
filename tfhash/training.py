"""The one training path: any registered method, on any protocol with its
modalities, from flags, a recipe and the method's defaults, to a run directory.

    >>> result = train("dhn", "digits", bits=16, epochs=5, output_dir="runs/dhn16")
    >>> result.scores["image"]["map"]
    >>> encoder = load_model("runs/dhn16")

A run directory is the same for every method:

    run.json               the recipe that re-makes it (method, protocol, bits,
                           seed, data options, every setting), the scores, the
                           per-epoch history, the time and the library versions
    image_encoder.keras    the exported image encoder (a `HashModel`)
    text_encoder.keras     the text encoder, for image-text methods
    split.npz              for a run on the user's own images (`tfhash.data.from_path`),
                           the split drawn from them: `load_data` reads it back

`tfhash evaluate`, `encode`, `export` and `zoo publish` read it.
"""

import contextlib
import dataclasses
import os
import platform
import re
import time

from tfhash import recipes, registry
from tfhash._version import __version__
from tfhash.io import reading, sha256, transaction
from tfhash.rundir import ENCODER_FILE, RUN_FILE, SPLIT_FILE, encoder_file


@dataclasses.dataclass
class Result:
    """What a training run produced.

    Attributes:
        recipe: the full recipe: {"name", "method", "protocol", "bits", "seed",
            "data", "settings"} with every setting resolved.
        encoders: {"image": HashModel} or {"image": ..., "text": ...}.
        scores: {"image": {"map", "precision@100"}} (P@n for a database of
            n < 100 items); for image-text methods
            "image" holds image->text (image queries) and "text" text->image.
            Empty when scoring was off.
        seconds: training time.
        model: the trained model (the whole harness for the GAN methods).
        history: `fit`'s per-epoch logs.
    """

    recipe: dict
    encoders: dict
    scores: dict
    seconds: float
    model: object = None
    history: dict = dataclasses.field(default_factory=dict)
    strategy: object = None
    data: object = None

    def direction(self, modality):
        """What an encoder's score measures: "image", or "image->text" / "text->image"."""
        if "text" not in self.encoders:
            return "image"
        return {"image": "image->text", "text": "text->image"}[modality]


def resolve(method=None, protocol=None, *, recipe=None, bits=None, seed=None, data_options=None, **settings):
    """The full recipe a run trains: flags (the arguments given) first, then
    `recipe` (a dict, a file or a published name), then the method's defaults.

    Raises:
        ValueError: no method, a recipe of another method, an unknown setting
            (naming the known ones) or a value of the wrong type.
    """
    recipe = recipes.load(recipe) if isinstance(recipe, (str, os.PathLike)) else dict(recipe or {})
    method = method or recipe.get("method")
    if method is None:
        raise ValueError(f"Name a method (one of {registry.names()}) or a recipe.")
    if recipe and recipe["method"] != method:
        raise ValueError(f"Recipe {recipe['name']!r} trains {recipe['method']!r}, not {method!r}.")
    record = registry.get(method)
    resolved = {
        "method": method,
        "protocol": protocol or recipe.get("protocol") or record.protocol,
        "bits": bits if bits is not None else recipe.get("bits", 32),
        "seed": seed if seed is not None else recipe.get("seed", 0),
        "data": {**recipe.get("data", {}), **(data_options or {})},
        "settings": record.resolve({k: v for k, v in settings.items() if v is not None}, recipe.get("settings")),
    }
    changed = {k for k in ("protocol", "bits", "seed") if recipe and resolved[k] != recipe.get(k)}
    name = recipe.get("name") if recipe and not changed else None
    # A name is a file name too (zoo entries, recipes): own images' "images:photos" gives dhn_images_photos_32.
    resolved["name"] = name or re.sub(r"[^\w.-]", "_", f"{method}_{resolved['protocol']}_{resolved['bits']}")
    for key in ("bits", "seed"):
        if not isinstance(resolved[key], int) or isinstance(resolved[key], bool) or resolved[key] < 0:
            raise ValueError(f"{key} must be a non-negative int. Received: {key}={resolved[key]!r}")
    return recipes.check(resolved)


def train(method=None, protocol=None, *, recipe=None, bits=None, seed=None, data=None, data_dir=None,
          data_options=None, strategy="one_device", output_dir=None, overwrite=False, wait=False, callbacks=(),
          verbose="auto", score=True, **settings):
    """Trains a registered method and returns a `Result`.

    Args:
        method: a name of `tfhash.registry` ("dhn", "bgan", "dsh_gan", "ssah",
            "ugach"); optional with a recipe.
        protocol: a `tfhash.data` protocol with the method's modalities
            (default: the recipe's, else the method's).
        recipe: a recipe dict, a JSON file or a published name
            (`tfhash.recipes.published_names()`).
        bits, seed: code length (default 32) and seed (default 0) unless the
            recipe says otherwise; the seed sets weights, batches and draws.
        data: already loaded data: a protocol (`tfhash.data.load_protocol`) or
            the user's own images (`tfhash.data.from_directory`, `from_list`);
            for those the run records how to load them again and their split.
        data_dir, data_options: where the protocol's files are, and loader
            options (e.g. {"image_size": 64}) over the recipe's.
        strategy: "one_device", "mirrored", "multi_worker" or a
            `tf.distribute.Strategy`. Batch sizes are global and every method
            draws its randomness for the global batch, so N replicas take the
            steps one device takes.
        output_dir: the run directory; only the chief writes it.
        overwrite: replace a run already in `output_dir` (else refused before any work).
        wait: while another process writes `output_dir`: False (default) fails at
            once with `tfhash.io.Busy`, True waits, a number waits that many seconds.
        callbacks: extra Keras callbacks, after the method's own.
        verbose: `fit`'s verbosity.
        score: score the encoders on the protocol's queries after training.
        **settings: any setting of the method (`registry.get(method).defaults()`),
            e.g. `epochs=5`, `alpha=0.25`; None leaves it to the recipe/default.

    Raises:
        ValueError: an unknown setting or a value out of its range (checked before any work).
        FileExistsError: `output_dir` holds a run and `overwrite` is False.
        tfhash.io.Busy: another process is writing `output_dir` (see `wait`).
        tfhash.callbacks.TrainingDiverged: a loss became NaN or infinite; nothing is saved.
    """
    from tfhash.distribute import is_chief

    if data is not None:
        protocol = protocol or data.protocol.name
        # Own images: what re-loads them (their folder or list, decoding, split sizes) is the recipe's data.
        data_options = {**getattr(data, "options", {}), **(data_options or {})}
    recipe = resolve(method, protocol, recipe=recipe, bits=bits, seed=seed, data_options=data_options, **settings)
    record = registry.get(recipe["method"])
    with contextlib.ExitStack() as stack:
        run = None
        if output_dir and is_chief():
            # The run's writer lock, held from here to the commit: a second train on the same
            # folder waits or fails (`wait`), and sees this one's run.json once it is written.
            run = stack.enter_context(transaction(output_dir, wait=wait))
        check_output(output_dir, overwrite)
        result = _train(record, recipe, data, data_dir, strategy, output_dir if run else None, callbacks, verbose,
                        score)
        if run is not None:
            write_run(run, result, output_dir)
    return result


def check_output(output_dir, overwrite):
    """Refuses an `output_dir` that holds a run unless `overwrite` (FileExistsError, one line)."""
    if output_dir and not overwrite and os.path.exists(os.path.join(output_dir, RUN_FILE)):
        raise FileExistsError(f"{output_dir} already holds a run. Expected a new folder, or overwrite=True "
                              f"(--overwrite) to replace it. Received: output_dir={output_dir!r}")


def _train(record, recipe, data, data_dir, strategy, output_dir, callbacks, verbose, score):
    import keras

    from tfhash.callbacks import StopOnNonFinite
    from tfhash.data import load_protocol
    from tfhash.distribute import get_strategy

    data = data or load_data(recipe, data_dir)
    _check_modalities(record, data.protocol)
    keras.utils.set_random_seed(recipe["seed"])
    dist = get_strategy(strategy)
    model_kwargs, train_settings = record.split(recipe["settings"])
    plan = record.plan_function()(data, bits=recipe["bits"], seed=recipe["seed"], strategy=dist, model=model_kwargs,
                                  train=train_settings)
    start = time.time()
    # The pipelines shuffle (seeded) themselves.
    history = plan.model.fit(plan.batches, epochs=plan.epochs, verbose=verbose, shuffle=False,
                             callbacks=[StopOnNonFinite(), *plan.callbacks, *callbacks]).history
    seconds = round(time.time() - start, 1)
    encoders = plan.model.encoders()
    codes = os.path.join(output_dir, "codes") if output_dir else None
    # Unlabelled images (a folder without class folders) have no relevance to score by.
    scores = score_encoders(encoders, data, codes) if score and data.labels is not None else {}
    return Result(recipe, encoders, scores, seconds, plan.model, history, dist, data)


def load_data(recipe, data_dir=None, run_dir=None):
    """The data a recipe trains on: its protocol (`tfhash.data.load_protocol`,
    with the recipe's loader options), or the user's images its data options
    name (`tfhash.data.from_path`), on the split a run in `run_dir` recorded."""
    from tfhash.data import from_path, load_protocol
    from tfhash.data.folders import SOURCE_OPTION

    options = dict(recipe.get("data", {}))
    if SOURCE_OPTION not in options:
        return load_protocol(recipe["protocol"], data_dir, **options)
    split = os.path.join(run_dir, SPLIT_FILE) if run_dir else None
    return from_path(options.pop(SOURCE_OPTION), **options,
                     **({"split": split} if split and os.path.exists(split) else {}))


def _check_modalities(record, protocol):
    if tuple(protocol.modalities) != tuple(record.modalities):
        from tfhash.data.protocols import CROSS_MODAL_PROTOCOLS, PROTOCOLS

        fitting = sorted(name for name, p in {**PROTOCOLS, **CROSS_MODAL_PROTOCOLS}.items()
                         if tuple(p.modalities) == tuple(record.modalities))
        raise ValueError(
            f"{record.title} is a {'+'.join(record.modalities)} method: it needs a protocol with those modalities "
            f"({fitting}). Received: {protocol.name!r} ({'+'.join(protocol.modalities)})"
        )


def score_encoders(encoders, data, codes_cache=None):
    """mAP@all and P@100 (P@n for a database of n < 100 items: own images) of
    each encoder as the query side, on the protocol's queries; an image
    method's database codes kept in `codes_cache` (a run's `codes/`, which
    `tfhash evaluate` then reuses)."""
    from tfhash.evaluation import evaluate_cross_modal, evaluate_model

    k = min(100, len(data.split.database))
    keep = ("map", f"precision@{k}")
    if "text" not in encoders:
        result, _, _ = evaluate_model(encoders["image"], data, curve=False, codes_cache=codes_cache, ks=(k,))
        return {"image": {key: result[key] for key in keep}}
    result = evaluate_cross_modal(encoders["image"], encoders["text"], data.subset("query"), data.subset("database"),
                                  ks=(k,))
    return {modality: {key: result[direction][key] for key in keep}
            for modality, direction in (("image", "image_to_text"), ("text", "text_to_image"))}


def save_run(result, output_dir, strategy=None, *, wait=True):
    """Writes a run directory (see the module docstring), whole: through
    `tfhash.io.transaction`, so a reader or a killed writer finds the old run
    or the new one, never a mix. `strategy` defaults to the result's."""
    if strategy is not None:
        result = dataclasses.replace(result, strategy=strategy)
    with transaction(output_dir, wait=wait) as run:
        write_run(run, result, output_dir)


def write_run(run, result, output_dir):
    """Adds a run directory's files to the transaction `run`: the encoders,
    run.json (with each encoder's sha256, checked on load) and the removal of
    encoders an earlier run left that this one does not have."""
    import keras
    import tensorflow as tf

    files = {}
    for modality, encoder in result.encoders.items():
        name = ENCODER_FILE.format(modality=modality)
        files[name] = run.sha256(run.write(os.path.join(output_dir, name), encoder.save, suffix=".keras"))
    for modality in ("image", "text"):
        if modality not in result.encoders:
            run.remove(os.path.join(output_dir, ENCODER_FILE.format(modality=modality)))
    split = os.path.join(output_dir, SPLIT_FILE)
    if hasattr(result.data, "save_split"):  # own images: the split drawn from them
        files[SPLIT_FILE] = run.sha256(run.write(split, result.data.save_split, suffix=".npz"))
    else:
        run.remove(split)
    strategy = result.strategy
    record = {
        "recipe": result.recipe,
        "scores": result.scores,
        "train_seconds": result.seconds,
        "strategy": type(strategy).__name__ if strategy is not None else None,
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "history": {k: [float(v) for v in vs] for k, vs in result.history.items()},
        "files": files,
        "versions": {
            "tfhash": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    }
    run.write_json(record, os.path.join(output_dir, RUN_FILE))


def read_run(run_dir):
    """A run directory's `run.json` as a dict (None for a bare `.keras` file)."""
    with reading(run_dir):
        return _read_record(run_dir)


def _read_record(run_dir):
    import json

    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable run record: expected JSON written by tfhash train. "
                         f"Received: {error}") from None


def load_run(run_dir, modalities=None):
    """`(run.json as a dict, {modality: encoder})` of a run directory, read at
    one version (`tfhash.io.reading`), each encoder checked against the sha256
    run.json records for it (runs written before it recorded them are not).
    `modalities`: the encoders to load (default: every one the run has)."""
    from tfhash.models.presets import read_keras

    with reading(run_dir):
        record = _read_record(run_dir)
        if modalities is None:
            modalities = [m for m in ("image", "text")
                          if os.path.exists(os.path.join(run_dir, ENCODER_FILE.format(modality=m)))] or ["image"]
        encoders = {}
        for modality in modalities:
            file = encoder_file(run_dir, modality)
            expected = ((record or {}).get("files") or {}).get(os.path.basename(file))
            if expected is not None and sha256(file) != expected:
                raise ValueError(f"{file} is not the encoder its run.json records: expected sha256 {expected[:16]}..., "
                                 f"received {sha256(file)[:16]}... (changed or damaged since the run was written)")
            encoders[modality] = read_keras(file)
    return record, encoders


def load_model(path, modality="image"):
    """A trained encoder from a run directory (its `modality` encoder, checked
    as `load_run` checks it) or a `.keras` file
    (`tfhash.models.presets.load_encoder`)."""
    from tfhash.models.presets import load_encoder

    if os.path.isdir(path):
        return load_run(path, (modality,))[1][modality]
    return load_encoder(path, modality)
