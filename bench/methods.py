"""One benchmark for every method: train it, score it beside DHN, LSH / ITQ and its untrained encoder.

    .venv/bin/python bench/methods.py --method M [--bits 16 32 64] [--protocol P] [--seed S] [--epochs N]
                                      [--set KEY=VALUE ...] [--trunk VARIANT] [--keep DIR] [--reuse] [--no-record]

For each code length, M trains through `tfhash.training.train` with its
published recipe for (M, P, bits) where there is one
(`tfhash.recipes.published_names()`: `M_P_BITS`), else with its recipe at
another length taken to these bits (`M_P_32@16`: the same settings), else
with the method's defaults; `--seed`, `--epochs` and `--set` change only what they name (the
settings changed are recorded as overrides). Beside it, on the same protocol,
bits and seed:

- DHN with its recipe for (P, bits), else its defaults, never with `--epochs`
  or `--set` (image protocols; DHN is an image method). It is the bar:
  "x DHN" is mAP over DHN's. When M is DHN unchanged, that is the same run.
- The untrained encoder: M's (and DHN's) encoders as `fit` starts, built
  from the same seed.
- LSH and ITQ (`tfhash.baselines`) on the flattened pixels, fitted on the
  training set; on an image-text protocol CCA-ITQ on pixels and bags of
  words, and the table's ratio column divides by CCA-ITQ instead.

Every model is scored once, after training, on the protocol's queries against
its database (mAP@all in the protocol's variant, P@100, precision within
Hamming radius 2): nothing is selected on the queries (a method that keeps a
checkpoint picks it on its own validation rows, drawn from the database).

Each trained run is appended as one JSON line to
`bench/results/METHOD_PROTOCOL.jsonl` (committed; `bench/tables.py` turns
them into the README's and the method pages' tables). `--reuse` takes a run
whose (method, protocol, bits, seed, data options, settings) already has a
record from that record instead of training it again. `--no-record` writes
nothing (smoke runs).

`--trunk lite0` takes DHN's published `dhn_P_lite0_BITS` recipe as the one
shared change: its trunk settings (`TRUNK_SETTINGS`: a frozen ImageNet
EfficientNetLite0 seen at 128 px) and its loader options go over every
method's defaults (a method's own `M_P_lite0_BITS` recipe wins where there
is one), and DHN, the bar, runs that recipe. `--keep DIR` also saves each
trained run as `DIR/M_P[_VARIANT]_BITS` (a run directory, with the figures
printed as its scores), which `tfhash zoo publish RECIPE --run RUN` publishes
without training again.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load_tables():
    """bench/tables.py (records, keys, table rows; no TensorFlow), by its path: bench/ is no package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tables", os.path.join(os.path.dirname(__file__), "tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_tables()

REFERENCE = "dhn"
# The settings of a trunk variant's recipe that every method takes (the model's input side, not its loss).
TRUNK_SETTINGS = ("backbone", "backbone_weights", "backbone_input_size", "freeze_backbone")


def setting(text):
    """KEY=VALUE, the value read as JSON where it is JSON (0.5, true, null), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. alpha=0.5. Received: {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="a registered method (tfhash methods)")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--protocol", help="default: the method's (its registry record)")
    parser.add_argument("--seed", type=int, default=None, help="default: the recipe's, else 0")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the method's epochs (not DHN's); default: the recipe's")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", type=setting,
                        help="other settings of the method (not DHN's), e.g. alpha=0.5 balanced=true")
    parser.add_argument("--trunk", metavar="VARIANT",
                        help="the trunk of DHN's published recipe dhn_P_VARIANT_BITS, for every method (e.g. lite0)")
    parser.add_argument("--keep", metavar="DIR", help="also save each trained run as DIR/NAME (for zoo publish --run)")
    parser.add_argument("--reuse", action="store_true", help="take runs already in the results from there")
    parser.add_argument("--results", default=str(tables.RESULTS), help="folder of the METHOD_PROTOCOL.jsonl files")
    parser.add_argument("--no-record", action="store_true", help="append nothing (smoke runs)")
    return parser.parse_args(argv)


def plan(method, protocol, bits, seed=None, epochs=None, trunk=None, **settings):
    """(resolved recipe, published recipe name or None, overrides) of one run.

    Overrides are the settings that differ from the published recipe (or from
    the method's defaults where none is published); the seed is a field of its
    own. `trunk` (a variant, e.g. "lite0") names the recipe `M_P_VARIANT_BITS`;
    a method without one takes the `TRUNK_SETTINGS` and loader options of DHN's,
    and those are not counted as overrides: they are the run's variant."""
    from tfhash import recipes, registry, training

    protocol = protocol or registry.get(method).protocol
    name = "_".join(str(part) for part in (method, protocol, trunk, bits) if part is not None)
    names = recipes.published_names()
    published = name if name in names else None
    # No recipe at these bits: the method's recipe at another length, its settings at these bits.
    like = None if published or trunk else next(
        (f"{method}_{protocol}_{b}" for b in (32, 64, 16, 128) if f"{method}_{protocol}_{b}" in names), None)
    shared, data = {}, None
    if trunk and not published:
        reference = f"{REFERENCE}_{protocol}_{trunk}_{bits}"
        if reference not in recipes.published_names():
            raise ValueError(f"--trunk {trunk} takes DHN's recipe {reference}, which is not published: expected one "
                             f"of {sorted(n for n in recipes.published_names() if n.startswith(REFERENCE))}")
        dhn = training.resolve(recipe=reference)
        shared, data = {k: dhn["settings"][k] for k in TRUNK_SETTINGS if k in dhn["settings"]}, dhn["data"]
    base = training.resolve(method, protocol, recipe=published or like, bits=bits, data_options=data, **shared)
    recipe = training.resolve(method, protocol, recipe=published or like, bits=bits, seed=seed, epochs=epochs,
                              data_options=data, **{**shared, **settings})
    overrides = {k: v for k, v in recipe["settings"].items() if base["settings"].get(k) != v}
    return recipe, published or (like and f"{like}@{bits}"), overrides


def record_key(recipe):
    """`tables.key` of the record this recipe's run would write."""
    return tables.key({"method": recipe["method"], "protocol": recipe["protocol"], "bits": recipe["bits"],
                       "seed": recipe["seed"], "data": recipe["data"], "settings": recipe["settings"]})


def directions(data):
    return ("image_to_text", "text_to_image") if data.protocol.cross_modal else ("image_to_image",)


def figures(result):
    return {k: result[k] for k in ("map", "precision@100", "precision@r2", "recall@r2")}


def score(encoders, data):
    """{direction: {map, precision@100, precision@r2, recall@r2}} of trained (or untrained) encoders."""
    from tfhash.evaluation import evaluate_cross_modal, evaluate_model

    if data.protocol.cross_modal:
        result = evaluate_cross_modal(encoders["image"], encoders["text"], data.subset("query"),
                                      data.subset("database"), **data.protocol.metric_options)
        return {d: figures(result[d]) for d in directions(data)}
    result, _, _ = evaluate_model(encoders["image"], data, curve=False)
    return {"image_to_image": figures(result)}


def pixels(images):
    return images.reshape(len(images), -1).astype("float32") / 255.0


def baselines(data, bits, seed):
    """{name: {direction: figures, "fit_seconds": s}}: LSH and ITQ on pixels, or CCA-ITQ on pixels and words."""
    from tfhash import metrics
    from tfhash.baselines import ITQ, LSH, CCAITQ

    options = data.protocol.metric_options
    out = {}
    if data.protocol.cross_modal:
        (xi, xt, _), (qi, qt, ql), (di, dt, dl) = (data.subset(p) for p in ("train", "query", "database"))
        start = time.time()
        cca = CCAITQ(bits, seed=seed).fit(pixels(xi), xt.astype("float32"))
        seconds = round(time.time() - start, 1)
        q = {"image": cca.encode_x(pixels(qi)), "text": cca.encode_y(qt.astype("float32"))}
        d = {"image": cca.encode_x(pixels(di)), "text": cca.encode_y(dt.astype("float32"))}
        out["cca_itq"] = {
            "image_to_text": figures(metrics.evaluate(q["image"], d["text"], ql, dl, **options)),
            "text_to_image": figures(metrics.evaluate(q["text"], d["image"], ql, dl, **options)),
            "fit_seconds": seconds,
        }
        return out
    (xt, _), (xq, yq), (xd, yd) = (data.subset(p) for p in ("train", "query", "database"))
    for name, model in (("lsh", LSH(bits, seed=seed)), ("itq", ITQ(bits, seed=seed))):
        start = time.time()
        model.fit(pixels(xt))
        seconds = round(time.time() - start, 1)
        result = metrics.evaluate(model.encode(pixels(xq)), model.encode(pixels(xd)), yq, yd, **options)
        out[name] = {"image_to_image": figures(result), "fit_seconds": seconds}
    return out


def untrained_callback(data):
    """A Keras callback scoring the model's encoders as `fit` starts (built, not yet trained)."""
    import keras

    class ScoreUntrained(keras.callbacks.Callback):
        scores = None

        def on_train_begin(self, logs=None):
            self.scores = score(self.model.encoders(), data)

    return ScoreUntrained()


def versions():
    import keras
    import numpy as np
    import tensorflow as tf

    from tfhash import __version__

    return {"tfhash": __version__, "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def commit():
    """The checkout's HEAD, with "+changes" when its tracked files differ from it (None outside git)."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def run(recipe, published, overrides, data, base, keep=None, trunk=None):
    """Trains one recipe, scores it and its untrained encoders; returns its record
    (and saves the run, with those scores, in `keep`)."""
    import dataclasses

    from tfhash import training

    untrained = untrained_callback(data)
    load = round(os.getloadavg()[0], 1)  # the machine's 1-minute load as training starts: context for train_seconds
    result = training.train(recipe=recipe, data=data, callbacks=[untrained], verbose=0, score=False)
    scores = score(result.encoders, data)
    if keep:
        # The run's scores in `training.score_encoders`' form: each encoder as the query side.
        sides = {"image": "image_to_text", "text": "text_to_image"} if data.protocol.cross_modal else {
            "image": "image_to_image"}
        run_scores = {m: {"map": scores[d]["map"], "precision@100": scores[d]["precision@100"]}
                      for m, d in sides.items()}
        training.save_run(dataclasses.replace(result, scores=run_scores), keep)
    return {
        "method": recipe["method"], "protocol": recipe["protocol"], "bits": recipe["bits"], "seed": recipe["seed"],
        "recipe": published, "trunk": trunk, "overrides": overrides, "settings": recipe["settings"],
        "data": recipe["data"], "scores": scores, "train_seconds": result.seconds,
        "history_last": {k: float(v[-1]) for k, v in result.history.items() if len(v)},
        "untrained": untrained.scores, "baselines": base,
        "metric": {**data.protocol.metric_options, "queries": len(data.split.query),
                   "database": len(data.split.database)},
        "versions": versions(), "commit": commit(), "cpus": os.cpu_count(),
        "load_average": load, "platform": platform.platform(),
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "date": datetime.date.today().isoformat(),
    }


def append(record, results_dir):
    path = tables.results_path(record["method"], record["protocol"], results_dir)
    os.makedirs(path.parent, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
    return path


def main(argv=None):
    args = parse_args(argv)
    print("command:", shlex.join([os.path.relpath(sys.executable), *sys.argv]), flush=True)
    from tfhash import registry
    from tfhash.data import load_protocol
    from tfhash.data.protocols import get_protocol

    try:  # every run planned (method, protocol, settings checked) before any work
        registry.get(args.method)
        plans = {}
        for bits in args.bits:
            recipe, published, overrides = plan(args.method, args.protocol, bits, args.seed, args.epochs,
                                                args.trunk, **dict(args.set))
            plans[bits] = [(recipe, published, overrides)]
            if get_protocol(recipe["protocol"]).cross_modal:
                continue  # the bar is CCA-ITQ: DHN is an image method
            if args.method != REFERENCE or overrides:
                plans[bits].append(plan(REFERENCE, recipe["protocol"], bits, recipe["seed"], trunk=args.trunk))
    except ValueError as e:
        sys.exit(f"bench/methods.py: {e}")
    records = tables.read_records(args.results) if args.reuse else []
    record_of = {tables.key(r): r for r in tables.latest(records, by=tables.key)}
    loaded, shown = {}, []

    def load(recipe):
        options = json.dumps(recipe["data"], sort_keys=True)
        if (recipe["protocol"], options) not in loaded:
            loaded[recipe["protocol"], options] = load_protocol(recipe["protocol"], **recipe["data"])
        return loaded[recipe["protocol"], options]

    for bits, runs in plans.items():
        base = {}
        for r, name, changed in runs:
            key = record_key(r)
            if key in record_of:
                print(f"{r['method']} {bits} bits: reused the record of {record_of[key]['date']}", flush=True)
                shown.append(record_of[key])
                continue
            data = load(r)
            options = json.dumps(r["data"], sort_keys=True)
            if options not in base:
                base[options] = baselines(data, bits, r["seed"])
            label = tables.settings_label({"recipe": name, "overrides": changed})
            print(f"{r['method']} {bits} bits, seed {r['seed']}: training ({label}) ...", flush=True)
            keep = None
            if args.keep:
                parts = (r["method"], r["protocol"], args.trunk, bits)
                keep = os.path.join(args.keep, "_".join(str(p) for p in parts if p is not None))
            record = run(r, name, changed, data, base[options], keep, args.trunk)
            shown.append(record)
            record_of[key] = record
            if not args.no_record:
                print(f"  appended to {os.path.relpath(append(record, args.results))}", flush=True)
            main_map = next(iter(record["scores"].values()))["map"]
            print(f"  mAP@all {main_map:.4f}, trained in {record['train_seconds']:.0f} s", flush=True)

    print()
    print(summary(shown, args.method))


def summary(records, method):
    """The printed table: the method, DHN, the untrained encoders and the baselines, by code length."""
    lines = ["| bits | model | settings | direction | mAP@all | x ref | P@100 | P@r2 | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for bits in sorted({r["bits"] for r in records}):
        group = [r for r in records if r["bits"] == bits]
        group.sort(key=lambda r: r["method"] != method)
        ref = next((r for r in group if tables.is_reference(r)), None)
        for direction in group[0]["scores"]:
            label = tables.DIRECTIONS[direction] or "image->image"
            cca = group[0]["baselines"].get("cca_itq", {}).get(direction)
            bar = cca["map"] if cca else (ref["scores"][direction]["map"] if ref else None)

            def line(model, settings, f, seconds):
                ratio = f"{f['map'] / bar:.2f}" if bar else "–"
                lines.append(f"| {bits} | {model} | {settings} | {label} | {f['map']:.4f} | {ratio} | "
                             f"{f['precision@100']:.4f} | {f['precision@r2']:.4f} | {seconds} |")

            for r in group:
                line(r["method"], tables.settings_label(r), r["scores"][direction], f"{r['train_seconds']:.0f}")
            for r in group:
                line(f"{r['method']}, untrained", "same seed", r["untrained"][direction], "–")
            for name, b in group[0]["baselines"].items():
                line(tables.BASELINES[name], "pixels" + (" + words" if name == "cca_itq" else ""), b[direction],
                     f"{b['fit_seconds']:.0f}")
    ref_name = ("CCA-ITQ" if any("cca_itq" in r["baselines"] for r in records)
                else "DHN (its recipe, else its defaults)")
    return "\n".join(lines) + f"\n\nx ref: mAP@all over {ref_name}'s at the same bits and seed."


if __name__ == "__main__":
    main()
