"""Exact sub-linear k-NN in Hamming space: multi-index hashing.

Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index
hashing" (CVPR 2012; TPAMI 2014). Each `bits`-bit code is cut into `m`
disjoint substrings of `bits / m` bits (lengths differ by at most one), and
each substring is indexed in its own table. By pigeonhole, a code within
Hamming distance `r` of the query matches it within `floor(r / m)` bits in at
least one substring; finer, with `r = s * m + a`, within `s` bits in one of
substrings `0..a` or within `s - 1` bits in one of the others. So a query
probes table 0 at substring radius 0, table 1 at radius 0, ..., table `m-1`
at radius 0, table 0 at radius 1, ...: after table `a` at radius `s` every code
within `s * m + a` of the query has been seen and verified with its exact
full-code distance. The search stops as soon as the `k`-th smallest verified
distance is within that certain radius: then every code at a distance up to
it, ties included, is known, and the result is the exact brute-force answer,
ranked by (distance, insertion position), as `HammingIndex` ranks it.

The indexes are `tfhash.index`'s: `HammingIndex(bits, method="mih")` (or
`"auto"`: `auto_knn`) and `MultiIndexHashing` (its settings and counters)
call this module's `knn` and `range_search`, which work on any
`HammingIndex`'s codes. Layout (built lazily by the first search after an
`add`, or by `MultiIndexHashing.build()`):

* the codes, once, in `HammingIndex`'s faiss buffer, read as 64-bit words
  (a zero-padded copy when `bits` is not a multiple of 64);
* per table, the row positions sorted by substring value (a CSR layout: a
  counting sort, `int32` positions below 2**31 rows), and either a dense
  offsets array over all `2**L` substring values (when `2**L <= max(8 n,
  2**16)`) or, for long substrings, the sorted distinct values and their
  offsets, found by binary search.

The kernel is compiled by numba (slices of the queries on a thread pool); each
candidate is verified once, a repeat (seen in an earlier table or radius) is
recognized from its per-substring distances, so no per-query "seen" set is
needed. A query whose probing work exceeds `budget * ntotal` (probes plus
verified candidates) is handed to the exact scan instead, so a query that
multi-index hashing cannot answer cheaply (codes far apart, little data)
costs at most about `1 + budget * c` scans, with `c` the cost of a unit of
work over a streamed code (15 to 90). See `choose` for when to prefer it.
"""

import concurrent.futures
import math
import os
import threading

import faiss
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from tfhash.checks import is_int


# Default per-query work budget, as a fraction of ntotal (one unit: one table
# probe or one verified candidate). Beyond it the query falls back to the
# scan. A unit costs 15 to 90 times a code streamed by the scan (bench/mih.py,
# single-threaded, 1M codes), so a query given up on has cost about one more
# scan at most.
DEFAULT_BUDGET = 0.02

# Positions are packed with distances into one sort key below the 2**40 rows.
_POSITION_BITS = 40


# ----------------------------------------------------------------------
# When multi-index hashing pays
# ----------------------------------------------------------------------


def default_m(n, bits):
    """Substrings per code: `ceil(bits / log2(n))`, so substrings of at most
    log2(n) bits (8 to 32): a table bucket holds a code or more, and the
    dense offsets of a table take at most 4 bytes per code. Norouzi et al.
    round `bits / log2(n)` instead; bench/mih.py at 1M codes: their m = 3 at
    64 bits is 10 to 25% faster than m = 4 on clustered codes but takes twice
    the memory (6.7x the packed codes against 3.1x); at 128 bits m = 7 is as
    fast as their m = 6 with half the memory."""
    length = min(32.0, max(8.0, math.log2(max(n, 2))))
    return max(1, math.ceil(bits / length - 1e-9))


def choose(n, bits, spread, k=100):
    """`"mih"` or `"scan"`: the faster exact k-NN for `n` codes of `bits` bits.

    `spread` is the typical distance from a query to its `k`-th nearest code,
    as a fraction of `bits` (`estimate_spread` measures it on a few queries).
    At n = 1M and k = 100 it is about 0.27 for uniform random 64-bit codes,
    and 0.07 for codes drawn around 1,000 centres with 6% of their bits
    flipped.

    The rule, from bench/mih.py: the scan streams every code; multi-index
    hashing must certify the radius `r = spread * bits`, so it probes its
    `m` tables (`default_m`) up to substring radius about `r / m`, each
    probe finding `n / 2**L` codes of its `L`-bit table on average, and
    verifies a few times `k` codes near the query (`predicted_speedup`).
    Each of its units of work costs `_UNIT_COST` streamed codes (the costliest
    measured: random accesses). MIH is chosen where the prediction is at
    least `_MARGIN` (2) times the scan, so that it never loses where chosen:

    * clustered codes (1,000 centres, 6% of bits flipped; spread 0.03 to
      0.09): MIH, measured 12 to 31 times the scan at 1M codes and 22 to
      106 times at 10M (64 and 128 bits, k = 1 to 100, 2 threads, idle);
    * uniform random codes (spread 0.18 to 0.34): the scan, except at 10M
      64-bit codes for k = 1 (MIH measured 4.4x there); MIH measured 1.9x
      at k = 10 (the model: 2.0, just short of the margin) and 0.5 to 0.9x
      elsewhere, where every query gives up and pays the scan too;
    * fewer than `_MIN_N` (100,000) codes, or `k >= n / 4`: the scan (at
      50,000 clustered codes, batches of 10 queries ran at 0.4x the scan).
    """
    if not is_int(n) or n < 0 or not is_int(bits) or bits <= 0:
        raise ValueError(f"Expected int n >= 0 and bits > 0. Received: n={n!r}, bits={bits!r}")
    if not 0 <= spread <= 1:
        raise ValueError(f"Expected `spread` in [0, 1]. Received: spread={spread!r}")
    if not is_int(k) or k <= 0:
        raise ValueError(f"Expected `k` to be a positive int. Received: k={k!r}")
    if n < _MIN_N or k * 4 >= n:
        return "scan"
    return "mih" if predicted_speedup(n, bits, spread, k) >= _MARGIN else "scan"


# Cost of one unit of MIH work (a probe or a verified candidate) in codes
# streamed by the scan: 8 to 60 ns against 0.5 to 0.8 ns single-threaded at
# 1M codes (bench/mih.py under load, both one thread); the upper end, so the
# model errs towards the scan. Candidates verified beyond those the probes
# find: about _NEAR_K * k (clustered codes share substrings with their
# neighbours; measured 1,044 units at k = 100, 293 at k = 1).
_UNIT_COST = 60.0
_NEAR_K = 10
_MARGIN = 2.0
_MIN_N = 100_000


def predicted_speedup(n, bits, spread, k=100):
    """The cost model of `choose`: the scan's cost over MIH's predicted cost.

    To certify radius `r = round(spread * bits) = s * m + a`, MIH probes
    tables `0..a` up to substring radius `s` and the others up to `s - 1`,
    each probe of an `L`-bit table finding `n / 2**L` codes on average."""
    m = default_m(n, bits)
    s, a = divmod(round(spread * bits), m)
    work = _NEAR_K * k
    for j, length in enumerate(_lengths(bits, m)):
        radius = s if j <= a else s - 1
        ball = sum(math.comb(length, i) for i in range(min(radius, length) + 1))
        work += ball * (1 + n / 2.0**length)
    return n / (min(work, 2.0 * n) * _UNIT_COST)


def estimate_spread(index, queries, k=100):
    """Mean distance from `queries` to their `k`-th nearest code in `index`
    (any `HammingIndex`), as a fraction of its bits: `choose`'s `spread`.
    A scan per query: use a few (10 to 100)."""
    distances, _ = index._index.search(np.ascontiguousarray(queries, np.uint8), k)
    return float(distances[:, -1].mean()) / index.bits


# ----------------------------------------------------------------------
# Searching any HammingIndex's codes
# ----------------------------------------------------------------------


def tables(index, m=None):
    """The substring tables of `index`'s codes (any non-empty `HammingIndex`),
    built on first use and kept on the index (`index._mih_tables`) until its
    codes change. `m`: substrings, by default `default_m(ntotal, bits)`."""
    t = getattr(index, "_mih_tables", None)
    n = index.ntotal
    if m is None:
        m = default_m(n, index.bits)
    # A table built on fewer codes views a faiss buffer an add() may have freed: never used.
    if t is None or t.n != n or t.m != m:
        with _BUILD_LOCK:
            t = getattr(index, "_mih_tables", None)
            if t is None or t.n != n or t.m != m:
                index._mih_tables = None  # the old tables are freed before the new ones are built
                t = index._mih_tables = _Tables(index._codes_view(), index.bits, m)
    return t


def knn(index, queries, k, *, m=None, budget=DEFAULT_BUDGET, stats=None):
    """Exact k-NN of checked `queries` (`uint8`, `(nq, code_size)`, nq >= 1)
    over `index` (any `HammingIndex`), `1 <= k <= ntotal`, by multi-index
    hashing, each query over `budget * ntotal` units of work answered by the
    scan instead: `HammingIndex.search`'s result, bit for bit."""
    t = tables(index, m)
    nq = queries.shape[0]
    qwords, qkeys = t.query_arrays(queries)
    distances = np.empty((nq, k), np.int32)
    positions = np.empty((nq, k), np.int64)
    failed = np.zeros(nq, np.bool_)
    work = np.zeros(nq, np.int64)
    units = _budget_units(budget, index.ntotal)
    _parallel(lambda a, b: _knn(qwords[a:b], qkeys[a:b], *t.kernel_args(), k, units, distances[a:b],
                                positions[a:b], failed[a:b], work[a:b]), nq)
    if failed.any():
        distances[failed], positions[failed] = _scan_knn(index, t, queries[failed], qwords[failed], k)
    if stats is not None:
        _count(stats, failed, work)
    return distances, index._to_ids(positions)


def range_search(index, queries, radius, *, m=None, budget=DEFAULT_BUDGET, stats=None):
    """Every code within `radius` (inclusive) of checked `queries` (nq >= 1),
    by multi-index hashing: `HammingIndex.range_search`'s result, bit for bit."""
    t = tables(index, m)
    nq = queries.shape[0]
    qwords, qkeys = t.query_arrays(queries)
    units = _budget_units(budget, index.ntotal)
    parts = [None] * nq
    _parallel(lambda a, b: parts.__setitem__(a, _range(qwords[a:b], qkeys[a:b], *t.kernel_args(),
                                                       int(radius), units)), nq)
    parts = [part for part in parts if part is not None]
    failed = np.concatenate([part[3] for part in parts])
    counts = np.concatenate([np.diff(part[0]) for part in parts])
    distances = np.concatenate([part[1] for part in parts])
    positions = np.concatenate([part[2] for part in parts])
    if failed.any():
        # The scan answers the queries given up on; splice them in, in query order.
        lims, f_d, f_pos = index._scan_range(queries[failed], radius)
        counts[failed] = np.diff(lims)
        total = int(counts.sum())
        new_d, new_pos = np.empty(total, np.int32), np.empty(total, np.int64)
        kept = np.repeat(~failed, counts)
        new_d[kept], new_pos[kept] = distances, positions
        new_d[~kept], new_pos[~kept] = f_d, f_pos
        distances, positions = new_d, new_pos
    lims = np.zeros(nq + 1, np.int64)
    np.cumsum(counts, out=lims[1:])
    if stats is not None:
        _count(stats, failed, None)
    return lims, distances, index._to_ids(positions)


def picks_mih(index, k, *, sample=32):
    """`choose` for `index`'s own codes (any `HammingIndex`): whether k-NN by
    multi-index hashing is expected to beat the scan. The spread is measured
    once per size of the index (and k), by scanning for `sample` of its codes
    spread over it (each finds itself, hence k + 1). `auto_knn` uses it as a
    gate only: the tables are tried where it says yes, and kept where their
    work measured on the queries asked pays."""
    n = index.ntotal
    if n < _MIN_N or 4 * k >= n:
        return False
    spreads = _sized(index)["spread"]
    if k not in spreads:
        rows = np.linspace(0, n - 1, sample).astype(np.int64)
        distances, _ = index._index.search(index._codes_view()[rows], k + 1)
        spreads[k] = float(distances[:, -1].mean()) / index.bits
    return choose(n, index.bits, spreads[k], k) == "mih"


# `HammingIndex(method="auto")`: the tables are tried where the index's own
# codes look clustered (`picks_mih`); then their measured work on the queries
# decides. Own codes are a biased sample (a database with near-duplicates
# looks tighter to itself than to new queries: Fashion-MNIST codes tiled with
# bit noise did), so the decision rests on the queries asked.
_PROBE = 8  # queries answered by the tables to measure them, per index size and k
_MEMORY = 256  # queries a running cost remembers


def _sized(index):
    """What `picks_mih` and `auto_knn` learnt of `index` at its current size:
    {"spread": {k: spread}, "auto": {k: (cost, queries measured)}}."""
    state = getattr(index, "_mih_sized", None)
    if state is None or state[0] != index.ntotal:
        state = index._mih_sized = (index.ntotal, {"spread": {}, "auto": {}})
    return state[1]


def _pays(cost, n):
    return cost * _MARGIN <= n


def auto_choice(index, k):
    """What `auto_knn` does with the next queries of `index` at `k`: `"mih"`
    or `"scan"` (`"mih"` also while it is still measuring the tables)."""
    if 2 * k >= index.ntotal or not picks_mih(index, k):
        return "scan"
    cost, measured = _sized(index)["auto"].get(k, (0.0, 0))
    return "mih" if measured < _PROBE or _pays(cost, index.ntotal) else "scan"


def auto_knn(index, queries, k):
    """k-NN for `HammingIndex(method="auto")`: by the tables where they are
    measured to pay, else by the scan; the scan's answer either way.

    Per index size and k, the cost of the tables on the queries asked is
    kept, in codes the scan streams per query: `work * _UNIT_COST`, plus `n`
    for a query handed to the scan. The first `_PROBE` queries (over one call
    or several) are answered by the tables to measure it; after them, a
    call goes to the tables while `_MARGIN` times that cost is at most `n`
    (what a scan streams), each such call updating the cost (a running mean
    over about `_MEMORY` queries), and to the scan otherwise, until the
    index's size changes. While no k measured uses them, the tables are
    freed."""
    n = index.ntotal
    if not picks_mih(index, k):
        return index._scan_search(queries, k)
    state = _sized(index)["auto"]
    cost, measured = state.get(k, (0.0, 0))
    nq, start, parts = queries.shape[0], 0, []

    def by_tables(part):
        nonlocal cost, measured
        stats = {"mih": 0, "scan": 0, "work": 0}
        parts.append(knn(index, part, k, stats=stats))
        remembered = min(measured, _MEMORY)
        cost = (cost * remembered + stats["work"] * _UNIT_COST + stats["scan"] * n) / (remembered + len(part))
        measured += len(part)

    if measured < _PROBE:
        start = min(nq, _PROBE - measured)
        by_tables(queries[:start])
    if start < nq:
        if _pays(cost, n):
            by_tables(queries[start:])
        else:
            parts.append(index._scan_search(queries[start:], k))
    state[k] = (cost, measured)
    if all(m >= _PROBE and not _pays(c, n) for c, m in state.values()):
        index._mih_tables = None  # no k uses them: their memory back
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ----------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------

_BUILD_LOCK = threading.Lock()
_POOL = (0, 0, None)  # (process id, threads, executor): a forked child makes its own
_POOL_LOCK = threading.Lock()


def _parallel(run, nq):
    """run(start, stop) over slices of range(nq), on faiss's thread count:
    the kernels release the GIL. Threads of our own, not numba's OpenMP
    pool: two OpenMP runtimes (numba's, faiss's) spinning on the same cores
    slowed searches on a busy machine many times over."""
    global _POOL
    threads = max(1, faiss.omp_get_max_threads())
    # A few slices per thread, so that slow queries even out, of 8 queries at
    # least: below that, handing a slice over costs more than it saves.
    slices = min(4 * threads, nq // 8)
    if threads == 1 or slices < 2:
        run(0, nq)
        return
    with _POOL_LOCK:
        if _POOL[0] != os.getpid() or _POOL[1] < threads:
            pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="tfhash-mih")
            _POOL = (os.getpid(), threads, pool)
        pool = _POOL[2]
    bounds = np.linspace(0, nq, slices + 1).astype(np.int64)
    futures = [pool.submit(run, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for future in futures:
        future.result()


def _scan_knn(index, t, queries, qwords, k):
    """The scan for the queries MIH gave up on: a few on our threads (numba,
    two passes over the codes), many in one faiss batch. A faiss call for a
    query or two on a busy machine stalled 10 to 40 ms in its OpenMP
    barriers (0.7 ms undisturbed), costing more than all the other queries."""
    nq = queries.shape[0]
    if nq > 4 * max(1, faiss.omp_get_max_threads()):
        return index._index.search(queries, k)
    distances = np.empty((nq, k), np.int32)
    positions = np.empty((nq, k), np.int64)
    _parallel(lambda a, b: _scan(qwords[a:b], t.words, t.bits, k, distances[a:b], positions[a:b]), nq)
    return distances, positions


def _budget_units(budget, n):
    return np.int64(min(budget * n, 2**62))


def _count(stats, failed, work):
    scanned = int(failed.sum())
    stats["scan"] += scanned
    stats["mih"] += failed.size - scanned
    if work is not None:
        stats["work"] += int(work.sum())


def _lengths(bits, m):
    """Substring lengths: `bits` split in `m` parts differing by at most one."""
    q, r = divmod(bits, m)
    return [q + 1] * r + [q] * (m - r)


class _Tables:
    """The substring tables of one set of codes (see the module docstring)."""

    def __init__(self, codes, bits, m):
        n, code_size = codes.shape
        self.n, self.m = n, m
        self.bits, self.code_size = bits, code_size
        lengths = np.array(_lengths(bits, m), np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.lengths, self.starts = lengths, starts
        self.words_per_code = -(-code_size // 8)
        # Membership of each bit in each substring, as 64-bit words of the packed layout.
        member = np.zeros((m, self.words_per_code * 64), np.bool_)
        for j, (a, length) in enumerate(zip(starts, lengths)):
            member[j, a:a + length] = True
        self.masks = np.packbits(member, axis=1).view("<u8").astype(np.uint64)
        if code_size % 8 == 0:
            self.words = codes.view("<u8").reshape(n, self.words_per_code)
            self.own_words = 0
        else:  # padded copy: the kernel reads whole words
            self.words = self._pad(codes)
            self.own_words = self.words.nbytes
        pos_type = np.int32 if n < 2**31 else np.int64
        self.rows = np.empty((m, n), pos_type)
        sparse_keys, sparse_offsets = [], []
        self.off_base = np.full(m, -1, np.int64)
        self.sk_base = np.zeros(m, np.int64)
        self.sk_len = np.zeros(m, np.int64)
        self.so_base = np.zeros(m, np.int64)
        dense = [2**length <= max(8 * n, 2**16) for length in lengths]
        sizes = [2**length + 1 if is_dense else 0 for length, is_dense in zip(lengths, dense)]
        self.off_base[:] = np.where(dense, np.cumsum([0] + sizes[:-1]), -1)
        self.dense_off = np.zeros(max(1, sum(sizes)), pos_type)
        sparse_size = 0
        for j, length in enumerate(lengths):
            keys = _substring_keys(codes, starts[j:j + 1], lengths[j:j + 1])[0]  # one table at a time
            if dense[j]:
                base = self.off_base[j]
                _counting_sort(keys, self.dense_off[base:base + sizes[j]], self.rows[j])
            else:
                order = np.argsort(keys, kind="stable")
                self.rows[j] = order
                sorted_keys = keys[order]
                first = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
                self.sk_base[j], self.sk_len[j] = sum(a.size for a in sparse_keys), first.size
                self.so_base[j] = sparse_size
                sparse_keys.append(sorted_keys[first])
                sparse_offsets.append(np.r_[first, n].astype(pos_type))
                sparse_size += first.size + 1
        self.skeys = np.concatenate(sparse_keys) if sparse_keys else np.zeros(1, np.uint64)
        self.soff = np.concatenate(sparse_offsets) if sparse_offsets else np.zeros(1, pos_type)

    @property
    def nbytes(self):
        return int(self.rows.nbytes + self.dense_off.nbytes + self.skeys.nbytes + self.soff.nbytes
                   + self.own_words)

    def _pad(self, codes):
        padded = np.zeros((codes.shape[0], self.words_per_code * 8), np.uint8)
        padded[:, :codes.shape[1]] = codes
        return padded.view("<u8").reshape(codes.shape[0], self.words_per_code).astype(np.uint64)

    def query_arrays(self, queries):
        words = self._pad(queries)
        keys = _substring_keys(queries, self.starts, self.lengths)
        return words, np.ascontiguousarray(keys.T)

    def kernel_args(self):
        return (self.words, self.masks, self.lengths, self.rows, self.off_base, self.dense_off,
                self.sk_base, self.sk_len, self.skeys, self.so_base, self.soff, self.bits)


# ----------------------------------------------------------------------
# Kernels (numba)
# ----------------------------------------------------------------------


@intrinsic
def _popcount(typingctx, x):
    """llvm.ctpop on a uint64: one POPCNT instruction."""
    sig = types.int64(types.uint64)  # same i64 bits; int64 keeps distances signed

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _substring_keys(codes, starts, lengths):
    """(m, n) uint64: substring j of each code as an integer, its first bit
    (np.packbits order: most significant first) the key's highest."""
    n = codes.shape[0]
    m = starts.shape[0]
    keys = np.empty((m, n), np.uint64)
    for i in range(n):
        for j in range(m):
            a = starts[j]
            length = lengths[j]
            first = a // 8
            last = (a + length - 1) // 8
            acc = np.uint64(0)
            for b in range(first, last + 1):  # at most 5 bytes: 40 bits
                acc = (acc << np.uint64(8)) | np.uint64(codes[i, b])
            acc >>= np.uint64(8 * (last + 1) - (a + length))
            keys[j, i] = acc & ((np.uint64(1) << np.uint64(length)) - np.uint64(1))
    return keys


@numba.njit(cache=True, nogil=True)
def _counting_sort(keys, offsets, rows):
    """CSR of one dense table: offsets[v]..offsets[v + 1] index `rows`, the
    positions holding value v, in increasing position."""
    n = keys.shape[0]
    for i in range(n):
        offsets[np.int64(keys[i]) + 1] += 1
    for v in range(1, offsets.shape[0]):
        offsets[v] += offsets[v - 1]
    fill = offsets[:-1].copy()
    for i in range(n):
        v = np.int64(keys[i])
        rows[fill[v]] = i
        fill[v] += 1


_POSITION_MASK = (1 << _POSITION_BITS) - 1

# Outcomes of one query's probing.
_DONE, _OVER_BUDGET, _FULL = 0, 1, 2

# Buckets, and bucket entries, loaded per pass (see _probe).
_CHUNK = 64


@numba.njit(cache=True, nogil=True)
def _probe(q, qk, words, masks, lengths, rows, off_base, dense_off, sk_base, sk_len, skeys, so_base,
           soff, bits, k, max_r, budget, buf, counts, scratch):
    """One query: the `k` codes nearest `q` within `max_r`, exactly.

    Returns `(status, count, work)`. With `_DONE`, `buf[:count]` holds the result,
    `count <= k`, as sorted keys `distance << 40 | position`. `_OVER_BUDGET`:
    the work passed `budget`. `_FULL`: `buf` holds fewer than the results
    (only when `k > len(buf)`, for a range search: call again with a larger
    one). `work`: probes plus candidates verified. `counts` (bits + 1) and
    `scratch` (4 * _CHUNK) are scratch.

    One function, no calls with arrays in the loops: each would cost numba
    reference counting (atomic) per probe and per candidate.
    """
    m = lengths.shape[0]
    nwords = words.shape[1]
    cap = buf.shape[0]
    counts[:] = 0
    nc = 0
    # Only codes at distance <= bound can still be in the answer: `bound` is
    # the k-th smallest distance found so far (max_r until k are found), and
    # `within` the number of codes found at distance <= bound.
    bound = min(bits, max_r)
    within = 0
    work = np.int64(0)
    max_len = 0
    for j in range(m):
        max_len = max(max_len, lengths[j])
    # Scratch, in chunks of _CHUNK: the buckets of _CHUNK substring values,
    # then the positions and distances of _CHUNK bucket entries, each chunk
    # loaded in a branch-free pass so that its cache misses overlap.
    starts = scratch[0:_CHUNK]
    ends = scratch[_CHUNK:2 * _CHUNK]
    positions = scratch[2 * _CHUNK:3 * _CHUNK]
    distances = scratch[3 * _CHUNK:4 * _CHUNK]
    done = False
    for s in range(max_len + 1):
        for j in range(m):
            length = lengths[j]
            if s > length:
                continue
            limit = np.uint64(1) << np.uint64(length)
            v = (np.uint64(1) << np.uint64(s)) - np.uint64(1)
            more = True
            while more:
                # Up to _CHUNK values at substring distance s from qk[j]:
                # their buckets rows[j, starts[i]:ends[i]].
                nb = 0
                while more and nb < _CHUNK:
                    key = qk[j] ^ v
                    start = np.int64(0)
                    end = np.int64(0)
                    if off_base[j] >= 0:
                        b = off_base[j] + np.int64(key)
                        start = np.int64(dense_off[b])
                        end = np.int64(dense_off[b + 1])
                    else:
                        first = sk_base[j]
                        lo = first
                        hi = first + sk_len[j]
                        while lo < hi:
                            mid = (lo + hi) >> 1
                            if skeys[mid] < key:
                                lo = mid + 1
                            else:
                                hi = mid
                        if lo < first + sk_len[j] and skeys[lo] == key:
                            e = so_base[j] + (lo - first)
                            start = np.int64(soff[e])
                            end = np.int64(soff[e + 1])
                    starts[nb] = start
                    ends[nb] = end
                    nb += 1
                    if v == 0:
                        more = False
                    else:
                        # Gosper's hack: the next value with as many ones.
                        c = v & (~v + np.uint64(1))
                        r = v + c
                        v = (((r ^ v) >> np.uint64(2)) // c) | r
                        more = v < limit
                # Their entries, _CHUNK at a time: positions, then distances,
                # then the candidates among them.
                for bi in range(nb):
                    work += 1 + ends[bi] - starts[bi]
                bi = 0
                t = starts[0]
                while bi < nb:
                    count = 0
                    while bi < nb and count < _CHUNK:
                        take = min(ends[bi] - t, _CHUNK - count)
                        for u in range(take):
                            positions[count + u] = rows[j, t + u]
                        count += take
                        t += take
                        if t >= ends[bi]:
                            bi += 1
                            if bi < nb:
                                t = starts[bi]
                    for i in range(count):
                        p = positions[i]
                        d = 0
                        for w in range(nwords):
                            d += _popcount(words[p, w] ^ q[w])
                        distances[i] = d
                    for i in range(count):
                        d = distances[i]
                        if d > bound:
                            continue
                        p = positions[i]
                        # Seen before? Then another table j2 is within s - 1
                        # of the query (an earlier radius), or within s and
                        # probed earlier (j2 < j).
                        repeat = False
                        for j2 in range(m):
                            if j2 != j:
                                d2 = 0
                                for w in range(nwords):
                                    d2 += _popcount((words[p, w] ^ q[w]) & masks[j2, w])
                                if d2 < s or (d2 == s and j2 < j):
                                    repeat = True
                                    break
                        if repeat:
                            continue
                        if nc == cap:
                            if k >= cap:
                                return _FULL, nc, work
                            # Drop the codes the bound has passed since.
                            kept = 0
                            for c in range(nc):
                                if buf[c] >> _POSITION_BITS <= bound:
                                    buf[kept] = buf[c]
                                    kept += 1
                            nc = kept
                            if nc * 2 > cap:
                                # Ties at the bound: keep the k best (distance, position).
                                buf[:nc].sort()
                                nc = k
                        buf[nc] = (d << _POSITION_BITS) | p
                        nc += 1
                        counts[d] += 1
                        within += 1
                        while within - counts[bound] >= k:
                            within -= counts[bound]
                            bound -= 1
                if work > budget:
                    return _OVER_BUDGET, nc, work
            # Table j probed at radius s, the others at s (before j) or s - 1:
            # every code within s * m + j of the query is known.
            if bound <= s * m + j:
                done = True
                break
        if done:
            break
    # Every code at distance <= bound is in buf (or lost to a key below it): rank.
    kept = 0
    for c in range(nc):
        if buf[c] >> _POSITION_BITS <= bound:
            buf[kept] = buf[c]
            kept += 1
    buf[:kept].sort()
    return _DONE, min(kept, k), work


@numba.njit(cache=True, nogil=True)
def _knn(qwords, qkeys, words, masks, lengths, rows, off_base, dense_off, sk_base, sk_len, skeys,
         so_base, soff, bits, k, budget, out_d, out_p, failed, work):
    buf = np.empty(max(2 * k, 256), np.int64)
    counts = np.empty(bits + 1, np.int64)
    scratch = np.empty(4 * _CHUNK, np.int64)
    for i in range(qwords.shape[0]):
        status, count, work[i] = _probe(qwords[i], qkeys[i], words, masks, lengths, rows, off_base,
                                         dense_off, sk_base, sk_len, skeys, so_base, soff, bits, k, bits,
                                         budget, buf, counts, scratch)
        if status == _DONE:
            for c in range(k):
                out_p[i, c] = buf[c] & _POSITION_MASK
                out_d[i, c] = buf[c] >> _POSITION_BITS
        else:
            failed[i] = True


@numba.njit(cache=True, nogil=True)
def _scan(qwords, words, bits, k, out_d, out_p):
    """Brute-force k-NN, ties by position: a histogram of the distances
    gives the k-th distance, a second pass places each code at distance
    below it (and the first at it) by counting sort, in position order."""
    n, nwords = words.shape
    counts = np.empty(bits + 1, np.int64)
    slot = np.empty(bits + 1, np.int64)
    for i in range(qwords.shape[0]):
        q = qwords[i]
        counts[:] = 0
        for p in range(n):
            d = 0
            for w in range(nwords):
                d += _popcount(words[p, w] ^ q[w])
            counts[d] += 1
        total = 0
        kth = bits
        for t in range(bits + 1):
            slot[t] = total
            total += counts[t]
            if total >= k:
                kth = t
                break
        for p in range(n):
            d = 0
            for w in range(nwords):
                d += _popcount(words[p, w] ^ q[w])
            if d <= kth and slot[d] < k:
                out_p[i, slot[d]] = p
                out_d[i, slot[d]] = d
                slot[d] += 1


@numba.njit(cache=True, nogil=True)
def _range(qwords, qkeys, words, masks, lengths, rows, off_base, dense_off, sk_base, sk_len, skeys,
           so_base, soff, bits, radius, budget):
    nq = qwords.shape[0]
    lims = np.zeros(nq + 1, np.int64)
    failed = np.zeros(nq, np.bool_)
    buf = np.empty(1024, np.int64)
    counts = np.empty(bits + 1, np.int64)
    scratch = np.empty(4 * _CHUNK, np.int64)
    out = np.empty(1024, np.int64)
    everything = np.int64(1) << 62
    for i in range(nq):
        while True:
            status, count, _ = _probe(qwords[i], qkeys[i], words, masks, lengths, rows, off_base,
                                      dense_off, sk_base, sk_len, skeys, so_base, soff, bits, everything,
                                      radius, budget, buf, counts, scratch)
            if status != _FULL:
                break
            buf = np.empty(2 * buf.shape[0], np.int64)
        if status == _OVER_BUDGET:
            failed[i] = True
            count = 0
        if lims[i] + count > out.shape[0]:
            grown = np.empty(max(2 * out.shape[0], lims[i] + count), np.int64)
            grown[:lims[i]] = out[:lims[i]]
            out = grown
        out[lims[i]:lims[i] + count] = buf[:count]
        lims[i + 1] = lims[i] + count
    found = out[:lims[nq]]
    return lims, (found >> _POSITION_BITS).astype(np.int32), found & _POSITION_MASK, failed
