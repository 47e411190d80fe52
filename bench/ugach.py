"""UGACH on the Open Clip Art cross-modal protocol, beside CCA-ITQ and UGACH
without its generator, on the same features.

    .venv/bin/python bench/ugach.py [--bits 32 64] [--pretrain-epochs 10] [--epochs 30]

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
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfhash import metrics  # noqa: E402
from tfhash.baselines import CCAITQ  # noqa: E402
from tfhash.callbacks import BestCheckpoint  # noqa: E402
from tfhash.data import graph_batches, load_protocol  # noqa: E402
from tfhash.evaluation import evaluate_cross_modal, pair_retrieval_map, validation_rows  # noqa: E402
from tfhash.models import UGACH  # noqa: E402
from tfhash.neighbours import batch_similarity, correlation_graph  # noqa: E402

SEED = 0
BATCH = 256
K = 5
D_LEARNING_RATE, G_LEARNING_RATE = 1e-3, 1e-4


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
    features = model.image_features(images[idx])
    h_image = tf.sigmoid(model.generator_image(features)).numpy()
    h_text = tf.sigmoid(model.generator_text(tf.constant(texts[idx], tf.float32))).numpy()
    logits = -((h_image[:, None, :] - h_text[None, :, :]) ** 2).sum(-1)
    logits[related] = -np.inf
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    share = (labels[idx].astype(np.float32) @ labels[idx].T.astype(np.float32)) > 0
    return float((p * share).sum(1).mean()), float(share[~related].mean())


def ugach(data, bits, epochs, pretrain_epochs, generator, validation):
    images, texts, _ = data.subset("train")
    keras.utils.set_random_seed(SEED)
    steps = len(images) // BATCH
    model = UGACH(bits=bits, input_shape=images.shape[1:], vocabulary_size=texts.shape[1], generator=generator,
                  pretrain_steps=pretrain_epochs * steps, seed=SEED)
    model.adapt(images)
    graph = correlation_graph(model.image_features(images), texts.astype(np.float32), k=K)
    model.compile(optimizer=keras.optimizers.Adam(D_LEARNING_RATE), g_optimizer=keras.optimizers.Adam(G_LEARNING_RATE))
    best = BestCheckpoint(lambda m: pair_retrieval_map(m.image_encoder, m.text_encoder, *validation), name="val_pair_map")
    start = time.time()
    history = model.fit(graph_batches(images, texts, graph, BATCH, seed=SEED), epochs=epochs, callbacks=[best],
                        verbose=0).history
    seconds = time.time() - start
    result = evaluate_cross_modal(model.image_encoder, model.text_encoder, data.subset("query"), data.subset("database"))
    return model, graph, {
        **scores(result),
        "kept_epoch": best.best_epoch + 1,
        "val_pair_map": [round(v, 4) for v in history["val_pair_map"]],
        "final_logs": {k: float(v[-1]) for k, v in history.items()},
        "train_seconds": round(seconds, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--output", default="bench/results/ugach.json")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)

    data = load_protocol("open_clip_art", image_size=64)
    held_out, _ = validation_rows(data.split, size=500, seed=SEED)
    validation = (data.images[held_out], data.texts[held_out])
    results = {}
    for bits in args.bits:
        alone_model, _, alone = ugach(data, bits, args.epochs, args.pretrain_epochs, False, validation)
        model, graph, ours = ugach(data, bits, args.epochs, args.pretrain_epochs, True, validation)
        baseline, cca_seconds = cca_itq(model, data, bits)
        images, texts, labels = data.subset("train")
        picked, uniform = pick_label_share(model, images, texts, labels, graph)
        results[bits] = {"ugach": ours, "without_generator": alone, "cca_itq": scores(baseline),
                         "cca_itq_fit_seconds": round(cca_seconds, 1),
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
        json.dump({"command": " ".join(sys.argv), "protocol": data.protocol.description, "batch": BATCH, "k": K,
                   "learning_rates": {"discriminator": D_LEARNING_RATE, "generator": G_LEARNING_RATE},
                   "results": results}, f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
