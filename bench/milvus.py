"""Insert and query throughput: MilvusIndex (milvus-lite, BIN_FLAT) beside HammingIndex.

100,000 random 64-bit codes, inserted in one add(); 1,000 queries, k=10, in
one search(). Run once, on this machine, each timing once: a rough figure,
printed with the ratio HammingIndex / MilvusIndex. Checks that both return
the same neighbours. Needs the milvus extra: pip install "tfhash[milvus]".

    python bench/milvus.py [--n 100000] [--queries 1000] [--k 10]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from tfhash.index import HammingIndex
from tfhash.milvus_index import MilvusIndex


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bits", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.n, args.bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, args.bits // 8), dtype=np.uint8)

    reference = HammingIndex(args.bits)
    _, hamming_add = timed(lambda: reference.add(codes))
    expected, hamming_search = timed(lambda: reference.search(queries, args.k))

    with tempfile.TemporaryDirectory() as folder:
        (index, open_s) = timed(lambda: MilvusIndex(args.bits, uri=os.path.join(folder, "bench.db"),
                                                    collection="bench"))
        with index:
            _, milvus_add = timed(lambda: index.add(codes))
            found, milvus_search = timed(lambda: index.search(queries, args.k))
    for got, want in zip(found, expected):
        np.testing.assert_array_equal(got, want)  # the same neighbours, ties included

    print(f"{args.n:,} codes of {args.bits} bits, {args.queries:,} queries, k={args.k} "
          f"(milvus-lite, BIN_FLAT; opening it took {open_s:.2f} s)")
    print(f"{'':14}{'HammingIndex':>16}{'MilvusIndex':>16}{'ratio':>10}")
    for name, unit, count, hamming, milvus in (("insert", "codes/s", args.n, hamming_add, milvus_add),
                                               ("query", "queries/s", args.queries, hamming_search, milvus_search)):
        print(f"{name + ' ' + unit:14}{count / hamming:>16,.0f}{count / milvus:>16,.0f}{milvus / hamming:>9,.0f}x")


if __name__ == "__main__":
    main()
