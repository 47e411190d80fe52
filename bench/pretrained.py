"""From scratch beside an ImageNet-pretrained feature space, in one run (issue 20).

    .venv/bin/python bench/pretrained.py [--bits 32] [--input-size 224] [--seed 0]

BGAN (Fashion-MNIST protocol, no labels in training): its published recipe
builds the neighbour structure S on the PCA of the pixels; the paper builds it
on an ImageNet CNN's features. This runs the recipe twice, S from pixel PCA
and S from EfficientNetLite0's pooled features (ImageNet weights, offline;
`tfhash.models.backbones.pretrained_features`, computed once and cached), and
prints both mAP@all figures and their ratio. Beside them, as a diagnostic of
the two spaces, the share of each training image's K1 nearest neighbours that
share its label (training labels, read only here; nothing is selected on the
queries).

The encoder is the recipe's small CNN from scratch in both runs: only S changes.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from tfhash import training  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.io import write_json  # noqa: E402
from tfhash.models.backbones import pretrained_features  # noqa: E402
from tfhash.neighbours import knn, pixel_features  # noqa: E402


def neighbour_label_share(features, labels, k):
    """Mean share of each row's k nearest neighbours with the row's label."""
    return float((labels[knn(features, k)] == labels[:, None]).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224, help="side EfficientNetLite0 sees (its ImageNet size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/pretrained.json")
    args = parser.parse_args(argv)

    data = load_protocol("fashion_mnist")
    images, labels = data.subset("train")
    recipe = f"bgan_fashion_mnist_{args.bits}"
    k1 = training.resolve(recipe=recipe)["settings"]["k1"]

    start = time.time()
    lite = pretrained_features(images, "EfficientNetLite0", input_size=args.input_size)
    feature_seconds = time.time() - start
    share = {"pixels": neighbour_label_share(pixel_features(images), labels, k1),
             "EfficientNetLite0": neighbour_label_share(lite, labels, k1)}

    runs = {}
    for features in ("pixels", "EfficientNetLite0"):
        result = training.train(recipe=recipe, seed=args.seed, data=data, verbose=0, features=features,
                                feature_input_size=args.input_size if features != "pixels" else None)
        runs[features] = {"map": result.scores["image"]["map"], "train_seconds": result.seconds,
                          "neighbour_label_share": share[features]}

    print(f"BGAN {args.bits} bits, Fashion-MNIST, seed {args.seed}: S from pixel PCA vs EfficientNetLite0 features "
          f"({args.input_size} px, ImageNet; features of the 5,000 training images in {feature_seconds:.0f} s, cached)")
    for features, run in runs.items():
        print(f"  {features:18s} mAP@all {run['map']:.4f}   {k1}-NN sharing the label {run['neighbour_label_share']:.3f}"
              f"   trained in {run['train_seconds']:.0f} s")
    ratio = runs["EfficientNetLite0"]["map"] / runs["pixels"]["map"]
    print(f"  pretrained / from scratch: {ratio:.3f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    write_json({"bits": args.bits, "seed": args.seed, "input_size": args.input_size, "runs": runs, "ratio": ratio,
                "feature_seconds": feature_seconds}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
