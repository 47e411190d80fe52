"""Publishing to the zoo, for maintainers: train a recipe through the one
training path, write its encoders and their manifest entries; re-build an
entry and check its mAP against the manifest.

Single-modal recipes publish one entry, named like the recipe; image-text
ones an `_image` entry (scored image->text) and a `_text` entry (text->image).
"""

import os
from pathlib import Path

from tfhash import recipes, zoo
from tfhash.io import transaction
from tfhash.training import train


def entry_names(recipe, encoders):
    """{modality: entry name} for a recipe's encoders."""
    if set(encoders) == {"image"}:
        return {"image": recipe["name"]}
    return {modality: f"{recipe['name']}_{modality}" for modality in encoders}


def input_contract(encoder):
    """What a client feeds the encoder: input name, shape, dtype, preprocessing."""
    ((name, spec),) = encoder.serving_inputs().items()
    return {"name": name, "shape": [int(d) for d in spec.shape[1:]], "dtype": spec.dtype.name,
            "preprocessing": encoder.preprocessing}


DEFAULT_ZOO_DIR = "zoo"


def publish(recipe, *, zoo_dir=DEFAULT_ZOO_DIR, tolerance=0.01, data=None, verbose=0, wait=True):
    """Trains a recipe and adds its encoders to the zoo folder `zoo_dir`
    (created if needed): `files/NAME.keras`, `recipes/RECIPE.json` (a copy
    of the recipe) and their entries in `manifest.json`, so the folder is a
    zoo that can be served as it is (`TFHASH_ZOO_URL`).

    The entry is written whole, through one `tfhash.io.transaction` on the
    zoo folder: a publish killed at any instant leaves the old entry or the
    new one, never a manifest naming a file or recipe it does not describe.
    The entry records the sha256 of its file and of its recipe
    (`recipe_sha256`), which their readers check, so a client over HTTP that
    reads the manifest just before a publish and the file just after is told
    (and `zoo.download` reads the manifest again). Training happens before
    the zoo is locked: publishers of other recipes wait only for each
    other's writes (`wait`: True, False or seconds, as
    `tfhash.io.transaction`).

    Args:
        recipe: a published recipe name or a recipe JSON file (anywhere).
        zoo_dir: the zoo folder (default `./zoo`; the package's own is
            `tfhash/zoo` in a source checkout).
        tolerance: the mAP difference `build` accepts.

    Returns the names of the entries written.
    """
    zoo_dir = Path(zoo_dir)
    recipe = recipes.load(str(recipe))  # checked before any training
    result = train(recipe=recipe, data=data, verbose=verbose)
    path = zoo_dir / "manifest.json"
    names = entry_names(result.recipe, result.encoders)
    with transaction(zoo_dir, wait=wait) as zoo_write:
        manifest = zoo.read_manifest(path) if path.exists() else {"format": zoo.MANIFEST_FORMAT, "entries": {}}
        recipe_file = Path("recipes") / f"{recipe['name']}.json"
        zoo_write.write_json(recipe, zoo_dir / recipe_file)  # as written, its "why" included
        recipe_sha256 = zoo_write.sha256(zoo_dir / recipe_file)
        for modality, name in names.items():
            encoder = result.encoders[modality]
            file = Path("files") / f"{name}.keras"
            zoo_write.write(zoo_dir / file, encoder.save, suffix=".keras")
            direction = result.direction(modality)
            metric = "map@all" if direction == "image" else f"map@all {direction}"
            manifest["entries"][name] = {
                "class": type(encoder).__name__,
                "file": file.as_posix(),
                "sha256": zoo_write.sha256(zoo_dir / file),
                "size": os.path.getsize(zoo_write.staged(zoo_dir / file)),
                "bits": result.recipe["bits"],
                "input": input_contract(encoder),
                "protocol": result.recipe["protocol"],
                "metric": {"name": metric, "value": round(result.scores[modality]["map"], 4),
                           "tolerance": tolerance},
                "recipe": recipe_file.as_posix(),
                "recipe_sha256": recipe_sha256,
                "config": encoder.get_config(),
                "train_seconds": result.seconds,
            }
        zoo.write_manifest(manifest, path, zoo_write)
    return sorted(names.values())


def publish_all(*, zoo_dir=DEFAULT_ZOO_DIR, tolerance=0.01, verbose=0):
    """Publishes every recipe the package ships (`tfhash.recipes.published_names()`)."""
    return [name for recipe in recipes.published_names()
            for name in publish(recipe, zoo_dir=zoo_dir, tolerance=tolerance, verbose=verbose)]


def entry_recipe(name, manifest=None):
    """The checked recipe behind a zoo entry, read beside its manifest
    (`recipes/NAME.json`: a local file, or from the zoo's URL)."""
    import json

    import hashlib

    manifest = manifest or zoo.read_manifest()
    item = zoo.entry(name, manifest)
    where = manifest["_origin"] + item["recipe"]
    text = zoo.fetch_text(where)
    got = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if item.get("recipe_sha256", got) != got:  # entries published before it was recorded are not checked
        raise ValueError(f"The recipe {where} of zoo entry {name!r} is not the one its manifest names: expected "
                         f"sha256 {item['recipe_sha256'][:16]}..., received {got[:16]}... (changed since publishing, "
                         f"or a publish under way: read the manifest again)")
    try:
        return recipes.check(json.loads(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"The recipe {where} of zoo entry {name!r} is not valid JSON: {e}") from None


def build(name, *, manifest_file=None, data=None):
    """Re-trains the recipe behind an entry and compares its mAP with the manifest's.

    `manifest_file` defaults to the manifest in use (`TFHASH_ZOO_URL`'s, or the
    package's); the entry's recipe path is relative to the manifest's folder,
    as `publish` writes it, and read from there (a file or a URL).

    Returns `{"entry", "expected", "measured", "tolerance", "ok"}`: ok when
    |measured - expected| <= tolerance.
    """
    manifest = zoo.read_manifest(manifest_file)
    item = zoo.entry(name, manifest)
    recipe = entry_recipe(name, manifest)
    result = train(recipe=recipe, data=data, verbose=0)
    modality = next(m for m, n in entry_names(recipe, result.encoders).items() if n == name)
    measured, expected = result.scores[modality]["map"], item["metric"]["value"]
    tolerance = item["metric"]["tolerance"]
    return {"entry": name, "expected": expected, "measured": round(measured, 4), "tolerance": tolerance,
            "ok": abs(measured - expected) <= tolerance}


def missing(manifest=None, bits=(32, 64)):
    """The (method, bits) pairs of the registry that no zoo entry holds: the
    release check (`tfhash zoo missing`). A method is registered, trained and
    tested before it is published; a release publishes it at each of `bits`."""
    from tfhash import registry

    manifest = manifest or zoo.read_manifest()
    held = set()
    for name, item in manifest["entries"].items():
        held.add((entry_recipe(name, manifest)["method"], item["bits"]))
    return [(method, b) for method in registry.names() for b in bits if (method, b) not in held]

