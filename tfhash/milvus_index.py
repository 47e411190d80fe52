"""Hamming k-NN over packed binary codes, held in Milvus: past one machine.

`MilvusIndex` keeps `tfhash.index.HammingIndex`'s contract (packed `uint8`
codes, int64 ids, results ranked by Hamming distance with ties broken by
insertion order), with the codes stored in a Milvus collection instead of
this process's memory:

* ``uri="codes.db"`` (a file path ending in ``.db``): milvus-lite, embedded,
  a local server process started by pymilvus for that file.
* ``uri="http://host:19530"``: a Milvus server (standalone or a cluster).

Install with ``pip install "tfhash[milvus]"``. pymilvus is imported when an
index is made, never by ``import tfhash``; note that its import configures
the `logging` module (`logging.config.dictConfig`, which closes the handlers
already installed), so a program with its own logging handlers should import
pymilvus first.

Collection layout: ``pos`` INT64 primary key (the insertion position, kept
by this class), ``id`` INT64 (the id given to `add`, or -1 when no ids are
given: the row's id is then its position) and ``code`` BINARY_VECTOR of
dim ``bits`` (the packed bytes as they are), indexed for metric HAMMING with
BIN_FLAT (exact, brute force) or BIN_IVF_FLAT (approximate). The position,
not the id, is the primary key because ids may repeat (as in HammingIndex)
and Milvus does not enforce unique primary keys.

A collection made with ``paths=True`` (`tfhash.image_search`'s, an image
folder's codes) has a fourth field, ``path`` VARCHAR: each row's file, as
HammingIndex keeps them in ``metadata["paths"]``. `metadata`, a dict of JSON
values, is kept as the collection's description (JSON), written when the
collection is created: milvus-lite 2.5 does not implement altering a
collection's properties, and a reserved row would be a row every search and
count had to leave out.
"""

import contextlib
import importlib.util
import json
import os
import re
import warnings

import numpy as np

from tfhash.index import MAX_BITS, HammingIndex, _is_int, check_ids

# Milvus answers at most this many rows per query (its topK limit, also the
# most `limit` a query() takes): more is asked for in windows of positions.
MAX_TOPK = 16384
# Rows per search call (queries * limit), so one answer stays a few MiB.
_MAX_HITS = 1 << 18
# Candidates fetched: 2k + this. Enough that the ties at the k-th distance
# usually all arrive with the first search (else one more search fetches
# exactly the rows at that distance; see MilvusIndex); more costs time, as
# pymilvus builds a Python object per row returned. Measured on 100,000
# random 64-bit codes, 1,000 queries: k=10 took 0.45 s with 16, 1.9 s with
# 256, 0.79 s with 0 (291 queries needed the second search).
_TIE_MARGIN = 16
# Ids per `id in [...]` expression (deletes, path lookups), to keep expressions short.
_IDS_PER_EXPRESSION = 4096

POSITION, ID, CODE, PATH = "pos", "id", "code", "path"
# The longest path a row may keep, in bytes: Milvus's largest VARCHAR.
MAX_PATH_BYTES = 65_535
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
DEFAULT_COLLECTION = "tfhash_codes"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_STRONG = {"consistency_level": "Strong"}


def parse_address(address):
    """`(uri, collection)` of an index address, as the command line takes them:

    * ``milvus://HOST:PORT/COLLECTION``: a Milvus server (``http://HOST:PORT``);
    * ``milvus:FILE.db`` or ``milvus:FILE.db#COLLECTION``: milvus-lite, a file.

    The collection defaults to ``tfhash_codes``; None for anything else (a
    HammingIndex file).

    >>> parse_address("milvus://db.example:19530/photos")
    ('http://db.example:19530', 'photos')
    >>> parse_address("milvus:runs/codes.db#photos")
    ('runs/codes.db', 'photos')
    """
    if not isinstance(address, str) or not address.startswith("milvus:"):
        return None
    rest = address[len("milvus:"):]
    if rest.startswith("//"):
        host, _, collection = rest[2:].partition("/")
        if not host or "/" in collection:
            raise ValueError("Expected a Milvus server address milvus://HOST:PORT/COLLECTION. "
                             f"Received: {address!r}")
        return f"http://{host}", collection or DEFAULT_COLLECTION
    file, _, collection = rest.partition("#")
    if not file.endswith(".db"):
        raise ValueError(f"Expected a milvus-lite address milvus:FILE.db or milvus:FILE.db#COLLECTION. "
                         f"Received: {address!r}")
    return file, collection or DEFAULT_COLLECTION


def _import_pymilvus(local):
    """pymilvus (and milvus-lite for a file uri), or a one-line ImportError."""
    try:
        if local:
            if importlib.util.find_spec("milvus_lite") is None:
                raise ModuleNotFoundError("No module named 'milvus_lite'", name="milvus_lite")
            with warnings.catch_warnings():
                # milvus-lite 2.5 imports pkg_resources, which warns that it is deprecated.
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
                import milvus_lite  # noqa: F401
        import pymilvus
    except ImportError as error:
        if error.name == "pkg_resources":
            raise ImportError('MilvusIndex: milvus-lite 2.5 needs pkg_resources, which setuptools 81 removed: '
                              'pip install "tfhash[milvus]" (it pins setuptools<81)') from None
        need = "pymilvus and milvus-lite" if local else "pymilvus"
        raise ImportError(f'MilvusIndex needs {need} (missing: {error.name}): pip install "tfhash[milvus]"') from None
    return pymilvus


class MilvusIndex:
    """Hamming k-NN over packed codes stored in Milvus, ranked as HammingIndex ranks.

    **Ranking.** Results are sorted by Hamming distance, ties broken by
    insertion order (by id, when ids are the insertion positions), so that
    with BIN_FLAT `search` and `range_search` return exactly what a
    `HammingIndex` given the same `add` calls returns. Milvus itself breaks
    distance ties in no promised order (it depends on segments), so the
    ranking is finished on the client, exactly:

    1. Milvus is asked for the `min(ntotal, 2k + 16)` nearest rows, with
       their positions; the client sorts them by (distance, position).
    2. Let `d` be the k-th distance. If a row farther than `d` was returned
       (or every row was), every row at distance `d` is among the fetched
       ones, and the first k are the answer.
    3. Otherwise there may be more rows at distance `d` than were fetched:
       a range search for distance exactly `d` fetches all of them (in
       windows of 16,384 positions when there are more than Milvus returns
       at once), and the ones with the lowest positions fill the last places.

    **Limits.** Milvus returns at most 16,384 rows per query: `k` beyond that
    (after clipping to `ntotal`) is refused; `range_search` has no such limit
    (it asks in windows of positions). With ``index_type="BIN_IVF_FLAT"``
    (a Milvus server only; milvus-lite stores BIN_FLAT alone) searches are
    approximate: only `nprobe` of `nlist` clusters are scanned, a true
    neighbour can be missed, and a query whose probed clusters hold fewer
    than `k` rows is padded with id -1 at distance `bits + 1`.

    **Removing.** `remove(ids)` deletes rows by id. Positions are never
    renumbered: without custom ids, the surviving rows keep their ids (unlike
    faiss's `remove_ids`), and new rows continue after the highest position
    ever given in this session (after reopening: the highest one held).

    **Writers.** One writer per collection at a time: positions are counted
    by this object. A failed `add` deletes the rows it had inserted (best
    effort: Milvus has no transactions).

    Args:
        bits: code length in bits, a positive multiple of 8, at most 4096;
            None: an existing collection's (`tfhash search` opens one so).
        uri: a file path ending in ``.db`` (milvus-lite, embedded) or a
            server address, ``http://host:19530``.
        collection: the collection's name (letters, digits, ``_``). It is
            created when missing; an existing one is reopened, and must hold
            codes of `bits` bits in this class's layout.
        index_type: ``"BIN_FLAT"`` (exact, the default for a new collection)
            or ``"BIN_IVF_FLAT"`` (approximate, a server only). None: the
            existing collection's, or BIN_FLAT.
        nlist: BIN_IVF_FLAT's number of clusters, when creating one.
        nprobe: BIN_IVF_FLAT's clusters scanned per query.
        batch_size: rows per insert call.
        create: create the collection when missing; False refuses a
            missing one (`tfhash search` opens, never creates).
        paths: when creating: give each row a file path (a ``path`` VARCHAR
            field; `add(codes, paths=...)`, `paths(ids)`). A reopened
            collection has paths if it was made with them (`has_paths`).
        metadata: when creating: a dict of JSON values kept as the
            collection's description, read back as `metadata` when reopened
            (a collection made without one: {}). Default: {}.
        **client_kwargs: passed to `pymilvus.MilvusClient` (``token``,
            ``db_name``, ``timeout``, ...).

    Examples:

    >>> import tempfile
    >>> index = MilvusIndex(bits=8, uri=os.path.join(tempfile.mkdtemp(), "codes.db"))
    >>> index.add(np.array([[0b00000000], [0b00000001],
    ...                     [0b00000011], [0b00000001]], dtype=np.uint8))
    >>> distances, ids = index.search(np.zeros((1, 1), np.uint8), k=4)
    >>> distances.tolist(), ids.tolist()
    ([[0, 1, 1, 2]], [[0, 1, 3, 2]])
    >>> index.close()
    """

    def __init__(self, bits, uri, collection=DEFAULT_COLLECTION, *, index_type=None, nlist=1024, nprobe=16,
                 batch_size=10_000, create=True, paths=False, metadata=None, **client_kwargs):
        if bits is not None and (not _is_int(bits) or not 0 < bits <= MAX_BITS or bits % 8):
            raise ValueError(f"Expected `bits` to be a positive multiple of 8, at most {MAX_BITS}. "
                             f"Received: bits={bits!r}")
        if not isinstance(collection, str) or not _NAME.fullmatch(collection):
            raise ValueError("Expected `collection` to be a Milvus collection name (a letter or _, then letters, "
                             f"digits or _; at most 255). Received: {collection!r}")
        if index_type is not None and index_type not in INDEX_TYPES:
            raise ValueError(f"Expected `index_type` in {INDEX_TYPES} or None. Received: {index_type!r}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("batch_size", batch_size)):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"Expected `{name}` to be a positive int. Received: {name}={value!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"Expected `metadata` to be a dict of JSON values. Received: {type(metadata).__name__}")
        try:
            description = json.dumps(metadata or {}, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Expected `metadata` to be a dict of JSON values. Received: {error}") from None
        uri = os.fspath(uri) if isinstance(uri, os.PathLike) else uri
        if not isinstance(uri, str):
            raise ValueError(f"Expected `uri` to be a file path ending in .db or a server address "
                             f"(http://host:19530). Received: {uri!r}")
        local = not uri.startswith(_SERVER_SCHEMES)
        if local and not uri.endswith(".db"):
            raise ValueError("Expected `uri` to be a file path ending in .db (milvus-lite) or a server address "
                             f"(http://host:19530). Received: {uri!r}")
        if local and index_type == "BIN_IVF_FLAT":
            raise ValueError("Expected index_type='BIN_FLAT' for a file uri: milvus-lite stores no other binary "
                             f"index; BIN_IVF_FLAT needs a Milvus server (http://host:19530). Received: {uri!r}")
        pymilvus = _import_pymilvus(local)
        self.bits = None if bits is None else int(bits)
        self.code_size = None if bits is None else self.bits // 8
        self.uri = os.path.abspath(uri) if local else uri
        self.collection = collection
        self.batch_size = int(batch_size)
        self.nprobe = int(nprobe)
        self.has_paths = bool(paths)
        self.metadata = dict(metadata or {})
        self._client = pymilvus.MilvusClient(self.uri, **client_kwargs)
        try:
            if self._client.has_collection(collection):
                self.index_type = self._check_existing(index_type)
                self._client.load_collection(collection)
            elif create and bits is None:
                raise ValueError(f"Expected `bits` to create collection {collection!r} at {self.uri!r}. "
                                 "Received: bits=None")
            elif create:
                self.index_type = index_type or "BIN_FLAT"
                self._create(pymilvus.DataType, int(nlist), description)
            else:
                raise ValueError(f"Expected a collection {collection!r} at {self.uri!r} (create=False). "
                                 f"Received: none there")
            size = self.ntotal
            self._has_ids = size > 0 and self._first_id() >= 0
            self._next = self._end_position(size)
        except BaseException:
            self._client.close()
            raise

    @classmethod
    def open(cls, address, bits=None, **kwargs):
        """A MilvusIndex at a command-line address (see `parse_address`):
        ``milvus://HOST:PORT/COLLECTION`` or ``milvus:FILE.db#COLLECTION``."""
        parsed = parse_address(address)
        if parsed is None:
            raise ValueError("Expected a Milvus address, milvus://HOST:PORT/COLLECTION or milvus:FILE.db#COLLECTION. "
                             f"Received: {address!r}")
        uri, collection = parsed
        return cls(bits, uri=uri, collection=collection, **kwargs)

    # ------------------------------------------------------------------
    # The collection
    # ------------------------------------------------------------------

    def _create(self, data_type, nlist, description):
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        schema.add_field(POSITION, data_type.INT64, is_primary=True)
        schema.add_field(ID, data_type.INT64)
        schema.add_field(CODE, data_type.BINARY_VECTOR, dim=self.bits)
        if self.has_paths:
            schema.add_field(PATH, data_type.VARCHAR, max_length=MAX_PATH_BYTES)
        params = self._client.prepare_index_params()
        params.add_index(field_name=CODE, index_name=CODE, index_type=self.index_type, metric_type="HAMMING",
                         params={"nlist": nlist} if self.index_type == "BIN_IVF_FLAT" else {})
        # Strong: a search sees every row added before it, on a server too.
        self._client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")

    def _check_existing(self, index_type):
        """The reopened collection's index type, once its layout and dim are
        checked; its paths and metadata read."""
        where = f"collection {self.collection!r} at {self.uri!r}"
        described = self._client.describe_collection(self.collection)
        fields = {field["name"]: field for field in described["fields"]}
        code = fields.get(CODE)
        if code is None or set(fields) - {PATH} != {POSITION, ID, CODE} or not fields[POSITION].get("is_primary"):
            raise ValueError(f"Expected {where} to be a MilvusIndex collection (fields {POSITION!r} primary, {ID!r}, "
                             f"{CODE!r}, and {PATH!r} with paths). Received: fields {sorted(fields)}")
        self.has_paths = PATH in fields
        try:
            metadata = json.loads(described.get("description") or "{}")
        except ValueError:  # a collection made elsewhere, described in words
            metadata = {}
        self.metadata = metadata if isinstance(metadata, dict) else {}
        dim = int(code.get("params", {}).get("dim", -1))
        if self.bits is None and 0 < dim <= MAX_BITS and dim % 8 == 0:
            self.bits, self.code_size = dim, dim // 8
        if dim != self.bits:
            raise ValueError(f"Expected {where} to hold {self.bits}-bit codes (BINARY_VECTOR dim={self.bits}). "
                             f"Received: dim={dim}")
        described = self._client.describe_index(self.collection, CODE) or {}
        found, metric = described.get("index_type"), described.get("metric_type")
        if metric != "HAMMING" or found not in INDEX_TYPES:
            raise ValueError(f"Expected {where} to be indexed for HAMMING by one of {INDEX_TYPES}. "
                             f"Received: {found} for {metric}")
        if index_type is not None and index_type != found:
            raise ValueError(f"Expected {where} to have index_type={index_type!r}, as asked. Received: {found!r}")
        return found

    def _first_id(self):
        rows = self._client.query(self.collection, filter="", output_fields=[ID], limit=1, **_STRONG)
        return int(rows[0][ID]) if rows else -1

    def _count(self, expression=""):
        rows = self._client.query(self.collection, filter=expression, output_fields=["count(*)"], **_STRONG)
        return int(rows[0]["count(*)"])

    def _end_position(self, size):
        """One past the highest position held (0 when empty): found by
        counting rows at or past a position, doubling then bisecting."""
        if size == 0:
            return 0
        top = np.iinfo(np.int64).max
        low, high = 0, size  # some row has pos >= low
        while self._count(f"{POSITION} >= {high}"):
            if high == top:
                return top + 1
            low, high = high, min(2 * high, top)
        while high - low > 1:  # pos >= low exists, pos >= high does not
            middle = (low + high) // 2
            low, high = (middle, high) if self._count(f"{POSITION} >= {middle}") else (low, middle)
        return low + 1

    def close(self):
        """Closes the connection (and, for a file uri, lets milvus-lite stop)."""
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------
    # Size
    # ------------------------------------------------------------------

    @property
    def ntotal(self):
        """Rows held now (a count(*) query)."""
        return self._count()

    def __len__(self):
        return self.ntotal

    @property
    def has_ids(self):
        return self._has_ids

    @property
    def next_position(self):
        """The position the next row added gets: one past the highest given
        (after reopening: held). Equal to `ntotal` when no row was removed."""
        return self._next

    def __repr__(self):
        return (f"MilvusIndex(bits={self.bits}, uri={self.uri!r}, collection={self.collection!r}, "
                f"index_type={self.index_type!r}, has_ids={self.has_ids})")

    # ------------------------------------------------------------------
    # Adding and removing
    # ------------------------------------------------------------------

    def add(self, codes, ids=None, paths=None):
        """Appends packed codes, in insert calls of `batch_size` rows.

        Checked as `HammingIndex.add` checks them, with its messages, before
        anything is sent: a rejected call changes nothing.

        Args:
            codes: `uint8` array of shape `(n, bits / 8)`, packed as `np.packbits` does.
            ids: optional integer array of shape `(n,)`, non-negative, returned
                by `search` in place of positions; every `add` gives ids or
                none does. Ids need not be unique.
            paths: each row's file path, `n` strings: required by a collection
                made with ``paths=True``, refused by one without.
        """
        codes = self._check_codes(codes, "codes")
        n = codes.shape[0]
        paths = self._check_paths(paths, n)
        size = self.ntotal
        ids = check_ids(ids, n, size=size, has_ids=size > 0 and self._has_ids, holder="index")
        if n == 0:
            return
        first = self._next
        self._next = first + n  # kept even if the add fails: a position is never given twice
        try:
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                row_ids = [-1] * (stop - start) if ids is None else ids[start:stop].tolist()
                rows = [{POSITION: first + start + i, ID: row_id, CODE: code.tobytes()}
                        for i, (row_id, code) in enumerate(zip(row_ids, codes[start:stop]))]
                if paths is not None:
                    for row, path in zip(rows, paths[start:stop]):
                        row[PATH] = path
                self._client.insert(self.collection, rows)
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.delete(self.collection, filter=f"{POSITION} >= {first} and {POSITION} < {first + n}")
            raise
        self._has_ids = ids is not None

    def remove(self, ids):
        """Deletes every row whose id is in `ids` (an integer array, 1-D);
        returns how many rows were deleted. Positions are not renumbered."""
        array = np.asarray(ids)
        ids = check_ids(array, array.shape[0] if array.ndim == 1 else array.size, size=0, has_ids=False, holder="index")
        if ids.size == 0:
            return 0
        before = self.ntotal
        unique = np.unique(ids).tolist()
        for start in range(0, len(unique), _IDS_PER_EXPRESSION):
            chunk = unique[start : start + _IDS_PER_EXPRESSION]
            if self._has_ids:
                self._client.delete(self.collection, filter=f"{ID} in {chunk}")
            else:
                self._client.delete(self.collection, ids=chunk)
        return before - self.ntotal

    def paths(self, ids):
        """The file path of each row id in `ids` (a collection with paths), a
        list of str; None where no row has that id (with repeated ids: one
        of their rows' paths)."""
        if not self.has_paths:
            raise ValueError(f"Expected a collection with paths (MilvusIndex(..., paths=True)). Received: "
                             f"collection {self.collection!r}, made without")
        ids = np.asarray(ids, np.int64).ravel().tolist()
        key = ID if self._has_ids else POSITION
        found = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), _IDS_PER_EXPRESSION):
            chunk = unique[start : start + _IDS_PER_EXPRESSION]
            rows = self._client.query(self.collection, filter=f"{key} in {chunk}", output_fields=[key, PATH],
                                      limit=MAX_TOPK, **_STRONG)
            found.update((int(row[key]), row[PATH]) for row in rows)
        return [found.get(i) for i in ids]

    def codes(self):
        """A copy of the packed codes held, (ntotal, bits / 8) uint8, in
        insertion order: read in windows of 16,384 positions."""
        positions, codes = [], []
        for start in range(0, self._next, MAX_TOPK):
            rows = self._client.query(
                self.collection, filter=f"{POSITION} >= {start} and {POSITION} < {start + MAX_TOPK}",
                output_fields=[POSITION, CODE], limit=MAX_TOPK, **_STRONG)
            for row in rows:
                code = row[CODE]
                positions.append(row[POSITION])
                codes.append(code[0] if isinstance(code, list) else code)
        order = np.argsort(np.asarray(positions, np.int64), kind="stable")
        packed = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), self.code_size)
        return packed[order]

    # ------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------

    def search(self, queries, k):
        """The `k` nearest codes of each query, ranked as HammingIndex ranks
        them: by distance, ties by insertion order (see the class docstring
        for how ties are settled exactly on the client).

        Args:
            queries: `uint8` array of shape `(nq, bits / 8)`.
            k: number of neighbours wanted, a positive int; the result has
                `min(k, ntotal)` columns, which must be at most 16,384.

        Returns:
            `(distances, ids)`: `int32` and `int64` arrays of shape `(nq, min(k, ntotal))`.

        Raises:
            ValueError: malformed `queries`, a `k` that is not an int `>= 1`,
                an empty index, or `min(k, ntotal) > 16384`.
        """
        queries = self._check_codes(queries, "queries")
        if not _is_int(k) or k <= 0:
            raise ValueError(f"Expected `k` to be a positive int. Received: k={k!r}")
        ntotal = self._check_not_empty("search")
        k = min(int(k), ntotal)
        if k > MAX_TOPK:
            raise ValueError(f"Expected `k` <= {MAX_TOPK}: Milvus returns at most {MAX_TOPK} rows per query "
                             f"(ntotal={ntotal}); use range_search, or tfhash.index.HammingIndex for a longer ranking. "
                             f"Received: k={k}")
        nq = queries.shape[0]
        distances = np.full((nq, k), self.bits + 1, np.int32)
        ids = np.full((nq, k), -1, np.int64)
        fetch = min(ntotal, MAX_TOPK, 2 * k + _TIE_MARGIN)
        step = max(1, min(MAX_TOPK, _MAX_HITS // fetch))
        for start in range(0, nq, step):
            batch = queries[start : start + step]
            found = self._search(batch, fetch)
            # Queries whose ties at the k-th distance may go past what was fetched, by that distance.
            unsettled = {}
            for row, (d, p, i) in enumerate(found):
                if len(d) >= k and len(d) < ntotal and d[-1] == d[k - 1]:
                    unsettled.setdefault(int(d[k - 1]), []).append(row)
            for tie, rows in unsettled.items():
                bands = self._search(batch[rows], MAX_TOPK, low=tie, high=tie)
                for row, band in zip(rows, bands):
                    if len(band[0]) == MAX_TOPK:  # more rows at that distance than one answer holds
                        band = self._scan(batch[row], tie, tie, need=k)
                    d, p, i = found[row]
                    closer = d < tie
                    found[row] = tuple(np.concatenate([a[closer], b]) for a, b in zip((d, p, i), band))
            for row, (d, p, i) in enumerate(found):
                order = np.lexsort((p, d))[:k]
                distances[start + row, : len(order)] = d[order]
                ids[start + row, : len(order)] = i[order]
        return distances, ids

    def range_search(self, queries, radius):
        """Every code within Hamming distance `radius` (inclusive), as
        `HammingIndex.range_search`: `(lims, distances, ids)`, query `i`'s
        results at `[lims[i]:lims[i + 1]]`, sorted by distance, ties by
        insertion order. Milvus's range search keeps `range_filter <=
        distance < radius`, so it is asked for `radius + 1`; a query with
        more than 16,384 rows in range is asked again in windows of positions."""
        queries = self._check_codes(queries, "queries")
        self._check_radius(radius)
        self._check_not_empty("range_search")
        radius = int(radius)
        results = []
        step = max(1, _MAX_HITS // MAX_TOPK)
        for start in range(0, queries.shape[0], step):
            batch = queries[start : start + step]
            for row, found in enumerate(self._search(batch, MAX_TOPK, low=0, high=radius)):
                if len(found[0]) == MAX_TOPK:
                    found = self._scan(batch[row], 0, radius)
                d, p, i = found
                order = np.lexsort((p, d))
                results.append((d[order], i[order]))
        lims = np.zeros(len(results) + 1, np.int64)
        lims[1:] = np.cumsum([len(d) for d, _ in results])
        if not results:
            return lims, np.empty(0, np.int32), np.empty(0, np.int64)
        return (lims, np.concatenate([d for d, _ in results]).astype(np.int32),
                np.concatenate([i for _, i in results]).astype(np.int64))

    def _search(self, queries, limit, *, low=None, high=None, expression=""):
        """Milvus's answer to one search call: per query, (distances int32,
        positions int64, ids int64) in Milvus's order. With `low`/`high`: only
        rows at distances in [low, high] (a range search)."""
        params = {"nprobe": self.nprobe} if self.index_type == "BIN_IVF_FLAT" else {}
        if high is not None:
            params.update(radius=high + 1, range_filter=low)
        answer = self._client.search(
            self.collection, data=[query.tobytes() for query in queries], limit=limit, filter=expression,
            output_fields=[ID] if self._has_ids else [], anns_field=CODE,
            search_params={"metric_type": "HAMMING", "params": params}, **_STRONG)
        found = []
        for hits in answer:
            distances = np.rint(np.asarray(hits.distances, np.float64)).astype(np.int32)
            positions = np.asarray(hits.ids, np.int64)
            ids = (np.fromiter((hit["entity"][ID] for hit in hits), np.int64, len(positions))
                   if self._has_ids else positions)
            found.append((distances, positions, ids))
        return found

    def _scan(self, query, low, high, need=None):
        """Every row at distance in [low, high] of one query, asked for in
        windows of MAX_TOPK positions (so no answer is cut), lowest positions
        first; stops once `need` rows are found."""
        parts = []
        total = 0
        for start in range(0, self._next, MAX_TOPK):
            window = f"{POSITION} >= {start} and {POSITION} < {start + MAX_TOPK}"
            (part,) = self._search(query[None], MAX_TOPK, low=low, high=high, expression=window)
            parts.append(part)
            total += len(part[0])
            if need is not None and total >= need:
                break
        return tuple(np.concatenate([part[j] for part in parts]) for j in range(3))

    # ------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------

    # HammingIndex's own check and messages: uint8, 2-D, bits / 8 columns.
    _check_codes = HammingIndex._check_codes
    _check_radius = HammingIndex._check_radius

    def _check_paths(self, paths, n):
        if not self.has_paths:
            if paths is not None:
                raise ValueError(f"Expected no `paths` for collection {self.collection!r}, made without them "
                                 f"(MilvusIndex(..., paths=True) keeps them). Received: {len(paths)} paths")
            return None
        if paths is None or isinstance(paths, str) or len(paths) != n:
            received = "none" if paths is None else f"{type(paths).__name__} of length {len(paths)}"
            raise ValueError(f"Expected `paths`, one str per row ({n}), for collection {self.collection!r} "
                             f"(made with paths). Received: {received}")
        paths = list(paths)
        for path in paths:
            try:
                size = len(path.encode("utf-8")) if isinstance(path, str) else None
            except UnicodeEncodeError:  # a file name that is not UTF-8 (os.fsdecode's surrogates)
                size = None
            if size is None or size > MAX_PATH_BYTES:
                raise ValueError(f"Expected `paths` to be UTF-8 str of at most {MAX_PATH_BYTES} bytes. "
                                 f"Received: {path!r:.200}")
        return paths

    def _check_not_empty(self, method):
        ntotal = self.ntotal
        if ntotal == 0:
            raise ValueError(f"Cannot {method} an empty MilvusIndex (ntotal=0); call add() with some codes first.")
        return ntotal
