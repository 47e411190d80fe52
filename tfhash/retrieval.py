"""One object for retrieval: an encoder, a Hamming index, ids and metadata.

`Retriever` is what tensorflow/similarity users reach for: add items, search
with queries, get distances, ids and metadata back, save and load the lot.
It encodes with a tfhash encoder (any `HashModel`), ranks with
`tfhash.index.HammingIndex` (exact, ties by insertion order) and keeps each
row's id and JSON metadata beside it.

    >>> retriever = Retriever(encoder)                  # e.g. model.encoders()["image"]
    >>> retriever.add(images, metadata=labels)          # ids: 0, 1, 2, ...
    >>> results = retriever.search(queries, k=10)       # .distances, .ids, .metadata
    >>> retriever.save("runs/retriever")                # a folder, written atomically
    >>> retriever = Retriever.load("runs/retriever", encoder=encoder)

Importing this module does not import TensorFlow (the encoder brings it).
"""

import contextlib
import dataclasses
import hashlib
import json
import os

import numpy as np

from tfhash.index import HammingIndex, check_ids
from tfhash.io import array_writer, reading, remove_stale_temporaries, sha256, transaction

# The folder `Retriever.save` writes. Each part keeps its own format, readable
# with its own tool: the index with `HammingIndex.load`, the rest as JSON,
# `.npy` or a Keras archive.
FORMAT = "tfhash.Retriever"
FORMAT_VERSION = 2  # 2: a generation and every file's sha256 in the manifest
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.tfhi"
IDS_FILE = "ids.npy"
METADATA_FILE = "metadata.json"
ENCODER_FILE = "encoder.keras"

# Spare rows kept when the id buffer grows (as HammingIndex does for codes).
_GROWTH_DIVISOR = 8


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _json_default(value):
    """NumPy values in metadata (a label array, an np.int64) as plain JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encoder_identity(encoder):
    """What identifies the encoder that made a retriever's codes: class name,
    bits, input shapes and the sha256 of its weights (dtype, shape and bytes
    of each, in order). A dict of JSON values."""
    digest = hashlib.sha256()
    for weight in encoder.get_weights():
        weight = np.ascontiguousarray(weight)
        digest.update(f"{weight.dtype.str}{weight.shape};".encode())
        digest.update(weight.tobytes())
    return {
        "class": type(encoder).__name__,
        "bits": int(encoder.bits),
        "inputs": {name: list(shape) for name, shape in _input_shapes(encoder).items()},
        "weights_sha256": digest.hexdigest(),
    }


def _input_shapes(encoder):
    """{input name: shape of one item}, e.g. {"images": (8, 8, 1)} or {"bow": (V,)}."""
    if hasattr(encoder, "serving_inputs"):
        return {name: tuple(int(d) for d in spec.shape[1:]) for name, spec in encoder.serving_inputs().items()}
    if hasattr(encoder, "image_shape"):
        return {"images": tuple(int(d) for d in encoder.image_shape)}
    return {}


def _describe(identity):
    if identity is None:
        return "no encoder recorded (codes only)"
    inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in identity["inputs"].items())
    return (f"{identity['class']}(bits={identity['bits']}, inputs: {inputs or 'unknown'}, "
            f"weights sha256 {identity['weights_sha256'][:12]})")


@dataclasses.dataclass(eq=False)
class SearchResults:
    """What `Retriever.search` returns; unpacks as `distances, ids, metadata`.

    Attributes:
        distances: int32 array (nq, min(k, size)), Hamming distances, ascending.
            A radius search finds a different number of rows per query: a
            list of nq int32 arrays, one per query, each ascending.
        ids: int64 array, same shape, the ids of the rows found (a radius
            search: a list of nq int64 arrays, aligned with `distances`).
        metadata: list of nq lists, `metadata[i][j]` the metadata of the row
            with id `ids[i][j]` (None for a row added without metadata).
    """

    distances: np.ndarray
    ids: np.ndarray
    metadata: list

    def __iter__(self):
        return iter((self.distances, self.ids, self.metadata))


class Retriever:
    """Encode, index, search, save: exact Hamming retrieval in one object.

    Wraps a tfhash encoder and a `HammingIndex`. Rows are ranked by Hamming
    distance, ties broken by insertion order (the index's rule), and each
    row carries an id (default: its insertion position 0, 1, 2, ...) and
    optional metadata (anything JSON can hold: a label, a file name, a dict).

    **Inputs or codes.** `add_codes` / `search_codes` take packed codes, always.
    `add` / `search` take what the encoder takes (images, or bags of words for
    a text encoder), and packed codes too: an array is read as codes when it
    is `uint8`, 2-D, with `bits / 8` columns. The one case that rule cannot
    settle, an encoder whose own input is 2-D with `bits / 8` columns (a text
    encoder with that vocabulary) given a `uint8` array, is refused with an
    error: use `add_codes` / `search_codes`, or pass the bags of words as
    float32. Without an encoder, only codes are accepted.

    **Metadata** is kept as its JSON form from the moment it is added
    (NumPy values become plain numbers or lists, tuples become lists, dict
    keys strings), so `search` returns the same before and after
    `save` / `load`. It may be given in some `add` calls and not others
    (rows without it get None). `ids` are all-or-nothing, as in
    `HammingIndex`: every `add` gives them or none does. Ids need not be
    unique. A rejected `add` leaves the retriever unchanged.

    **Encoder identity.** The encoder's class name, bits, input shapes and a
    sha256 of its weights are recorded at the first `add`; `save` writes
    them and `load` refuses an encoder that does not match (its codes would
    not be comparable). An encoder whose weights change after the first
    `add` is refused by later `add` calls and by `save` for the same reason.

    Args:
        encoder: a tfhash encoder (a `HashModel`: `encode` and `bits`), e.g.
            `model.encoders()["image"]`; None for codes only.
        bits: the code length; required without an encoder or an index,
            checked against theirs otherwise.
        index: where the codes go, empty and without ids: a `HammingIndex`
            (the default, a new one) or another index with its API, e.g.
            `tfhash.milvus_index.MilvusIndex` (codes in Milvus; ids and
            metadata stay in this object, and `save` refuses it).

    Attributes:
        encoder: the encoder, or None.
        bits: code length in bits.
        size: number of rows held (also `len(retriever)`).
        index: the `HammingIndex` holding the codes, its ids the insertion
            positions that `ids` and metadata are looked up by (read it; add
            through the Retriever).

    Examples:

    >>> net = DHN(bits=16, input_shape=(8, 8, 1))
    >>> retriever = Retriever(net.encoders()["image"])
    >>> retriever.add(images, metadata=labels)              # raw images, encoded
    >>> distances, ids, metadata = retriever.search(queries, k=5)
    >>> retriever.save("runs/digits_retriever")
    >>> retriever = Retriever.load("runs/digits_retriever", encoder=net)
    >>> codes_only = Retriever(bits=16)                     # no encoder: codes in, codes out
    >>> codes_only.add_codes(np.zeros((3, 2), np.uint8), ids=np.array([7, 8, 9]))
    """

    def __init__(self, encoder=None, bits=None, *, index=None):
        if encoder is not None and not (hasattr(encoder, "encode") and hasattr(encoder, "bits")):
            raise ValueError(
                "Expected `encoder` to be a tfhash encoder (a HashModel with `encode` and `bits`), "
                f"e.g. model.encoders()['image']. Received: {type(encoder).__name__}"
            )
        if index is not None:
            # Rows are looked up by the index's insertion positions: it must start empty, without ids of its own.
            if not all(hasattr(index, name) for name in ("bits", "code_size", "ntotal", "has_ids", "add", "search",
                                                           "range_search")) or index.ntotal or index.has_ids:
                raise ValueError(f"Expected `index` to be an empty index without ids (HammingIndex's API), e.g. "
                                 f"MilvusIndex on a new collection. Received: {index!r}")
            if bits is not None and bits != index.bits:
                raise ValueError(f"Expected `bits` to equal the index's bits ({index.bits}), or None. "
                                 f"Received: bits={bits!r}")
            bits = index.bits
        if encoder is None and bits is None:
            raise ValueError("Expected `bits` (the code length) for a Retriever without an encoder. "
                             "Received: encoder=None, bits=None")
        if encoder is not None:
            if bits is not None and bits != encoder.bits:
                raise ValueError(f"Expected `bits` to equal the encoder's bits ({encoder.bits}), or None. "
                                 f"Received: bits={bits!r}")
            bits = int(encoder.bits)
        self.encoder = encoder
        self.index = HammingIndex(bits) if index is None else index  # HammingIndex validates bits
        self.bits = self.index.bits
        self._ids = None  # int64 buffer (spare rows past size), only with custom ids
        self._metadata = None  # list, one JSON value per row, once any metadata is given
        self._identity = None  # the encoder identity, pinned at the first add (or read on load)
        self._source = None  # (folder, generation) last loaded from or saved to

    # ------------------------------------------------------------------
    # Size
    # ------------------------------------------------------------------

    @property
    def size(self):
        return self.index.ntotal

    def __len__(self):
        return self.size

    @property
    def has_ids(self):
        return self._ids is not None

    def __repr__(self):
        encoder = "None" if self.encoder is None else type(self.encoder).__name__
        return (f"Retriever(encoder={encoder}, bits={self.bits}, size={self.size}, has_ids={self.has_ids}, "
                f"has_metadata={self._metadata is not None})")

    # ------------------------------------------------------------------
    # Adding
    # ------------------------------------------------------------------

    def add(self, items, ids=None, metadata=None):
        """Encodes `items` (unless they are packed codes) and appends them.

        Args:
            items: a batch of the encoder's inputs (raw images on a 0-255 scale,
                or bags of words), or packed codes, `uint8` (n, bits / 8); see
                the class docstring for how the two are told apart.
            ids: optional integer array (n,), non-negative, returned by
                `search` in place of insertion positions. Every `add` gives
                ids or none does.
            metadata: optional sequence of n JSON-serializable values (a NumPy
                array is fine), one per row, returned by `search`.
        """
        self._add(self._codes_of(items, "items", "add"), ids, metadata)

    def add_codes(self, codes, ids=None, metadata=None):
        """Appends packed codes, `uint8` (n, bits / 8) as `np.packbits` packs
        them; `ids` and `metadata` as in `add`."""
        self._add(self._check_codes(codes, "codes"), ids, metadata)

    def _add(self, codes, ids, metadata):
        n = codes.shape[0]
        ids = check_ids(ids, n, size=self.size, has_ids=self._ids is not None, holder="Retriever")
        metadata = self._check_metadata(metadata, n)
        identity = self._identity
        if identity is None and self.encoder is not None:
            identity = encoder_identity(self.encoder)
        if n == 0:
            return
        # Everything is checked: build the new state aside, then commit.
        old = self.size
        id_buffer = self._ids
        if ids is not None:
            capacity = 0 if id_buffer is None else len(id_buffer)
            if old + n > capacity:
                id_buffer = np.empty(max(old + n, capacity + capacity // _GROWTH_DIVISOR), np.int64)
                if old:
                    id_buffer[:old] = self._ids[:old]
            id_buffer[old : old + n] = ids
        self.index.add(codes)
        self._ids = id_buffer
        if metadata is not None:
            if self._metadata is None:
                self._metadata = [None] * old
            self._metadata.extend(metadata)
        elif self._metadata is not None:
            self._metadata.extend([None] * n)
        self._identity = identity

    # ------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------

    def search(self, queries, k=None, radius=None):
        """The `k` nearest rows of each query, or every row within Hamming
        distance `radius` of it, exactly.

        Args:
            queries: a batch of the encoder's inputs, or packed codes (as in `add`).
            k: neighbours wanted, a positive int (default 10); the results have
                `min(k, size)` columns. With `radius`: at most the `k` nearest
                of the rows within it (default: all of them), as
                `tfhash search --radius R -k K` shows.
            radius: an int in [0, bits]: the rows at distance <= radius
                (inclusive, as `HammingIndex.range_search`), instead of a fixed k.

        Returns:
            `SearchResults(distances, ids, metadata)`: int32 and int64 arrays
            (nq, min(k, size)), ranked by Hamming distance, ties by insertion
            order, and the rows' metadata as a list of lists aligned with `ids`.
            With `radius`, each query finds its own number of rows: `distances`
            and `ids` are lists of nq 1-D arrays, ranked the same way.

        Examples:

        >>> retriever = Retriever(bits=8)
        >>> retriever.add_codes(np.array([[0b000], [0b011], [0b001]], np.uint8), ids=np.array([10, 11, 12]))
        >>> distances, ids, _ = retriever.search_codes(np.array([[0]], np.uint8), radius=1)
        >>> distances[0].tolist(), ids[0].tolist()
        ([0, 1], [10, 12])
        """
        return self._search(self._codes_of(queries, "queries", "search"), k, radius)

    def search_codes(self, codes, k=None, radius=None):
        """`search` for packed query codes, `uint8` (nq, bits / 8)."""
        return self._search(self._check_codes(codes, "queries"), k, radius)

    def _search(self, queries, k, radius):
        if k is not None and (not _is_int(k) or k <= 0):
            raise ValueError(f"Expected `k` to be a positive int. Received: k={k!r}")
        if self.size == 0:
            raise ValueError("Expected a Retriever holding rows to search; add() some first. Received: size=0")
        if radius is not None:
            return self._range_search(queries, k, radius)
        distances, positions = self.index.search(queries, 10 if k is None else k)
        # An approximate index (MilvusIndex with BIN_IVF_FLAT) pads a short answer with position -1.
        ids = positions if self._ids is None else np.where(positions >= 0, self._ids[positions], -1)
        if self._metadata is None:
            metadata = [[None] * positions.shape[1] for _ in range(positions.shape[0])]
        else:
            metadata = [[self._metadata[p] if p >= 0 else None for p in row] for row in positions.tolist()]
        return SearchResults(distances, ids, metadata)

    def _range_search(self, queries, k, radius):
        """`search` with a radius: each query's rows within it (the k nearest of them, if k)."""
        lims, distances, positions = self.index.range_search(queries, radius)  # checks radius
        found_distances, found_ids, metadata = [], [], []
        for query in range(len(queries)):
            start, end = lims[query], lims[query + 1]
            end = end if k is None else min(end, start + k)
            rows = positions[start:end]
            found_distances.append(distances[start:end])
            found_ids.append(rows if self._ids is None else self._ids[rows])
            metadata.append([None] * len(rows) if self._metadata is None
                            else [self._metadata[p] for p in rows.tolist()])
        return SearchResults(found_distances, found_ids, metadata)

    # ------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------

    def save(self, path, include_encoder=False, *, wait=True):
        """Writes the retriever to the folder `path`, whole.

        A folder, not one file: each part keeps its own, already checked
        format, readable with its own tool, and no container format is
        invented. Through `tfhash.io.transaction`: every file is written
        beside its name and synced, then all are renamed in together, so
        `path` holds the old retriever or the new one, whole, whenever the
        writer is killed, and `load` (which reads at one version) never sees
        a mix. No pickle anywhere:

            manifest.json   format, version, generation, bits, size, the
                            sha256 of every other file, and the encoder's
                            identity (class, bits, input shapes, weights sha256)
            index.tfhi      the codes, in `HammingIndex`'s format
            ids.npy         the custom ids, int64 (if any were given)
            metadata.json   one JSON value per row (if any was given)
            encoder.keras   the encoder (only with `include_encoder=True`)

        **Concurrency.** Saves to one folder take turns (its writer lock;
        `wait` as in `tfhash.io.transaction`: True waits, False fails with
        `tfhash.io.Busy`, a number waits that long). Each save raises the
        folder's generation by one; a retriever loaded from (or saved to)
        `path` refuses to save there once another process has saved a newer
        generation, since that would drop the other's rows: load again, or
        use `Retriever.update(path)`, which holds the lock from load to save.

        Args:
            path: the folder to write. It may exist only as a folder written
                by `Retriever.save` (replaced) or an empty one: anything else
                is refused rather than deleted.
            include_encoder: also save the encoder, so `load` needs none.
            wait: see Concurrency.
        """
        path = os.fspath(path)
        if not isinstance(self.index, HammingIndex):
            raise ValueError(f"Expected a Retriever over a HammingIndex to save: this one's codes are in "
                             f"{self.index!r}. Received: {type(self.index).__name__}")
        identity = self._identity
        if self.encoder is not None:
            identity = encoder_identity(self.encoder) if identity is None else self._check_encoder_unchanged()
        if include_encoder and self.encoder is None:
            raise ValueError("Expected a Retriever with an encoder for include_encoder=True. Received: encoder=None")
        with transaction(path, wait=wait) as folder:
            self._commit_to(folder, path, identity, include_encoder)

    def _commit_to(self, folder, path, identity, include_encoder):
        """Writes this retriever into the transaction `folder` on `path` (held)."""
        _check_destination(path)
        current = _generation(path)
        source = self._source
        if source is not None and source[0] == os.path.abspath(path) and current != source[1]:
            raise ValueError(f"Expected {path!r} at generation {source[1]}, as this Retriever loaded or saved it. "
                             f"Received: generation {current} (another process saved it since; saving would drop its "
                             f"rows: load it again, or use Retriever.update)")
        size = self.size
        parts = {INDEX_FILE: self.index.write_to}
        if self._ids is not None:
            parts[IDS_FILE] = array_writer(self._ids[:size])
        if self._metadata is not None:
            text = json.dumps(self._metadata, separators=(",", ":"), allow_nan=False)
            parts[METADATA_FILE] = lambda file: _write_text(file, text)
        if include_encoder:
            parts[ENCODER_FILE] = self.encoder.save
        files = {}
        for name in (INDEX_FILE, IDS_FILE, METADATA_FILE, ENCODER_FILE):
            member = os.path.join(path, name)
            if name in parts:
                suffix = ".keras" if name == ENCODER_FILE else ""
                files[name] = folder.sha256(folder.write(member, parts[name], suffix=suffix))
            else:
                folder.remove(member)
        generation = current + 1
        folder.write_json({
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generation": generation,
            "bits": self.bits,
            "size": size,
            "has_ids": self.has_ids,
            "has_metadata": self._metadata is not None,
            "has_encoder": bool(include_encoder),
            "encoder": identity,
            "files": files,
        }, os.path.join(path, MANIFEST_FILE))
        self._source = (os.path.abspath(path), generation)

    @classmethod
    @contextlib.contextmanager
    def update(cls, path, encoder=None, bits=None, *, include_encoder=None, wait=True):
        """Loads the folder `path`, yields the retriever, and saves it back on
        a clean exit, holding the folder's writer lock throughout: concurrent
        updates take turns and none is lost. A missing folder starts empty
        (`encoder` or `bits` then say what it holds).

            >>> with Retriever.update("runs/retriever", encoder=model) as retriever:
            ...     retriever.add(new_images, metadata=new_labels)

        `include_encoder` defaults to what the folder had; `wait` as in `save`.
        """
        path = os.fspath(path)
        with transaction(path, wait=wait) as folder:
            if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
                retriever, manifest = cls._read(path, encoder)
                keep = manifest["has_encoder"]
            else:
                retriever, keep = cls(encoder, bits=bits), False
            yield retriever
            identity = retriever._identity
            if retriever.encoder is not None:
                identity = (encoder_identity(retriever.encoder) if identity is None
                            else retriever._check_encoder_unchanged())
            retriever._commit_to(folder, path, identity, keep if include_encoder is None else include_encoder)

    @classmethod
    def load(cls, path, encoder=None):
        """Reads a folder written by `save`, at one version (`tfhash.io.reading`:
        a save under way is waited for, one a killed writer left is finished).

        Args:
            path: the folder.
            encoder: the encoder to attach. It must match the one recorded
                (class, bits, input shapes, weights sha256), or a `ValueError`
                says what was expected and what was received. None: the saved
                `encoder.keras` if there is one (loaded with `safe_mode=True`),
                else a codes-only retriever. An encoder given to a folder that
                recorded none (codes only) is checked for bits only.

        Every file is checked against the sha256 the manifest records for it
        (folders of format version 1 recorded none), so a changed byte in the
        ids or an edited metadata.json is refused, not returned.

        Raises:
            FileNotFoundError: no retriever folder at `path`.
            ValueError: a folder from a newer format version, a damaged,
                changed or inconsistent folder, or a mismatched encoder.
        """
        path = os.fspath(path)
        if not os.path.lexists(path):
            # A version-1 save killed between moving the old folder aside and the new one in.
            remove_stale_temporaries(path)
        with reading(path):
            return cls._read(path, encoder)[0]

    @classmethod
    def _read(cls, path, encoder):
        manifest = _read_manifest(path)
        for name, expected in (manifest.get("files") or {}).items():
            file = os.path.join(path, name)
            received = sha256(file) if os.path.isfile(file) else "no file"
            if received != expected:
                raise ValueError(f"Retriever folder {path!r} is damaged or was changed: expected {name} with sha256 "
                                 f"{expected[:16]}... (its manifest). Received: {received[:16]}")
        identity = manifest["encoder"]
        if encoder is None and manifest["has_encoder"]:
            from tfhash.models.presets import read_keras

            encoder = read_keras(os.path.join(path, ENCODER_FILE))
        if encoder is not None:
            retriever = cls(encoder)
            received = encoder_identity(encoder)
            expected = identity or {"bits": manifest["bits"]}
            if any(received[key] != value for key, value in expected.items()):
                raise ValueError(
                    f"Expected the encoder that made the codes in {path!r}: "
                    f"{_describe(identity) if identity else 'bits=' + str(manifest['bits'])}. "
                    f"Received: {_describe(received)}"
                )
        else:
            retriever = cls(bits=manifest["bits"])
        index = HammingIndex.load(os.path.join(path, INDEX_FILE))
        size = manifest["size"]
        if index.bits != manifest["bits"] or index.ntotal != size or index.has_ids:
            raise ValueError(f"Retriever folder {path!r} is inconsistent: expected an index of {size} codes of "
                             f"{manifest['bits']} bits without ids. Received: {index!r}")
        ids = None
        if manifest["has_ids"]:
            ids = np.load(os.path.join(path, IDS_FILE), allow_pickle=False)
            if ids.dtype != np.int64 or ids.shape != (size,):
                raise ValueError(f"Retriever folder {path!r} is inconsistent: expected {IDS_FILE} of int64, shape "
                                 f"({size},). Received: dtype={ids.dtype}, shape={ids.shape}")
        metadata = None
        if manifest["has_metadata"]:
            with open(os.path.join(path, METADATA_FILE), encoding="utf-8") as f:
                metadata = json.load(f)
            if not isinstance(metadata, list) or len(metadata) != size:
                got = f"{len(metadata)} items" if isinstance(metadata, list) else type(metadata).__name__
                raise ValueError(f"Retriever folder {path!r} is inconsistent: expected {METADATA_FILE} to hold a "
                                 f"list of {size} items. Received: {got}")
        retriever.index, retriever._ids, retriever._metadata = index, ids, metadata
        retriever._identity = identity if identity is not None or encoder is None else encoder_identity(encoder)
        retriever._source = (os.path.abspath(path), manifest.get("generation", 0))
        return retriever, manifest

    # ------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------

    def _looks_like_codes(self, array):
        return (array is not None and array.dtype == np.uint8 and array.ndim == 2
                and array.shape[1] == self.index.code_size)

    def _codes_of(self, items, name, method):
        """Packed codes for `items`: themselves if they are codes, else encoded."""
        array = _as_array(items)
        shapes = {} if self.encoder is None else _input_shapes(self.encoder)
        if self._looks_like_codes(array):
            if (self.index.code_size,) in shapes.values():
                raise ValueError(
                    f"Expected `{name}` to be unambiguous: a uint8 array of shape {array.shape} is both packed "
                    f"{self.bits}-bit codes and input of this encoder ({type(self.encoder).__name__}). Use "
                    f"{method}_codes() for codes, or pass float32 inputs. Received: dtype=uint8, shape={array.shape}"
                )
            return np.ascontiguousarray(array)
        if self.encoder is None:
            return self._check_codes(items, name)
        if array is not None and shapes and tuple(array.shape[1:]) not in shapes.values():
            inputs = " or ".join(f"{key} {(None, *shape)}" for key, shape in shapes.items())
            raise ValueError(
                f"Expected `{name}` to be this encoder's inputs ({inputs}) or packed codes, a uint8 array of shape "
                f"(n, {self.index.code_size}). Received: dtype={array.dtype}, shape={array.shape}"
            )
        if self._identity is not None and method == "add":
            self._check_encoder_unchanged()
        return self.encoder.encode(items)

    def _check_encoder_unchanged(self):
        """Refuses an encoder whose weights changed since the first add: its new codes would not compare."""
        current = encoder_identity(self.encoder)
        if current != self._identity:
            raise ValueError(
                f"Expected the encoder that made this Retriever's codes: {_describe(self._identity)}. Received: "
                f"{_describe(current)} (changed after the first add; re-encode everything into a new Retriever)"
            )
        return current

    def _check_codes(self, codes, name):
        array = _as_array(codes)
        if not self._looks_like_codes(array):
            received = ("an object of type " + type(codes).__name__ if array is None
                        else f"dtype={array.dtype}, shape={array.shape}")
            encoder = "" if self.encoder is not None else " (this Retriever has no encoder)"
            raise ValueError(
                f"Expected `{name}` to be packed codes{encoder}: a uint8 array of shape (n, {self.index.code_size}) "
                f"for bits={self.bits}, packed as np.packbits. Received: {received}"
            )
        return np.ascontiguousarray(array)

    def _check_metadata(self, metadata, n):
        if metadata is None:
            return None
        if isinstance(metadata, (str, bytes, dict)) or not hasattr(metadata, "__len__"):
            raise ValueError(f"Expected `metadata` to be a sequence of {n} items, one per row. "
                             f"Received: {type(metadata).__name__}")
        if len(metadata) != n:
            raise ValueError(f"Expected `metadata` to hold {n} items, one per row. Received: {len(metadata)} items")
        try:
            text = json.dumps(list(metadata), default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Expected `metadata` items that JSON can hold (numbers, strings, lists, dicts, None). "
                             f"Received: {error}") from None
        return json.loads(text)


def _as_array(items):
    """`items` as a NumPy array when it is one or converts plainly (lists, tensors); else None."""
    if isinstance(items, np.ndarray):
        return items
    if isinstance(items, (list, tuple)) or hasattr(items, "__array__"):
        try:
            return np.asarray(items)
        except (TypeError, ValueError):
            return None
    return None


def _check_destination(path):
    """Refuses to replace anything but a Retriever folder or an empty folder."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise ValueError(f"Expected `path` to be a new folder or one written by Retriever.save. "
                         f"Received: {path!r}, an existing file")
    if os.listdir(path) and not _is_retriever_folder(path):
        raise ValueError(f"Expected `path` to be a new folder or one written by Retriever.save; refusing to replace "
                         f"another folder. Received: {path!r}, a folder without a Retriever {MANIFEST_FILE}")


def _is_retriever_folder(path):
    try:
        with open(os.path.join(path, MANIFEST_FILE), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_text(file, text):
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)


def _generation(path):
    """The generation of the retriever saved at `path` (0: none there yet)."""
    try:
        with open(os.path.join(path, MANIFEST_FILE), encoding="utf-8") as f:
            return int(json.load(f).get("generation", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def _read_manifest(path):
    file = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No Retriever at {path!r}: expected a folder written by Retriever.save, with "
                                f"{MANIFEST_FILE}. Received: "
                                f"{'a folder without it' if os.path.isdir(path) else 'no such folder'}")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except ValueError as error:
        raise ValueError(f"Retriever folder {path!r} is damaged: expected {MANIFEST_FILE} to be JSON. "
                         f"Received: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"Expected a Retriever folder (format {FORMAT!r}) at {path!r}. Received: format {found!r}")
    version = manifest.get("version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        newer = " (written by a newer tfhash?)" if _is_int(version) and version > FORMAT_VERSION else ""
        raise ValueError(f"Retriever folder {path!r} has format version {version!r}{newer}; this tfhash reads "
                         f"version {FORMAT_VERSION}. Expected version <= {FORMAT_VERSION}. Received: {version!r}")
    keys = ("bits", "size", "has_ids", "has_metadata", "has_encoder", "encoder")
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise ValueError(f"Retriever folder {path!r} is damaged: expected {MANIFEST_FILE} with {list(keys)}. "
                         f"Received: no {missing}")
    return manifest
