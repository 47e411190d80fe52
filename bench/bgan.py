"""BGAN on the Fashion-MNIST protocol, beside two label-free baselines.

    .venv/bin/python bench/bgan.py [--bits 32 64] [--epochs 10] [--plot bench/results/bgan.png]

Training uses no labels (balanced neighbour loss, see `BGAN`): S comes from k-NN (K1 = 20,
K2 = 30) in a fixed feature space (PCA of the pixels, `pixel_features`).
Labels only score: mAP@all over the 1,000 queries and 69,000 database images
after every epoch, beside beta, so the effect of annealing shows. Baselines on
the same protocol: the untrained encoder's codes and random-projection LSH on
the centred pixels. Targets: BGAN > 1.2x the untrained encoder, and > LSH.

The settings are the zoo's recipes (tfhash/zoo/recipes/bgan_fashion_mnist_BITS.json),
run by `tfhash.training.train`, so the final figures are the published ones.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from tfhash import metrics, recipes, training  # noqa: E402
from tfhash.baselines import LSH  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402


class ScoreEachEpoch(keras.callbacks.Callback):
    """mAP@all of the encoder before training and after every epoch, with beta."""

    def __init__(self, data):
        super().__init__()
        self.data, self.untrained, self.per_epoch = data, None, []

    def on_train_begin(self, logs=None):
        self.untrained = encoder_map(self.model.encoder, self.data)

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append({"epoch": epoch + 1, "beta": logs["beta"], "map": encoder_map(self.model.encoder, self.data)})


def lsh_map(data, bits, seed=0):
    """mAP@all of sign(random projection of centred pixels): tfhash.baselines.LSH."""

    def pixels(part):
        images, labels = data.subset(part)
        return images.reshape(len(images), -1) / 255.0, labels

    lsh = LSH(bits, seed=seed).fit(pixels("train")[0])
    (xq, yq), (xd, yd) = pixels("query"), pixels("database")
    return metrics.mean_average_precision(lsh.encode(xq), lsh.encode(xd), yq, yd)


def encoder_map(encoder, data):
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    return metrics.mean_average_precision(encoder.encode(xq, 1024), encoder.encode(xd, 1024), yq, yd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--plot", default="bench/results/bgan.png")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    data = load_protocol("fashion_mnist")
    results = {}
    for bits in args.bits:
        recipe = recipes.published(f"bgan_fashion_mnist_{bits}")
        recipe["settings"]["epochs"] = args.epochs
        score = ScoreEachEpoch(data)
        result = training.train(recipe=recipe, data=data, callbacks=[score], verbose=0)
        lsh, final = lsh_map(data, bits), score.per_epoch[-1]["map"]
        # The neighbour structure (k-NN of PCA pixel features) is part of the run's seconds.
        results[bits] = dict(map=final, untrained=score.untrained, lsh=lsh, per_epoch=score.per_epoch,
                             train_seconds=result.seconds, recipe=result.recipe)
        print(
            f"BGAN {bits:3d} bits: mAP@all {final:.4f} | untrained encoder {score.untrained:.4f} "
            f"(x{final / score.untrained:.2f}, target > 1.2) | LSH {lsh:.4f} (x{final / lsh:.2f}, target > 1)",
            flush=True,
        )
        print("  per epoch (beta: mAP): " + ", ".join(f"{e['beta']:g}: {e['map']:.3f}" for e in score.per_epoch))
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    with open(os.path.splitext(args.plot)[0] + ".json", "w") as f:
        json.dump(results, f, indent=2)
    plot(results, args.plot)
    print(f"wrote {args.plot}")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    beta_axis = ax.twinx()
    for bits, r in results.items():
        epochs = [e["epoch"] for e in r["per_epoch"]]
        ax.plot(epochs, [e["map"] for e in r["per_epoch"]], marker=".", label=f"BGAN {bits} bits")
        ax.axhline(r["lsh"], ls=":", color="gray")
    beta_axis.step(epochs, [e["beta"] for e in r["per_epoch"]], where="post", color="black", alpha=0.4, label="beta")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP@all (Fashion-MNIST protocol)")
    beta_axis.set_ylabel("beta")
    ax.set_title("BGAN: mAP as beta anneals (dotted: LSH)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
