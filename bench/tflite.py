"""TFLite encoders vs the Keras model on the Fashion-MNIST protocol.

    .venv/bin/python bench/tflite.py [RUN_DIR] [--bits 32]

Loads a trained run (default: trains the zoo's `dhn_fashion_mnist_BITS` recipe),
exports float32, dynamic-range int8 and full int8 (calibrated on 200 seeded
training images) TFLite files and prints, for each, the fraction of code bits
equal to the Keras codes over the 1,000 queries + 69,000 database images and
mAP@all beside the Keras model's. Targets: bits float32 >= 0.999, int8 >= 0.98;
int8 mAP within 0.01 of float.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfhash import metrics, training  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.export import QUANTIZATIONS, TFLiteEncoder, export_tflite  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory or .keras file (default: train one)")
    parser.add_argument("--bits", type=int, choices=[32, 64], default=32, help="the zoo recipe's code length")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    data = load_protocol("fashion_mnist")
    if args.run:
        model = training.load_model(args.run)
    else:
        run = training.train(recipe=f"dhn_fashion_mnist_{args.bits}", data=data, verbose=0, score=False)
        model = run.encoders["image"]
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    train, _ = data.subset("train")
    calibration = train[np.random.default_rng(0).choice(len(train), 200, replace=False)]
    keras_q, keras_d = model.encode(xq), model.encode(xd)
    keras_map = metrics.mean_average_precision(keras_q, keras_d, yq, yd)
    keras_bits = np.unpackbits(np.concatenate([keras_q, keras_d]))
    print(f"{'keras':14s} mAP@all {keras_map:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in QUANTIZATIONS:
            path = export_tflite(model, os.path.join(tmp, f"{mode}.tflite"), mode, representative_inputs=calibration)
            encoder = TFLiteEncoder(path, num_threads=os.cpu_count())
            q, d = encoder.encode(xq), encoder.encode(xd)
            agreement = np.mean(np.unpackbits(np.concatenate([q, d])) == keras_bits)
            tflite_map = metrics.mean_average_precision(q, d, yq, yd)
            print(
                f"{mode:14s} mAP@all {tflite_map:.4f} ({tflite_map - keras_map:+.4f})  "
                f"bits equal to Keras {agreement:.5f}  {os.path.getsize(path) / 1024:,.0f} KiB"
            )


if __name__ == "__main__":
    main()
