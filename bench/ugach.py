"""UGACH on the Open Clip Art cross-modal protocol, beside CCA-ITQ and UGACH
without its generator, on the same features.

    .venv/bin/python bench/ugach.py [--bits 32 64] [--pretrain-epochs 10] [--epochs 30]

The settings are the zoo's recipes (tfhash/zoo/recipes/ugach_open_clip_art_BITS.json),
run by `tfhash.training.train`, so the figures here are the published ones.

Open Clip Art (Debian openclipart-png/-svg): 6,886 image-text pairs, 2,000
queries, 4,000 training pairs, database = every non-query pair
(`tfhash.data.load_protocol("open_clip_art")`). Scored both ways, mAP@all:
image queries against text codes (I->T) and text queries against image
codes (T->I).

Nothing here reads a label except the scoring:

- Features: `PixelPCA` (512 principal components of the 64x64 pixels, fitted
  on the training images) and the 1,021-word bags of words.
- Correlation graph on the training pairs: each item, its 5 image and its 5
  text nearest neighbours (`correlation_graph`).
- Checkpoints: the epoch with the best `pair_retrieval_map` on 500 held-out
  database pairs (does each image find its own text, and back) is kept.

Three models on those features:

- CCA-ITQ (`tfhash.baselines.CCAITQ`): the unsupervised shallow baseline.
- UGACH without its generator: the discriminator trained on the graph alone
  with uniformly drawn negatives, for all `--epochs`.
- UGACH: the same for `--pretrain-epochs` (the official code's pre-training),
  then the generator picks the negatives until `--epochs`.

Targets: UGACH above both, in both directions, at 32 and 64 bits.

A diagnosis follows each UGACH run, using labels after training only: the
share of the generator's picks (probability-weighted) that share a label
with their query, beside uniform picks' share.
"""

import argparse
import copy
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfhash import metrics, recipes, training  # noqa: E402
from tfhash.baselines import CCAITQ  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.neighbours import batch_similarity, correlation_graph  # noqa: E402

SEED = 0


def scores(result):
    return {d: {"map": result[d]["map"], "precision@100": result[d]["precision@100"]}
            for d in ("image_to_text", "text_to_image")}


def cca_itq(model, data, bits):
    """CCA-ITQ on the UGACH features: PCA pixels and bags of words."""
    (xi, xt, _), (qi, qt, ql), (di, dt, dl) = (data.subset(p) for p in ("train", "query", "database"))
    start = time.time()
    cca = CCAITQ(bits, seed=SEED).fit(model.image_features(xi), xt.astype(np.float32))
    seconds = time.time() - start
    q_img, q_txt = cca.encode_x(model.image_features(qi)), cca.encode_y(qt.astype(np.float32))
    d_img, d_txt = cca.encode_x(model.image_features(di)), cca.encode_y(dt.astype(np.float32))
    return {
        "image_to_text": metrics.evaluate(q_img, d_txt, ql, dl),
        "text_to_image": metrics.evaluate(q_txt, d_img, ql, dl),
    }, seconds


def pick_label_share(model, images, texts, labels, graph, rows=1000):
    """Probability-weighted share of the generator's text picks for image queries
    that share a label with the query, beside uniform picks' (labels: diagnosis only)."""
    idx = np.random.default_rng(SEED).choice(len(images), rows, replace=False)
    related = batch_similarity(idx.astype(np.float32), graph[idx].astype(np.float32)).numpy() > 0
    p = model.pick_probabilities(images[idx], texts[idx], related)
    share = (labels[idx].astype(np.float32) @ labels[idx].T.astype(np.float32)) > 0
    return float((p * share).sum(1).mean()), float(share[~related].mean())


def ugach(recipe, data, epochs, pretrain_epochs, generator):
    recipe = copy.deepcopy(recipe)
    recipe["settings"].update(epochs=epochs, pretrain_epochs=pretrain_epochs, generator=generator)
    result = training.train(recipe=recipe, data=data, verbose=0)
    val = result.history["val_pair_map"]
    summary = {
        "image_to_text": result.scores["image"], "text_to_image": result.scores["text"],
        "kept_epoch": int(np.argmax(val)) + 1,
        "val_pair_map": [round(v, 4) for v in val],
        "final_logs": {k: float(v[-1]) for k, v in result.history.items()},
        "train_seconds": result.seconds,
    }
    return result.model, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--output", default="bench/results/ugach.json")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)

    data = load_protocol("open_clip_art", image_size=64)
    results = {}
    for bits in args.bits:
        recipe = recipes.published(f"ugach_open_clip_art_{bits}")
        _, alone = ugach(recipe, data, args.epochs, args.pretrain_epochs, False)
        model, ours = ugach(recipe, data, args.epochs, args.pretrain_epochs, True)
        baseline, cca_seconds = cca_itq(model, data, bits)
        images, texts, labels = data.subset("train")
        graph = correlation_graph(model.image_features(images), texts.astype(np.float32), k=recipe["settings"]["k"])
        picked, uniform = pick_label_share(model, images, texts, labels, graph)
        results[bits] = {"ugach": ours, "without_generator": alone, "cca_itq": scores(baseline),
                         "cca_itq_fit_seconds": round(cca_seconds, 1), "recipe": recipe,
                         "generator_pick_label_share": picked, "uniform_pick_label_share": uniform}
        print(f"\n{bits} bits: UGACH kept epoch {ours['kept_epoch']} ({ours['train_seconds']:.0f} s), "
              f"without generator epoch {alone['kept_epoch']} ({alone['train_seconds']:.0f} s)")
        print("| direction | UGACH mAP@all | without generator | CCA-ITQ | UGACH P@100 |")
        print("|---|---|---|---|---|")
        for d, name in (("image_to_text", "I->T"), ("text_to_image", "T->I")):
            u, a, c = ours[d], alone[d], results[bits]["cca_itq"][d]
            print(f"| {name} | {u['map']:.4f} | {a['map']:.4f} (UGACH x{u['map'] / a['map']:.3f}) "
                  f"| {c['map']:.4f} (UGACH x{u['map'] / c['map']:.3f}) | {u['precision@100']:.4f} |", flush=True)
        print(f"generator picks sharing a label with the query: {picked:.3f} (uniform picks: {uniform:.3f})",
              flush=True)

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"command": " ".join(sys.argv), "protocol": data.protocol.description, "results": results},
                  f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
