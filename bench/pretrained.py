"""From scratch beside an ImageNet-pretrained trunk, in one run per part (issue 20).

    .venv/bin/python bench/pretrained.py bgan  [--bits 32] [--input-size 224] [--seed 0]
    .venv/bin/python bench/pretrained.py oca   [--bits 32] [--seed 0]
    .venv/bin/python bench/pretrained.py ugach [--bits 32 64] [--seed 0]
    .venv/bin/python bench/pretrained.py sizes

sizes: how much the ImageNet features say about Fashion-MNIST's classes at
  the side Lite0 sees them: the share of each of 2,000 training images' 10
  nearest neighbours (Euclidean, `tfhash.neighbours.knn`) with
  its label, pixel PCA beside Lite0 at 32, 64, 96, 128 and 224 px, with the
  images encoded per second (a diagnostic on training labels only).

The trunk is EfficientNetLite0 with its ImageNet weights (offline, `tfhash[pretrained]`).
Nothing is selected on the queries: every model is scored once; UGACH and
SSAH keep the epoch their own label-free / held-out validation picks.

bgan: BGAN (Fashion-MNIST protocol, no labels) with its neighbour structure S
  on the PCA of the pixels (the recipe) and on Lite0's pooled features (the
  paper: an ImageNet CNN's). The encoder is the recipe's small CNN in both
  runs: only S changes. Beside them, the share of each training image's K1
  nearest neighbours with its label (training labels, a diagnostic only).

oca: DHN (open_clip_art_images: image->image, relevant = a shared label) and
  SSAH (open_clip_art: I->T, T->I), 64 px decodes, each from scratch (the small
  CNN, the recipes' settings) beside the same settings on Lite0:
  - frozen, seen at 128 px (the 64 px decode upsampled): features computed
    once (`trunk_inputs`), so training costs what the head costs. 128, not
    224: 3x fewer FLOPs per image, and Lite0 at 128 on these decodes was not
    worse than at 192 for label retrieval (issue 20's probe);
  - DHN fine-tuned end to end at 64 px, 5 epochs at learning rate 3e-4 (a
    pretrained trunk moves little; ~30 s an epoch on 2 cores, where 30 epochs
    at 128 px would take ~40 min).

ugach: UGACH's claim, the generator beats the discriminator trained on the
  correlation graph alone (`generator=False`), I->T and T->I, on its image
  features from pixel PCA (the recipe) and from Lite0 at 128 px (the paper:
  VGG19 fc7), at each --bits, the recipe's settings; epochs kept by the
  label-free held-out pair score.

DSH-GAN on a pretrained trunk is not run: its shared CNN reads every generated
image, so the trunk cannot be cached and runs forward and backward on 256
images a step; at 64 px that is ~2 s a step, ~40 min per model for the
recipe's 1,170 steps, 12 models for the issue's 3 seeds x 4 runs.
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


TRUNK = "EfficientNetLite0"


def bgan(args):
    data = load_protocol("fashion_mnist")
    images, labels = data.subset("train")
    recipe = f"bgan_fashion_mnist_{args.bits[0]}"
    k1 = training.resolve(recipe=recipe)["settings"]["k1"]

    start = time.time()
    lite = pretrained_features(images, TRUNK, input_size=args.input_size)
    feature_seconds = time.time() - start
    share = {"pixels": neighbour_label_share(pixel_features(images), labels, k1),
             TRUNK: neighbour_label_share(lite, labels, k1)}

    runs = {}
    for features in ("pixels", TRUNK):
        result = training.train(recipe=recipe, seed=args.seed, data=data, verbose=0, features=features,
                                feature_input_size=args.input_size if features != "pixels" else None)
        runs[features] = {"map": result.scores["image"]["map"], "train_seconds": result.seconds,
                          "neighbour_label_share": share[features]}

    print(f"BGAN {args.bits[0]} bits, Fashion-MNIST, seed {args.seed}: S from pixel PCA vs {TRUNK} features "
          f"({args.input_size} px, ImageNet; features of the 5,000 training images in {feature_seconds:.0f} s, cached)")
    for features, run in runs.items():
        print(f"  {features:18s} mAP@all {run['map']:.4f}   {k1}-NN sharing the label {run['neighbour_label_share']:.3f}"
              f"   trained in {run['train_seconds']:.0f} s")
    ratio = runs[TRUNK]["map"] / runs["pixels"]["map"]
    print(f"  pretrained / from scratch: {ratio:.3f}")
    return {"bits": args.bits[0], "seed": args.seed, "input_size": args.input_size, "runs": runs, "ratio": ratio,
            "feature_seconds": feature_seconds}


FROZEN = {"backbone": TRUNK, "backbone_weights": "imagenet", "backbone_input_size": 128, "freeze_backbone": True}
FINE_TUNED = {"backbone": TRUNK, "backbone_weights": "imagenet", "backbone_input_size": 64, "epochs": 5,
              "learning_rate": 3e-4}


def oca(args):
    bits, out = args.bits[0], {}
    images = load_protocol("open_clip_art_images", image_size=64)
    pairs = load_protocol("open_clip_art", image_size=64)
    dhn = training.resolve(recipe=f"dhn_fashion_mnist_{bits}")["settings"]  # DHN's settings; no OCA recipe of its own
    for name, trunk in (("from scratch", {}), ("Lite0 frozen @128", FROZEN), ("Lite0 fine-tuned @64", FINE_TUNED)):
        result = training.train("dhn", data=images, bits=bits, seed=args.seed, verbose=0, **{**dhn, **trunk})
        out[f"dhn {name}"] = {"image->image": result.scores["image"]["map"], "train_seconds": result.seconds}
    for name, trunk in (("from scratch", {}), ("Lite0 frozen @128", FROZEN)):
        result = training.train(recipe=f"ssah_open_clip_art_{bits}", data=pairs, seed=args.seed, verbose=0, **trunk)
        out[f"ssah {name}"] = {"image->text": result.scores["image"]["map"], "text->image": result.scores["text"]["map"],
                               "train_seconds": result.seconds}
    print(f"Open Clip Art, {bits} bits, seed {args.seed}, mAP@all (queries scored once):")
    for name, run in out.items():
        figures = "   ".join(f"{k} {v:.4f}" for k, v in run.items() if k != "train_seconds")
        print(f"  {name:26s} {figures}   trained in {run['train_seconds']:.0f} s")
    return {"bits": bits, "seed": args.seed, "runs": out}


def ugach(args):
    pairs = load_protocol("open_clip_art", image_size=64)
    out = {}
    for bits in args.bits:
        for features in ("pixels", TRUNK):
            trunk = {} if features == "pixels" else {"features": TRUNK, "feature_input_size": 128}
            for generator in (True, False):
                result = training.train(recipe=f"ugach_open_clip_art_{bits}", data=pairs, seed=args.seed, verbose=0,
                                        generator=generator, **trunk)
                out[f"{bits} {features} {'generator' if generator else 'graph alone'}"] = {
                    "image->text": result.scores["image"]["map"], "text->image": result.scores["text"]["map"],
                    "train_seconds": result.seconds}
    print(f"UGACH on Open Clip Art, seed {args.seed}, mAP@all, generator vs graph alone:")
    for name, run in out.items():
        print(f"  {name:36s} image->text {run['image->text']:.4f}   text->image {run['text->image']:.4f}"
              f"   trained in {run['train_seconds']:.0f} s")
    for bits in args.bits:
        for features in ("pixels", TRUNK):
            g, d = out[f"{bits} {features} generator"], out[f"{bits} {features} graph alone"]
            print(f"  {bits} bits, {features}: generator - graph alone: image->text "
                  f"{g['image->text'] - d['image->text']:+.4f}, text->image {g['text->image'] - d['text->image']:+.4f}")
    return {"seed": args.seed, "runs": out}


def sizes(args):
    data = load_protocol("fashion_mnist")
    images, labels = (a[:2000] for a in data.subset("train"))
    out = {"pixels": {"share": neighbour_label_share(pixel_features(images), labels, 10)}}
    for side in (32, 64, 96, 128, 224):
        start = time.time()
        features = pretrained_features(images, TRUNK, input_size=side, cache=False)
        out[side] = {"share": neighbour_label_share(features, labels, 10),
                     "images_per_second": len(images) / (time.time() - start)}
    print("Fashion-MNIST, 2,000 training images: share of the 10 nearest neighbours with the image's label")
    for name, row in out.items():
        speed = f"   {row['images_per_second']:.0f} images/s" if "images_per_second" in row else ""
        print(f"  {'pixel PCA' if name == 'pixels' else f'{TRUNK} @{name} px':24s} {row['share']:.3f}{speed}")
    return {str(k): v for k, v in out.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["bgan", "oca", "ugach", "sizes"])
    parser.add_argument("--bits", type=int, nargs="+", default=[32])
    parser.add_argument("--input-size", type=int, default=224, help="side EfficientNetLite0 sees for bgan (its ImageNet size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)
    record = {"bgan": bgan, "oca": oca, "ugach": ugach, "sizes": sizes}[args.part](args)
    path = "bench/results/pretrained.json" if args.part == "bgan" else f"bench/results/pretrained_{args.part}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(record, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
