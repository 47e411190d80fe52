"""The `tfhash` command: train, evaluate, encode and search.

    tfhash train --model dhn --protocol fashion_mnist --bits 32 --output runs/dhn32
    tfhash evaluate runs/dhn32 --plot runs/dhn32/pr.png
    tfhash encode runs/dhn32 --part database --output db_codes.npy --index db.thi
    tfhash search db.thi --queries query_codes.npy -k 10
    tfhash export savedmodel runs/dhn32 --name dhn32
    tfhash export tflite runs/dhn32 --quantization int8
    tfhash serve --base-dir export/models
    tfhash zoo list | download NAME | verify NAME | build NAME | publish RECIPE
    tfhash reproduce zoo/recipes/dhn_fashion_mnist_32.json --protocol cifar10_54000
"""

import argparse
import os
import sys

from tfhash.io import write_json

# Quiet TF's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_protocol_args(parser):
    parser.add_argument("--protocol", default="fashion_mnist", help="dataset + committed split (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="directory with the dataset's local files")


# Used where neither the command line nor a recipe sets a value (the papers' settings).
TRAIN_DEFAULTS = {
    "model": "dhn", "protocol": "fashion_mnist", "bits": 32, "epochs": 30, "batch_size": 128,
    "learning_rate": 1e-3, "seed": 0, "alpha": 1.0, "balanced": False,
    "quantization": "log_cosh", "quantization_weight": 0.1, "backbone": "small_cnn", "dropout": 0.0,
}
MODEL_ARGS = ("alpha", "balanced", "quantization", "quantization_weight", "backbone", "dropout")


def _train(args):
    from tfhash import training

    recipe = training.recipe_settings(_recipe(args.recipe)) if args.recipe else {}
    recipe_model = recipe.pop("model_kwargs", {})
    recipe.update(recipe_model)
    # Command line first, then the recipe, then the papers' defaults.
    settings = {
        key: getattr(args, key) if getattr(args, key) is not None else recipe.get(key, default)
        for key, default in TRAIN_DEFAULTS.items()
    }
    # Recipe model options without a flag (e.g. backbone_weights) reach the model as given.
    model_kwargs = {**recipe_model, **{key: settings.pop(key) for key in MODEL_ARGS}}
    training.train(
        **settings,
        strategy=args.strategy,
        output_dir=args.output,
        data_dir=args.data_dir,
        model_kwargs=model_kwargs,
        verbose=2 if args.quiet else "auto",
    )
    print(f"saved model to {os.path.join(args.output, training.MODEL_FILE)}")


def _recipe(name_or_path):
    """A recipe from a JSON file, or the zoo's recipe of that name."""
    from tfhash import recipes

    if name_or_path.endswith(".json") or os.path.sep in name_or_path:
        return recipes.read(name_or_path)
    return recipes.published(name_or_path)


def _evaluate(args):
    from tfhash import training
    from tfhash.data import load_protocol
    from tfhash.evaluation import evaluate_model, plot_precision_recall
    from tfhash.index import HammingIndex

    model = training.load_model(args.model)
    data = load_protocol(args.protocol, args.data_dir)
    print(f"encoding {len(data.split.query)} queries and {len(data.split.database)} database images")
    # Unset, map_k and normalization are the protocol's (evaluate_model's default).
    chosen = {key: value for key, value in (("map_k", args.map_k), ("normalization", args.normalization))
              if value is not None}
    result, query_codes, database_codes = evaluate_model(
        model, data, verbose=1, ks=tuple(args.k), radius=args.radius, no_relevant=args.no_relevant, **chosen
    )
    print(f"\n{data.protocol.description}")
    print(f"mAP@{result['map_k']} ({result['protocol']['normalization']}, no_relevant={args.no_relevant}): "
          f"{result['map']:.4f}")
    for k in args.k:
        print(f"P@{k}: {result[f'precision@{k}']:.4f}")
    print(
        f"precision / recall within radius {args.radius}: "
        f"{result[f'precision@r{args.radius}']:.4f} / {result[f'recall@r{args.radius}']:.4f}"
    )
    _show_neighbours(data, query_codes, database_codes, args.sample_query, HammingIndex)
    if args.plot:
        plot_precision_recall({f"{model.name}, {result['bits']} bits": result["pr_curve"]}, args.plot)
        print(f"wrote precision-recall plot to {args.plot}")
    if args.json:
        write_json(result, args.json)
        print(f"wrote metrics to {args.json}")


def _show_neighbours(data, query_codes, database_codes, query, index_class, k=10):
    names = _class_names(data.protocol.name)
    index = index_class(query_codes.shape[1] * 8)
    index.add(database_codes, ids=data.split.database)
    distances, ids = index.search(query_codes[query : query + 1], k)
    q = int(data.split.query[query])
    print(f"\nquery #{query} (image {q}, label {names(data.labels[q])}): {k} nearest database images")
    for rank, (d, i) in enumerate(zip(distances[0], ids[0]), 1):
        mark = "+" if data.labels[i] == data.labels[q] else " "
        print(f"  {rank:2d}. image {i:6d}  hamming {d:3d}  {mark} {names(data.labels[i])}")


def _class_names(protocol):
    if protocol == "fashion_mnist":
        from tfhash.data.fashion_mnist import CLASS_NAMES

        return lambda label: CLASS_NAMES[int(label)]
    return lambda label: str(int(label))


def _encode(args):
    import numpy as np

    from tfhash import training
    from tfhash.data import load_protocol
    from tfhash.index import HammingIndex

    model = training.load_model(args.model)
    if args.images:
        images = np.load(args.images, allow_pickle=False)
        ids = None
    else:
        data = load_protocol(args.protocol, args.data_dir)
        images, _ = data.subset(args.part)
        ids = getattr(data.split, args.part)
    codes = model.encode(images, batch_size=args.batch_size, verbose=1)
    if args.output:
        np.save(args.output, codes, allow_pickle=False)
        print(f"wrote {codes.shape[0]} codes ({codes.shape[1] * 8} bits, packed uint8) to {args.output}")
    if args.index:
        index = HammingIndex(codes.shape[1] * 8)
        index.add(codes, ids=ids)
        index.save(args.index)
        print(f"wrote Hamming index of {len(index)} codes to {args.index}")


def _search(args):
    import numpy as np

    from tfhash.index import HammingIndex

    index = HammingIndex.load(args.index)
    queries = np.load(args.queries, allow_pickle=False)
    if args.radius is not None:
        lims, distances, ids = index.range_search(queries, args.radius)
        for q in range(len(queries)):
            found = ids[lims[q] : lims[q + 1]]
            print(f"query {q}: {len(found)} within radius {args.radius}, nearest {args.k}: {found[: args.k].tolist()}")
        return
    distances, ids = index.search(queries, args.k)
    if args.output:
        np.savez(args.output, distances=distances, ids=ids)
        print(f"wrote {ids.shape} neighbours to {args.output}")
    else:
        for q in range(len(ids)):
            print(f"query {q}: ids {ids[q].tolist()} distances {distances[q].tolist()}")


def build_parser():
    from tfhash.distribute import STRATEGIES

    parser = argparse.ArgumentParser(prog="tfhash", description="Deep learning to hash with TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a protocol's training split")
    p.add_argument("--recipe", help="a zoo recipe name, e.g. dhn_fashion_mnist_32, or a recipe JSON file "
                   "(flags given override it)")
    p.add_argument("--model", choices=["dhn"])
    p.add_argument("--protocol", help="dataset + committed split (default: fashion_mnist)")
    p.add_argument("--data-dir", default=None, help="directory with the dataset's local files")
    p.add_argument("--bits", type=int, help="code length (default: 32)")
    p.add_argument("--epochs", type=int, help="default: 30")
    p.add_argument("--batch-size", type=int, help="global batch size (default: 128)")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--strategy", choices=STRATEGIES, default="one_device")
    p.add_argument("--backbone", help="small_cnn (default) or a keras.applications name")
    p.add_argument("--dropout", type=float, help="default: 0")
    p.add_argument("--alpha", type=float, help="inner-product scale of the pairwise loss (paper: 1)")
    p.add_argument("--balanced", action="store_true", default=None, help="balance similar/dissimilar pairs")
    p.add_argument("--quantization", choices=["log_cosh", "squared"], help="default: log_cosh (paper)")
    p.add_argument("--quantization-weight", type=float, help="lambda (default: 0.1)")
    p.add_argument("--output", required=True, help="run directory (model.keras, run.json)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="score a model on a protocol's queries and database")
    p.add_argument("model", help="run directory or .keras file")
    _add_protocol_args(p)
    p.add_argument("--map-k", type=int, default=None, help="mAP cut-off (default: the protocol's)")
    p.add_argument("-k", type=int, nargs="+", default=[100], help="precision@K cut-offs")
    p.add_argument("--radius", type=int, default=2)
    p.add_argument("--normalization", choices=["retrieved", "min_k_relevant"], default=None,
                   help="AP denominator (default: the protocol's)")
    p.add_argument("--no-relevant", choices=["zero", "drop"], default="zero")
    p.add_argument("--sample-query", type=int, default=0, help="query whose neighbours are shown")
    p.add_argument("--plot", help="write the precision-recall curve to this PNG")
    p.add_argument("--json", help="write all metrics to this JSON file")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("encode", help="encode images to packed binary codes")
    p.add_argument("model", help="run directory or .keras file")
    _add_protocol_args(p)
    p.add_argument("--part", choices=["query", "train", "database"], default="database")
    p.add_argument("--images", help="a .npy array of raw images instead of a protocol part")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--output", help="write codes to this .npy file")
    p.add_argument("--index", help="write a HammingIndex of the codes to this file")
    p.set_defaults(run=_encode)

    p = sub.add_parser("search", help="k nearest codes (or all within a radius) in a saved index")
    p.add_argument("index", help="file written by `tfhash encode --index`")
    p.add_argument("--queries", required=True, help=".npy of packed uint8 query codes")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--radius", type=int, default=None, help="radius search instead of k-NN")
    p.add_argument("--output", help="write distances and ids to this .npz")
    p.set_defaults(run=_search)

    from tfhash.serving import add_serve_command

    add_serve_command(sub)

    from tfhash.export_cli import add_export_commands

    add_export_commands(sub)

    p = sub.add_parser("reproduce", help="run a recipe on its protocol and print the scores (one command per table cell)")
    p.add_argument("recipe", help="a zoo recipe name, e.g. dhn_fashion_mnist_32, or a recipe JSON file")
    p.add_argument("--protocol", help="another protocol with the same modalities, e.g. cifar10_54000")
    p.add_argument("--bits", type=int, help="another code length")
    p.add_argument("--seed", type=int, help="another seed")
    p.add_argument("--data-dir", default=None, help="directory with the dataset's local files")
    p.add_argument("--output", help="save the encoders (.keras) and scores (scores.json) here")
    p.add_argument("--strategy", choices=STRATEGIES, default="one_device")
    p.set_defaults(run=_reproduce)

    p = sub.add_parser("zoo", help="pretrained encoders: list, download, verify, build, publish")
    zoo_sub = p.add_subparsers(dest="zoo_command", required=True)
    zoo_sub.add_parser("list", help="the entries, with the mAP each reached").set_defaults(run=_zoo_list)
    for name, run, text in (("download", _zoo_download, "fetch an entry (sha256 verified) into the cache"),
                            ("verify", _zoo_verify, "check an entry's cached file against its sha256"),
                            ("build", _zoo_build, "re-run an entry's recipe; check its mAP against the manifest")):
        q = zoo_sub.add_parser(name, help=text)
        q.add_argument("name", help="entry name (see `tfhash zoo list`)")
        q.set_defaults(run=run)
    q = zoo_sub.add_parser("publish", help="run a recipe; write its encoders and manifest entries (maintainers)")
    q.add_argument("recipe", help="a recipe JSON file, e.g. zoo/recipes/dhn_fashion_mnist_32.json")
    q.add_argument("--zoo-dir", default=None, help="folder with manifest.json and files/ (default: zoo/)")
    q.add_argument("--tolerance", type=float, default=0.01, help="mAP tolerance `build` allows (default: 0.01)")
    q.set_defaults(run=_zoo_publish)
    return parser


def _reproduce(args):
    from tfhash import recipes
    from tfhash.data import load_protocol

    recipe = _recipe(args.recipe)
    recipe.update({k: getattr(args, k) for k in ("protocol", "bits", "seed") if getattr(args, k) is not None})
    recipes.check(recipe)
    data = load_protocol(recipe["protocol"], args.data_dir, **recipe.get("data", {}))
    result = recipes.run(recipe, data=data, strategy=args.strategy)
    print(data.protocol.description)
    for modality, score in result.scores.items():
        print(f"{recipe['name']} ({recipe['bits']} bits, {result.direction(modality)}): mAP {score['map']:.4f}, "
              f"P@100 {score['precision@100']:.4f}")
    print(f"trained in {result.seconds:.0f} s")
    from tfhash.distribute import is_chief

    if args.output and is_chief():  # one writer across workers
        os.makedirs(args.output, exist_ok=True)
        for modality, encoder in result.encoders.items():
            encoder.save(os.path.join(args.output, f"{modality}_encoder.keras"))
        write_json({"recipe": recipe, "scores": result.scores, "train_seconds": result.seconds},
                    os.path.join(args.output, "scores.json"))
        print(f"wrote the encoders and scores.json to {args.output}")


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
    from tfhash import zoo

    r = zoo.build(args.name)
    print(f"{r['entry']}: mAP {r['measured']:.4f}, manifest {r['expected']:.4f} (tolerance {r['tolerance']})")
    if not r["ok"]:
        raise ValueError(f"{r['entry']}: the rebuilt mAP is outside the manifest's tolerance")


def _zoo_publish(args):
    from tfhash import zoo

    for name in zoo.publish(args.recipe, zoo_dir=args.zoo_dir, tolerance=args.tolerance):
        print(f"published {name}")


def _zoo_verify(args):
    from tfhash import zoo

    if not zoo.verify(args.name):
        raise ValueError(f"{args.name}: not in the cache, or its sha256 does not match the manifest")
    print(f"{args.name}: ok")


def main(argv=None):
    from tfhash.zoo import ZooError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, ZooError) as error:  # OSError: missing files, a port in use
        print(f"tfhash {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
