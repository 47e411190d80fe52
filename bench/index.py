"""Benchmark: tfhash HammingIndex vs faiss.IndexBinaryFlat vs a NumPy scan.

Builds both indexes on the same seeded random codes, times the same queries
on each (warm-up once, then `--repeats` timed runs, interleaved so both see the
same machine load) and checks that results agree:

* ours and faiss give the same distances, and the same ids where ties allow;
* ours gives exactly the index-ordered ranking (distance, then insertion
  position) of a brute-force NumPy reference, on a subsample of queries.

Usage:
    .venv/bin/python bench/index.py [--n 1000000] [--queries 1000] [--k 100]
        [--bits 64 128] [--chunks 10] [--repeats 3] [--numpy-queries 100]
"""

import argparse
import os
import platform
import shlex
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfhash.index import HammingIndex  # noqa: E402


def numpy_knn(database, queries, k):
    """Brute-force k-NN with NumPy popcount, ties by database position."""
    bits = database.shape[1] * 8
    word = np.uint64 if bits % 64 == 0 else np.uint8
    db = database.view(word)
    # Slots past the database size are padded as faiss pads them.
    all_d = np.full((len(queries), k), np.iinfo(np.int32).max, np.int32)
    all_i = np.full((len(queries), k), -1, np.int64)
    k = min(k, len(database))
    for row, query in enumerate(queries.view(word)):
        d = np.bitwise_count(db ^ query).sum(axis=1, dtype=np.int32)
        # The k-th smallest distance `t`: take every code closer than t, and
        # the first (by position) codes at exactly t to fill up to k.
        cum = np.cumsum(np.bincount(d, minlength=bits + 1))
        t = int(np.searchsorted(cum, k))
        closer = np.flatnonzero(d < t)
        at_t = np.flatnonzero(d == t)[: k - len(closer)]
        picked = np.concatenate([closer, at_t])
        order = np.argsort(d[picked], kind="stable")
        all_d[row, :k], all_i[row, :k] = d[picked][order], picked[order]
    return all_d, all_i


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def ties_agree(d_a, i_a, d_b, i_b):
    """Same distances, and per row the same id set below the last distance."""
    if not np.array_equal(d_a, d_b):
        return False
    for da, ia, ib in zip(d_a, i_a, i_b):
        inner = da < da[-1]
        if not np.array_equal(np.sort(ia[inner]), np.sort(ib[inner])):
            return False
    return True


def run(bits, args):
    rng = np.random.default_rng(args.seed + bits)
    cs = bits // 8
    database = rng.integers(0, 256, (args.n, cs), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, cs), dtype=np.uint8)

    ours = HammingIndex(bits)
    add_s = 0.0
    for part in np.array_split(database, args.chunks):
        add_s += timed(ours.add, part)[0]
    reference = faiss.IndexBinaryFlat(bits)  # faiss defaults, untouched
    ref_add_s = timed(reference.add, database)[0]

    # Warm-up once each, then interleaved timed runs.
    ours.search(queries, args.k)
    reference.search(queries, args.k)
    t_ours, t_faiss = [], []
    for _ in range(args.repeats):
        dt, (d_ours, i_ours) = timed(ours.search, queries, args.k)
        t_ours.append(dt)
        dt, (d_faiss, i_faiss) = timed(reference.search, queries, args.k)
        t_faiss.append(dt)

    sub = queries[: args.numpy_queries]
    t_np, (d_np, i_np) = timed(numpy_knn, database, sub, args.k)

    packed = args.n * cs
    return {
        "bits": bits,
        "ours_qps": args.queries / np.median(t_ours),
        "faiss_qps": args.queries / np.median(t_faiss),
        "ours_best_qps": args.queries / min(t_ours),
        "faiss_best_qps": args.queries / min(t_faiss),
        "numpy_qps": len(sub) / t_np,
        "code_bytes": ours.code_bytes,
        "faiss_code_bytes": int(reference.xb.size()),
        "packed": packed,
        "add_s": add_s,
        "ref_add_s": ref_add_s,
        "same_d": np.array_equal(d_ours, d_faiss),
        "same_i": np.array_equal(i_ours, i_faiss),
        "ties_ok": ties_agree(d_ours, i_ours, d_faiss, i_faiss),
        "ordered": np.array_equal(d_ours[: len(sub)], d_np)
        and np.array_equal(i_ours[: len(sub)], i_np),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database size")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--chunks", type=int, default=10, help="add() calls to build ours (memory growth)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--numpy-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Environment variables that change faiss's threading, if set.
    env = [
        f"{v}={os.environ[v]}"
        for v in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
        if v in os.environ
    ]
    print("$ " + " ".join(env + [shlex.join(sys.orig_argv)]))
    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"faiss omp threads {faiss.omp_get_max_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"n={args.n:,} codes, {args.queries:,} queries, k={args.k}, "
        f"ours built in {args.chunks} add() calls, "
        f"qps = median of {args.repeats} interleaved runs after 1 warm-up; "
        f"NumPy on the first {args.numpy_queries} queries, 1 run"
    )
    rows = [run(bits, args) for bits in args.bits]

    header = (
        f"{'bits':>4} | {'ours qps':>9} | {'faiss qps':>9} | {'ours/faiss':>10} | "
        f"{'best-of ratio':>13} | {'numpy qps':>9} | {'numpy/faiss':>11} | "
        f"{'code bytes':>12} | {'packed bytes':>12} | {'mem ratio':>9} | agree"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        agree = (
            "yes"
            if r["same_d"] and r["ties_ok"] and r["ordered"]
            else f"NO (d={r['same_d']} ties={r['ties_ok']} ordered={r['ordered']})"
        )
        print(
            f"{r['bits']:>4} | {r['ours_qps']:>9,.0f} | {r['faiss_qps']:>9,.0f} | "
            f"{r['ours_qps'] / r['faiss_qps']:>10.3f} | "
            f"{r['ours_best_qps'] / r['faiss_best_qps']:>13.3f} | "
            f"{r['numpy_qps']:>9,.1f} | {r['numpy_qps'] / r['faiss_qps']:>11.4f} | "
            f"{r['code_bytes']:>12,} | {r['packed']:>12,} | "
            f"{r['code_bytes'] / r['packed']:>9.3f} | {agree}"
        )
    print()
    for r in rows:
        print(
            f"{r['bits']}-bit: ids identical to faiss: {r['same_i']}; "
            f"ids identical to NumPy (distance, position) order: {r['ordered']}; "
            f"add: ours {r['add_s']:.3f} s ({args.chunks} calls), "
            f"faiss {r['ref_add_s']:.3f} s (1 call); "
            f"faiss code bytes {r['faiss_code_bytes']:,}"
        )
    if not all(r["same_d"] and r["ties_ok"] and r["ordered"] for r in rows):
        sys.exit("results disagree")


if __name__ == "__main__":
    main()
