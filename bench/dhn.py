"""DHN on the Fashion-MNIST protocol at 32 and 64 bits: the foundation's mAP target.

    .venv/bin/python bench/dhn.py [--bits 32 64] [--epochs 30] [--output bench/results/dhn.json]

Trains with the zoo's recipe `dhn_fashion_mnist_BITS` (`make demo` runs the 32-bit one), encodes the
1,000 queries and 69,000 database images, and prints mAP@all (normalization
"retrieved" = min_k_relevant at K = all; queries without relevant items count
0) and P@100 beside the untrained encoder's figures. Target: mAP@all >= 0.80.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhash import recipes, training  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.evaluation import evaluate_model  # noqa: E402
from tfhash.models import DHN  # noqa: E402


def recipe(bits):
    """The zoo recipe at `bits` (the 32-bit one's at other lengths)."""
    return recipes.published(f"dhn_fashion_mnist_{bits}" if bits in (32, 64) else "dhn_fashion_mnist_32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=recipe(32)["settings"]["epochs"])
    parser.add_argument("--output", default="bench/results/dhn.json")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    data = load_protocol("fashion_mnist")
    rows = []
    for bits in args.bits:
        untrained = DHN(bits=bits, input_shape=data.images.shape[1:])
        base, _, _ = evaluate_model(untrained, data, curve=False)
        start = time.time()
        # Scored below, with the protocol's description for the JSON.
        run = training.train(recipe=recipe(bits), bits=bits, epochs=args.epochs, data=data, verbose=0, score=False)
        seconds = time.time() - start
        result, _, _ = evaluate_model(run.encoders["image"], data, curve=False)
        rows.append(
            dict(
                bits=bits,
                map_all=result["map"],
                precision_at_100=result["precision@100"],
                untrained_map_all=base["map"],
                train_seconds=round(seconds, 1),
                final_loss=run.history["loss"][-1],
                recipe=run.recipe,
                protocol=result["protocol"],
            )
        )
        print(
            f"DHN {bits:3d} bits: mAP@all {result['map']:.4f}  P@100 {result['precision@100']:.4f}  "
            f"(untrained {base['map']:.4f}; target >= 0.80)  train {seconds:.0f} s",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
