"""Does SSAH's recipe repeat from one process to the next, and what does that cost?

    .venv/bin/python bench/ssah_repeat.py [--runs 2] [--bits 32] [--full]

Runs the zoo's SSAH recipe, shortened to one round of 1 label, 2 image and 1
text epochs (`--full`: as published), `--runs` times in fresh processes one
after the other, with Grappler's constant folding on (TensorFlow's default)
and off (what `SSAH.fit` sets, `SSAH.grappler_options`). Each run hashes
every weight and optimizer slot after every step (with `--runs 1`, nothing
is hashed). Prints, per setting, the first step at which any run differs
from the first one (or that all repeat bit for bit), the scores, and the
training time (less the hashing), with the ratio off / on.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHORT = {"label_epochs": 1, "image_epochs": 2, "text_epochs": 1}


def child(bits, full, hashes, folding, output):
    """One run in this process; writes its per-step hashes, scores and time."""
    import keras
    import numpy as np

    from tfhash import recipes, training
    from tfhash.models import SSAH

    if folding == "on":
        SSAH.grappler_options = {}  # TensorFlow's defaults
    steps, hashing = [], [0.0]

    class Hashes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            start = time.perf_counter()
            model = self.model
            slots = [v for group in (model.optimizers, model.d_optimizers) for o in group.values() for v in o.variables]
            steps.append(hashlib.sha256(b"".join(np.asarray(v).tobytes() for v in [*model.weights, *slots]))
                         .hexdigest())
            hashing[0] += time.perf_counter() - start

    recipe = recipes.published(f"ssah_open_clip_art_{bits}")
    if not full:
        recipe["settings"].update(SHORT, epochs=sum(SHORT.values()))  # one round
    result = training.train(recipe=recipe, callbacks=[Hashes()] if hashes else [], verbose=0)
    with open(output, "w") as f:
        # Training time without the hashing (measured: about a quarter of a second a step).
        json.dump({"steps": steps, "seconds": result.seconds - hashing[0],
                   "scores": {m: s["map"] for m, s in result.scores.items()}}, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--full", action="store_true", help="the published recipe, not the shortened one")
    parser.add_argument("--child", nargs=2, metavar=("FOLDING", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.bits, args.full, args.runs > 1, *args.child)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)
    seconds, full = {}, ["--full"] if args.full else []
    with tempfile.TemporaryDirectory() as tmp:
        for folding in ("on", "off"):
            runs = []
            for i in range(args.runs):
                out = os.path.join(tmp, f"{folding}{i}.json")
                subprocess.run([sys.executable, __file__, "--bits", str(args.bits), "--runs", str(args.runs), *full,
                                "--child", folding, out], check=True)
                with open(out) as f:
                    runs.append(json.load(f))
            first = runs[0]["steps"]  # empty for a single run, which has nothing to compare
            parted = [next((s for s, (a, b) in enumerate(zip(first, r["steps"])) if a != b), None) for r in runs[1:]]
            seconds[folding] = sum(r["seconds"] for r in runs) / len(runs)
            verdict = ("one run, nothing to compare" if not parted
                       else "all repeat bit for bit" if all(p is None for p in parted)
                       else f"first differing step per run: {parted}")
            print(f"constant folding {folding:3s}: {args.runs} runs, {len(first)} steps compared, {verdict}; "
                  f"I->T mAP {[round(r['scores']['image'], 4) for r in runs]}; "
                  f"train {seconds[folding]:.1f} s per run", flush=True)
    print(f"time, folding off / on: {seconds['off'] / seconds['on']:.2f}x")


if __name__ == "__main__":
    main()
