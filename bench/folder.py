"""Encoding a folder of image files against encoding the same images from an array (issue 29).

    .venv/bin/python bench/folder.py [--n 70000] [--repeats 3] [--workdir /tmp/tfhash_bench_folder]

Fashion-MNIST's 70,000 images are written once as PNG files (greyscale, 28x28,
one folder per class, kept in --workdir for later runs) and as one `.npy`
array. Each measurement runs in its own process, one after another, and
prints its wall time and peak resident memory (ru_maxrss):

- array:  `tfhash encode RUN --inputs images.npy --index a.thi` (np.load, then
          `HashModel.encode` in batches of 256, then the index);
- folder: `tfhash encode RUN --images DIR --index f.thi` (listing, tf.data
          decoding with Pillow, the same encoder, the index with the paths).

Wall time and CPU time (user + system of the process) are both printed;
on a machine shared with other jobs the CPU time is the steadier one.

The encoder is an untrained 32-bit DHN on 28x28x1 images, saved as a run
(speed does not depend on the weights). Both indexes must hold the same codes,
row for row (the PNGs are lossless), which the script checks. Targets: the
folder rate at least half the array rate, peak memory under 2 GB.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable


def write_inputs(workdir, n):
    """The PNG folder and the .npy of the first n Fashion-MNIST images, written once."""
    import numpy as np
    from PIL import Image

    from tfhash.data import load_fashion_mnist
    from tfhash.data.fashion_mnist import CLASS_NAMES

    folder, array = os.path.join(workdir, f"png_{n}"), os.path.join(workdir, f"images_{n}.npy")
    done = os.path.join(folder, ".complete")
    images, labels = load_fashion_mnist()
    images, labels = images[:n], labels[:n]
    if not os.path.exists(done):
        for c, name in enumerate(CLASS_NAMES):
            os.makedirs(os.path.join(folder, name.replace("/", "_")), exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            name = CLASS_NAMES[label].replace("/", "_")
            Image.fromarray(image[..., 0]).save(os.path.join(folder, name, f"{i:05d}.png"))
        open(done, "w").close()
    if not os.path.exists(array):
        np.save(array, images)
    return folder, array


def make_run(workdir):
    run = os.path.join(workdir, "run")
    if not os.path.exists(os.path.join(run, "image_encoder.keras")):
        import keras

        from tfhash.models.dhn import DHN

        keras.utils.set_random_seed(0)
        os.makedirs(run, exist_ok=True)
        DHN(bits=32, input_shape=(28, 28, 1)).save(os.path.join(run, "image_encoder.keras"))
    return run


def cpu_of_children():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv):
    """(wall seconds, CPU seconds) of `tfhash ARGV` in a fresh process, start-up included. CPU time is
    the steadier figure on a shared machine: other processes lengthen the wall time, not it."""
    start, cpu = time.perf_counter(), cpu_of_children()
    child = subprocess.run([PYTHON, "-c", "import sys; from tfhash.cli import main; sys.exit(main(sys.argv[1:]))",
                            *argv], capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, cpu_of_children() - cpu
    if child.returncode:
        sys.exit(f"tfhash {' '.join(argv)} failed: {child.stderr.strip().splitlines()[-1:]}")
    return seconds, cpu


def main():
    from tfhash.console import import_tensorflow, silence_tensorflow

    silence_tensorflow(False)  # this process writes the inputs with TensorFlow loaded: none of its start-up lines
    import_tensorflow(False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/tfhash_bench_folder")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    start = time.perf_counter()
    folder, array = write_inputs(args.workdir, args.n)
    run = make_run(args.workdir)
    print(f"inputs ready in {time.perf_counter() - start:.0f} s: {args.n} PNGs in {folder}, {array}")

    rows = []
    for repeat in range(args.repeats):
        for kind, argv in (("array", ["--inputs", array]), ("folder", ["--images", folder])):
            index = os.path.join(args.workdir, f"{kind}.thi")
            seconds, cpu = measure(["encode", run, *argv, "--index", index, "--quiet"])
            # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: each peak is read by a wrapper of its own.
            peak = peak_of(["encode", run, *argv, "--index", index, "--quiet"]) if repeat == 0 else None
            rows.append({"kind": kind, "repeat": repeat, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                         "images_per_s": round(args.n / seconds), "peak_mib": peak})
            print(json.dumps(rows[-1]), flush=True)

    from tfhash.index import HammingIndex

    a, f = (HammingIndex.load(os.path.join(args.workdir, f"{k}.thi")) for k in ("array", "folder"))
    # The folder's rows are its files in sorted path order; the array's in Fashion-MNIST order.
    order = [int(os.path.basename(p)[:5]) for p in f.metadata["paths"]]
    same = (a.codes()[order] == f.codes()).all()
    best = {kind: min(r["seconds"] for r in rows if r["kind"] == kind) for kind in ("array", "folder")}
    cpu = {kind: min(r["cpu_seconds"] for r in rows if r["kind"] == kind) for kind in ("array", "folder")}
    peaks = {kind: next(r["peak_mib"] for r in rows if r["kind"] == kind) for kind in ("array", "folder")}
    print(f"same codes row for row: {bool(same)}")
    if not same:
        sys.exit("the folder's codes differ from the array's: the PNGs should decode to the same pixels")
    print(f"array:  {args.n / best['array']:8.0f} images/s (best of {args.repeats}, whole command), "
          f"peak {peaks['array']:.0f} MiB")
    print(f"folder: {args.n / best['folder']:8.0f} images/s, peak {peaks['folder']:.0f} MiB")
    print(f"CPU seconds (least of {args.repeats}): array {cpu['array']:.1f}, folder {cpu['folder']:.1f}")
    print(f"folder rate / array rate: {best['array'] / best['folder']:.2f} wall, {cpu['array'] / cpu['folder']:.2f} "
          f"CPU (target >= 0.5); folder peak {peaks['folder'] / 1024:.2f} GB (target < 2)")


def peak_of(argv):
    """Peak resident MiB of `tfhash ARGV`, read by a wrapper process of its own."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([PYTHON, "-c", code, PYTHON, "-c",
                          "import sys; from tfhash.cli import main; sys.exit(main(sys.argv[1:]))", *argv],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


if __name__ == "__main__":
    main()
