"""Encoding throughput: Keras predict vs SavedModel vs TFLite vs gRPC, one run.

    .venv/bin/python bench/encode.py [--bits 32] [--seconds 3]

One DHN (small CNN, Fashion-MNIST input 28x28x1) is exported every way and
timed on the same images, at batch 1 and batch 256, interleaved so every path
sees the same machine load. Prints images/s and the ratio to Keras `predict`
at the same batch size. Target: TFLite float32 at batch 1 >= 3x Keras predict.
The model is untrained: throughput does not depend on the weights.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfhash.export import TFLiteEncoder, export_savedmodel, export_tflite  # noqa: E402
from tfhash.models import DHN  # noqa: E402
from tfhash.serving import Client, ModelServer  # noqa: E402


def rate(fn, images, batch, seconds):
    """Images per second of `fn` over batches of `batch`, for about `seconds`."""
    fn(images[:batch])  # warm-up (tracing, allocation)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = (done % (len(images) - batch + 1)) if len(images) > batch else 0
        fn(images[offset : offset + batch])
        done += batch
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per path and batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"tensorflow {tf.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs")

    model = DHN(bits=args.bits, input_shape=(28, 28, 1))
    model.build((None, 28, 28, 1))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2048, 28, 28, 1), dtype=np.uint8)
    calibration = images[:200]

    with tempfile.TemporaryDirectory() as tmp:
        version_dir = export_savedmodel(model, os.path.join(tmp, "models"), name="dhn")
        serving_fn = tf.saved_model.load(version_dir).signatures["serving_default"]
        tflite = {
            mode: TFLiteEncoder(
                export_tflite(model, os.path.join(tmp, f"{mode}.tflite"), quantization=mode,
                              representative_inputs=calibration),
                num_threads=os.cpu_count(),  # LiteRT defaults to one thread
            )
            for mode in ("float32", "dynamic_int8", "int8")
        }
        with ModelServer(os.path.join(tmp, "models"), port=0) as server:
            client = Client("dhn", target=f"127.0.0.1:{server.port}")
            paths = {
                "keras predict": lambda x: model.predict(x, batch_size=len(x), verbose=0),
                "keras call": lambda x: model(x, training=False),
                "savedmodel": lambda x: serving_fn(images=tf.constant(x)),
                **{f"tflite {m}": enc.encode for m, enc in tflite.items()},
                "grpc round trip": client.encode,
            }
            table = {name: {} for name in paths}
            for batch in args.batches:
                for name, fn in paths.items():
                    table[name][batch] = rate(fn, images, batch, args.seconds)

    header = "path".ljust(20) + "".join(f"| batch {b:<4d} img/s | x keras predict " for b in args.batches)
    print(header)
    print("-" * len(header))
    for name, rates in table.items():
        row = name.ljust(20)
        for b in args.batches:
            row += f"| {rates[b]:16,.0f} | {rates[b] / table['keras predict'][b]:15.2f} "
        print(row)
    ratio = table["tflite float32"][1] / table["keras predict"][1]
    print(f"\nTFLite float32 / Keras predict at batch 1: {ratio:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
