"""The `tfhash` command: train, evaluate, encode, search, export, serve, zoo.

    tfhash methods                       # the registered methods; `tfhash methods dhn`: its settings
    tfhash train --method dhn --protocol fashion_mnist --bits 32 --alpha 0.25 --output runs/dhn32
    tfhash train --recipe ssah_open_clip_art_32 --epochs 15 --output runs/ssah32
    tfhash reproduce dhn_fashion_mnist_32          # the same path, printing the scores
    tfhash evaluate runs/dhn32 --plot runs/dhn32/pr.png
    tfhash encode runs/ssah32 --modality text --part database --output runs/ssah32/db.npy --index runs/ssah32/db.thi
    tfhash search runs/ssah32/db.thi --queries runs/ssah32/q.npy -k 10
    tfhash train --method dhn --images photos --image-size 64 --output runs/photos   # your own images
    tfhash encode runs/photos --images photos --index runs/photos/photos.thi
    tfhash search runs/photos/photos.thi --image query.jpg -k 10
    tfhash encode runs/photos --images photos --index 'milvus:runs/photos.db#photos'   # or milvus://HOST:PORT/...
    tfhash export savedmodel runs/dhn32 --name dhn32
    tfhash export tflite runs/dhn32 --quantization int8
    tfhash serve --base-dir export/models
    tfhash zoo list | download NAME | verify NAME | build NAME | publish RECIPE [--run RUN]
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
        args.method, args.protocol, recipe=recipe, bits=args.bits, seed=args.seed, data=_own_images(args),
        data_dir=args.data_dir, strategy=args.strategy, output_dir=args.output, overwrite=args.overwrite,
        wait=args.wait, verbose=keras_verbose(args.quiet, "fit"), **settings,
    )
    # One summary line: what a log or a script greps for.
    final = {key: values[-1] for key, values in result.history.items() if values and key.endswith("loss")}
    parts = [f"{result.recipe['name']}: trained {result.recipe['method']} on {result.recipe['protocol']} "
             f"({result.recipe['bits']} bits) in {result.seconds:.0f} s",
             "final " + ", ".join(f"{key} {value:.4f}" for key, value in final.items())]
    parts += [f"mAP@all ({result.direction(modality)}): {score['map']:.4f}, "
              + ", ".join(f"P@{key[10:]} {value:.4f}" for key, value in score.items() if key.startswith("precision@"))
              for modality, score in result.scores.items()]
    if args.output:
        parts.append(f"saved to {args.output}; evaluate it with: tfhash evaluate {args.output}")
    print("; ".join(parts))


# `tfhash train --images` options: `tfhash.data.from_path` arguments of the same names.
IMAGE_OPTIONS = ("image_size", "channels", "keep_aspect", "skip_bad", "num_query", "num_train", "captions")


def _own_images(args):
    """`tfhash.data.from_path` of `--images`, with the options given; None without it."""
    given = {name: getattr(args, name) for name in IMAGE_OPTIONS if getattr(args, name, None) not in (None, False)}
    if not getattr(args, "images", None):
        if given:
            raise ValueError(f"--{next(iter(given)).replace('_', '-')} describes --images: expected --images DIR|LIST "
                             f"with it. Received: no --images")
        return None
    if args.protocol:
        raise ValueError(f"Expected --images or --protocol, not both. Received: --images {args.images} "
                         f"--protocol {args.protocol}")
    if "captions" in given and os.path.isdir(args.images):
        raise ValueError(f"--captions reads a list file's captions: expected --images LIST. Received: the folder "
                         f"{args.images}")
    from tfhash import recipes
    from tfhash.data import from_path
    from tfhash.training import check_output

    check_output(args.output, args.overwrite)  # before decoding a folder for nothing
    # The split is drawn from the run's seed: --seed, else the recipe's.
    seed = args.seed if args.seed is not None else (recipes.load(args.recipe).get("seed", 0) if args.recipe else 0)
    data = from_path(args.images, seed=seed, progress=None if not args.quiet else False, **given)
    if not args.quiet:
        print(data.protocol.description)
    return data


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
    """The data to score on: --protocol, else the run's (its protocol with its
    loader options, or its own images on the split it recorded)."""
    from tfhash.data import load_protocol
    from tfhash.training import load_data

    recipe = (record or {}).get("recipe", {})
    if recipe and args.protocol in (None, recipe.get("protocol")):
        return load_data(recipe, args.data_dir, args.model if os.path.isdir(args.model) else None)
    return load_protocol(args.protocol or "fashion_mnist", args.data_dir)


def _evaluate(args):
    from tfhash.evaluation import evaluate_cross_modal, evaluate_model, plot_precision_recall
    from tfhash.index import HammingIndex

    record, encoders = _load_run(args)
    data = _run_data(args, record)
    if data.labels is None:
        raise ValueError(f"Scoring needs labels, which decide what is relevant: expected class folders or a list "
                         f"with labels. Received: {data.protocol.description}")
    args.k = args.k or [min(100, len(data.split.database))]
    # Unset, map_k and normalization are the protocol's (evaluate_model's default).
    chosen = {key: value for key, value in (("map_k", args.map_k), ("normalization", args.normalization))
              if value is not None}
    options = dict(ks=tuple(args.k), radius=args.radius, no_relevant=args.no_relevant, **chosen)
    # --quiet: the scores and the files written, without the protocol, the encoding notice or the sample query.
    say = (lambda *parts: None) if args.quiet else print
    say(f"{data.protocol.description}")
    if "text" in data.protocol.modalities:
        if not os.path.isdir(args.model):
            raise ValueError(f"{data.protocol.name} is an image-text protocol: scoring needs both encoders, so pass "
                             f"the run directory. Received: {args.model}")
        if set(encoders) != {"image", "text"}:
            raise ValueError(f"{data.protocol.name} is an image-text protocol: expected a run with image and text "
                             f"encoders. Received: {args.model} with {sorted(encoders)}")
        say(f"encoding {len(data.split.query)} queries and {len(data.split.database)} database items")
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
        say(f"encoding {len(data.split.query)} queries and {len(data.split.database)} database images")
        # A run directory keeps its database codes (codes/), reused while the model is unchanged.
        cache = os.path.join(args.model, "codes") if os.path.isdir(args.model) else None
        result, query_codes, database_codes = evaluate_model(model, data, verbose=keras_verbose(args.quiet, "predict"),
                                                             codes_cache=cache, **options)
        _print_scores("image", result, args)
        if not args.quiet:
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
    """The data's class names (own images: its class folders), else those of
    the protocol's loader module (`CLASS_NAMES`), if any."""
    import importlib

    if getattr(data, "class_names", None):
        return list(data.class_names)
    return getattr(importlib.import_module(data.protocol.loader.split(":")[0]), "CLASS_NAMES", None)


def _print_scores(direction, result, args):
    print(f"{direction}: mAP@{result['map_k']} ({result['protocol']['normalization']}, "
          f"no_relevant={args.no_relevant}): {result['map']:.4f}")
    for k in args.k:
        print(f"  P@{k}: {result[f'precision@{k}']:.4f}")
    print(f"  precision / recall within radius {args.radius}: "
          f"{result[f'precision@r{args.radius}']:.4f} / {result[f'recall@r{args.radius}']:.4f}")


def _show_neighbours(data, query_codes, database_codes, query, index_class, k=10):
    from tfhash.evaluation import label_text
    from tfhash.metrics import relevance

    names = _class_names(data)
    index = index_class(query_codes.shape[1] * 8)
    index.add(database_codes, ids=data.split.database)
    distances, ids = index.search(query_codes[query : query + 1], k)
    q = int(data.split.query[query])
    paths = getattr(data, "paths", None)  # own images: their files name them
    item = (lambda i: paths[i]) if paths is not None else (lambda i: f"image {i:6d}")
    relevant = relevance(data.labels[[q]], data.labels[ids[0]])[0]  # a shared label (class ids or multi-hot)
    print(f"\nquery #{query} ({item(q)}, label {label_text(data.labels[q], names)}): {k} nearest database images")
    for rank, (d, i, mark) in enumerate(zip(distances[0], ids[0], relevant), 1):
        print(f"  {rank:2d}. {item(i)}  hamming {d:3d}  {'+' if mark else ' '} {label_text(data.labels[i], names)}")


def _encode(args):
    record, encoders = _load_run(args, [args.modality])
    model = encoders[args.modality]
    if args.images and not args.images.endswith(".npy"):  # image files (a .npy: arrays, as --inputs)
        return _encode_files(args, record, model)
    args.inputs = args.inputs or args.images
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


def _encode_files(args, record, model):
    import keras

    from tfhash.image_search import encode_files

    if args.modality != "image":
        raise ValueError(f"--images encodes with the image encoder. Received: --modality {args.modality}")
    if not args.index:
        raise ValueError(f"Expected --index FILE for --images: the index keeps each code's file (or --index "
                         f"milvus:FILE.db#COLLECTION, milvus://HOST:PORT/COLLECTION: a Milvus collection, each "
                         f"row's file in it). Received: --images {args.images} without --index")
    keep_aspect = ((record or {}).get("recipe", {}).get("data", {}).get("keep_aspect", False)
                   if args.keep_aspect is None else args.keep_aspect)
    progress = None if args.quiet or not sys.stdout.isatty() else keras.utils.Progbar(None, unit_name="image")
    index = encode_files(model, args.images, args.index, output=args.output, run=args.model, keep_aspect=keep_aspect,
                         skip_bad=args.skip_bad, batch_size=args.batch_size, wait=args.wait, progress=progress)
    skipped, rows = index.metadata["skipped"], len(index)
    if hasattr(index, "close"):  # a MilvusIndex, open
        index.close()
        wrote = (f"wrote {rows} image code{'s' if rows != 1 else ''} ({index.bits} bits), each with its file, to "
                 f"Milvus collection {index.collection} at {index.uri}")
    else:
        wrote = f"wrote Hamming index of {rows} image{'s' if rows != 1 else ''} ({index.bits} bits) to {args.index}"
    print(wrote + (f" and their codes to {args.output}" if args.output else "")
          + (f"; skipped {skipped} unreadable (--skip-bad)" if skipped else ""))


def _write_codes(codes, ids, output, index_file, wait):
    """The codes (.npy) and their index, one result (`tfhash.io.transaction`,
    homed at the index when there is one): both new, or both as they were."""
    from tfhash.index import HammingIndex
    from tfhash.io import array_writer, transaction

    if not output and not index_file:
        return
    output = output if not output or output.endswith(".npy") else output + ".npy"  # as np.save names it
    from tfhash.milvus_index import parse_address

    if index_file and parse_address(index_file):
        return _write_codes_to_milvus(codes, ids, output, index_file, wait)
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


def _write_codes_to_milvus(codes, ids, output, address, wait):
    """`encode --index milvus://HOST:PORT/COLLECTION` (or milvus:FILE.db#COLLECTION): the codes into a new or
    empty collection (a second encode would add every row again), after the .npy, if any."""
    from tfhash.io import array_writer, transaction
    from tfhash.milvus_index import MilvusIndex

    with MilvusIndex.open(address, codes.shape[1] * 8) as index:
        if index.ntotal:
            raise ValueError(f"Expected an empty or new Milvus collection for --index {address}. Received: one "
                             f"holding {index.ntotal} codes (drop it, or name another collection)")
        if output:
            with transaction(output, wait=wait) as result:
                result.write(output, array_writer(codes))
            print(f"wrote {codes.shape[0]} codes ({codes.shape[1] * 8} bits, packed uint8) to {output}")
        index.add(codes, ids=ids)
        print(f"added {index.ntotal} codes to Milvus collection {index.collection} at {index.uri}")


def _load_array(path, what):
    """A `.npy` array, with a damaged or foreign file reported in one line."""
    import numpy as np

    if os.path.isdir(path):
        raise ValueError(f"{path}: expected {what} in a .npy file (np.save). Received: a folder (image files go "
                         f"through --images DIR)")
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
    if args.image:
        return _search_images(args)
    from tfhash.milvus_index import MilvusIndex, parse_address

    queries = _load_array(args.queries, "query codes")
    if parse_address(args.index):  # milvus://HOST:PORT/COLLECTION or milvus:FILE.db#COLLECTION, opened as it is
        if args.method != "scan":
            raise ValueError(f"--method chooses how a Hamming index file is searched. Received: --method "
                             f"{args.method} with the Milvus collection {args.index}")
        index = MilvusIndex.open(args.index, create=False)  # bits: the collection's
    else:
        index = HammingIndex.load(args.index, method=args.method)
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


def _search_images(args):
    import numpy as np

    from tfhash.image_search import decode_queries, index_encoder, load_image_index, search_codes

    if args.output:
        raise ValueError(f"--output writes the ids of --queries' neighbours; --image prints paths. Received: "
                         f"--image with --output {args.output}")
    import_tensorflow(args.verbose)  # the query images are encoded: TensorFlow, quietly
    index = load_image_index(args.index)  # a file's HammingIndex, or a Milvus collection's MilvusIndex (open)
    try:
        encoder = index_encoder(index, run=args.run_dir)
        images, files = decode_queries(args.image, index)
        # Radius mode: every row within it found (its count printed), the nearest -k shown.
        found = search_codes(index, encoder.encode(images), k=None if args.radius is not None else args.k,
                             radius=args.radius)
    finally:
        if hasattr(index, "close"):
            index.close()
    results = [hits[: args.k] for hits in found]
    for file, hits, every in zip(files, results, found):
        within = f"within radius {args.radius}, nearest {len(hits)} shown" if args.radius is not None else "nearest"
        print(f"{file}: {len(every)} {within}")
        for hit in hits:
            print(f"  {hit.distance:4d}  {hit.path}")
    if args.show:
        from tfhash.data.folders import image_batches
        from tfhash.evaluation import plot_neighbours

        meta = index.metadata
        k = min(len(hits) for hits in results)
        if k == 0:
            raise ValueError(f"--show draws neighbours: expected at least one per query. Received: none within "
                             f"radius {args.radius}")
        wanted = [hit.path for hits in results for hit in hits[:k]]
        decoded = dict(zip(*_decode_all(image_batches, meta, wanted)))
        neighbours = np.stack([[decoded[hit.path] for hit in hits[:k]] for hits in results])
        plot_neighbours(images, neighbours, None, args.show, title=f"{len(files)} {'query' if len(files) == 1 else 'queries'} and "
                        f"their {k} nearest images in {args.index}", query_labels=[os.path.basename(f) for f in files],
                        neighbour_labels=[[os.path.basename(h.path) for h in hits[:k]] for hits in results],
                        distances=[[h.distance for h in hits[:k]] for hits in results])
        print(f"wrote the queries and their {k} nearest images to {args.show}")


def _decode_all(image_batches, meta, paths):
    """(paths, images) of files of an image index, decoded as it decoded them."""
    images = []
    for batch, _ in image_batches(meta["root"], paths, image_size=tuple(meta["image_size"]),
                                  channels=meta["channels"], keep_aspect=meta["keep_aspect"]):
        images.extend(batch.numpy())
    return paths, images


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
    g = p.add_argument_group("your own images (instead of --protocol)")
    g.add_argument("--images", help="a folder (class subfolders = labels, Keras's layout; none = unlabelled) or a "
                   "list file of 'path labels' lines (DeepHash-pytorch's format; a tab-separated caption column "
                   "for image-text methods); a seeded query/train/database split is drawn and kept in the run")
    g.add_argument("--image-size", type=int, help="side the images are resized to (default 64)")
    g.add_argument("--channels", type=int, choices=[1, 3], help="1 (greyscale) or 3 (RGB, the default)")
    g.add_argument("--keep-aspect", action="store_true", default=None,
                   help="keep the aspect ratio and pad (default: resize to the square)")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave unreadable images out, counted (default: stop, naming the file)")
    g.add_argument("--num-query", type=int, help="held-out queries (default: a tenth, at most 1,000)")
    g.add_argument("--num-train", type=int, help="training images (default: the non-query images but a tenth, at most 500, kept "
                   "to validate on)")
    g.add_argument("--captions", choices=["files"],
                   help="a list's captions from PATH.txt beside each image (default: its third tab column, if any)")


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
    p.add_argument("-k", type=int, nargs="+", default=None,
                   help="precision@K cut-offs (default: 100, or the database size if smaller)")
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
    p.add_argument("--inputs", help="a .npy array of raw images (or bags of words) instead of a protocol part")
    p.add_argument("--images", help="image files instead of a protocol part: a folder (walked recursively) or a "
                   "glob ('photos/*.jpg'), into --index (a file or a Milvus collection), each code's file kept there; "
                   "resumes an interrupted encode of the same files")
    p.add_argument("--keep-aspect", action=argparse.BooleanOptionalAction, default=None,
                   help="--images: keep the aspect ratio and pad (default: as the run was trained)")
    p.add_argument("--skip-bad", action="store_true", help="--images: leave unreadable images out, counted")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--output", help="write codes to this .npy file")
    p.add_argument("--index", help="write a HammingIndex of the codes to this file, or add them to Milvus: "
                   "milvus://HOST:PORT/COLLECTION (a server) or milvus:FILE.db#COLLECTION (milvus-lite; "
                   'pip install "tfhash[milvus]")')
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(run=_encode)

    p = sub.add_parser("search", help="k nearest codes (or all within a radius) in a saved index")
    p.add_argument("index", help="file written by `tfhash encode --index`, or a Milvus collection it filled "
                   "(milvus://HOST:PORT/COLLECTION, milvus:FILE.db#COLLECTION)")
    queries = p.add_mutually_exclusive_group(required=True)
    queries.add_argument("--queries", help=".npy of packed uint8 query codes")
    queries.add_argument("--image", nargs="+", help="query image file(s), for an index of image files "
                         "(`tfhash encode RUN --images DIR --index FILE`, or a Milvus collection so filled): prints each "
                         "neighbour's distance and path")
    p.add_argument("-k", type=int, default=10,
                   help="neighbours per query, >= 1; at most the index size are returned (radius mode: ids shown)")
    p.add_argument("--radius", type=int, default=None, help="radius search instead of k-NN")
    p.add_argument("--method", choices=["scan", "mih", "auto"], default="scan",
                   help="--queries in an index file: scan every code (default), multi-index hashing, or auto (it "
                        "where measured to pay: many queries in a large index of clustered codes); same results")
    p.add_argument("--output", help="write distances and ids to this .npz")
    p.add_argument("--run", dest="run_dir",
                   help="--image: the run whose encoder made the index (default: the one it records)")
    p.add_argument("--show", help="--image: write a picture of the queries beside their neighbours (PNG)")
    p.set_defaults(run=_search, loads_tensorflow=False)

    from tfhash.serving.command import add_serve_command

    add_serve_command(sub)

    from tfhash.export_cli import add_export_commands

    add_export_commands(sub)

    p = sub.add_parser("zoo", help="pretrained encoders: list, download, verify, build, publish")
    zoo_sub = p.add_subparsers(dest="zoo_command", required=True)
    q = zoo_sub.add_parser("list", help="the entries, with the mAP each reached and whether its file can be had")
    q.add_argument("--check", action="store_true",
                   help="ask a remote zoo's server for each file (by default: only local zoos and the cache are "
                        "looked at; remote entries say 'remote')")
    q.set_defaults(run=_zoo_list, loads_tensorflow=False)
    for name, run, text in (("download", _zoo_download, "fetch an entry (sha256 verified) into the cache"),
                            ("verify", _zoo_verify, "check an entry's cached file against its sha256"),
                            ("build", _zoo_build, "re-train an entry's recipe; check its mAP against the manifest")):
        q = zoo_sub.add_parser(name, help=text)
        q.add_argument("name", help="entry name (see `tfhash zoo list`), or hf://ORG/REPO[@REVISION]/ENTRY")
        q.set_defaults(run=run, loads_tensorflow=run is _zoo_build)
        if run is _zoo_download:
            q.add_argument("--quiet", action="store_true",
                           help="no progress output, only the path (by default: a progress line redrawn on a "
                                "terminal; elsewhere one line on stderr once downloaded)")
    q = zoo_sub.add_parser("missing", help="release check: the registered methods and code lengths no entry holds")
    q.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    q.set_defaults(run=_zoo_missing, loads_tensorflow=False)
    q = zoo_sub.add_parser("publish", help="train recipes (or take a run of one) into a zoo folder that can be "
                                           "served as it is")
    q.add_argument("recipe", nargs="?", help="a published recipe name or a recipe JSON file (with --run: by "
                                             "default the published recipe its run.json names)")
    q.add_argument("--run", dest="run_dir", metavar="RUN", help="publish this run directory (`tfhash train --output RUN`) instead of training; "
                                 "its run.json recipe must equal the recipe's")
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

    manifest = zoo.read_manifest()
    items = zoo.list(manifest, check=args.check)
    print(f"{'name':30s} {'class':18s} {'bits':>4s}  {'protocol':14s} {'metric':>28s}  {'size':>8s}  status")
    for item in items:
        metric = f"{item['metric']['name']} {item['metric']['value']:.4f}"
        print(f"{item['name']:30s} {item['class']:18s} {item['bits']:4d}  {item['protocol']:14s} {metric:>28s}  "
              f"{item['size'] / 1e6:5.1f} MB  {item['status']}")
    # What the statuses mean, on stderr (the table stays the output).
    base = zoo.base_url(manifest)
    absent = [item["name"] for item in items if item["status"] == zoo.NOT_PUBLISHED]
    if absent and base.startswith("file:"):
        folder = zoo.local_path(base).rstrip(os.sep)
        print(f"{len(absent)} of {len(items)} entries are not published at {base}: `tfhash zoo publish RECIPE "
              f"--zoo-dir {folder}` publishes one (`--run RUN`: a run of it; `--all`: every recipe), or set "
              f"{zoo.URL_ENV} to a published zoo (http(s)://, file:// or hf://ORG/REPO)", file=sys.stderr)
    elif absent:
        print(f"{len(absent)} of {len(items)} entries are not published at {base}: set {zoo.URL_ENV} to a zoo "
              f"that has them", file=sys.stderr)
    if any(item["status"] == zoo.REMOTE for item in items):
        print(f"remote: at {base}, not asked (`tfhash zoo list --check` asks)", file=sys.stderr)


def _zoo_download(args):
    from tfhash import zoo

    print(zoo.download(args.name, progress=not args.quiet))


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

    if args.all == (args.recipe is not None or args.run_dir is not None):
        raise ValueError(f"Expected a recipe, --run RUN or --all. Received: recipe={args.recipe!r}, "
                         f"--run={args.run_dir!r}, --all={args.all}")
    verbose = keras_verbose(args.quiet, "fit")
    names = (publish.publish_all(zoo_dir=args.zoo_dir, tolerance=args.tolerance, verbose=verbose) if args.all
             else publish.publish(args.recipe, run=args.run_dir, zoo_dir=args.zoo_dir, tolerance=args.tolerance,
                                  verbose=verbose))
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
        sys.stdout.flush()  # a reader gone early shows here, not in the interpreter's exit
    except BrokenPipeError:
        # `tfhash search ... | head`: the reader has what it wanted. Stop quietly, as the Python docs
        # advise (signal module, "Note on SIGPIPE"): stdout to devnull, so the exit's flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, ZooError) as error:  # OSError: missing files, a port in use
        print(f"tfhash {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ArithmeticError as error:  # training diverged: not bad input, but nothing was saved
        print(f"tfhash {args.command}: error: {error}", file=sys.stderr)
        return 1
    return code or 0  # a check's own verdict (zoo verify, zoo missing), else success


if __name__ == "__main__":
    sys.exit(main())
