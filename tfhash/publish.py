"""Publishing to the zoo, for maintainers: train a recipe through the one
training path (or take a run of it already trained), write its encoders and
their manifest entries; re-build an entry and check its mAP against the
manifest.

Single-modal recipes publish one entry, named like the recipe; image-text
ones an `_image` entry (scored image->text) and a `_text` entry (text->image).
"""

import os
import shutil
from pathlib import Path

from tfhash import recipes, zoo
from tfhash.io import sha256, transaction
from tfhash.rundir import ENCODER_FILE
from tfhash.training import Result, load_run, read_run, resolve, train


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


def publish(recipe=None, *, run=None, zoo_dir=DEFAULT_ZOO_DIR, tolerance=0.01, data=None, verbose=0, wait=True):
    """Trains a recipe (or takes a run of it, `run`) and adds its encoders
    to the zoo folder `zoo_dir` (created if needed): `files/NAME.keras`,
    `recipes/RECIPE.json` (a copy of the recipe) and their entries in
    `manifest.json`, so the folder is a zoo that can be served as it is
    (`TFHASH_ZOO_URL`).

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
        recipe: a published recipe name or a recipe JSON file (anywhere);
            with `run`, by default the published recipe its run.json names.
        run: a run directory (`tfhash train --output`) of that recipe,
            published as it is instead of training: its run.json recipe must
            equal the recipe resolved (`tfhash.training.resolve`), its
            encoder files are copied byte for byte and its scores taken.
        zoo_dir: the zoo folder (default `./zoo`; the package's own is
            `tfhash/zoo` in a source checkout).
        tolerance: the mAP difference `build` accepts.

    Returns the names of the entries written.

    Raises:
        ValueError: no recipe, or a run of another recipe (naming the
            differing keys), unscored, or changed while being published.
    """
    zoo_dir = Path(zoo_dir)
    if run is not None:
        recipe, result, files = _read_run(run, recipe)
    elif recipe is None:
        raise ValueError("Expected a recipe (a published name or a recipe file) or a run directory. Received: neither")
    else:
        recipe = recipes.load(str(recipe))  # checked before any training
        result, files = train(recipe=recipe, data=data, verbose=verbose), {}
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
            zoo_write.write(zoo_dir / file, files.get(modality) or encoder.save, suffix=".keras")
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


def _differences(expected, received, prefix=""):
    """The keys (dotted: `settings.epochs`) whose values differ between two recipes."""
    keys = sorted(set(expected) | set(received))
    found = []
    for key in keys:
        a, b = expected.get(key), received.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b or (key in expected) != (key in received):
            found.append((f"{prefix}{key}", a, b))
    return found


def _read_run(run_dir, recipe=None):
    """`(recipe, Result, {modality: writer})` of a run directory to publish:
    its run.json recipe checked against `recipe` (default: the published
    recipe it names), its encoders loaded (checked against run.json's
    sha256), and writers copying their files byte for byte, each copy checked
    against that sha256 (a run rewritten meanwhile is refused)."""
    run_dir = os.fspath(run_dir)
    record = read_run(run_dir) if os.path.isdir(run_dir) else None
    if record is None:
        raise ValueError(f"{run_dir} is not a run directory: expected run.json and the encoders written by "
                         f"`tfhash train --output {run_dir}`")
    ran = record.get("recipe") or {}
    if recipe is None:
        if ran.get("name") not in recipes.published_names():
            raise ValueError(f"The run {run_dir} trained the recipe {ran.get('name')!r}, which is not a published "
                             f"one: name its recipe file, `tfhash zoo publish RECIPE.json --run {run_dir}`")
        recipe = ran["name"]
    given, recipe = os.fspath(recipe), recipes.load(str(recipe))
    differing = _differences(resolve(recipe=recipe), ran)
    if differing:
        shown = ", ".join(f"{key} (run {b!r}, recipe {a!r})" for key, a, b in differing)
        raise ValueError(f"The run {run_dir} is not a run of the recipe {recipe['name']!r}: {shown} differ. "
                         f"Train it (`tfhash train --recipe {given} --output RUN`), or publish without --run")
    import tfhash.models  # noqa: F401  (registers the encoder classes the run's files name)

    record, encoders = load_run(run_dir)
    if record.get("recipe") != ran:
        raise ValueError(f"The run {run_dir} changed while it was being published. Publish again once it is written")
    missing = [m for m in encoders if "map" not in (record.get("scores") or {}).get(m, {})]
    if missing:
        raise ValueError(f"The run {run_dir} has no score for its {missing} encoder: expected a run trained with "
                         f"scoring on (`tfhash train`), whose run.json holds the mAP to publish")
    result = Result(record["recipe"], encoders, record["scores"], record.get("train_seconds"))

    def copier(modality):
        source = os.path.join(run_dir, ENCODER_FILE.format(modality=modality))
        expected = (record.get("files") or {}).get(os.path.basename(source)) or sha256(source)

        def copy(partial):
            shutil.copyfile(source, partial)
            if sha256(partial) != expected:
                raise ValueError(f"{source} changed while it was being published: expected sha256 {expected[:16]}..."
                                 f" (its run.json's). Publish again once the run is written")

        return copy

    return recipe, result, {modality: copier(modality) for modality in encoders}


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

