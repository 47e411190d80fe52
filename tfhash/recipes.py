"""Recipes: the settings behind every published number, and what runs them.

A recipe is a JSON-able dict (the zoo keeps one per entry in `zoo/recipes/`):

    {"name": "ugach_open_clip_art_32", "method": "ugach", "protocol": "open_clip_art",
     "bits": 32, "seed": 0, "model": {...constructor arguments...},
     "train": {...epochs, batch size, learning rates...}, "data": {...loader options...}}

`run(recipe)` trains the method on the protocol's committed split, selects
nothing on the queries, and scores the result once, so anyone with the data
gets the number we publish (up to floating-point differences between
machines). It returns the exported encoders and their scores: one image
encoder for the image methods, an image and a text encoder for the
cross-modal ones.
"""

import dataclasses
import importlib.resources
import json
import time
from pathlib import Path

import keras
import numpy as np

METHODS = ("dhn", "bgan", "dsh_gan", "ssah", "ugach")
# The published recipes, one per zoo entry (or pair of cross-modal entries).
ZOO_RECIPES = Path(str(importlib.resources.files("tfhash.zoo") / "recipes"))


@dataclasses.dataclass
class Result:
    """What a recipe produced.

    Attributes:
        encoders: {"image": HashModel} or {"image": ..., "text": ...}.
        scores: {"image": {"map": ..., "precision@100": ...}} for image
            methods; for cross-modal ones "image" holds I->T (the image
            encoder's queries) and "text" T->I.
        seconds: training time.
        model: the trained model (the whole harness for the GAN methods).
        history: `fit`'s per-epoch logs.
    """

    encoders: dict
    scores: dict
    seconds: float
    model: object = None
    history: dict = dataclasses.field(default_factory=dict)

    def direction(self, modality):
        """What an encoder's score measures: "image", or "image->text" / "text->image"."""
        if "text" not in self.encoders:
            return "image"
        return {"image": "image->text", "text": "text->image"}[modality]


def check(recipe):
    """Validates the keys every recipe needs; returns the recipe."""
    missing = [key for key in ("name", "method", "protocol", "bits", "seed") if key not in recipe]
    if missing:
        raise ValueError(f"A recipe needs {missing}. Received keys: {sorted(recipe)}")
    if recipe["method"] not in METHODS:
        raise ValueError(f"Unknown method {recipe['method']!r} in recipe {recipe['name']!r}. Expected one of {METHODS}")
    return recipe


def read(path):
    """A recipe from its JSON file, checked by `check`."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"The recipe {path} is not valid JSON: {e}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"The recipe {path} must hold a JSON object. Received: {type(recipe).__name__}")
    return check(recipe)


def published(name):
    """The zoo's recipe `name`, e.g. "dhn_fashion_mnist_32" (zoo/recipes/NAME.json)."""
    path = ZOO_RECIPES / f"{name}.json"
    if not path.is_file():
        names = sorted(p.stem for p in ZOO_RECIPES.glob("*.json"))
        raise ValueError(f"No published recipe {name!r}. Expected one of {names}")
    return read(path)


def run(recipe, data=None, callbacks=(), strategy="one_device"):
    """Trains and scores a recipe (see the module docstring); returns a `Result`.

    Args:
        recipe: a recipe dict (`read`, `published`).
        data: an already loaded `RetrievalData` (else the recipe's protocol is loaded).
        callbacks: extra Keras callbacks for `fit` (the bench scripts' per-epoch
            figures and image grids); they run after the recipe's own.
        strategy: a name of `tfhash.distribute` ("one_device", the default;
            "mirrored"; "multi_worker") or a `tf.distribute.Strategy`.
            The recipe's batch sizes are global, and every method draws its
            randomness for the global batch, so N replicas take the steps one
            device takes (up to the order of the gradient all-reduce's sums).
    """
    from tfhash.data import load_protocol
    from tfhash.distribute import get_strategy

    check(recipe)
    data = data or load_protocol(recipe["protocol"], **recipe.get("data", {}))
    keras.utils.set_random_seed(recipe["seed"])
    dist = get_strategy(strategy)
    start = time.time()
    net, encoders, history = _RUNNERS[recipe["method"]](recipe, data, recipe.get("model", {}), recipe.get("train", {}),
                                                      list(callbacks), dist)
    seconds = time.time() - start
    return Result(encoders, _scores(encoders, data), round(seconds, 1), net, history)


def _scores(encoders, data):
    """mAP@all and P@100 of each encoder as the query side, on the protocol's queries."""
    from tfhash.evaluation import evaluate_cross_modal, evaluate_model

    if "text" not in encoders:
        result, _, _ = evaluate_model(encoders["image"], data, curve=False)
        return {"image": {"map": result["map"], "precision@100": result["precision@100"]}}
    result = evaluate_cross_modal(encoders["image"], encoders["text"], data.subset("query"), data.subset("database"))
    return {
        modality: {"map": result[direction]["map"], "precision@100": result[direction]["precision@100"]}
        for modality, direction in (("image", "image_to_text"), ("text", "text_to_image"))
    }


def _dhn(recipe, data, model, train, callbacks, dist):
    from tfhash import training

    settings = {**training.recipe_settings(recipe), "protocol": data.protocol.name}
    net, history = training.train(**settings, data=data, callbacks=callbacks, strategy=dist, verbose=0)
    return net, {"image": net}, history.history


def _bgan(recipe, data, model, train, callbacks, dist):
    from tfhash.callbacks import BetaSchedule
    from tfhash.data import neighbour_batches
    from tfhash.models import BGAN
    from tfhash.neighbours import neighbour_structure, pixel_features

    images, _ = data.subset("train")  # the labels are dropped here
    neighbours = neighbour_structure(pixel_features(images), k1=train.get("k1", 20), k2=train.get("k2", 30))
    with dist.scope():
        net = BGAN(bits=recipe["bits"], input_shape=images.shape[1:], **model)
        net.compile(optimizer=keras.optimizers.Adam(train.get("learning_rate", 1e-3)),
                    d_optimizer=keras.optimizers.Adam(train.get("d_learning_rate", 1e-4)))
    betas, epochs = train.get("betas", [2, 5, 10, 15, 20]), train.get("epochs", 10)
    history = net.fit(
        neighbour_batches(images, neighbours, train.get("batch_size", 128), seed=recipe["seed"]),
        epochs=epochs, verbose=0, callbacks=[BetaSchedule.steps(betas, every=max(1, epochs // len(betas))), *callbacks],
    ).history
    return net, {"image": net.encoder}, history


def _dsh_gan(recipe, data, model, train, callbacks, dist):
    from tfhash.data import draw_labelled, semi_supervised_batches
    from tfhash.models import DSHGAN

    images, labels = data.subset("train")
    fraction = train.get("labelled_fraction", 1.0)
    labelled = np.ones(len(labels), bool) if fraction >= 1 else draw_labelled(labels, fraction, seed=recipe["seed"])
    with dist.scope():
        net = DSHGAN(bits=recipe["bits"], input_shape=images.shape[1:], num_classes=int(labels.max()) + 1,
                     seed=recipe["seed"], **model)
        net.compile(optimizer=keras.optimizers.Adam(train.get("learning_rate", 1e-3)),
                    g_optimizer=keras.optimizers.Adam(train.get("g_learning_rate", 2e-4), beta_1=0.5))
    batches = semi_supervised_batches(images, labels, train.get("batch_size", 128), labelled=labelled,
                                      seed=recipe["seed"])
    history = net.fit(batches, epochs=train.get("epochs", 30), verbose=0, callbacks=callbacks).history
    return net, {"image": net.encoder}, history


def _ssah(recipe, data, model, train, callbacks, dist):
    from tfhash.callbacks import BestCheckpoint
    from tfhash.data import cross_modal_batches
    from tfhash.evaluation import evaluate_cross_modal, validation_rows
    from tfhash.models import SSAH

    images, texts, labels = data.subset("train")
    with dist.scope():
        net = SSAH(bits=recipe["bits"], num_labels=labels.shape[1], vocabulary_size=texts.shape[1],
                   num_train=len(labels), input_shape=images.shape[1:], **model)
        net.compile(image_optimizer=keras.optimizers.Adam(train.get("image_learning_rate", 1e-3)),
                    text_optimizer=keras.optimizers.Adam(train.get("text_learning_rate", 1e-3)))
    queries, database = validation_rows(data.split, size=500, seed=0)

    def rows(index):
        return data.images[index], data.texts[index], data.labels[index]

    def validation(m):  # held-out database items against the training set; never the queries
        r = evaluate_cross_modal(m.image_encoder, m.text_encoder, rows(queries), rows(database))
        return (r["image_to_text"]["map"] + r["text_to_image"]["map"]) / 2

    history = net.fit(
        cross_modal_batches(images, texts, labels, train.get("batch_size", 64), seed=recipe["seed"]),
        epochs=train.get("rounds", 3) * net.round_epochs, verbose=0,
        callbacks=[BestCheckpoint(validation, name="val_map", every="round"), *callbacks],
    ).history
    return net, {"image": net.image_encoder, "text": net.text_encoder}, history


def _ugach(recipe, data, model, train, callbacks, dist):
    from tfhash.callbacks import BestCheckpoint
    from tfhash.data import graph_batches
    from tfhash.evaluation import pair_retrieval_map, validation_rows
    from tfhash.models import UGACH
    from tfhash.neighbours import correlation_graph

    images, texts, _ = data.subset("train")  # the labels are dropped here
    batch_size = train.get("batch_size", 256)
    with dist.scope():
        net = UGACH(bits=recipe["bits"], input_shape=images.shape[1:], vocabulary_size=texts.shape[1],
                    pretrain_steps=train.get("pretrain_epochs", 10) * (len(images) // batch_size), seed=recipe["seed"],
                    **model)
        net.adapt(images)
        net.compile(optimizer=keras.optimizers.Adam(train.get("learning_rate", 1e-3)),
                    g_optimizer=keras.optimizers.Adam(train.get("g_learning_rate", 1e-4)))
    graph = correlation_graph(net.image_features(images), texts.astype(np.float32), k=train.get("k", 5))
    held_out, _ = validation_rows(data.split, size=500, seed=0)
    keep = BestCheckpoint(lambda m: pair_retrieval_map(m.image_encoder, m.text_encoder, data.images[held_out],
                                                       data.texts[held_out]), name="val_pair_map")
    history = net.fit(graph_batches(images, texts, graph, batch_size, seed=recipe["seed"]),
                      epochs=train.get("epochs", 30), verbose=0, callbacks=[keep, *callbacks]).history
    return net, {"image": net.image_encoder, "text": net.text_encoder}, history


_RUNNERS = {"dhn": _dhn, "bgan": _bgan, "dsh_gan": _dsh_gan, "ssah": _ssah, "ugach": _ugach}
