"""TFLite image encoders vs the Keras model, on a run's own protocol.

    .venv/bin/python bench/tflite.py [RUN] [--bits 32]

RUN is a run directory (`tfhash train --output`), a zoo entry (its image
encoder, and the `_text` entry beside an `_image` one, from the zoo in use:
`TFHASH_ZOO_URL`, or the package's manifest and files) or a recipe name
(trained first); without it the zoo's `dhn_fashion_mnist_BITS` recipe is
trained. Exports the
image encoder as float32, dynamic-range int8 and full int8 (calibrated on 200
seeded training images) TFLite files and prints, for each, the fraction of
code bits equal to the Keras codes over the protocol's query and database
images, and mAP@all beside the Keras model's: image->image for image
protocols, image->text (the Keras text encoder's database codes) for
image-text runs. Targets: bits float32 >= 0.999, int8 >= 0.98; int8 mAP
within 0.01 of float.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfhash import metrics, recipes, training  # noqa: E402
from tfhash.data import load_protocol  # noqa: E402
from tfhash.export import QUANTIZATIONS, TFLiteEncoder, export_tflite  # noqa: E402


def load(run, bits):
    """(image encoder, text encoder or None, loaded protocol) of a run directory, zoo entry or recipe."""
    from tfhash import zoo
    from tfhash.models import HashModel

    manifest = zoo.read_manifest()
    if run in manifest["entries"]:
        from tfhash import registry
        from tfhash.publish import entry_names, entry_recipe

        # Every encoder the entry's recipe published (an image-text method's two), by the publisher's names.
        recipe = entry_recipe(run, manifest)
        modalities = dict.fromkeys(registry.get(recipe["method"]).modalities)
        encoders = {m: HashModel.from_preset(name) for m, name in entry_names(recipe, modalities).items()}
    elif run and os.path.isdir(run):
        recipe = training.read_run(run)["recipe"]
        encoders = {m: training.load_model(run, m) for m in ("image", "text")
                    if os.path.exists(os.path.join(run, training.ENCODER_FILE.format(modality=m)))}
    else:
        recipe = training.resolve(recipe=recipes.load(run or f"dhn_fashion_mnist_{bits}"))
        encoders = training.train(recipe=recipe, verbose=0, score=False).encoders
    data = load_protocol(recipe["protocol"], **recipe["data"])
    return encoders["image"], encoders.get("text"), data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory or zoo recipe name (default: train dhn_fashion_mnist_BITS)")
    parser.add_argument("--bits", type=int, choices=[32, 64], default=32, help="the default recipe's code length")
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    model, text_model, data = load(args.run, args.bits)
    query, database, train = (data.subset(part) for part in ("query", "database", "train"))
    xq, xd, yq, yd = query[0], database[0], query[-1], database[-1]
    calibration = train[0][np.random.default_rng(0).choice(len(train[0]), 200, replace=False)]
    # The database side of the mAP: the same images (image->image) or the Keras text codes (image->text).
    text_codes = None if text_model is None else text_model.encode(database[1])
    direction = "image->image" if text_model is None else "image->text"

    def score(query_codes, database_image_codes):
        database_codes = database_image_codes if text_codes is None else text_codes
        return metrics.mean_average_precision(query_codes, database_codes, yq, yd)

    keras_q, keras_d = model.encode(xq), model.encode(xd)
    keras_map = score(keras_q, keras_d)
    keras_bits = np.unpackbits(np.concatenate([keras_q, keras_d]))
    print(f"{len(xq)} queries + {len(xd)} database images of {data.protocol.name}; mAP@all {direction}")
    print(f"{'keras':14s} mAP@all {keras_map:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in QUANTIZATIONS:
            path = export_tflite(model, os.path.join(tmp, f"{mode}.tflite"), mode, representative_inputs=calibration)
            encoder = TFLiteEncoder(path, num_threads=os.cpu_count())
            q, d = encoder.encode(xq), encoder.encode(xd)
            agreement = np.mean(np.unpackbits(np.concatenate([q, d])) == keras_bits)
            tflite_map = score(q, d)
            print(
                f"{mode:14s} mAP@all {tflite_map:.4f} ({tflite_map - keras_map:+.4f})  "
                f"bits equal to Keras {agreement:.5f}  {os.path.getsize(path) / 1024:,.0f} KiB"
            )


if __name__ == "__main__":
    main()
