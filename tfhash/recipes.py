"""Recipes: the settings behind every published number, as JSON files.

A recipe names a method, a protocol, the code length and the seed, the data
loader's options and the method's settings (flat, as `tfhash.registry` lists
them), and says why they differ from the defaults:

    {"name": "dhn_fashion_mnist_32", "method": "dhn", "protocol": "fashion_mnist",
     "bits": 32, "seed": 0, "data": {}, "settings": {"alpha": 0.25, "epochs": 30},
     "why": "..."}

The zoo's recipes ship with the package (`tfhash/zoo/recipes/`, one per
entry or pair of image-text entries). `tfhash.training.train(recipe=...)`
runs one: it trains on the protocol's committed split, selects nothing on
the queries and scores the result once, so anyone with the data gets the
number we publish (up to floating-point differences between machines).
"""

import importlib.resources
import json
import os
from pathlib import Path

from tfhash import registry

REQUIRED = ("name", "method", "protocol", "bits", "seed")
KEYS = (*REQUIRED, "data", "settings", "why")


def _published_dir():
    return importlib.resources.files("tfhash.zoo") / "recipes"


def check(recipe):
    """Validates a recipe's keys, method and settings; returns it."""
    if not isinstance(recipe, dict):
        raise ValueError(f"A recipe must be a JSON object. Received: {type(recipe).__name__}")
    missing = [key for key in REQUIRED if key not in recipe]
    unknown = sorted(set(recipe) - set(KEYS))
    if missing or unknown:
        raise ValueError(f"A recipe has the keys {list(KEYS)} ({list(REQUIRED)} required). "
                         f"Received: {sorted(recipe)}")
    registry.get(recipe["method"]).resolve(recipe.get("settings", {}))
    return recipe


def read(path):
    """A recipe from its JSON file, checked by `check`."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"The recipe {path} is not valid JSON: {e}") from None
    try:
        return check(recipe)
    except ValueError as e:
        raise ValueError(f"The recipe {path}: {e}") from None


def published_names():
    """The names of the recipes shipped with the package."""
    return sorted(p.name[: -len(".json")] for p in _published_dir().iterdir() if p.name.endswith(".json"))


def published(name):
    """The shipped recipe `name`, e.g. "dhn_fashion_mnist_32"."""
    path = _published_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"No published recipe {name!r}. Expected one of {published_names()}")
    return read(path)


def load(name_or_path):
    """A recipe from a JSON file, or the published recipe of that name."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path.endswith(".json") or os.path.sep in name_or_path:
        return read(name_or_path)
    return published(name_or_path)
