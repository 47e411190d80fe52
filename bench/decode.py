"""Open Clip Art's first load: time and peak memory of decoding every PNG (issue 22; target < 2 GB).

    .venv/bin/python bench/decode.py [--image-size 64]

Decodes the 6,886 items into a fresh, temporary cache folder (so nothing is
read from the user's cache) and prints the process's peak resident memory
(`ru_maxrss`, TensorFlow's import included) and the seconds taken. PNGs above
20 megapixels are decoded in strips (`tfhash.data.open_clip_art`); whole,
the two 623-megapixel drawings alone took 5.5 GB.
"""

import argparse
import resource
import sys
import tempfile
import time

from tfhash.data.open_clip_art import load_open_clip_art


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    print("command:", " ".join(["python", *sys.argv]))
    start = time.time()
    with tempfile.TemporaryDirectory() as cache:
        images, _, _ = load_open_clip_art(image_size=args.image_size, cache_dir=cache)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
    print(f"{len(images)} images at {args.image_size} px in {time.time() - start:.0f} s; peak RSS {peak:.2f} GB "
          f"(target < 2 GB)")


if __name__ == "__main__":
    main()
