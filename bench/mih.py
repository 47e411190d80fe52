"""Benchmark: multi-index hashing (tfhash.mih) vs the exact scan (faiss IndexBinaryFlat).

Side by side in one run, on the same seeded codes and queries: queries/s of
`MultiIndexHashing.search` and of the scan (`HammingIndex.search`: faiss
`IndexBinaryFlat` with tfhash's exact-heap settings), printed as ratios,
for each data kind (clustered: `--centres` centres with each bit flipped
with probability `--flip`, queries drawn the same way; uniform: random
codes and queries), code length and k. Every result is checked identical
to the scan's (distances and ids, ties by insertion order); a mismatch
fails the run. Also printed: the build time, the fraction of queries MIH
left to its scan fallback, memory (codes + tables) over the packed codes,
the measured spread (k-th neighbour distance / bits) and what
`tfhash.mih.choose` picks for it.

`--faiss-multihash KIND...` adds faiss's own `IndexBinaryMultiHash` (same m,
`bits / m`-bit substrings) on those data kinds, made exact the only way it
can be: `range_search` with `nflip = 0, 1, ...` and the radius that nflip
certifies (`m * (nflip + 1) - 1`), until a query has k results, ranked by
(distance, position) here; on the first `--faiss-queries` queries only (it
re-enumerates every radius from scratch: slow where the radius is large).
Its `search` is not exact: it certifies no radius, and its heap admits a
tie at the k-th distance in hash-set order, not by position.

The run ends with the checks of issue 31: MIH at least 5x the scan at 10M
codes, 64 bits, k = 100 on clustered codes (printed when --n >= 10M), and
never below 1x where `choose` picks MIH.

Usage:
    .venv/bin/python bench/mih.py [--n 1000000] [--bits 64 128] [--k 1 10 100]
        [--data clustered uniform] [--queries 1000] [--repeats 3] [--m M]
        [--budget B] [--faiss-multihash clustered] [--faiss-queries 100]
"""

import argparse
import os
import platform
import shlex
import sys
import time

import faiss
import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfhash import mih  # noqa: E402
from tfhash.index import HammingIndex, MultiIndexHashing  # noqa: E402


def clustered(rng, n, bits, centres, flip, chunk=1 << 18):
    """Codes around `centres`: a random centre each, each bit flipped with probability `flip`."""
    out = np.empty((n, bits // 8), np.uint8)
    threshold = int(round(flip * 65536))
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        flips = rng.integers(0, 65536, (size, bits), dtype=np.uint16) < threshold
        out[start:start + size] = centres[rng.integers(0, len(centres), size)] ^ np.packbits(flips, axis=1)
    return out


def make_data(kind, n, nq, bits, args):
    rng = np.random.default_rng([args.seed, bits, n, kind == "clustered"])
    if kind == "uniform":
        return (rng.integers(0, 256, (n, bits // 8), dtype=np.uint8),
                rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8))
    centres = rng.integers(0, 256, (args.centres, bits // 8), dtype=np.uint8)
    return (clustered(rng, n, bits, centres, args.flip),
            clustered(rng, nq, bits, centres, args.flip))


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def faiss_multihash_knn(index, queries, k, m, b):
    """Exact k-NN from faiss's IndexBinaryMultiHash range search (see the module docstring)."""
    nq = len(queries)
    out_d = np.empty((nq, k), np.int32)
    out_i = np.empty((nq, k), np.int64)
    todo = np.arange(nq)
    for nflip in range(b + 1):
        index.nflip = nflip
        certain = m * (nflip + 1) - 1 if nflip < b else index.d
        lims, d, i = index.range_search(queries[todo], certain + 1)
        counts = np.diff(lims)
        done = counts >= k
        for row in np.flatnonzero(done):
            dd, ii = d[lims[row]:lims[row + 1]], i[lims[row]:lims[row + 1]]
            order = np.lexsort((ii, dd))[:k]
            out_d[todo[row]], out_i[todo[row]] = dd[order], ii[order]
        todo = todo[~done]
        if not len(todo):
            break
    return out_d, out_i


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def run(kind, bits, args):
    database, queries = make_data(kind, args.n, args.queries, bits, args)
    scan = HammingIndex(bits)
    scan.add(database)
    before = rss()
    ours = MultiIndexHashing(bits, m=args.m, budget=args.budget)
    ours.add(database)
    build_s = timed(ours.build)[0]
    grew = rss() - before
    rows = []
    mh = None
    if kind in args.faiss_multihash:
        m_f = args.m or ours.m
        b = bits // m_f
        before_f = rss()
        mh = faiss.IndexBinaryMultiHash(bits, m_f, b)
        mh_build_s = timed(mh.add, database)[0]
        mh_bytes = rss() - before_f
    for k in args.k:
        ours.search(queries[:10], k)  # warm-up (and numba's compile, first time only)
        scan.search(queries[:10], k)
        spread = mih.estimate_spread(scan, queries[:args.spread_queries], k)
        t_mih, t_scan, t_mh = [], [], []
        ours.stats = {"mih": 0, "scan": 0, "work": 0}
        answered = 0
        for _ in range(args.repeats):
            dt, (d_mih, i_mih) = timed(ours.search, queries, k)
            t_mih.append(dt)
            answered += len(queries)
            dt, (d_scan, i_scan) = timed(scan.search, queries, k)
            t_scan.append(dt)
        same = np.array_equal(d_mih, d_scan) and np.array_equal(i_mih, i_scan)
        row = {
            "data": kind, "bits": bits, "k": k, "m": ours.m,
            "mih_qps": args.queries / np.median(t_mih),
            "scan_qps": args.queries / np.median(t_scan),
            "fallback": ours.stats["scan"] / answered,
            "work": ours.stats["work"] / answered,
            "same": same, "spread": spread,
            "choose": mih.choose(args.n, bits, spread, k),
            "predicted": mih.predicted_speedup(args.n, bits, spread, k),
            "build_s": build_s,
            "mem": ours.memory_bytes / (args.n * bits / 8),
        }
        if mh is not None:
            few = args.faiss_queries
            dt, (d_mh, i_mh) = timed(faiss_multihash_knn, mh, queries[:few], k, m_f, b)
            dt_scan = timed(scan.search, queries[:few], k)[0]
            row["mh_ratio"] = dt_scan / dt
            row["mh_same"] = np.array_equal(d_mh, d_scan[:few]) and np.array_equal(i_mh, i_scan[:few])
            row["mh_mem"] = (mh_bytes + args.n * bits / 8) / (args.n * bits / 8)
            row["mh_build_s"] = mh_build_s
        rows.append(row)
        print_row(row, args)
    print(f"  ({kind}, {bits} bits: MIH tables {ours.table_bytes:,} bytes; the process grew "
          f"{grew:,} bytes while they were built)", flush=True)
    return rows


def print_header(args):
    head = (f"{'data':>9} | {'bits':>4} | {'k':>3} | {'m':>2} | {'MIH qps':>9} | {'scan qps':>9} | "
            f"{'MIH/scan':>8} | {'fallback':>8} | {'work/q':>7} | {'spread':>6} | {'choose':>6} | "
            f"{'model':>7} | {'build s':>7} | {'mem/packed':>10} | same")
    if args.faiss_multihash:
        head += f" | {'faissMH/scan':>12} | {'faissMH mem':>11} | faissMH same"
    print(head)
    print("-" * len(head), flush=True)


def print_row(r, args):
    line = (f"{r['data']:>9} | {r['bits']:>4} | {r['k']:>3} | {r['m']:>2} | {r['mih_qps']:>9,.0f} | "
            f"{r['scan_qps']:>9,.0f} | {r['mih_qps'] / r['scan_qps']:>8.2f} | {r['fallback']:>8.1%} | "
            f"{r['work']:>7,.0f} | {r['spread']:>6.3f} | {r['choose']:>6} | {r['predicted']:>7.2f} | "
            f"{r['build_s']:>7.2f} | {r['mem']:>10.2f} | {'yes' if r['same'] else 'NO'}")
    if "mh_ratio" in r:
        line += (f" | {r['mh_ratio']:>12.2f} | {r['mh_mem']:>11.2f} | "
                 f"{'yes' if r['mh_same'] else 'NO'}")
    elif args.faiss_multihash:
        line += f" | {'-':>12} | {'-':>11} | -"
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database size (10M when the machine is idle)")
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--data", nargs="+", default=["clustered", "uniform"], choices=["clustered", "uniform"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--flip", type=float, default=0.06, help="per-bit flip probability around a centre")
    parser.add_argument("--m", type=int, default=None, help="substrings (default: tfhash.mih.default_m)")
    parser.add_argument("--budget", type=float, default=mih.DEFAULT_BUDGET)
    parser.add_argument("--spread-queries", type=int, default=50)
    parser.add_argument("--faiss-multihash", nargs="*", default=[], choices=["clustered", "uniform"],
                        help="data kinds to run faiss IndexBinaryMultiHash on (exact, by range search)")
    parser.add_argument("--faiss-queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: faiss's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        faiss.omp_set_num_threads(args.threads)  # MIH's thread pool follows faiss's count
    env = [f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if v in os.environ]
    print("$ " + " ".join(env + [shlex.join(sys.orig_argv)]))
    print(f"faiss {faiss.__version__}, numba {numba.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, faiss threads "
          f"{faiss.omp_get_max_threads()} (MIH's thread pool: as many), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"n={args.n:,}, {args.queries:,} queries, qps = median of {args.repeats} interleaved runs "
          f"after a warm-up; clustered = {args.centres} centres, flip {args.flip:.0%}; "
          f"MIH budget {args.budget} x n per query", flush=True)
    print_header(args)
    rows = []
    for kind in args.data:
        for bits in args.bits:
            rows += run(kind, bits, args)
    # Never numba.get_num_threads() or threading_layer() here: launching numba's OpenMP pool
    # next to faiss's slowed both the scan (2x) and MIH (7x) on a busy 2-core machine.
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print("work/q: MIH's probes plus verified candidates per query (given-up queries included); model: choose's "
          "predicted MIH/scan; mem/packed: (codes + MIH tables) / packed codes")
    target = [r for r in rows if r["data"] == "clustered" and r["bits"] == 64 and r["k"] == 100]
    if args.n >= 10_000_000 and target:
        ratio = target[0]["mih_qps"] / target[0]["scan_qps"]
        print(f"issue 31 target (>= 5x the scan, 10M clustered, 64 bits, k=100): {ratio:.1f}x: "
              f"{'met' if ratio >= 5 else 'NOT met'}")
    losing = [r for r in rows if r["choose"] == "mih" and r["mih_qps"] < r["scan_qps"]]
    print(f"rows where choose() picks MIH: {sum(r['choose'] == 'mih' for r in rows)}, "
          f"of which slower than the scan: {len(losing)}"
          + "".join(f"\n  {r['data']} {r['bits']} bits k={r['k']}: "
                    f"{r['mih_qps'] / r['scan_qps']:.2f}x" for r in losing))
    bad = [r for r in rows if not r["same"] or not r.get("mh_same", True)]
    if bad:
        sys.exit(f"results differ from the scan in {len(bad)} rows")


if __name__ == "__main__":
    main()
