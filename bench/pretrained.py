"""From scratch beside an ImageNet-pretrained trunk, in one run per part (issue 20).

    .venv/bin/python bench/pretrained.py bgan  [--bits 32] [--input-size 224] [--seed 0]
    .venv/bin/python bench/pretrained.py oca   [--bits 32] [--seed 0]
    .venv/bin/python bench/pretrained.py ugach [--bits 32 64] [--seed 0]
    .venv/bin/python bench/pretrained.py sizes
    .venv/bin/python bench/pretrained.py dsh_gan [--seeds 0 1 2] [--input-size 64] [--epochs 10] [--few-epochs 6]
                                                 [--scratch] [--resume]

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

dsh_gan: DSH-GAN's two targets on one frozen Lite0 trunk shared with DHN
  (Fashion-MNIST protocol), for each --seeds: with all labels, DSH-GAN vs DHN;
  with --fraction of the labels (drawn per class by the seed, as the recipe's
  plan does), DSH-GAN (the rest unlabelled) vs DHN on the labelled rows alone;
  each pair at equal optimizer steps. Sized for 2 CPU cores:
  - frozen, not fine-tuned: the real images' features are computed once
    (`trunk_inputs`); the 256 synthetic images of each step still go through
    the trunk (forward for the shared CNN's update, forward and backward for
    the generator's), ~1 s a step at 64 px, against ~0.01 s for DHN's head;
  - 64 px, the smallest side at which Lite0's features match pixel PCA's on
    Fashion-MNIST (`sizes`: 10-NN label share 0.714 vs 0.721; 0.617 at 32 px);
  - --epochs 10 with all labels (390 steps) and --few-epochs 6 with the
    fraction (420 steps), a third of the recipes' 30 / 17: ~6 min a DSH-GAN
    model, so 3 seeds x 2 settings fit in 45 minutes.
  DHN on the labelled fraction alone also runs at its recipe's 30 epochs (90
  steps), as bench/dsh_gan.py does; the better of the two is the bar.
  Every model is scored once after its last epoch, on the queries against the
  database through the same cached features (the encoder passes a frozen
  trunk's features through, `encoder(images) == encoder(features)`).
  --scratch adds the recipes' small CNN (from scratch) at the same steps;
  --resume keeps the runs already written with the same settings.
"""

import argparse
import dataclasses
import json
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


def dsh_gan(args):
    import numpy as np

    from tfhash import metrics
    from tfhash.data import draw_labelled
    from tfhash.layers import SignPack

    bits = args.bits[0]
    data = load_protocol("fashion_mnist")
    trunk = {"backbone": TRUNK, "backbone_weights": "imagenet", "freeze_backbone": True,
             "backbone_input_size": args.input_size}
    start = time.time()
    features = {part: pretrained_features(data.subset(part)[0], TRUNK, input_size=args.input_size)
                for part in ("query", "database")}
    feature_seconds = time.time() - start
    labels = {part: data.subset(part)[1] for part in ("query", "database")}
    train_labels = data.subset("train")[1]
    dhn_batch, dhn_epochs = (training.resolve(recipe=f"dhn_fashion_mnist_{bits}")["settings"][key]
                             for key in ("batch_size", "epochs"))
    dsh_batch = training.resolve(recipe=f"dsh_gan_fashion_mnist_{bits}")["settings"]["batch_size"]

    def score(encoder, pretrained):
        codes = {}
        for part in ("query", "database"):
            inputs = features[part] if pretrained else data.subset(part)[0]
            codes[part] = SignPack()(encoder.predict(inputs, batch_size=1024, verbose=0)).numpy()
        return metrics.evaluate(codes["query"], codes["database"], labels["query"], labels["database"],
                                **data.protocol.metric_options)["map"]

    record = {"bits": bits, "input_size": args.input_size, "fraction": args.fraction, "epochs": args.epochs,
              "few_epochs": args.few_epochs, "feature_seconds": feature_seconds, "runs": {}}
    output = "bench/results/pretrained_dsh_gan.json"
    if args.resume and os.path.isfile(output):
        with open(output) as f:
            earlier = json.load(f)
        if any(earlier[key] != record[key] for key in ("bits", "input_size", "fraction", "epochs", "few_epochs")):
            raise SystemExit(f"--resume: {output} holds runs of other settings; move it away or drop --resume")
        record["runs"] = earlier["runs"]
        record["feature_seconds"] = earlier["feature_seconds"]  # when they were computed, not read from the cache
    trunks = {"pretrained": trunk, **({"scratch": {}} if args.scratch else {})}
    for seed in args.seeds:
        labelled = draw_labelled(train_labels, args.fraction, seed=seed)
        few = dataclasses.replace(data, split=dataclasses.replace(data.split, train=data.split.train[labelled]))
        n, few_n = len(train_labels), int(labelled.sum())
        steps = (n // dsh_batch) * args.epochs
        few_steps = ((n - few_n) // (dsh_batch // 2)) * args.few_epochs  # half of each batch is unlabelled
        # (setting, run, method, data, schedule, steps)
        runs = (("all", "dhn", "dhn", data, {"epochs": -(-steps // (n // dhn_batch))}, steps),
                ("all", "dsh_gan", "dsh_gan", data, {"epochs": args.epochs}, steps),
                ("fraction", "dhn", "dhn", few, {"epochs": -(-few_steps // (few_n // dhn_batch))}, few_steps),
                ("fraction", "dsh_gan", "dsh_gan", data,
                 {"epochs": args.few_epochs, "labelled_fraction": args.fraction}, few_steps),
                # As bench/dsh_gan.py: DHN on the few labels also at its recipe's epochs (fewer steps, in case
                # the same steps overfit them); the better of the two is the bar.
                ("fraction", "dhn_recipe_epochs", "dhn", few, {"epochs": dhn_epochs},
                 (few_n // dhn_batch) * dhn_epochs))
        for kind, settings in trunks.items():
            for setting, run, method, run_data, schedule, run_steps in runs:
                name = f"{kind} {setting} {run} seed {seed}"
                if name in record["runs"]:  # --resume: kept from the earlier run
                    print(f"  {name:38s} mAP@all {record['runs'][name]['map']:.4f}  (kept)", flush=True)
                    continue
                result = training.train(recipe=f"{method}_fashion_mnist_{bits}", seed=seed, data=run_data,
                                        score=False, verbose=0, **schedule, **settings)
                record["runs"][name] = {"map": score(result.encoders["image"], kind == "pretrained"),
                                        "steps": run_steps, "train_seconds": result.seconds, **schedule}
                print(f"  {name:38s} mAP@all {record['runs'][name]['map']:.4f}  {run_steps} steps  "
                      f"{result.seconds:.0f} s", flush=True)
                write_json(record, output)  # run by run: an hour's work survives a stop (--resume)

    print(f"DSH-GAN vs DHN, Fashion-MNIST, {bits} bits, mAP@all at equal steps, seeds "
          f"{' / '.join(map(str, args.seeds))} (pretrained: {TRUNK} frozen @{args.input_size} px, features of the "
          f"queries and database computed in {record['feature_seconds']:.0f} s, then cached; "
          "scratch: the recipes' small CNN):")
    for kind in trunks:
        for setting, target in (("all", ">="), ("fraction", ">")):
            bars = ("dhn",) if setting == "all" else ("dhn", "dhn_recipe_epochs")
            pairs = [(record["runs"][f"{kind} {setting} dsh_gan seed {s}"]["map"],
                     max(record["runs"][f"{kind} {setting} {bar} seed {s}"]["map"] for bar in bars))
                     for s in args.seeds]
            dsh, dhn = np.mean(pairs, axis=0)
            label = "all labels" if setting == "all" else f"{args.fraction:.0%} labels (DHN on them alone*)"
            print(f"  {kind:10s} {label:34s} DSH-GAN {' / '.join(f'{p[0]:.4f}' for p in pairs)} (mean {dsh:.4f})"
                  f"   DHN {' / '.join(f'{p[1]:.4f}' for p in pairs)} (mean {dhn:.4f})"
                  f"   ratio {dsh / dhn:.3f} (target {target} 1)")
    print(f"  * the better of DHN at the same steps and at its recipe's {dhn_epochs} epochs")
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["bgan", "oca", "ugach", "sizes", "dsh_gan"])
    parser.add_argument("--bits", type=int, nargs="+", default=[32])
    parser.add_argument("--input-size", type=int, default=None,
                        help="side EfficientNetLite0 sees: bgan 224 (its ImageNet size), dsh_gan 64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dsh_gan")
    parser.add_argument("--fraction", type=float, default=0.1, help="dsh_gan: labelled share of the second setting")
    parser.add_argument("--epochs", type=int, default=10, help="dsh_gan: epochs with all labels")
    parser.add_argument("--few-epochs", type=int, default=6, help="dsh_gan: epochs with the fraction")
    parser.add_argument("--scratch", action="store_true", help="dsh_gan: also the small CNN from scratch")
    parser.add_argument("--resume", action="store_true",
                        help="dsh_gan: keep the runs of the same settings in bench/results/pretrained_dsh_gan.json")
    args = parser.parse_args(argv)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)
    if args.input_size is None:  # each part's default: see the module's docstring
        args.input_size = 64 if args.part == "dsh_gan" else 224
    record = {"bgan": bgan, "oca": oca, "ugach": ugach, "sizes": sizes, "dsh_gan": dsh_gan}[args.part](args)
    path = "bench/results/pretrained.json" if args.part == "bgan" else f"bench/results/pretrained_{args.part}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(record, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
