"""SSAH on the Open Clip Art cross-modal protocol, beside CCA-ITQ on the same features.

    .venv/bin/python bench/ssah.py [--bits 32 64] [--rounds 3]

The settings are the zoo's recipes (tfhash/zoo/recipes/ssah_open_clip_art_BITS.json),
run by `tfhash.training.train`.

Open Clip Art (Debian openclipart-png/-svg): image-text pairs with multi-hot
labels; 2,000 queries, 4,000 training pairs, database = every non-query pair
(`tfhash.data.load_protocol("open_clip_art")`). Scored both ways: image
queries against the database's text codes (I->T) and text queries against
image codes (T->I), mAP@all and P@100.

SSAH trains from scratch (small CNN on the 64x64 images, TxtNet on the
bag of words); the round whose validation mAP (mean of I->T and T->I on 500
held-out database pairs against the training set; never the queries) is best
is kept. Baselines on the same features: CCA-ITQ (`tfhash.baselines.CCAITQ`:
image pixels and bag of words, PCA to 512 dims, CCA, one ITQ rotation) and
the untrained SSAH. Target: SSAH above CCA-ITQ in both directions.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfhash import metrics, training  # noqa: E402
from tfhash.baselines import CCAITQ  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.evaluation import evaluate_cross_modal  # noqa: E402


class ScoreUntrained(keras.callbacks.Callback):
    """Both directions' scores of the freshly initialized encoders."""

    def __init__(self, data):
        super().__init__()
        self.data, self.result = data, None

    def on_train_begin(self, logs=None):
        self.result = evaluate_cross_modal(self.model.image_encoder, self.model.text_encoder,
                                           self.data.subset("query"), self.data.subset("database"))


def cca_itq(data, bits, seed=0):
    """Both directions' scores for CCA-ITQ on pixels and bag of words."""
    def pixels(images):
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    (xi, xt, _), (qi, qt, ql), (di, dt, dl) = (data.subset(p) for p in ("train", "query", "database"))
    start = time.time()
    model = CCAITQ(bits, seed=seed).fit(pixels(xi), xt.astype(np.float32))
    seconds = time.time() - start
    q_img, q_txt = model.encode_x(pixels(qi)), model.encode_y(qt.astype(np.float32))
    d_img, d_txt = model.encode_x(pixels(di)), model.encode_y(dt.astype(np.float32))
    return {
        "image_to_text": metrics.evaluate(q_img, d_txt, ql, dl),
        "text_to_image": metrics.evaluate(q_txt, d_img, ql, dl),
        "fit_seconds": seconds,
    }


def summary(result):
    return {d: {"map": result[d]["map"], "precision@100": result[d]["precision@100"]}
            for d in ("image_to_text", "text_to_image")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="bench/results/ssah.json")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)

    results = {}
    for bits in args.bits:
        recipe = training.resolve(recipe=f"ssah_open_clip_art_{bits}")
        settings = recipe["settings"]
        # SSAH trains in rounds of label, image and text epochs.
        settings["epochs"] = args.rounds * sum(settings[f"{p}_epochs"] for p in ("label", "image", "text"))
        if bits == args.bits[0]:
            start = time.time()
            data = load_protocol("open_clip_art", **recipe["data"])
            print(f"{data.protocol.description} Loaded in {time.time() - start:.1f} s.", flush=True)
        baseline = cca_itq(data, bits)
        untrained = ScoreUntrained(data)
        result = training.train(recipe=recipe, data=data, callbacks=[untrained], verbose=0)
        seconds, val = result.seconds, result.history.get("val_map")
        results[bits] = {
            "ssah": {d: result.scores[m] for m, d in (("image", "image_to_text"), ("text", "text_to_image"))},
            "cca_itq": summary(baseline),
            "untrained": summary(untrained.result),
            "val_map_per_round": val,
            "best_round": int(np.argmax(val)) + 1,  # the round BestCheckpoint keeps
            "train_seconds": seconds,
            "recipe": recipe,
        }
        print(f"\n{bits} bits: trained {seconds:.0f} s, validation mAP per round {val}, "
              f"kept round {results[bits]['best_round']}")
        print("| direction | SSAH mAP@all | CCA-ITQ | untrained SSAH | SSAH P@100 | CCA-ITQ P@100 |")
        print("|---|---|---|---|---|---|")
        for d, name in (("image_to_text", "I->T"), ("text_to_image", "T->I")):
            s, c, u = results[bits]["ssah"][d], results[bits]["cca_itq"][d], results[bits]["untrained"][d]
            print(f"| {name} | {s['map']:.4f} (x{s['map'] / c['map']:.2f}) | {c['map']:.4f} | {u['map']:.4f} "
                  f"| {s['precision@100']:.4f} | {c['precision@100']:.4f} |", flush=True)

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"command": " ".join(sys.argv), "protocol": data.protocol.description,
                   "results": results}, f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
