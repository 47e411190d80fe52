"""The `tfhash` command: train, evaluate, encode, search, export, serve, zoo.

    tfhash methods                       # the registered methods; `tfhash methods dhn`: its settings
    tfhash train --method dhn --protocol fashion_mnist --bits 32 --alpha 0.25 --output runs/dhn32
    tfhash train --recipe ssah_open_clip_art_32 --epochs 15 --output runs/ssah32
    tfhash reproduce dhn_fashion_mnist_32          # the same path, printing the scores
    tfhash evaluate runs/dhn32 --plot runs/dhn32/pr.png
    tfhash encode runs/ssah32 --modality text --part database --output db_codes.npy --index db.thi
    tfhash search db.thi --queries query_codes.npy -k 10
    tfhash export savedmodel runs/dhn32 --name dhn32
    tfhash export tflite runs/dhn32 --quantization int8
    tfhash serve --base-dir export/models
    tfhash zoo list | download NAME | verify NAME | build NAME | publish RECIPE
"""

import argparse
import os
import sys

from tfhash._version import __version__
from tfhash.console import import_tensorflow, keras_verbose, silence_tensorflow
from tfhash.io import write_json


def _add_protocol_args(parser):
    parser.add_argument("--protocol", default=None,
                        help="dataset + committed split (default: the run's, else fashion_mnist)")
    parser.add_argument("--data-dir", default=None, help="directory with the dataset's local files")


def _settings(extra):
    """Method settings given as flags: `--name VALUE` (VALUE read as JSON: 0.25,
    true, [2, 5]; else a string) or a bare `--name` for true."""
    from tfhash.registry import parse_value

    settings, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"expected a setting flag --NAME [VALUE]. Received: {token!r}")
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not value and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value, i = extra[i + 1], i + 1
        settings[key] = parse_value(value) if value else True
        i += 1
    return settings


def _train(args, extra=()):
    from tfhash import training

    recipe = getattr(args, "recipe", None)
    settings = {**_settings(extra), "epochs": args.epochs}
    result = training.train(
        args.method, args.protocol, recipe=recipe, bits=args.bits, seed=args.seed, data_dir=args.data_dir,
        strategy=args.strategy, output_dir=args.output, overwrite=args.overwrite, wait=args.wait,
        verbose=keras_verbose(args.quiet, "fit"), **settings,
    )
    # One summary line: what a log or a script greps for.
    final = {key: values[-1] for key, values in result.history.items() if values and key.endswith("loss")}
    parts = [f"{result.recipe['name']}: trained {result.recipe['method']} on {result.recipe['protocol']} "
             f"({result.recipe['bits']} bits) in {result.seconds:.0f} s",
             "final " + ", ".join(f"{key} {value:.4f}" for key, value in final.items())]
    parts += [f"mAP@all ({result.direction(modality)}): {score['map']:.4f}, P@100 {score['precision@100']:.4f}"
              for modality, score in result.scores.items()]
    if args.output:
        parts.append(f"saved to {args.output}; evaluate it with: tfhash evaluate {args.output}")
    print("; ".join(parts))


def _methods(args):
    from tfhash import registry

    if args.name is None:
        rows = registry.table()
        print(f"{'method':8s} {'title':8s} {'kind':16s} {'modalities':11s} paper")
        for row in rows:
            print(f"{row['method']:8s} {row['title']:8s} {row['kind']:16s} {row['modalities']:11s} {row['paper']}")
        return
    method = registry.get(args.name)
    print(f"{method.title}: {method.kind}, {'+'.join(method.modalities)}. {method.paper}")
    print(f"trainer {method.trainer}; batches: {method.batches}; scored by {method.scoring}")
    print("settings (--flag default: meaning):")
    for key, (value, meaning) in sorted(method.describe().items()):
        print(f"  --{key.replace('_', '-')} {value!r}: {meaning}")


def _load_run(args, modalities=None):
    """`(run.json or None, {modality: encoder})` of `args.model`: a run
    directory, read at one version, or a `.keras` file."""
    from tfhash import training

    if os.path.isdir(args.model):
        return training.load_run(args.model, modalities)
    return None, {(modalities or ["image"])[0]: training.load_model(args.model)}  # a file holds one encoder


def _run_data(args, record):
    """The protocol to score on: --protocol, else the run's (with its loader options)."""
    from tfhash.data import load_protocol

    recipe = (record or {}).get("recipe", {})
    protocol = args.protocol or recipe.get("protocol") or "fashion_mnist"
    options = recipe.get("data", {}) if protocol == recipe.get("protocol") else {}
    return load_protocol(protocol, args.data_dir, **options)


def _evaluate(args):
    from tfhash.evaluation import evaluate_cross_modal, evaluate_model, plot_precision_recall
    from tfhash.index import HammingIndex

    record, encoders = _load_run(args)
    data = _run_data(args, record)
    # Unset, map_k and normalization are the protocol's (evaluate_model's default).
    chosen = {key: value for key, value in (("map_k", args.map_k), ("normalization", args.normalization))
              if value is not None}
    options = dict(ks=tuple(args.k), radius=args.radius, no_relevant=args.no_relevant, **chosen)
    print(f"{data.protocol.description}")
    if "text" in data.protocol.modalities:
        if not os.path.isdir(args.model):
            raise ValueError(f"{data.protocol.name} is an image-text protocol: scoring needs both encoders, so pass "
                             f"the run directory. Received: {args.model}")
        if set(encoders) != {"image", "text"}:
            raise ValueError(f"{data.protocol.name} is an image-text protocol: expected a run with image and text "
                             f"encoders. Received: {args.model} with {sorted(encoders)}")
        print(f"encoding {len(data.split.query)} queries and {len(data.split.database)} database items")
        results = evaluate_cross_modal(encoders["image"], encoders["text"], data.subset("query"),
                                       data.subset("database"), **options)
        directions = {"image": "image_to_text", "text": "text_to_image"}
        chosen_directions = [directions[args.modality]] if args.modality else list(directions.values())
        result = {direction: results[direction] for direction in chosen_directions}
        for direction, r in result.items():
            _print_scores(direction.replace("_to_", "->"), r, args)
        if args.plot:
            print("--plot draws single-modal runs only; the scores above are the cross-modal ones")
    else:
        if args.modality == "text":
            raise ValueError(f"--modality text needs an image-text protocol. Received: {data.protocol.name}")
        model = encoders["image"]
        print(f"encoding {len(data.split.query)} queries and {len(data.split.database)} database images")
        # A run directory keeps its database codes (codes/), reused while the model is unchanged.
        cache = os.path.join(args.model, "codes") if os.path.isdir(args.model) else None
        result, query_codes, database_codes = evaluate_model(model, data, verbose=keras_verbose(args.quiet, "predict"),
                                                             codes_cache=cache, **options)
        _print_scores("image", result, args)
        _show_neighbours(data, query_codes, database_codes, args.sample_query, HammingIndex)
        if args.plot:
            plot_precision_recall({model.name: result}, args.plot)  # titled: protocol, bits, mAP
            print(f"wrote precision-recall plot to {args.plot}")
        if args.show:
            from tfhash.evaluation import neighbour_picture

            (query_images, query_labels), (database_images, database_labels) = (data.subset("query"),
                                                                                data.subset("database"))
            neighbour_picture(query_codes, database_codes, query_images, database_images, query_labels,
                              database_labels, args.show, n_queries=5, k=10, label_names=_class_names(data),
                              protocol=data.protocol.name, map=result["map"], map_k=result["map_k"])
            print(f"wrote the first 5 queries and their 10 nearest database images to {args.show}")
    if args.json:
        write_json(result, args.json)
        print(f"wrote metrics to {args.json}")


def _class_names(data):
    """The protocol's class names, when its loader module has them (`CLASS_NAMES`)."""
    import importlib

    return getattr(importlib.import_module(data.protocol.loader.split(":")[0]), "CLASS_NAMES", None)


def _print_scores(direction, result, args):
    print(f"{direction}: mAP@{result['map_k']} ({result['protocol']['normalization']}, "
          f"no_relevant={args.no_relevant}): {result['map']:.4f}")
    for k in args.k:
        print(f"  P@{k}: {result[f'precision@{k}']:.4f}")
    print(f"  precision / recall within radius {args.radius}: "
          f"{result[f'precision@r{args.radius}']:.4f} / {result[f'recall@r{args.radius}']:.4f}")


def _show_neighbours(data, query_codes, database_codes, query, index_class, k=10):
    known = _class_names(data)
    names = (lambda label: known[int(label)]) if known else (lambda label: str(int(label)))
    index = index_class(query_codes.shape[1] * 8)
    index.add(database_codes, ids=data.split.database)
    distances, ids = index.search(query_codes[query : query + 1], k)
    q = int(data.split.query[query])
    print(f"\nquery #{query} (image {q}, label {names(data.labels[q])}): {k} nearest database images")
    for rank, (d, i) in enumerate(zip(distances[0], ids[0]), 1):
        mark = "+" if data.labels[i] == data.labels[q] else " "
        print(f"  {rank:2d}. image {i:6d}  hamming {d:3d}  {mark} {names(data.labels[i])}")


def _encode(args):
    record, encoders = _load_run(args, [args.modality])
    model = encoders[args.modality]
    if args.inputs:
        inputs = _load_array(args.inputs, "inputs")
        ids = None
    else:
        data = _run_data(args, record)
        part = data.subset(args.part)
        # Image-text protocols give (images, texts, labels); the modality picks the column.
        inputs = part[0] if args.modality == "image" else part[1]
        ids = getattr(data.split, args.part)
    verbose = keras_verbose(args.quiet, "predict")
    if not args.inputs and args.part == "database" and os.path.isdir(args.model):
        from tfhash.evaluation import encode_cached

        # The run's database codes (codes/), shared with `evaluate` while the model is unchanged.
        codes = encode_cached(model, inputs, os.path.join(args.model, "codes"),
                              f"database_{data.protocol.name}", args.batch_size, verbose)
    else:
        codes = model.encode(inputs, batch_size=args.batch_size, verbose=verbose)
    _write_codes(codes, ids, args.output, args.index, args.wait)


def _write_codes(codes, ids, output, index_file, wait):
    """The codes (.npy) and their index, one result (`tfhash.io.transaction`,
    homed at the index when there is one): both new, or both as they were."""
    from tfhash.index import HammingIndex
    from tfhash.io import array_writer, transaction

    if not output and not index_file:
        return
    output = output if not output or output.endswith(".npy") else output + ".npy"  # as np.save names it
    with transaction(index_file or output, wait=wait) as result:
        if output:
            result.write(output, array_writer(codes))
        if index_file:
            index = HammingIndex(codes.shape[1] * 8)
            index.add(codes, ids=ids)
            result.write(index_file, index.write_to)
    if output:
        print(f"wrote {codes.shape[0]} codes ({codes.shape[1] * 8} bits, packed uint8) to {output}")
    if index_file:
        print(f"wrote Hamming index of {len(index)} codes to {index_file}")


def _load_array(path, what):
    """A `.npy` array, with a damaged or foreign file reported in one line."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError) as error:  # empty, truncated, pickled or not a .npy
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ValueError(f"{path}: expected {what} in a .npy file (np.save). Received: an unreadable file of "
                         f"{size} bytes ({type(error).__name__}: {' '.join(str(error).split())})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected {what} in a .npy file. Received: a .npz archive")
    return array


def _search(args):
    from tfhash.index import HammingIndex

    # Both modes: in radius mode -k slices the printed ids, and a negative
    # slice would silently drop the last ones.
    if args.k < 1:
        raise ValueError(f"Expected -k to be a positive int. Received: -k {args.k}")
    index = HammingIndex.load(args.index)
    queries = _load_array(args.queries, "query codes")
    if args.radius is not None:
        lims, distances, ids = index.range_search(queries, args.radius)
        for q in range(len(queries)):
            found = ids[lims[q] : lims[q + 1]]
            print(f"query {q}: {len(found)} within radius {args.radius}, nearest {args.k}: {found[: args.k].tolist()}")
        return
    distances, ids = index.search(queries, args.k)
    if args.output:
        from tfhash.io import save_arrays

        output = args.output if args.output.endswith(".npz") else args.output + ".npz"  # as np.savez names it
        save_arrays(output, distances=distances, ids=ids)
        print(f"wrote {ids.shape} neighbours to {output}")
    else:
        for q in range(len(ids)):
            print(f"query {q}: ids {ids[q].tolist()} distances {distances[q].tolist()}")


WAIT_HELP = ("while another process writes the same output, wait for it (by default: fail at once, "
             "naming its pid)")
QUIET_HELP = ("no progress output, only the results (by default: a progress bar on a terminal; in a log, "
              "one line per epoch when training)")
VERBOSE_HELP = "TensorFlow's own logging too (by default: its errors only, and none of its start-up lines)"

SETTINGS_HELP = ("Any setting of the method is a flag too: --NAME VALUE, VALUE read as JSON (0.25, true, "
                 "[2, 5]); `tfhash methods NAME` lists them and their defaults. Precedence: flags, then the "
                 "recipe, then the method's defaults.")


def _add_training_args(p):
    from tfhash.distribute import STRATEGIES

    p.add_argument("--protocol", help="dataset + committed split (default: the recipe's, else the method's)")
    p.add_argument("--data-dir", default=None, help="directory with the dataset's local files")
    p.add_argument("--bits", type=int, help="code length (default: the recipe's, else 32)")
    p.add_argument("--seed", type=int, help="default: the recipe's, else 0")
    p.add_argument("--epochs", type=int, help="default: the recipe's, else the method's")
    p.add_argument("--strategy", choices=STRATEGIES, default="one_device")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output (else refused)")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)


def build_parser():
    from tfhash import registry

    parser = argparse.ArgumentParser(prog="tfhash", description="Deep learning to hash with TensorFlow.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"tfhash {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="the methods tfhash trains; with a NAME, its settings and defaults")
    p.add_argument("name", nargs="?", choices=registry.names())
    p.set_defaults(run=_methods, loads_tensorflow=False)

    p = sub.add_parser("train", help="train any method on a protocol's training split", epilog=SETTINGS_HELP,
                       allow_abbrev=False)
    p.add_argument("--method", choices=registry.names(), help="default: the recipe's")
    p.add_argument("--recipe", help="a published recipe name, e.g. dhn_fashion_mnist_32, or a recipe JSON file")
    _add_training_args(p)
    p.add_argument("--output", required=True, help="run directory (run.json and one .keras per encoder)")
    p.set_defaults(run=_train, takes_settings=True)

    p = sub.add_parser("reproduce", help="train a recipe and print its scores (one command per table cell)",
                       epilog=SETTINGS_HELP, allow_abbrev=False)
    p.add_argument("recipe", help="a published recipe name, e.g. dhn_fashion_mnist_32, or a recipe JSON file")
    _add_training_args(p)
    p.add_argument("--output", help="also write the run directory here")
    p.set_defaults(run=_train, takes_settings=True, method=None)

    p = sub.add_parser("evaluate", help="score a run on a protocol's queries and database")
    p.add_argument("model", help="run directory or .keras file")
    _add_protocol_args(p)
    p.add_argument("--modality", choices=["image", "text"], default=None,
                   help="image-text runs: score image->text or text->image only (default: both)")
    p.add_argument("--map-k", type=int, default=None, help="mAP cut-off (default: the protocol's)")
    p.add_argument("-k", type=int, nargs="+", default=[100], help="precision@K cut-offs")
    p.add_argument("--radius", type=int, default=2)
    p.add_argument("--normalization", choices=["retrieved", "min_k_relevant"], default=None,
                   help="AP denominator (default: the protocol's)")
    p.add_argument("--no-relevant", choices=["zero", "drop"], default="zero")
    p.add_argument("--sample-query", type=int, default=0, help="query whose neighbours are shown")
    p.add_argument("--plot", help="write the precision-recall curve to this PNG")
    p.add_argument("--show", help="write a picture of 5 queries beside their 10 nearest database images (PNG)")
    p.add_argument("--json", help="write all metrics to this JSON file")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("encode", help="encode images (or texts) to packed binary codes")
    p.add_argument("model", help="run directory or .keras file")
    _add_protocol_args(p)
    p.add_argument("--modality", choices=["image", "text"], default="image", help="which encoder of the run")
    p.add_argument("--part", choices=["query", "train", "database"], default="database")
    p.add_argument("--inputs", "--images", dest="inputs",
                   help="a .npy array of raw images (or bags of words) instead of a protocol part")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--output", help="write codes to this .npy file")
    p.add_argument("--index", help="write a HammingIndex of the codes to this file")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_encode)

    p = sub.add_parser("search", help="k nearest codes (or all within a radius) in a saved index")
    p.add_argument("index", help="file written by `tfhash encode --index`")
    p.add_argument("--queries", required=True, help=".npy of packed uint8 query codes")
    p.add_argument("-k", type=int, default=10,
                   help="neighbours per query, >= 1; at most the index size are returned (radius mode: ids shown)")
    p.add_argument("--radius", type=int, default=None, help="radius search instead of k-NN")
    p.add_argument("--output", help="write distances and ids to this .npz")
    p.set_defaults(run=_search, loads_tensorflow=False)

    from tfhash.serving.command import add_serve_command

    add_serve_command(sub)

    from tfhash.export_cli import add_export_commands

    add_export_commands(sub)

    p = sub.add_parser("zoo", help="pretrained encoders: list, download, verify, build, publish")
    zoo_sub = p.add_subparsers(dest="zoo_command", required=True)
    zoo_sub.add_parser("list", help="the entries, with the mAP each reached").set_defaults(run=_zoo_list,
                                                                                          loads_tensorflow=False)
    for name, run, text in (("download", _zoo_download, "fetch an entry (sha256 verified) into the cache"),
                            ("verify", _zoo_verify, "check an entry's cached file against its sha256"),
                            ("build", _zoo_build, "re-train an entry's recipe; check its mAP against the manifest")):
        q = zoo_sub.add_parser(name, help=text)
        q.add_argument("name", help="entry name (see `tfhash zoo list`)")
        q.set_defaults(run=run, loads_tensorflow=run is _zoo_build)
    q = zoo_sub.add_parser("missing", help="release check: the registered methods and code lengths no entry holds")
    q.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    q.set_defaults(run=_zoo_missing, loads_tensorflow=False)
    q = zoo_sub.add_parser("publish", help="train recipes into a zoo folder that can be served as it is")
    q.add_argument("recipe", nargs="?", help="a published recipe name or a recipe JSON file")
    q.add_argument("--all", action="store_true", help="every published recipe: the whole zoo")
    q.add_argument("--zoo-dir", default="zoo", help="the zoo folder: manifest.json, files/, recipes/ (default: ./zoo)")
    q.add_argument("--tolerance", type=float, default=0.01, help="mAP tolerance `build` allows (default: 0.01)")
    q.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    q.set_defaults(run=_zoo_publish)
    _accept_everywhere(parser, "--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def _accept_everywhere(parser, *names, **options):
    """Adds a top-level flag to every command too, so it may also come after the
    command (`tfhash train ... --verbose`), where `train` would read it as a setting.
    Unset there, it leaves the top-level value alone (default SUPPRESS)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in {id(p): p for p in action.choices.values()}.values():  # aliases: one parser
                if not any(name in command._option_string_actions for name in names):  # its own flag wins
                    command.add_argument(*names, **options, default=argparse.SUPPRESS)
                _accept_everywhere(command, *names, **options)


def _zoo_list(args):
    from tfhash import zoo

    print(f"{'name':30s} {'class':18s} {'bits':>4s}  {'protocol':14s} {'metric':>28s}  size")
    for item in zoo.list():
        metric = f"{item['metric']['name']} {item['metric']['value']:.4f}"
        print(f"{item['name']:30s} {item['class']:18s} {item['bits']:4d}  {item['protocol']:14s} {metric:>28s}  "
              f"{item['size'] / 1e6:.1f} MB")


def _zoo_download(args):
    from tfhash import zoo

    print(zoo.download(args.name))


def _zoo_build(args):
    from tfhash import publish

    r = publish.build(args.name)
    print(f"{r['entry']}: mAP {r['measured']:.4f}, manifest {r['expected']:.4f} (tolerance {r['tolerance']})")
    if not r["ok"]:
        raise ValueError(f"{r['entry']}: the rebuilt mAP is outside the manifest's tolerance")


def _zoo_missing(args):
    from tfhash import publish

    gaps = publish.missing(bits=args.bits)
    for method, bits in gaps:
        print(f"missing {method} {bits} bits")
    print(f"{len(gaps)} missing" if gaps else "every registered method is published at " +
          ", ".join(f"{b}" for b in args.bits) + " bits")
    return 1 if gaps else 0


def _zoo_publish(args):
    from pathlib import Path

    from tfhash import publish

    if args.all == (args.recipe is not None):
        raise ValueError(f"Expected a recipe or --all. Received: recipe={args.recipe!r}, --all={args.all}")
    verbose = keras_verbose(args.quiet, "fit")
    names = (publish.publish_all(zoo_dir=args.zoo_dir, tolerance=args.tolerance, verbose=verbose) if args.all
             else publish.publish(args.recipe, zoo_dir=args.zoo_dir, tolerance=args.tolerance, verbose=verbose))
    for name in names:
        print(f"published {name}")
    print(f"serve {args.zoo_dir} as it is and set TFHASH_ZOO_URL to its URL "
          f"(here: TFHASH_ZOO_URL={Path(args.zoo_dir).resolve().as_uri()}/)")


def _zoo_verify(args):
    from tfhash import zoo

    if not zoo.verify(args.name):
        raise ValueError(f"{args.name}: not in the cache, or its sha256 does not match the manifest")
    print(f"{args.name}: ok")


def main(argv=None):
    from tfhash.zoo import ZooError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_settings", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Before anything loads TensorFlow (parsing does not): it reads its log level once, as it loads.
    silence_tensorflow(args.verbose)
    if getattr(args, "loads_tensorflow", True):
        import_tensorflow(args.verbose)
    try:
        code = args.run(args, extra) if getattr(args, "takes_settings", False) else args.run(args)
    except (ValueError, OSError, ZooError) as error:  # OSError: missing files, a port in use
        print(f"tfhash {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ArithmeticError as error:  # training diverged: not bad input, but nothing was saved
        print(f"tfhash {args.command}: error: {error}", file=sys.stderr)
        return 1
    return code or 0  # a check's own verdict (zoo verify, zoo missing), else success


if __name__ == "__main__":
    sys.exit(main())
