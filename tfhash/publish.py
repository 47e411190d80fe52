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


def publish(recipe_path, *, zoo_dir=None, tolerance=0.01, data=None):
    """Trains a recipe file, writes its encoders to `zoo_dir/files/` and their
    entries to `zoo_dir/manifest.json` (default: the packaged zoo's folder).

    Returns the names of the entries written.
    """
    zoo_dir = Path(zoo_dir or zoo.manifest_path().parent)
    recipe_path = Path(recipe_path).resolve()
    try:
        relative = recipe_path.relative_to(zoo_dir.resolve())
    except ValueError:
        raise ValueError(f"The recipe must sit inside the zoo folder {zoo_dir}, so its manifest can name it. "
                         f"Received: {recipe_path}") from None
    result = train(recipe=recipes.read(recipe_path), data=data, verbose=0)
    path = zoo_dir / "manifest.json"
    manifest = zoo.read_manifest(path) if path.exists() else {"format": zoo.MANIFEST_FORMAT, "base_url": None,
                                                               "entries": {}}
    (zoo_dir / "files").mkdir(parents=True, exist_ok=True)
    names = entry_names(result.recipe, result.encoders)
    for modality, name in names.items():
        encoder = result.encoders[modality]
        file = zoo_dir / "files" / f"{name}.keras"
        write_atomically(file, encoder.save, suffix=".keras")
        direction = result.direction(modality)
        metric = "map@all" if direction == "image" else f"map@all {direction}"
        manifest["entries"][name] = {
            "class": type(encoder).__name__,
            "file": file.name,
            "sha256": zoo.sha256(file),
            "size": file.stat().st_size,
            "bits": result.recipe["bits"],
            "input": input_contract(encoder),
            "protocol": result.recipe["protocol"],
            "metric": {"name": metric, "value": round(result.scores[modality]["map"], 4), "tolerance": tolerance},
            "recipe": str(relative),
            "config": encoder.get_config(),
            "train_seconds": result.seconds,
        }
    write_json(manifest, path, sort_keys=True)
    return sorted(names.values())


def build(name, *, manifest_file=None, data=None):
    """Re-trains the recipe behind an entry and compares its mAP with the manifest's.

    `manifest_file` defaults to the manifest in use; the entry's recipe path is
    relative to its folder, as `publish` writes it.

    Returns `{"entry", "expected", "measured", "tolerance", "ok"}`: ok when
    |measured - expected| <= tolerance.
    """
    manifest_file = Path(manifest_file or zoo.manifest_path())
    item = zoo.entry(name, zoo.read_manifest(manifest_file))
    recipe = recipes.read((manifest_file.parent / item["recipe"]).resolve())
    result = train(recipe=recipe, data=data, verbose=0)
    modality = next(m for m, n in entry_names(recipe, result.encoders).items() if n == name)
    measured, expected = result.scores[modality]["map"], item["metric"]["value"]
    tolerance = item["metric"]["tolerance"]
    return {"entry": name, "expected": expected, "measured": round(measured, 4), "tolerance": tolerance,
            "ok": abs(measured - expected) <= tolerance}
