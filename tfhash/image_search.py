"""Image files in, codes out: encode a folder (or a glob) into a Hamming index
whose rows remember their files, and search it with an image file.

    >>> index = encode_files(encoder, "photos/", "runs/photos.thi", run="runs/dhn32")
    >>> [(query, hits)] = search_files("runs/photos.thi", ["query.jpg"], k=5)
    >>> [(hit.distance, hit.path) for hit in hits]

What the index keeps (`HammingIndex.metadata`): the folder (`root`), each
row's file path relative to it (`paths`; the row's id is its position), how
the images were decoded (`image_size`, `channels`, `keep_aspect`), the run
whose encoder made the codes (`run`, when known) and that encoder's identity
(`tfhash.retrieval.encoder_identity`), so a search encodes its query images
the same way and a changed encoder is refused.

The index may be a Milvus collection instead (`tfhash.milvus_index`), named
by its address, ``milvus:FILE.db#COLLECTION`` (milvus-lite) or
``milvus://HOST:PORT/COLLECTION`` (a server):

    >>> encode_files(encoder, "photos/", "milvus:runs/photos.db#photos", run="runs/dhn32").close()
    >>> [(query, hits)] = search_files("milvus:runs/photos.db#photos", ["query.jpg"], k=5)

Choices, one line each:
- Images are decoded by `tfhash.data.folders.image_batches` (tf.data,
  parallel) at the encoder's input size and channels.
- An encode is resumable: every `checkpoint_seconds` the codes so far are
  saved beside the index (`.NAME.partial`, a `HammingIndex` file); a new
  encode of the same files with the same encoder continues from there.
- The index (and the `.npy` of codes, if asked) are written as one result
  (`tfhash.io.transaction`), which also removes the partial file.
- Unreadable images stop the encode with a one-line error naming the file,
  or, with `skip_bad`, are left out and counted (`metadata["skipped"]`).
- Into Milvus, each batch is inserted as it is encoded (memory stays one
  batch), each row with its file in the collection's ``path`` field
  (`MilvusIndex(paths=True)`); the rest of the metadata, and `files` (the
  listing's length) and `listing` (its sha256, as a partial file's), is
  the collection's description, written when it is created.
- Row ids are as in the file index: positions among the files kept (a
  skipped file leaves no gap), so both answer with the same `Hit`s.
- A Milvus encode resumes from the collection itself: it continues after
  the file of its last row, when the listing's sha256 is the collection's
  and no row before it is missing (a gap, rows removed or a batch partly
  stored, is refused); a non-empty collection of other files, decoding or
  encoder is refused. `skipped` is the files less the rows held (exact once
  the encode is complete).
"""

import bisect
import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from tfhash.index import HammingIndex
from tfhash.io import array_writer, transaction, write_atomically
from tfhash.milvus_index import parse_address

# How the codes of an image index were made: the keys a search needs.
DECODING = ("image_size", "channels", "keep_aspect")


def _partial_path(index_path):
    folder, name = os.path.split(os.path.abspath(index_path))
    return os.path.join(folder, f".{name}.partial")


def _listing_sha256(root, paths, decoding, identity, skip_bad):
    """What a partial encode must match to be continued: the files (each path,
    size, inode, mtime and ctime: a file replaced since gets a new code), how
    they are decoded and skipped, and the encoder."""
    digest = hashlib.sha256()
    digest.update(json.dumps([os.path.realpath(root), decoding, identity, bool(skip_bad)], sort_keys=True).encode())
    for path in paths:
        try:
            stat = os.stat(os.path.join(root, path))
            facts = (stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
        except OSError:  # a broken link: decoding reports it (or skips it)
            facts = ()
        digest.update(os.fsencode(path) + repr(facts).encode() + b"\0")
    return digest.hexdigest()


def encoder_decoding(encoder, keep_aspect=False):
    """How images are decoded for `encoder`: its input size and channels."""
    height, width, channels = (int(d) for d in encoder.image_shape)
    return {"image_size": [height, width], "channels": channels, "keep_aspect": bool(keep_aspect)}


def encode_files(encoder, source, index_path, *, output=None, run=None, keep_aspect=False, skip_bad=False,
                 batch_size=256, wait=False, progress=None, checkpoint_seconds=30.0):
    """Encodes every image of `source` into a `HammingIndex` at `index_path`
    (or into a Milvus collection, when `index_path` is a Milvus address).

    Args:
        encoder: an image `HashModel` (e.g. `tfhash.load_model("runs/dhn32")`).
        source: a folder (walked recursively) or a glob pattern ("photos/*.jpg").
        index_path: the index file to write; its rows are the files in sorted
            path order (less skipped ones), each row's path in `metadata["paths"]`.
            Or a Milvus address, ``milvus:FILE.db#COLLECTION`` or
            ``milvus://HOST:PORT/COLLECTION``: a new collection (or one this
            encode was interrupted in), the same rows, each row's path in
            its ``path`` field.
        output: also write the packed codes to this `.npy` file.
        run: the run directory the encoder came from, recorded for `search_files`.
        keep_aspect: resize keeping the aspect ratio and pad (default: squash).
        skip_bad: leave unreadable images out, counted, instead of failing.
        batch_size: images per step.
        wait: while another process writes this index file: False fails at
            once (`tfhash.io.Busy`), True waits. (A Milvus collection takes
            one writer at a time, unchecked.)
        progress: a `keras.utils.Progbar` (its target set to the number of
            files when None), or None.
        checkpoint_seconds: how often the codes so far are saved, to resume
            from (a file index; Milvus keeps every batch as it comes).

    Returns:
        The `HammingIndex` written; for Milvus, the `MilvusIndex`, open
        (close it), its `metadata` as `load_image_index` gives it.
    """
    from tfhash.data.folders import list_images
    from tfhash.retrieval import encoder_identity

    root, paths = list_images(source)
    decoding = encoder_decoding(encoder, keep_aspect)
    identity = encoder_identity(encoder)
    listing = _listing_sha256(root, paths, decoding, identity, skip_bad)
    meta = {"root": os.path.abspath(root), **decoding, "run": os.path.abspath(run) if run else None,
            "encoder": identity}
    if parse_address(index_path):
        return _encode_into_milvus(encoder, source, index_path, paths, {**meta, "listing": listing, "files": len(paths)},
                                   output=output, skip_bad=skip_bad, batch_size=batch_size, progress=progress)
    partial_path = _partial_path(index_path)
    with transaction(index_path, wait=wait) as result:
        codes, kept, start = _resume(partial_path, listing, encoder.bits)
        last = time.monotonic()
        done = start
        for batch, positions in _encoded(encoder, paths, start, meta, skip_bad, batch_size, progress):
            codes.append(batch)
            kept.append(positions)
            # Every file up to this batch's last was decoded or skipped (the pipeline keeps their order).
            done = int(positions[-1]) + 1 if len(positions) else done
            if progress is not None:
                progress.update(done)
            if time.monotonic() - last > checkpoint_seconds:
                _checkpoint(partial_path, codes, kept, done, listing, encoder.bits)
                last = time.monotonic()
        codes = np.concatenate(codes) if codes else np.empty((0, encoder.bits // 8), np.uint8)
        kept = np.concatenate(kept) if kept else np.empty(0, np.int64)
        if not len(kept):
            raise _nothing_read(source, paths)
        index = HammingIndex(encoder.bits)
        index.add(codes)
        index.metadata = {**meta, "paths": [paths[i] for i in kept], "skipped": len(paths) - len(kept)}
        result.write(index_path, index.write_to)
        if output:
            result.write(output, array_writer(codes))
        result.remove(partial_path)
    if progress is not None:
        progress.update(len(paths), finalize=True)
    return index


def _encoded(encoder, paths, start, meta, skip_bad, batch_size, progress):
    """(packed codes, positions in `paths`) of each batch of `paths[start:]`,
    decoded as `meta` says (root, image size, channels, aspect); the progress
    bar's target set and moved to `start` first."""
    from tfhash.data.folders import image_batches
    from tfhash.layers import SignPack

    if progress is not None:
        progress.target = progress.target or len(paths)
        progress.update(start)
    pack = SignPack()
    for images, positions in image_batches(meta["root"], paths[start:], image_size=tuple(meta["image_size"]),
                                           channels=meta["channels"], keep_aspect=meta["keep_aspect"],
                                           batch_size=batch_size, skip_bad=skip_bad):
        yield pack(encoder.predict_on_batch(images)).numpy(), positions.numpy() + start


def _nothing_read(source, paths):
    return ValueError(f"No image of {source} could be read: expected at least one of its {len(paths)} "
                      f"image files to decode. Received: every one skipped as unreadable")


def _encode_into_milvus(encoder, source, address, paths, meta, *, output, skip_bad, batch_size, progress):
    """`encode_files` into a Milvus collection: batch by batch, resumed from the collection's last row."""
    from tfhash.milvus_index import MilvusIndex

    # One insert call per batch of images.
    index = MilvusIndex.open(address, encoder.bits, paths=True, metadata=meta, batch_size=max(batch_size, 10_000))
    try:
        start = _milvus_resume(index, address, paths, meta["listing"])
        for codes, positions in _encoded(encoder, paths, start, meta, skip_bad, batch_size, progress):
            if not len(positions):  # every file of the batch skipped
                continue
            index.add(codes, paths=[paths[i] for i in positions])
            if progress is not None:
                progress.update(int(positions[-1]) + 1)
        rows = index.ntotal
        if not rows:
            raise _nothing_read(source, paths)
        if output:
            write_atomically(output, array_writer(index.codes()))
        index.metadata = {**index.metadata, "skipped": len(paths) - rows}
    except BaseException:
        index.close()
        raise
    if progress is not None:
        progress.update(len(paths), finalize=True)
    return index


def _milvus_resume(index, address, paths, listing):
    """The listing position to encode from: 0 in a new (or empty) collection,
    else one past the file of its last row. A collection of other files (or
    decoding, or encoder), or not an image collection, is refused."""
    held = index.ntotal
    recorded = index.metadata.get("listing")
    if not index.has_paths or (held and recorded != listing):
        what = (f"one holding {held} codes without paths" if not index.has_paths else
                f"one holding {held} codes of other files, decoding or encoder (listing sha256 {str(recorded)[:12]}, "
                f"these {listing[:12]})")
        raise ValueError(f"Expected a new Milvus collection, or one an encode of these files was interrupted in, "
                         f"for --index {address}. Received: {what}: drop it, or name another collection")
    if not held:
        if recorded != listing:  # made by an encode of other files, killed before its first batch
            raise ValueError(f"Expected a new Milvus collection, or one an encode of these files was interrupted "
                             f"in, for --index {address}. Received: an empty one made for other files, decoding or "
                             f"encoder: drop it, or name another collection")
        return 0
    [last] = index.paths([held - 1])
    position = bisect.bisect_left(paths, last) if last is not None else len(paths)
    if index.next_position != held or position == len(paths) or paths[position] != last:
        raise ValueError(f"Expected the rows of an interrupted encode in --index {address}: positions 0 to "
                         f"{held - 1}, the last one a file of the listing. Received: rows up to position "
                         f"{index.next_position - 1}, the last one {last!r} (rows removed, or a batch partly "
                         f"stored?): drop it, or name another collection")
    return position + 1


def _resume(partial_path, listing, bits):
    """(code chunks, position chunks, next position) of a partial encode of
    the same listing, else nothing done."""
    if not os.path.exists(partial_path):
        return [], [], 0
    try:
        partial = HammingIndex.load(partial_path)
    except ValueError:  # a partial file of an older tfhash, or damaged: start over
        return [], [], 0
    meta = partial.metadata
    if meta.get("listing") != listing or partial.bits != bits:
        return [], [], 0
    if len(partial) != len(meta["kept"]):
        return [], [], 0
    return [partial.codes()], [np.asarray(meta["kept"], np.int64)], int(meta["next"])


def _checkpoint(partial_path, codes, kept, done, listing, bits):
    index = HammingIndex(bits)
    index.add(np.concatenate(codes))
    kept = np.concatenate(kept)
    index.metadata = {"listing": listing, "next": done, "kept": kept.tolist()}
    write_atomically(partial_path, index.write_to)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One neighbour of a query: its Hamming distance, row id and file path
    (relative to `root`)."""

    distance: int
    id: int
    path: str
    root: str

    @property
    def file(self):
        """The neighbour's file, absolute."""
        return os.path.join(self.root, self.path)


def load_image_index(index_path):
    """A `HammingIndex` written by `encode_files`, refused in one line
    otherwise; for a Milvus address, the `MilvusIndex` it filled, open (close
    it), its `metadata` the collection's plus `skipped`."""
    if parse_address(index_path):
        return _load_milvus_images(index_path)
    index = HammingIndex.load(index_path)
    missing = [key for key in ("root", "paths", *DECODING) if key not in index.metadata]
    if missing:
        raise ValueError(f"{index_path}: expected an index of image files (tfhash encode RUN --images DIR "
                         f"--index FILE). Received: an index of {len(index)} codes without {missing}")
    if index.has_ids or len(index.metadata["paths"]) != len(index):
        raise ValueError(f"{index_path}: expected one path per row, rows numbered in order (as encode_files writes "
                         f"it). Received: {len(index)} rows{' with ids' if index.has_ids else ''}, "
                         f"{len(index.metadata['paths'])} paths")
    return index


def _load_milvus_images(address):
    from tfhash.milvus_index import MilvusIndex

    index = MilvusIndex.open(address, create=False)
    missing = [key for key in ("root", "files", *DECODING) if key not in index.metadata]
    if missing or not index.has_paths:
        with index:
            held = len(index)
        lacks = f"without {missing}" if missing else "without paths"
        raise ValueError(f"{address}: expected a collection of image files (tfhash encode RUN --images DIR --index "
                         f"milvus:...). Received: a collection of {held} codes {lacks}")
    index.metadata = {**index.metadata, "skipped": index.metadata["files"] - index.ntotal}
    return index


def index_encoder(index, encoder=None, run=None):
    """The encoder for an image index's queries: `encoder`, else the one of
    `run`, else of the run the index records; checked against the recorded
    identity (a retrained encoder's codes would not match the index's)."""
    from tfhash.retrieval import encoder_identity
    from tfhash.training import load_model

    if encoder is None:
        run = run or index.metadata.get("run")
        if not run:
            raise ValueError("Expected the run whose encoder made this index (--run RUN): the index records none")
        encoder = load_model(run)
    recorded = index.metadata.get("encoder")
    if recorded and encoder_identity(encoder) != recorded:
        raise ValueError(f"Expected the encoder that made this index (weights sha256 "
                         f"{recorded['weights_sha256'][:12]}). Received: {type(encoder).__name__} with weights sha256 "
                         f"{encoder_identity(encoder)['weights_sha256'][:12]} (retrained since?)")
    return encoder


def decode_queries(files, index, skip_bad=False):
    """(images uint8 (q, H, W, C), the files read) of query image files,
    decoded as the index's images were."""
    from tfhash.data.folders import image_batches

    meta = index.metadata
    files = [os.path.abspath(f) for f in files]
    images, kept = [], []
    for batch, positions in image_batches("/", [os.path.relpath(f, "/") for f in files],
                                          image_size=tuple(meta["image_size"]), channels=meta["channels"],
                                          keep_aspect=meta["keep_aspect"], skip_bad=skip_bad):
        images.append(batch.numpy())
        kept += positions.numpy().tolist()
    if not kept:
        raise ValueError(f"Expected at least one readable query image. Received: {len(files)} unreadable")
    return np.concatenate(images), [files[i] for i in kept]


def search_files(index_path, images, *, k=10, radius=None, encoder=None, run=None):
    """The neighbours of each query image file in an index from `encode_files`.

    Args:
        index_path: the index file.
        images: query image files (any size or mode: decoded as the index's were).
        k: neighbours per query (with `radius`: at most k of those within it;
            None: all of them).
        radius: all rows within this Hamming distance instead of the k nearest.
        encoder, run: the encoder (or its run) to encode the queries with;
            default the run the index records. Must be the encoder that made it.

    Returns:
        A list of `(query file, [Hit, ...])`, the hits ranked by distance (ties by row).
    """
    index = load_image_index(index_path)
    try:
        encoder = index_encoder(index, encoder, run)
        query_images, files = decode_queries(images, index)
        return list(zip(files, search_codes(index, encoder.encode(query_images), k=k, radius=radius)))
    finally:
        if hasattr(index, "close"):  # a MilvusIndex
            index.close()


def search_codes(index, codes, *, k=10, radius=None):
    """Per query code, its `Hit`s in an image index (as `search_files`); with
    `radius`, `k=None` keeps every row within it."""
    meta = index.metadata
    if radius is None:
        distances, ids = index.search(codes, k)
        rows = [zip(d, i) for d, i in zip(distances, ids)]
    else:
        lims, distances, ids = index.range_search(codes, radius)
        rows = [list(zip(distances[a:b], ids[a:b]))[:k] for a, b in zip(lims[:-1], lims[1:])]
    rows = [[(int(d), int(i)) for d, i in row] for row in rows]
    if "paths" in meta:
        path = meta["paths"]
    else:  # a Milvus collection: each row's path in its `path` field
        ids = sorted({i for row in rows for _, i in row})
        path = dict(zip(ids, index.paths(ids)))
    return [[Hit(d, i, path[i], meta["root"]) for d, i in row] for row in rows]
