"""Publishing to the zoo, for maintainers: train a recipe through the one
training path, write its encoders and their manifest entries; re-build an
entry and check its mAP against the manifest.

Single-modal recipes publish one entry, named like the recipe; image-text
ones an `_image` entry (scored image->text) and a `_text` entry (text->image).
"""

from pathlib import Path

from tfhash import recipes, zoo
from tfhash.io import write_atomically, write_json
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


def publish(recipe, *, zoo_dir=DEFAULT_ZOO_DIR, tolerance=0.01, data=None, verbose=0):
    """Trains a recipe and adds its encoders to the zoo folder `zoo_dir`
    (created if needed): `files/NAME.keras`, `recipes/RECIPE.json` (a copy
    of the recipe) and their entries in `manifest.json`, so
    the folder is a zoo that can be served as it is (`TFHASH_ZOO_URL`).

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
    manifest = zoo.read_manifest(path) if path.exists() else {"format": zoo.MANIFEST_FORMAT, "entries": {}}
    (zoo_dir / "files").mkdir(parents=True, exist_ok=True)
    (zoo_dir / "recipes").mkdir(exist_ok=True)
    recipe_file = Path("recipes") / f"{recipe['name']}.json"
    write_json(recipe, zoo_dir / recipe_file)  # as written, its "why" included
    names = entry_names(result.recipe, result.encoders)
    for modality, name in names.items():
        encoder = result.encoders[modality]
        file = Path("files") / f"{name}.keras"
        write_atomically(zoo_dir / file, encoder.save, suffix=".keras")
        direction = result.direction(modality)
        metric = "map@all" if direction == "image" else f"map@all {direction}"
        manifest["entries"][name] = {
            "class": type(encoder).__name__,
            "file": file.as_posix(),
            "sha256": zoo.sha256(zoo_dir / file),
            "size": (zoo_dir / file).stat().st_size,
            "bits": result.recipe["bits"],
            "input": input_contract(encoder),
            "protocol": result.recipe["protocol"],
            "metric": {"name": metric, "value": round(result.scores[modality]["map"], 4), "tolerance": tolerance},
            "recipe": recipe_file.as_posix(),
            "config": encoder.get_config(),
            "train_seconds": result.seconds,
        }
    # The manifest last: it only ever names files that are already whole.
    zoo.write_manifest(manifest, path)
    return sorted(names.values())


def publish_all(*, zoo_dir=DEFAULT_ZOO_DIR, tolerance=0.01, verbose=0):
    """Publishes every recipe the package ships (`tfhash.recipes.published_names()`)."""
    return [name for recipe in recipes.published_names()
            for name in publish(recipe, zoo_dir=zoo_dir, tolerance=tolerance, verbose=verbose)]


def entry_recipe(name, manifest=None):
    """The checked recipe behind a zoo entry, read beside its manifest
    (`recipes/NAME.json`: a local file, or from the zoo's URL)."""
    import json

    manifest = manifest or zoo.read_manifest()
    where = manifest["_origin"] + zoo.entry(name, manifest)["recipe"]
    try:
        return recipes.check(json.loads(zoo.fetch_text(where)))
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
