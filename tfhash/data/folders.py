"""The user's own images as retrieval data: a folder, a glob or a list file.

Three layers, each usable alone:

- `list_images(source)`: the image files of a folder (walked recursively) or
  of a glob pattern, as a root and sorted relative paths.
- `image_batches(root, paths, ...)`: a `tf.data.Dataset` decoding them in
  parallel, in order, to uint8 arrays of one size; `read_images` fills one
  array from it, cached on disk as a memory-mapped `.npy`.
- `from_directory` (Keras's layout: class subfolders, or none for unlabelled
  images), `from_list` (DeepHash-pytorch's list files, with optional
  captions) and `from_path` (either): an `ImageData` / `ImageTextData`,
  usable wherever a `RetrievalData` / `CrossModalData` is, with a seeded
  random split that `save_split` writes and `split=` reads back. They keep
  one item per file: paths naming a file listed already (a symbolic link to
  it, a hard link, a list file's second line for it) are dropped and
  counted (`duplicates`), so one picture is never both a query and a
  database item.

Decoding is Pillow's, in a thread pool over chunks of `DECODE_CHUNK` files.
Pillow's C code releases the GIL while it inflates and resizes, but the
Python around each file (opening, mode checks, copies: about 66 us per 28x28
PNG) holds it, so small images decode at about one core's speed whatever the
cores; large images gain from the threads. Images above `HUGE_PIXELS` are
decoded one at a time (a lock), so memory stays bounded by one of them (a
few copies of its pixels) plus the small ones. Every image becomes
`channels` (1: grey, 3: RGB) uint8 channels: 16-bit grey scaled to 8 bits
(v * 255 / 65535, rounded), CMYK and other modes converted to RGB, the EXIF
orientation of photos applied (Keras's loader ignores it), an animation's
first frame taken; then the image is resized (bilinear, antialiased) to
`image_size`, squashed, or with `keep_aspect` fitted inside it and padded
with zeros (centred, the odd pixel of margin below or right). Transparency
(RGBA, LA, palette or colour-key transparency) is composited on white after
resizing (Pillow resizes with premultiplied alpha, so transparent pixels'
colours do not bleed in). JPEGs are decoded at a reduced scale
(`Image.draft`) when much larger than needed.

Bad files (missing, a dangling symbolic link or a link loop, empty,
truncated, not an image, larger than `MAX_PIXELS` by its header) stop the
read with a one-line `ValueError` naming the file and what is wrong, or with
`skip_bad=True` are left out and counted.
"""

import collections
import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import re
import stat
import threading
import warnings

import numpy as np

from tfhash.data import open_clip_art
from tfhash.data.protocols import FORMAT_VERSION, CrossModalData, Protocol, RetrievalData, draw_random_split
from tfhash.io import cache_dir, save_arrays, write_atomically

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Images whose header claims more pixels are refused (decompression bombs, or
# more memory than a retrieval image is worth). Pillow itself refuses above
# 2 x PIL.Image.MAX_IMAGE_PIXELS (179 megapixels by default); this limit holds
# where a program has lifted Pillow's.
MAX_PIXELS = 200_000_000
# Images above this many pixels by their header are decoded one at a time: a
# 200-megapixel RGBA image takes 800 MB a copy.
HUGE_PIXELS = 20_000_000
# Files a decoding thread takes at once: fewer tasks for small images, still
# enough chunks to keep every thread busy.
DECODE_CHUNK = 16
# Decoding threads; chunks decoded ahead of the reader: twice as many.
DECODE_THREADS = os.cpu_count() or 1
# Bump when the decoded pixels change for the same files and settings.
# 2: transparency composited after resizing, not before.
CACHE_FORMAT_VERSION = 2
# `read_images` reports progress on stderr from this many files.
PROGRESS_MIN_FILES = 1000
# The `options` key naming the folder or list file (`from_path`'s first argument).
SOURCE_OPTION = "path"
_GLOB_MAGIC = re.compile(r"[*?[]")


# ---------------------------------------------------------------------------
# Listing


def list_images(source):
    """The image files of a folder or a glob pattern.

    A folder is walked recursively, following symbolic links to folders but
    not into a folder it is already inside (a link loop). A glob pattern
    (`"photos/*.jpg"`, `"photos/**/*.png"`, recursive `**` allowed) gives the
    files it matches; its root is the pattern's leading folders without
    wildcards. Files count as images by their extension (`IMAGE_EXTENSIONS`,
    any case); names starting with "." are left out. A dangling link or a
    link loop with an image extension is listed: decoding it reports it.
    A file reached by several paths (links) is listed under each of them
    (`from_directory` keeps one).

    Args:
        source: a folder or a glob pattern.

    Returns:
        `(root, paths)`: the root folder and the images' paths relative to
        it, "/"-separated, sorted.

    Raises:
        ValueError: no image found (one line naming `source`).

    Examples:
    >>> root, paths = list_images("photos")
    >>> paths[:2]
    ['cats/a.jpg', 'cats/b.png']
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        root = os.path.abspath(source)
        paths = _walk(root)
    elif _GLOB_MAGIC.search(source) or os.path.lexists(source):
        root, paths = _glob(source)
    else:
        raise ValueError(f"No images at {source}: expected a folder of images or a glob pattern. "
                         f"Received: no such folder or file")
    if not paths:
        raise ValueError(f"No images in {source}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
                         f"(any case). Received: none")
    return root, paths


def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root):
    found = []
    stack = [("", (os.path.realpath(root),))]  # (relative folder, the real paths of it and its parents)
    while stack:
        relative, inside = stack.pop()
        folder = os.path.join(root, relative)
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            raise ValueError(f"Cannot list the folder {folder}: expected a readable folder. "
                             f"Received: {error.strerror}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link loop: a file to report, if its name says image
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in inside:  # else a link back into the walk: a loop
                    stack.append((path, (*inside, real)))
            elif _is_image_name(entry.name):
                found.append(path)
    return sorted(found)


def _glob(pattern):
    parts = pattern.replace(os.sep, "/").split("/")
    prefix = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        prefix.append(part)
    root = os.path.abspath("/".join(prefix) or ("/" if pattern.startswith("/") else "."))
    matches = (os.path.abspath(m) for m in glob.glob(pattern, recursive=True))
    paths = [os.path.relpath(m, root).replace(os.sep, "/") for m in matches
             if _is_image_name(os.path.basename(m)) and not os.path.isdir(m)]
    return root, sorted(paths)


# ---------------------------------------------------------------------------
# Decoding one file


class BadImage(ValueError):
    """A file that is not a decodable image; the message says what is wrong."""


def _check_file(path):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadImage(f"dangling symbolic link (to {os.readlink(path)}, which does not exist)") from None
        raise BadImage("no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadImage("symbolic link loop") from None
        raise BadImage(f"cannot read it ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadImage("not a regular file")
    if info.st_size == 0:
        raise BadImage("empty file (0 bytes)")


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _file_start(path):
    with open(path, "rb") as f:
        return f.read(8)


def _fitted(size, width, height):
    """The size of `size` (w, h) scaled to fit inside (width, height), aspect ratio kept, at least 1 x 1.
    (`PIL.ImageOps.contain` rounds a thin side down to 0 pixels, and `ImageOps.pad` centres with round():
    a margin of 7 is split 4 + 3, here 3 + 4.)"""
    scale = min(width / size[0], height / size[1])
    return max(1, min(width, round(size[0] * scale))), max(1, min(height, round(size[1] * scale)))


def decode_image(path, image_size, channels=3, keep_aspect=False):
    """One image file as uint8 `(height, width, channels)`, decoded as
    `image_batches` decodes it (see the module docstring).

    Raises:
        BadImage (a ValueError): the reason, without the path.
    """
    from PIL import Image

    height, width = _image_size(image_size)
    path = os.fspath(path)
    _check_file(path)
    _quiet_pillow()
    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError:
        raise BadImage(f"not an image Pillow can read (the file starts with {_file_start(path)!r})") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"too large: {_one_line(error)}") from None
    except Exception as error:  # a broken header: any exception of any plugin
        raise BadImage(f"corrupt image header ({type(error).__name__}: {_one_line(error)})") from None
    with image:
        try:
            return _decoded(image, height, width, channels, keep_aspect)
        except BadImage:
            raise
        except Exception as error:  # truncated or corrupt data: whatever the plugin raises
            raise BadImage(f"truncated or corrupt {image.format or 'image'} file "
                           f"({type(error).__name__}: {_one_line(error)})") from None


@functools.cache
def _quiet_pillow():
    """MAX_PIXELS is the limit here: Pillow's warning between its own two limits would only be noise."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


_huge_lock = threading.Lock()


def _decoded(image, height, width, channels, keep_aspect):
    import contextlib

    w, h = image.size
    if w * h > MAX_PIXELS:
        raise BadImage(f"too large: {w}x{h} pixels ({w * h / 1e6:.0f} megapixels) by its header, above "
                       f"tfhash.data.folders.MAX_PIXELS ({MAX_PIXELS / 1e6:.0f} megapixels)")
    # One huge image in memory at a time, from here on: a PNG's getexif() already loads its pixels.
    with _huge_lock if w * h > HUGE_PIXELS else contextlib.nullcontext():
        image = _resized(image, height, width, channels, keep_aspect)
    array = np.asarray(image, np.uint8).reshape(image.height, image.width, channels)
    if image.size == (width, height):
        return array
    padded = np.zeros((height, width, channels), np.uint8)
    top, left = (height - image.height) // 2, (width - image.width) // 2
    padded[top : top + image.height, left : left + image.width] = array
    return padded


def _resized(image, height, width, channels, keep_aspect):
    """`image` turned by its EXIF orientation, as "L" (channels=1) or "RGB"
    (channels=3) of (width, height), or with `keep_aspect` of `_fitted`'s
    size: resized first, then any transparency composited on white."""
    from PIL import Image, ImageOps

    try:
        orientation = int(image.getexif().get(0x0112, 1))  # EXIF Orientation
    except Exception:  # a broken EXIF block only loses the orientation
        orientation = 1
    turned = orientation in (5, 6, 7, 8)  # stored rotated by 90 degrees
    shown = image.size[::-1] if turned else image.size
    target = _fitted(shown, width, height) if keep_aspect else (width, height)
    if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
        image.draft(None, target[::-1] if turned else target)
    image.load()
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    image = open_clip_art.eight_bit(image)
    if image.has_transparency_data:
        image = image.convert("RGBA")
        if image.size != target:  # Pillow resizes RGBA premultiplied by alpha
            image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
        image = Image.alpha_composite(Image.new("RGBA", target, (255, 255, 255, 255)), image)
    if image.mode not in ("1", "L", "P", "RGB"):  # RGBA, CMYK, YCbCr, ...
        image = image.convert("RGB")
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return image


# ---------------------------------------------------------------------------
# Decoding many: tf.data


def _image_size(image_size):
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)):
        size = tuple(int(v) for v in image_size)
    else:
        size = None
    if size is None or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of them. "
                         f"Received: image_size={image_size!r}")
    return size


def _check_decoding(channels, batch_size):
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB). Received: channels={channels!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")


def image_batches(root, paths, *, image_size, channels=3, keep_aspect=False, batch_size=256, skip_bad=False):
    """A `tf.data.Dataset` decoding image files in parallel, in order.

    Args:
        root: the folder `paths` are relative to (absolute paths stay as they are).
        paths: image files, e.g. from `list_images`.
        image_size: the output side (int) or `(height, width)`.
        channels: 1 (grey) or 3 (RGB).
        keep_aspect: fit each image inside `image_size` keeping its aspect
            ratio and pad with zeros (centred); else squash it to the size
            (as `keras.utils.image_dataset_from_directory` does).
        batch_size: images per batch (the last may be smaller).
        skip_bad: leave bad files out (their positions are missing from the
            batches; the dataset's `skipped` attribute, a list, holds their
            `(path, reason)` in path order, refilled by each iteration)
            instead of failing.

    Returns:
        A dataset of `(images, positions)`: uint8 `(b, height, width,
        channels)` and int64 `(b,)` indices into `paths`. Iterating it in
        Python (`for`, `iter`) raises `ValueError` (one line: the file and
        what is wrong) at the first bad file unless `skip_bad`; a dataset
        derived from it (`.map`, ...) raises TensorFlow's
        `InvalidArgumentError` with that line inside instead (and TensorFlow
        logs it with its Python traceback).

    Examples:
    >>> root, paths = list_images("photos")
    >>> for images, positions in image_batches(root, paths, image_size=64):
    ...     codes = encoder(images)
    """
    import tensorflow as tf

    size = _image_size(image_size)
    _check_decoding(channels, batch_size)
    root, paths = os.fspath(root), [os.fspath(p) for p in paths]
    skipped = []

    def batches():
        skipped.clear()
        return _batches(root, paths, size, channels, keep_aspect, batch_size, skip_bad, skipped)

    signature = (tf.TensorSpec((None, *size, channels), tf.uint8), tf.TensorSpec((None,), tf.int64))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)
    dataset.__class__ = _iterated_in_python(type(dataset))
    dataset.skipped, dataset._batches = skipped, batches
    return dataset


@functools.cache
def _iterated_in_python(dataset_class):
    """`dataset_class` whose eager Python iteration (`for`, `iter`) runs its
    `_batches` generator directly, so a bad file raises the generator's
    one-line ValueError: through TensorFlow (`from_generator`) it becomes an
    InvalidArgumentError whose Python traceback TensorFlow logs twice."""

    def __iter__(self):
        import tensorflow as tf

        if not tf.executing_eagerly():  # inside a tf.function: TensorFlow's iterator
            return dataset_class.__iter__(self)
        return ((tf.convert_to_tensor(images), tf.convert_to_tensor(positions))
                for images, positions in self._batches())

    return type("ImageBatches", (dataset_class,), {"__iter__": __iter__, "__module__": __name__})


def _batches(root, paths, size, channels, keep_aspect, batch_size, skip_bad, skipped):
    """Yields numpy `(images, positions)` batches of the decodable files in
    order, decoded by `DECODE_THREADS` threads at most `2 * DECODE_THREADS`
    chunks ahead of the reader. A bad file raises its one-line ValueError, or
    with `skip_bad` its `(path, reason)` is appended to `skipped`."""
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    height, width = size

    def decode(start):
        images, kept, bad = np.empty((DECODE_CHUNK, height, width, channels), np.uint8), [], []
        for position in range(start, min(start + DECODE_CHUNK, len(paths))):
            path = os.path.join(root, paths[position])
            try:
                images[len(kept)] = decode_image(path, size, channels, keep_aspect)
                kept.append(position)
            except BadImage as error:
                if not skip_bad:
                    raise ValueError(f"{path}: {error}. Expected a readable image (or pass skip_bad=True to "
                                     f"leave it out)") from None
                bad.append((paths[position], str(error)))
        return images[: len(kept)], kept, bad

    pool = ThreadPoolExecutor(DECODE_THREADS)
    starts = iter(range(0, len(paths), DECODE_CHUNK))
    ahead = collections.deque(pool.submit(decode, s) for s in itertools.islice(starts, 2 * DECODE_THREADS))
    batch, kept = np.empty((batch_size, height, width, channels), np.uint8), []
    try:
        while ahead:
            images, positions, bad = ahead.popleft().result()
            start = next(starts, None)
            if start is not None:
                ahead.append(pool.submit(decode, start))
            skipped.extend(bad)
            for image, position in zip(images, positions):
                batch[len(kept)] = image
                kept.append(position)
                if len(kept) == batch_size:
                    yield batch, np.array(kept, np.int64)
                    batch, kept = np.empty_like(batch), []
        if kept:
            yield batch[: len(kept)], np.array(kept, np.int64)
    finally:
        pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------------
# Decoding many into one array, cached


def read_images(root, paths, *, image_size, channels=3, keep_aspect=False, skip_bad=False, cache=True,
                batch_size=256, progress=None):
    """Decodes image files into one uint8 array (see `image_batches`).

    With `cache`, the array is written once, batch by batch, into a memory-
    mapped `.npy` file under `<tfhash cache dir>/images/` (`TFHASH_CACHE_DIR`,
    else ~/.cache/tfhash), written aside and renamed into place
    (`tfhash.io.write_atomically`: a killed read leaves no half file); later
    calls map that file. Its key is the sha256 of `CACHE_FORMAT_VERSION`,
    Pillow's version, the decoding settings, the root's real path, and each
    path with its file's size, modification time, inode number and change
    time (which no tool can set back: a rewrite of the same size and
    modification time still changes it), so a changed file is decoded again
    (and the older file of the same paths and settings removed). A cache
    folder that cannot be written only costs the speed: the array is then
    decoded in memory.

    Args:
        progress: report progress on stderr (from `PROGRESS_MIN_FILES`
            files): None (default) on a terminal only, True also elsewhere
            (a line per tenth), False never.

    Returns:
        `(images, kept)`: uint8 `(n_ok, height, width, channels)` (an
        `np.memmap` when cached), and int64 `(n_ok,)` positions in `paths`
        of the decoded files; `len(paths) - len(kept)` files were skipped.
    """
    images, kept, _ = _read_images(root, paths, image_size=image_size, channels=channels, keep_aspect=keep_aspect,
                                   skip_bad=skip_bad, cache=cache, batch_size=batch_size, progress=progress)
    return images, kept


class _NothingDecoded(Exception):
    pass


def _read_images(root, paths, *, image_size, channels, keep_aspect, skip_bad, cache, batch_size, progress=None):
    """`read_images`, and the skipped files' `[(path, reason)]`."""
    size = _image_size(image_size)
    _check_decoding(channels, batch_size)
    root, paths = os.fspath(root), [os.fspath(p) for p in paths]
    settings = dict(image_size=size, channels=channels, keep_aspect=keep_aspect, skip_bad=skip_bad,
                    batch_size=batch_size, progress=progress)
    shape = (len(paths), *size, channels)
    if not cache or not paths:
        return _decode_into(np.zeros(shape, np.uint8), root, paths, settings)
    folder = os.path.join(cache_dir(), "images")
    identity, key = _cache_key(root, paths, size, channels, keep_aspect, skip_bad)
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(os.path.normpath(root))) or "root"
    stem = f"{slug}-{identity[:12]}-{key[:16]}"
    array_file, kept_file = os.path.join(folder, stem + ".npy"), os.path.join(folder, stem + ".kept.npz")
    cached = _read_cache(array_file, kept_file, key, shape)
    if cached is not None:
        return cached
    try:
        os.makedirs(folder, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only cache only costs the speed
        return _decode_into(np.zeros(shape, np.uint8), root, paths, settings)

    def write(partial):
        # One row per path: the decoded files' rows first, skipped files' rows left over (zeros) at the end.
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        decoded, kept, skipped = _decode_into(images, root, paths, settings)
        images.flush()
        del images, decoded  # unmapped before the file is renamed
        if not len(kept):
            raise _NothingDecoded(skipped)
        # The array file is the commit point: its kept positions are on disk before it.
        save_arrays(kept_file, key=np.array(key), kept=kept,
                    skipped_paths=np.array([p for p, _ in skipped], dtype=str),
                    skipped_reasons=np.array([r for _, r in skipped], dtype=str))

    try:
        write_atomically(array_file, write)
    except _NothingDecoded as nothing:
        return np.zeros((0, *shape[1:]), np.uint8), np.zeros(0, np.int64), nothing.args[0]
    _remove_older(folder, f"{slug}-{identity[:12]}-", stem)
    cached = _read_cache(array_file, kept_file, key, shape)
    if cached is None:  # removed under us: decode once more, in memory
        return _decode_into(np.zeros(shape, np.uint8), root, paths, settings)
    return cached


def _decode_into(images, root, paths, settings):
    """Fills `images` batch by batch; returns (images[:n_ok], kept, skipped)."""
    import contextlib
    import sys

    from tfhash.console import Progress

    size, progress = settings["image_size"], settings["progress"]
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    shown = Progress(f"decoding {len(paths)} images of {root} at {size[0]}x{size[1]}", len(paths)) \
        if progress and len(paths) >= PROGRESS_MIN_FILES else None
    skipped, kept, row, done = [], [], 0, 0
    with shown or contextlib.nullcontext():
        for batch, positions in _batches(root, paths, size, settings["channels"], settings["keep_aspect"],
                                         settings["batch_size"], settings["skip_bad"], skipped):
            images[row : row + len(positions)] = batch
            row += len(positions)
            kept.append(positions)
            if shown:
                shown.advance(int(positions[-1]) + 1 - done)
            done = int(positions[-1]) + 1
        if shown and done < len(paths):  # skipped files at the end
            shown.advance(len(paths) - done)
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return images[:row], kept, skipped


def _cache_key(root, paths, size, channels, keep_aspect, skip_bad):
    """(identity: root, paths and settings; key: identity and each file's size, mtime, inode and ctime), sha256s."""
    import PIL

    identity = hashlib.sha256(json.dumps(
        {"format": CACHE_FORMAT_VERSION, "pillow": PIL.__version__, "root": os.path.realpath(root),
         "image_size": list(size), "channels": channels, "keep_aspect": bool(keep_aspect),
         "skip_bad": bool(skip_bad)}, sort_keys=True).encode())
    for path in paths:
        identity.update(os.fsencode(path) + b"\0")  # any file name: bytes as the file system holds them
    key = identity.copy()
    for path in paths:
        try:
            info = os.stat(os.path.join(root, path))
            key.update(f"{info.st_size} {info.st_mtime_ns} {info.st_ino} {info.st_ctime_ns}\n".encode())
        except OSError as error:
            key.update(f"error {error.errno}\n".encode())
    return identity.hexdigest(), key.hexdigest()


def _read_cache(array_file, kept_file, key, shape):
    """(images memmap, kept, skipped) of a cache entry, or None when absent, partial or for other files."""
    try:
        with np.load(kept_file, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            kept = f["kept"].astype(np.int64)
            skipped = list(zip(f["skipped_paths"].tolist(), f["skipped_reasons"].tolist()))
        images = np.load(array_file, mmap_mode="r", allow_pickle=False)
    except Exception:  # absent, truncated, not ours: decode again, never trust it
        return None
    if images.dtype != np.uint8 or images.shape != shape or len(kept) > len(images):
        return None
    return images[: len(kept)], kept, skipped


def _remove_older(folder, prefix, stem):
    for name in os.listdir(folder):
        if name.startswith(prefix) and not name.startswith(stem + "."):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:  # in use elsewhere, or gone already
                pass


# ---------------------------------------------------------------------------
# Retrieval data


@dataclasses.dataclass(frozen=True, kw_only=True)
class _OwnImages:
    """The fields and `save_split` that `ImageData` and `ImageTextData` share
    (documented in `ImageData`): where the items came from."""

    root: str = ""
    paths: tuple = ()
    class_names: tuple | None = None
    skipped: list = dataclasses.field(default_factory=list)
    duplicates: list = dataclasses.field(default_factory=list)
    options: dict = dataclasses.field(default_factory=dict)

    def save_split(self, path):
        """Writes the split as `.npz` (see `from_directory`'s `split`): the
        `tfhash.data.protocols.save_split` fields (readable by its `load_split`;
        `labels_sha256` holds the sha256 of the listing it indexes), the item
        count, and image-text data's vocabulary."""
        split = self.split
        extra = {}
        if isinstance(self, ImageTextData):
            extra = dict(vocabulary=np.array(self.vocabulary, dtype=str),
                         vocabulary_size=np.int64(self.options["vocabulary_size"]))
        save_arrays(path, compressed=True, format_version=np.int64(FORMAT_VERSION),
                    query=split.query.astype(np.int64), train=split.train.astype(np.int64),
                    database=split.database.astype(np.int64), seed=np.int64(split.seed),
                    labels_sha256=np.array(split.labels_sha256), num_items=np.int64(len(self.images)), **extra)


@dataclasses.dataclass(frozen=True)
class ImageData(RetrievalData, _OwnImages):
    """The user's images with a seeded split: a `RetrievalData` (`protocol`,
    `images`, `labels`, `split`, `subset`), plus where they came from, and
    `save_split`.

    Attributes:
        images: uint8 (n, height, width, channels), an `np.memmap` when cached.
        labels: int32 (n,) class ids, uint8 (n, C) multi-hot rows, or None
            (unlabelled: for unsupervised methods).
        root: the folder `paths` are relative to.
        paths: each item's file, aligned with `images` (decoded files only).
        class_names: the class folders' names (class id order), or None.
        skipped: `[(path, reason)]` of the files left out (`skip_bad=True`).
        duplicates: `[(path, path kept)]` of the paths left out because they
            name a file listed already (a symbolic or hard link to it, a
            list file's later line for it): one item per file, under its
            first path in order. Its class is that path's; a list file's
            multi-hot labels are OR-ed over its lines, captions joined.
        options: JSON-able `from_path` arguments that load the same data
            again (`from_path(**data.options)`): the source's absolute path
            under "path" (`SOURCE_OPTION`), the decoding, and the split's
            sizes and seed (which draw it again; pass `split=` a file of
            `save_split` to also refuse a changed folder or list).
    """

    def subset(self, part):
        """(images, labels) of "query", "train" or "database"; labels None when unlabelled."""
        idx = getattr(self.split, part)
        return self.images[idx], None if self.labels is None else self.labels[idx]


@dataclasses.dataclass(frozen=True)
class ImageTextData(CrossModalData, _OwnImages):
    """The user's captioned images with a seeded split: a `CrossModalData`
    (`texts` a uint8 (n, V) binary bag of words over `vocabulary`, built from
    the training items' captions), with `ImageData`'s `root`, `paths`,
    `class_names`, `skipped`, `duplicates`, `options` and `save_split`."""

    def subset(self, part):
        """(images, texts, labels) of "query", "train" or "database"; labels None when unlabelled."""
        idx = getattr(self.split, part)
        return self.images[idx], self.texts[idx], None if self.labels is None else self.labels[idx]


def from_path(path, **options):
    """`from_directory` for a folder, `from_list` for a file (a list file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return from_directory(path, **options)
    if os.path.isfile(path):
        return from_list(path, **options)
    raise ValueError(f"Expected a folder of images or a list file. Received: {path} (no such folder or file)")


def from_directory(directory, *, image_size=64, channels=3, keep_aspect=False, num_query=None, num_train=None,
                   seed=0, skip_bad=False, split=None, cache=True, progress=None):
    """A folder of images as retrieval data, in Keras's layout.

    `directory/<class>/**/<image>`: each subfolder holding images is a class
    (int32 ids in sorted name order, `class_names`); images directly in
    `directory` with no such subfolder: unlabelled (labels None), for
    unsupervised methods. Both at once is refused. A file reached by several
    paths (symbolic or hard links) is one item, under its first path in
    sorted order and that path's class; the others are left out and counted
    (`duplicates`, and the protocol's description).

    Args:
        directory: the folder (see `list_images` for what counts as an image).
        image_size, channels, keep_aspect, skip_bad: decoding (`image_batches`).
        num_query: random queries; default min(1000, max(1, n // 10)).
        num_train: training items drawn from the non-query items; default all of
            them but a tenth (at most 500), left for methods that select
            checkpoints on items outside the training set (SSAH, UGACH).
            The database is every non-query item.
        seed: the split's NumPy seed.
        split: a split file of `ImageData.save_split` to use instead of a
            draw; refused if the images listed (paths and labels) changed since.
        cache: decode once into a memory-mapped cache file (`read_images`).
        progress: decoding progress on stderr (`read_images`): None on a
            terminal only, True also elsewhere, False never. Not part of
            `options` (it does not change the data).

    Returns:
        `ImageData`.

    Examples:
    >>> data = from_directory("photos", image_size=64)
    >>> images, labels = data.subset("train")
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise ValueError(f"Expected a folder of images. Received: directory={directory} (not a folder)")
    root, paths = list_images(directory)
    paths, _, _, duplicates = _one_item_per_file(root, paths, None, None)
    top = [p for p in paths if "/" not in p]
    classes = sorted({p.split("/", 1)[0] for p in paths if "/" in p})
    if top and classes:
        raise ValueError(f"{directory} mixes images ({top[0]}, ...) with class folders ({classes[0]}/, ...): expected "
                         f"class folders only (labelled) or images only (unlabelled). Received: {len(top)} images "
                         f"at the top, {len(classes)} class folders")
    if classes:
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[p.split("/", 1)[0]] for p in paths], np.int32)
    else:
        labels = None
    options = dict(path=directory, image_size=_json_size(image_size), channels=channels, keep_aspect=keep_aspect,
                   skip_bad=skip_bad, cache=cache)
    return _retrieval_data("folder", directory, root, paths, labels, None, tuple(classes) or None, options,
                           num_query=num_query, num_train=num_train, seed=seed, split=split, duplicates=duplicates,
                           progress=progress)


def from_list(list_file, *, root=None, captions=None, vocabulary_size=1000, image_size=64, channels=3,
              keep_aspect=False, num_query=None, num_train=None, seed=0, skip_bad=False, split=None, cache=True,
              progress=None):
    """Images named in a list file as retrieval data (DeepHash-pytorch's format).

    One item a line: `path l1 l2 ... lC`, C >= 2 values 0/1 (multi-hot,
    the same C on every line), or `path class_id` (one int: class ids), or
    a path alone (unlabelled). A line holding a TAB is tab-separated:
    `path<TAB>labels<TAB>caption` (paths may hold spaces). Blank lines and
    lines starting with "#" are ignored. The file is read as UTF-8, other
    bytes in paths kept as the file system's own names (`os.fsdecode`).
    Lines naming one file (the same path, or links to one file) are one
    item, under the first line's path: multi-hot labels OR-ed, class ids the
    first line's, captions joined; the others are counted (`duplicates`).

    Args:
        list_file: the list.
        root: the folder relative paths start from; default the list
            file's folder. Absolute paths are allowed.
        captions: None: the third tab-separated field, if any line has one;
            "files": `<image path without extension>.txt` beside each image;
            False: none. With captions the result is `ImageTextData`, its
            texts a binary bag of words over the `vocabulary_size` words
            most frequent in the training items' captions (words: lowercase
            letter runs of 2+ letters, scikit-learn's English stop words
            out, as Open Clip Art's; ties by word; stored sorted).
        vocabulary_size: the most words kept.
        Others: as `from_directory`.

    Returns:
        `ImageData`, or `ImageTextData` with captions.

    Raises:
        ValueError: a malformed line (naming `file:line`), a missing image or
            caption file (unless `skip_bad`), sizes out of range.
    """
    list_file = os.path.abspath(os.fspath(list_file))
    root = os.path.abspath(os.fspath(root)) if root is not None else os.path.dirname(list_file)
    if captions not in (None, False, "files"):
        raise ValueError(f'captions must be None (the third tab-separated field), "files" (<image>.txt) or False. '
                         f"Received: captions={captions!r}")
    if not isinstance(vocabulary_size, (int, np.integer)) or isinstance(vocabulary_size, bool) or vocabulary_size < 1:
        raise ValueError(f"vocabulary_size must be a positive int. Received: vocabulary_size={vocabulary_size!r}")
    paths, labels, texts = _parse_list(list_file)
    skipped = []
    if captions == "files":
        texts, keep = [], []
        for i, path in enumerate(paths):
            caption_file = os.path.splitext(os.path.join(root, path))[0] + ".txt"
            try:
                with open(caption_file, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
                keep.append(i)
            except OSError as error:
                reason = f"its caption file {caption_file} cannot be read ({error.strerror})"
                if not skip_bad:
                    raise ValueError(f"{os.path.join(root, path)}: {reason}. Expected <image>.txt beside each image "
                                     f'with captions="files" (or pass skip_bad=True to leave it out)') from None
                skipped.append((path, reason))
        paths, labels = [paths[i] for i in keep], None if labels is None else labels[keep]
    elif captions is False or not any(text is not None for text in texts):
        texts = None
    else:
        texts = [text or "" for text in texts]
    paths, labels, texts, duplicates = _one_item_per_file(root, paths, labels, texts)
    options = dict(path=list_file, root=root, captions=captions, vocabulary_size=int(vocabulary_size),
                   image_size=_json_size(image_size), channels=channels, keep_aspect=keep_aspect, skip_bad=skip_bad,
                   cache=cache)
    return _retrieval_data("list", list_file, root, paths, labels, texts, None, options, num_query=num_query,
                           num_train=num_train, seed=seed, split=split, skipped=skipped, duplicates=duplicates,
                           progress=progress)


def _parse_list(list_file):
    """(paths, labels or None, captions with None where a line has none) of a list file."""
    paths, rows, texts = [], [], []
    first = None  # (line number, number of labels)
    with open(list_file, encoding="utf-8", errors="surrogateescape") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{list_file}:{number}"
            if "\t" in line:
                fields = line.split("\t")
                if len(fields) > 3:
                    raise ValueError(f"{where}: expected at most 3 tab-separated fields (path, labels, caption). "
                                     f"Received: {len(fields)}")
                path, values = fields[0], fields[1].split() if len(fields) > 1 else []
                text = fields[2] if len(fields) > 2 else None
            else:
                path, *values = line.split()
                text = None
            if not path.strip():
                raise ValueError(f"{where}: expected an image path first. Received: {line[:60]!r}")
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise ValueError(f"{where}: expected integer labels after the path (a class id, or 0/1 values). "
                                 f"Received: {' '.join(values)[:60]!r}") from None
            if first is None:
                first = (number, len(values))
            elif len(values) != first[1]:
                raise ValueError(f"{where}: expected {first[1]} label values as on line {first[0]}. "
                                 f"Received: {len(values)}")
            if len(values) == 1 and values[0] < 0:
                raise ValueError(f"{where}: expected a class id >= 0. Received: {values[0]}")
            if len(values) > 1 and not set(values) <= {0, 1}:
                raise ValueError(f"{where}: expected 0/1 multi-hot values. Received: {' '.join(map(str, values))}")
            paths.append(path)
            rows.append(values)
            texts.append(text)
    if not paths:
        raise ValueError(f"{list_file}: expected lines 'path [labels]'. Received: no item (empty or comments only)")
    if first[1] == 0:
        labels = None
    elif first[1] == 1:
        labels = np.array([r[0] for r in rows], np.int32)
    else:
        labels = np.array(rows, np.uint8)
    return paths, labels, texts


def _json_size(image_size):
    height, width = _image_size(image_size)
    return height if height == width and not isinstance(image_size, (tuple, list)) else [height, width]


def _retrieval_data(kind, source, root, paths, labels, texts, class_names, options, *, num_query, num_train, seed,
                    split, skipped=(), duplicates=(), progress=None):
    if texts is not None and labels is not None and labels.ndim == 1:
        # Image-text data's labels are multi-hot rows (`CrossModalData`): class ids become one-hot.
        labels = _one_hot(labels)
    images, kept, bad = _read_images(root, paths, image_size=options["image_size"], channels=options["channels"],
                                     keep_aspect=options["keep_aspect"], skip_bad=options["skip_bad"],
                                     cache=options["cache"], batch_size=256, progress=progress)
    skipped = [*skipped, *bad]
    paths = tuple(paths[i] for i in kept)
    if labels is not None:
        labels = labels[kept]
    if texts is not None:
        texts = [texts[i] for i in kept]
    n = len(paths)
    listing = listing_sha256(paths, labels)
    vocabulary = None
    if split is None:
        split = _draw(n, num_query, num_train, seed, source, skipped)
    else:
        split, vocabulary = _load_split(split, listing, n, num_query, num_train, source,
                                        options.get("vocabulary_size") if texts is not None else None)
    split = dataclasses.replace(split, labels_sha256=listing)
    options.update(num_query=len(split.query), num_train=len(split.train), seed=split.seed)
    if texts is not None and vocabulary is None:
        vocabulary = build_vocabulary([texts[i] for i in split.train], options["vocabulary_size"])
    if texts is not None and not vocabulary:
        raise ValueError(f"{source}: the training items' captions hold no word: expected words of 2+ letters that "
                         f"are not English stop words. Received: {len(split.train)} captions")
    if labels is None:
        about = ["unlabelled"]
    elif class_names:
        about = [f"{len(class_names)} classes"]
    else:
        about = ["class ids" if labels.ndim == 1 else f"{labels.shape[1]} multi-hot labels"]
    if texts is not None:
        about.append(f"captions as a {len(vocabulary)}-word bag of words")
    if skipped:
        about.append(f"{len(skipped)} unreadable file{'s' if len(skipped) > 1 else ''} skipped")
    if duplicates:
        about.append(f"{len(duplicates)} duplicate path{'s' if len(duplicates) > 1 else ''} of files listed "
                     f"already left out")
    description = (f"Own images, {kind} {source}: {n} images ({', '.join(about)}): {len(split.query)} random "
                   f"queries, {len(split.train)} training images from the database, database = the "
                   f"{len(split.database)} non-query images; mAP@all.")
    protocol = Protocol(name=f"images:{os.path.basename(source.rstrip(os.sep))}",
                        loader="tfhash.data.folders:from_path", seed=split.seed, description=description,
                        num_query=len(split.query), num_train=len(split.train),
                        modalities=("image",) if texts is None else ("image", "text"), committed=False)
    common = dict(root=root, paths=paths, class_names=class_names, skipped=skipped, duplicates=list(duplicates),
                  options=options)
    if texts is None:
        return ImageData(protocol, images, labels, split, **common)
    return ImageTextData(protocol, images, bag_of_words(texts, vocabulary), labels, split, vocabulary=vocabulary,
                         **common)


def _one_item_per_file(root, paths, labels, texts):
    """`(paths, labels, texts, duplicates)` with one item per file (see
    `ImageData.duplicates`): files told apart by device and inode (any links
    to one file are one), by real path where they cannot be read."""
    first, keep, duplicates = {}, [], []
    labels = None if labels is None else labels.copy()
    texts = None if texts is None else list(texts)
    for i, path in enumerate(paths):
        full = os.path.join(root, path)
        try:
            info = os.stat(full)
            file = (info.st_dev, info.st_ino)
        except OSError:  # missing, a dangling link or a loop: decoding reports it
            file = os.path.realpath(full)
        j = first.setdefault(file, i)
        if j == i:
            keep.append(i)
            continue
        duplicates.append((path, paths[j]))
        if labels is not None and labels.ndim == 2:
            labels[j] |= labels[i]
        if texts is not None and texts[i]:
            texts[j] = f"{texts[j]}\n{texts[i]}" if texts[j] else texts[i]
    if not duplicates:
        return paths, labels, texts, duplicates
    return ([paths[i] for i in keep], None if labels is None else labels[keep],
            None if texts is None else [texts[i] for i in keep], duplicates)


def _one_hot(ids):
    """uint8 (n, max id + 1) rows with a 1 at each id (no (classes, classes) identity matrix)."""
    rows = np.zeros((len(ids), int(ids.max()) + 1), np.uint8)
    rows[np.arange(len(ids)), ids] = 1
    return rows


def listing_sha256(paths, labels):
    """sha256 of the items a split indexes: each path and its labels, in order."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        label = "" if labels is None else " ".join(map(str, np.atleast_1d(labels[i]).tolist()))
        digest.update(os.fsencode(path) + f"\t{label}\n".encode())  # any file name, as the file system holds it
    return digest.hexdigest()


def _count(value, name):
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
        raise ValueError(f"{name} must be an int or None. Received: {name}={value!r}")


def _draw(n, num_query, num_train, seed, source, skipped):
    """A random split (`draw_random_split`) with default sizes, checked."""
    _count(num_query, "num_query")
    _count(num_train, "num_train")
    if n < 2:
        first = f" (skipped: {skipped[0][0]}: {skipped[0][1]}, ...)" if skipped else ""
        raise ValueError(f"{source}: expected at least 2 readable images to split into queries and training images. "
                         f"Received: {n}{first}")
    num_query = min(1000, max(1, n // 10)) if num_query is None else int(num_query)
    if not 1 <= num_query <= n - 1:
        raise ValueError(f"num_query must be in [1, {n - 1}] for {n} images (at least one left to train on). "
                         f"Received: num_query={num_query}")
    rest = n - num_query
    # Default: every non-query item but a validation share (a tenth, at most 500) that methods selecting
    # checkpoints (SSAH, UGACH: `tfhash.evaluation.validation_rows`) validate on, away from the queries.
    num_train = max(1, rest - min(500, max(1, rest // 10))) if num_train is None else int(num_train)
    if not 1 <= num_train <= n - num_query:
        raise ValueError(f"num_train must be in [1, {n - num_query}] ({n} images less {num_query} queries). "
                         f"Received: num_train={num_train}")
    return draw_random_split(np.zeros(n, np.int64), num_query, num_train, seed)


def _load_split(path, listing, n, num_query, num_train, source, vocabulary_size):
    """(split, stored vocabulary or None) of a split file, checked against the listing and the sizes asked."""
    from tfhash.data.protocols import load_split

    path = os.fspath(path)
    split = load_split(path)
    with np.load(path, allow_pickle=False) as f:
        items = int(f["num_items"]) if "num_items" in f.files else None
        vocabulary = tuple(f["vocabulary"].tolist()) if "vocabulary" in f.files else None
        stored_size = int(f["vocabulary_size"]) if "vocabulary_size" in f.files else None
    if split.labels_sha256 != listing:
        raise ValueError(f"{path} does not index {source} as it is now: expected the {items} files the split was "
                         f"drawn on (listing sha256 {split.labels_sha256[:16]}). Received: {n} files (sha256 "
                         f"{listing[:16]}): files or labels changed since: restore the files the split was drawn "
                         f"on, or train again (a run's split.npz), or leave split out to draw a new split")
    for name, asked, found in (("num_query", num_query, len(split.query)), ("num_train", num_train, len(split.train))):
        _count(asked, name)
        if asked is not None and asked != found:
            raise ValueError(f"{name}={asked} disagrees with the split file {path}: expected {found} or None. "
                             f"Received: {name}={asked}")
    if vocabulary is not None and vocabulary_size is not None and stored_size != vocabulary_size:
        raise ValueError(f"vocabulary_size={vocabulary_size} disagrees with the split file {path}: expected "
                         f"{stored_size}. Received: vocabulary_size={vocabulary_size}")
    return split, vocabulary if vocabulary_size is not None else None


def build_vocabulary(captions, size):
    """The `size` words in most captions (ties by word), sorted; words as
    `tfhash.data.open_clip_art.tokenize` splits them."""
    from tfhash.data.open_clip_art import count_words, english_stop_words

    counts = count_words(captions, english_stop_words())
    return tuple(sorted(sorted(counts, key=lambda w: (-counts[w], w))[:size]))


def bag_of_words(captions, vocabulary):
    """uint8 (n, V): 1 where a caption holds a vocabulary word."""
    from tfhash.data import open_clip_art

    return open_clip_art.bag_of_words(captions, vocabulary, open_clip_art.english_stop_words())
