"""Training runs: build a model under a strategy, fit it on a protocol's
training split, and write the run (model + settings) to a directory."""

import os
import platform
import time

import keras
import tensorflow as tf

from tfhash.data import load_protocol, pairwise_batches
from tfhash.distribute import get_strategy, is_chief
from tfhash.io import write_json
from tfhash.models import DHN

MODELS = {"dhn": DHN}

MODEL_FILE = "model.keras"
RUN_FILE = "run.json"


def recipe_settings(recipe):
    """`train`'s keyword arguments from a recipe (`tfhash.recipes`), e.g. the
    zoo's "dhn_fashion_mnist_32": its protocol, bits, seed, model and train settings."""
    if recipe["method"] not in MODELS:
        raise ValueError(
            f"`train` trains {sorted(MODELS)}; recipe {recipe['name']!r} is {recipe['method']!r}. "
            "Run it with `tfhash.recipes.run` (`tfhash reproduce`)."
        )
    unknown = sorted(set(recipe.get("train", {})) - {"epochs", "batch_size", "learning_rate"})
    if unknown:
        raise ValueError(f"Recipe {recipe['name']!r} has train settings `train` does not take: {unknown}")
    return {"model": recipe["method"], "protocol": recipe["protocol"], "bits": recipe["bits"], "seed": recipe["seed"],
            **recipe.get("train", {}), "model_kwargs": dict(recipe.get("model", {}))}


def build_model(name, **kwargs):
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of {sorted(MODELS)}.")
    return MODELS[name](**kwargs)


def train(
    model="dhn",
    protocol="fashion_mnist",
    *,
    bits=32,
    epochs=30,
    batch_size=128,
    learning_rate=1e-3,
    seed=0,
    strategy="one_device",
    output_dir=None,
    data=None,
    data_dir=None,
    model_kwargs=None,
    callbacks=None,
    verbose="auto",
):
    """Trains a model on a protocol's training split.

    Args:
        model: a key of `MODELS`.
        protocol: a key of `tfhash.data.PROTOCOLS`.
        bits: code length.
        epochs, batch_size, learning_rate: the usual; batch_size is global.
        seed: seeds weights, shuffling and dropout (`keras.utils.set_random_seed`).
        strategy: "one_device", "mirrored" or "multi_worker" (see `tfhash.distribute`).
        output_dir: where the chief writes `model.keras` and `run.json`.
        data: an already loaded `RetrievalData` (else the protocol is loaded).
        model_kwargs: extra constructor arguments of the model.
        callbacks: Keras callbacks for `fit`.

    Returns:
        `(model, history)`.
    """
    keras.utils.set_random_seed(seed)
    data = data or load_protocol(protocol, data_dir)
    images, labels = data.subset("train")
    dist = get_strategy(strategy)
    settings = dict(
        model=model,
        protocol=data.protocol.name,
        bits=bits,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        strategy=strategy if isinstance(strategy, str) else type(strategy).__name__,
        replicas=dist.num_replicas_in_sync,
        model_kwargs=dict(model_kwargs or {}),
    )
    with dist.scope():
        net = build_model(model, bits=bits, input_shape=images.shape[1:], **settings["model_kwargs"])
        net.build((None, *images.shape[1:]))
        net.compile(optimizer=keras.optimizers.Adam(learning_rate))
    dataset = pairwise_batches(images, labels, batch_size, seed=seed)
    start = time.time()
    history = net.fit(dataset, epochs=epochs, verbose=verbose, shuffle=False, callbacks=callbacks)  # shuffled already
    settings["train_seconds"] = round(time.time() - start, 1)
    if output_dir and is_chief():
        save_run(net, settings, history.history, output_dir)
    return net, history


def save_run(model, settings, history, output_dir):
    os.makedirs(output_dir, exist_ok=True)
    model.save(os.path.join(output_dir, MODEL_FILE))
    record = {
        "settings": settings,
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "versions": {
            "tfhash": __import__("tfhash").__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(record, os.path.join(output_dir, RUN_FILE))


def load_model(path):
    """Loads a trained model from a `.keras` file or a run directory."""
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path}: expected a .keras file or a run directory")
    import tfhash.models  # noqa: F401  (registers the classes for deserialization)

    return keras.saving.load_model(path)
