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
  random split that `save_split` writes and `split=` reads back.

Decoding is Pillow's, in `tf.numpy_function` calls over chunks of
`DECODE_CHUNK` files mapped in parallel (Pillow releases the GIL while it
decodes). Every image becomes `channels` (1: grey, 3: RGB) uint8 channels:
transparency (RGBA, LA, palette or colour-key transparency) is composited on
white, 16-bit grey scaled to 8 bits (v * 255 / 65535, rounded), CMYK and
other modes converted to RGB, the EXIF orientation of photos applied (Keras's
loader ignores it), an animation's first frame taken; then the image is
resized (bilinear, antialiased) to `image_size`, squashed, or with
`keep_aspect` fitted inside it and padded with zeros (centred). JPEGs are
decoded at a reduced scale (`Image.draft`) when much larger than needed.

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

from tfhash.data.protocols import FORMAT_VERSION, CrossModalData, Protocol, RetrievalData, draw_random_split
from tfhash.io import cache_dir, save_arrays, write_atomically

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Images whose header claims more pixels are refused (decompression bombs, or
# more memory than a retrieval image is worth). Pillow itself refuses above
# 2 x PIL.Image.MAX_IMAGE_PIXELS (179 megapixels by default); this limit holds
# where a program has lifted Pillow's.
MAX_PIXELS = 200_000_000
# Files decoded per tf.numpy_function call: fewer calls for small images,
# still enough chunks to keep every core busy.
DECODE_CHUNK = 16
# Bump when the decoded pixels change for the same files and settings.
CACHE_FORMAT_VERSION = 1
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
    """The size of `size` (w, h) scaled to fit inside (width, height), aspect ratio kept."""
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


def _decoded(image, height, width, channels, keep_aspect):
    from PIL import Image, ImageOps

    w, h = image.size
    if w * h > MAX_PIXELS:
        raise BadImage(f"too large: {w}x{h} pixels ({w * h / 1e6:.0f} megapixels) by its header, above "
                       f"tfhash.data.folders.MAX_PIXELS ({MAX_PIXELS / 1e6:.0f} megapixels)")
    try:
        orientation = int(image.getexif().get(0x0112, 1))  # EXIF Orientation
    except Exception:  # a broken EXIF block only loses the orientation
        orientation = 1
    turned = orientation in (5, 6, 7, 8)  # stored rotated by 90 degrees
    shown = (h, w) if turned else (w, h)
    target = _fitted(shown, width, height) if keep_aspect else (width, height)
    if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
        image.draft(None, target[::-1] if turned else target)
    image.load()
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
    image = _converted(image, channels)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(image, np.uint8).reshape(target[1], target[0], channels)
    if target == (width, height):
        return array
    padded = np.zeros((height, width, channels), np.uint8)
    top, left = (height - target[1]) // 2, (width - target[0]) // 2
    padded[top : top + target[1], left : left + target[0]] = array
    return padded


def _converted(image, channels):
    """`image` as "L" (channels=1) or "RGB" (channels=3), transparency on white."""
    from PIL import Image

    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit grey (32-bit "I" clipped to 16)
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.nan_to_num(np.asarray(image)).clip(0, 255).round().astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode not in ("1", "L", "P", "RGB"):  # RGBA, CMYK, YCbCr, ...
        image = image.convert("RGB")
    return image.convert("L" if channels == 1 else "RGB")


# ---------------------------------------------------------------------------
# Decoding many: tf.data


class Skipped:
    """The files an `image_batches` dataset left out (`skip_bad=True`),
    filled while the dataset is iterated.

    `len(skipped)` (or `skipped.count`) is how many; `skipped.items()` lists
    `(path, reason)` in path order; `skipped.positions` their indices into
    the paths given. Iterating the dataset again finds the same files.
    """

    def __init__(self, paths):
        self._paths = paths
        self._reasons = {}
        self._lock = threading.Lock()

    def _add(self, position, reason):
        with self._lock:
            self._reasons[int(position)] = reason

    def __len__(self):
        return len(self._reasons)

    @property
    def count(self):
        return len(self)

    @property
    def positions(self):
        with self._lock:
            return sorted(self._reasons)

    def items(self):
        with self._lock:
            return [(self._paths[p], self._reasons[p]) for p in sorted(self._reasons)]

    def __repr__(self):
        return f"Skipped({len(self)} files)"


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
            batches; the dataset's `skipped` attribute, a `Skipped`, lists
            them once iterated) instead of failing.

    Returns:
        A dataset of `(images, positions)`: uint8 `(b, height, width,
        channels)` and int64 `(b,)` indices into `paths`. Iterating it raises
        `ValueError` (one line: the file and what is wrong) at the first bad
        file unless `skip_bad`; a dataset derived from it (`.map`, ...) raises
        TensorFlow's `InvalidArgumentError` with that line inside instead.

    Examples:
    >>> root, paths = list_images("photos")
    >>> for images, positions in image_batches(root, paths, image_size=64):
    ...     codes = encoder(images)
    """
    import tensorflow as tf

    height, width = _image_size(image_size)
    _check_decoding(channels, batch_size)
    root, paths = os.fspath(root), [os.fspath(p) for p in paths]
    skipped, failures = Skipped(paths), {}

    def decode(positions):
        images = np.zeros((len(positions), height, width, channels), np.uint8)
        ok = np.ones(len(positions), bool)
        for row, position in enumerate(positions):
            path = os.path.join(root, paths[position])
            try:
                images[row] = decode_image(path, (height, width), channels, keep_aspect)
            except BadImage as error:
                if not skip_bad:
                    message = f"{path}: {error}. Expected a readable image (or pass skip_bad=True to leave it out)"
                    failures[int(position)] = message
                    raise ValueError(message) from None
                skipped._add(position, str(error))
                ok[row] = False
        return images, ok

    def decode_chunk(positions):
        images, ok = tf.numpy_function(decode, [positions], (tf.uint8, tf.bool))
        images.set_shape((None, height, width, channels))
        ok.set_shape((None,))
        return images, ok, positions

    dataset = (tf.data.Dataset.range(len(paths)).batch(DECODE_CHUNK)
               .map(decode_chunk, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .unbatch())
    if skip_bad:
        dataset = dataset.filter(lambda image, ok, position: ok)
    dataset = dataset.map(lambda image, ok, position: (image, position)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    dataset.__class__ = _raising_value_errors(type(dataset))  # its iterators say which file was bad
    dataset.skipped = skipped
    dataset._bad_file_messages = failures
    return dataset


@functools.lru_cache(maxsize=None)
def _raising_value_errors(dataset_class):
    """`dataset_class` whose iterators turn TensorFlow's error for a bad file
    into the one-line ValueError the decoder raised."""

    def __iter__(self):
        return _BadFileIterator(dataset_class.__iter__(self), self._bad_file_messages)

    return type("ImageBatches", (dataset_class,), {"__iter__": __iter__, "__module__": __name__})


class _BadFileIterator:
    def __init__(self, iterator, messages):
        self._iterator, self._messages = iterator, messages

    def __iter__(self):
        return self

    def __next__(self):
        import tensorflow as tf

        try:
            return next(self._iterator)
        except tf.errors.OpError as error:
            text = str(error)
            for message in list(self._messages.values()):
                if message in text:
                    raise ValueError(message) from None
            raise

    def __getattr__(self, name):
        return getattr(self._iterator, name)


# ---------------------------------------------------------------------------
# Decoding many into one array, cached


def read_images(root, paths, *, image_size, channels=3, keep_aspect=False, skip_bad=False, cache=True,
                batch_size=256):
    """Decodes image files into one uint8 array (see `image_batches`).

    With `cache`, the array is written once, batch by batch, into a memory-
    mapped `.npy` file under `<tfhash cache dir>/images/` (`TFHASH_CACHE_DIR`,
    else ~/.cache/tfhash), written aside and renamed into place
    (`tfhash.io.write_atomically`: a killed read leaves no half file); later
    calls map that file. Its key is the sha256 of the root's real path, each
    path with its file's size and modification time, the decoding settings
    and Pillow's version, so a changed file is decoded again (and the older
    file of the same paths and settings removed). A cache folder that cannot
    be written only costs the speed: the array is then decoded in memory.

    Returns:
        `(images, kept)`: uint8 `(n_ok, height, width, channels)` (an
        `np.memmap` when cached), and int64 `(n_ok,)` positions in `paths`
        of the decoded files; `len(paths) - len(kept)` files were skipped.
    """
    images, kept, _ = _read_images(root, paths, image_size=image_size, channels=channels, keep_aspect=keep_aspect,
                                   skip_bad=skip_bad, cache=cache, batch_size=batch_size)
    return images, kept


class _NothingDecoded(Exception):
    pass


def _read_images(root, paths, *, image_size, channels, keep_aspect, skip_bad, cache, batch_size):
    """`read_images`, and the skipped files' `[(path, reason)]`."""
    size = _image_size(image_size)
    _check_decoding(channels, batch_size)
    root, paths = os.fspath(root), [os.fspath(p) for p in paths]
    settings = dict(image_size=size, channels=channels, keep_aspect=keep_aspect, skip_bad=skip_bad,
                    batch_size=batch_size)
    shape = (len(paths), *size, channels)
    if not cache or not paths:
        return _decode_into(np.zeros(shape, np.uint8), root, paths, settings)
    folder = os.path.join(cache_dir(), "images")
    identity, key = _cache_key(root, paths, size, channels, keep_aspect, skip_bad)
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(os.path.normpath(root))) or "root"
    stem = f"{slug}-{identity[:12]}-{key[:16]}"
    array_file, kept_file = os.path.join(folder, stem + ".npy"), os.path.join(folder, stem + ".kept.npz")
    cached = _read_cache(array_file, kept_file, key, shape[1:])
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
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape, version=(1, 0))
        decoded, kept, skipped = _decode_into(images, root, paths, settings)
        images.flush()
        del images, decoded  # unmapped before the file is shortened and renamed
        if not len(kept):
            raise _NothingDecoded(skipped)
        if len(kept) < len(paths):
            _shorten_npy(partial, len(kept))
        # The array file is the commit point: its kept positions are on disk before it.
        save_arrays(kept_file, key=np.array(key), kept=kept,
                    skipped_paths=np.array([p for p, _ in skipped], dtype=str),
                    skipped_reasons=np.array([r for _, r in skipped], dtype=str))

    try:
        write_atomically(array_file, write)
    except _NothingDecoded as nothing:
        return np.zeros((0, *shape[1:]), np.uint8), np.zeros(0, np.int64), nothing.args[0]
    _remove_older(folder, f"{slug}-{identity[:12]}-", stem)
    cached = _read_cache(array_file, kept_file, key, shape[1:])
    if cached is None:  # removed under us: decode once more, in memory
        return _decode_into(np.zeros(shape, np.uint8), root, paths, settings)
    return cached


def _decode_into(images, root, paths, settings):
    """Fills `images` batch by batch; returns (images[:n_ok], kept, skipped)."""
    from tfhash.console import Progress

    size, channels, keep_aspect = settings["image_size"], settings["channels"], settings["keep_aspect"]
    dataset = image_batches(root, paths, image_size=size, channels=channels, keep_aspect=keep_aspect,
                            batch_size=settings["batch_size"], skip_bad=settings["skip_bad"])
    kept, row, done = [], 0, 0
    show = len(paths) >= PROGRESS_MIN_FILES
    what = f"decoding {len(paths)} images of {root} at {size[0]}x{size[1]}"
    with Progress(what, len(paths)) as progress:
        for batch, positions in dataset:
            positions = positions.numpy()
            images[row : row + len(positions)] = batch.numpy()
            row += len(positions)
            kept.append(positions)
            if show:
                progress.advance(int(positions[-1]) + 1 - done)
            done = int(positions[-1]) + 1
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return images[:row], kept.astype(np.int64), dataset.skipped.items()


def _cache_key(root, paths, size, channels, keep_aspect, skip_bad):
    """(identity: root, paths and settings; key: identity and each file's size and mtime), sha256s."""
    import PIL

    identity = hashlib.sha256(json.dumps(
        {"format": CACHE_FORMAT_VERSION, "pillow": PIL.__version__, "root": os.path.realpath(root),
         "image_size": list(size), "channels": channels, "keep_aspect": bool(keep_aspect),
         "skip_bad": bool(skip_bad)}, sort_keys=True).encode())
    for path in paths:
        identity.update(path.encode() + b"\0")
    key = identity.copy()
    for path in paths:
        try:
            info = os.stat(os.path.join(root, path))
            key.update(f"{info.st_size} {info.st_mtime_ns}\n".encode())
        except OSError as error:
            key.update(f"error {error.errno}\n".encode())
    return identity.hexdigest(), key.hexdigest()


def _read_cache(array_file, kept_file, key, item_shape):
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
    if images.dtype != np.uint8 or images.shape != (len(kept), *item_shape):
        return None
    return images, kept, skipped


def _shorten_npy(path, rows):
    """Keeps the first `rows` rows of a C-order `.npy` file, in place. NumPy
    leaves room in the header for the first axis to change length."""
    import io

    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        shape, fortran, dtype = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
        offset = f.tell()
        header = io.BytesIO()
        fmt.write_array_header_1_0(header, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran,
                                            "shape": (rows, *shape[1:])})
        if version != (1, 0) or fortran or len(header.getvalue()) != offset:
            raise RuntimeError(f"Cannot shorten {path} in place: its header has no room. Received: version "
                               f"{version}, {offset} header bytes, {len(header.getvalue())} needed")
        f.seek(0)
        f.write(header.getvalue())
        f.truncate(offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def _remove_older(folder, prefix, stem):
    for name in os.listdir(folder):
        if name.startswith(prefix) and not name.startswith(stem + "."):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:  # in use elsewhere, or gone already
                pass


# ---------------------------------------------------------------------------
# Retrieval data


@dataclasses.dataclass(frozen=True)
class ImageData(RetrievalData):
    """The user's images with a seeded split: a `RetrievalData` (`protocol`,
    `images`, `labels`, `split`, `subset`), plus where they came from.

    Attributes:
        images: uint8 (n, height, width, channels), an `np.memmap` when cached.
        labels: int32 (n,) class ids, uint8 (n, C) multi-hot rows, or None
            (unlabelled: for unsupervised methods).
        root: the folder `paths` are relative to.
        paths: each image's file, aligned with `images` (decoded files only).
        class_names: the class folders' names (class id order), or None.
        skipped: `[(path, reason)]` of the files left out (`skip_bad=True`).
        options: JSON-able `from_path` arguments that load the same data
            again (`from_path(**data.options)`): the source's absolute path
            under "path" (`SOURCE_OPTION`), the decoding, and the split's
            sizes and seed (which draw it again; pass `split=` a file of
            `save_split` to also refuse a changed folder or list).
    """

    root: str = ""
    paths: tuple = ()
    class_names: tuple | None = None
    skipped: list = dataclasses.field(default_factory=list)
    options: dict = dataclasses.field(default_factory=dict)

    def subset(self, part):
        """(images, labels) of "query", "train" or "database"; labels None when unlabelled."""
        idx = getattr(self.split, part)
        return self.images[idx], None if self.labels is None else self.labels[idx]

    def save_split(self, path):
        """Writes the split, with a sha256 of the listing it indexes, as `.npz` (see `from_directory`'s `split`)."""
        _save_split(self, path)


@dataclasses.dataclass(frozen=True)
class ImageTextData(CrossModalData):
    """The user's captioned images with a seeded split: a `CrossModalData`
    (`texts` a uint8 (n, V) binary bag of words over `vocabulary`, built from
    the training items' captions), with `ImageData`'s `root`, `paths`,
    `class_names`, `skipped`, `options` and `save_split`."""

    root: str = ""
    paths: tuple = ()
    class_names: tuple | None = None
    skipped: list = dataclasses.field(default_factory=list)
    options: dict = dataclasses.field(default_factory=dict)

    def subset(self, part):
        """(images, texts, labels) of "query", "train" or "database"; labels None when unlabelled."""
        idx = getattr(self.split, part)
        return self.images[idx], self.texts[idx], None if self.labels is None else self.labels[idx]

    def save_split(self, path):
        """Writes the split, its listing's sha256 and the vocabulary, as `.npz`."""
        _save_split(self, path)


def _save_split(data, path):
    """`tfhash.data.protocols.save_split`'s fields (readable by its `load_split`;
    `labels_sha256` holds the listing's sha256) plus the item count, and the
    vocabulary of image-text data."""
    split = data.split
    extra = {}
    if isinstance(data, ImageTextData):
        extra = dict(vocabulary=np.array(data.vocabulary, dtype=str),
                     vocabulary_size=np.int64(data.options["vocabulary_size"]))
    save_arrays(path, compressed=True, format_version=np.int64(FORMAT_VERSION),
                query=split.query.astype(np.int64), train=split.train.astype(np.int64),
                database=split.database.astype(np.int64), seed=np.int64(split.seed),
                labels_sha256=np.array(split.labels_sha256), num_items=np.int64(len(data.images)), **extra)


def from_path(path, **options):
    """`from_directory` for a folder, `from_list` for a file (a list file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return from_directory(path, **options)
    if os.path.isfile(path):
        return from_list(path, **options)
    raise ValueError(f"Expected a folder of images or a list file. Received: {path} (no such folder or file)")


def from_directory(directory, *, image_size=64, channels=3, keep_aspect=False, num_query=None, num_train=None,
                   seed=0, skip_bad=False, split=None, cache=True):
    """A folder of images as retrieval data, in Keras's layout.

    `directory/<class>/**/<image>`: each subfolder holding images is a class
    (int32 ids in sorted name order, `class_names`); images directly in
    `directory` with no such subfolder: unlabelled (labels None), for
    unsupervised methods. Both at once is refused.

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
                           num_query=num_query, num_train=num_train, seed=seed, split=split)


def from_list(list_file, *, root=None, captions=None, vocabulary_size=1000, image_size=64, channels=3,
              keep_aspect=False, num_query=None, num_train=None, seed=0, skip_bad=False, split=None, cache=True):
    """Images named in a list file as retrieval data (DeepHash-pytorch's format).

    One item a line: `path l1 l2 ... lC`, C >= 2 values 0/1 (multi-hot,
    the same C on every line), or `path class_id` (one int: class ids), or
    a path alone (unlabelled). A line holding a TAB is tab-separated:
    `path<TAB>labels<TAB>caption` (paths may hold spaces). Blank lines and
    lines starting with "#" are ignored.

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
    options = dict(path=list_file, root=root, captions=captions, vocabulary_size=int(vocabulary_size),
                   image_size=_json_size(image_size), channels=channels, keep_aspect=keep_aspect, skip_bad=skip_bad,
                   cache=cache)
    return _retrieval_data("list", list_file, root, paths, labels, texts, None, options, num_query=num_query,
                           num_train=num_train, seed=seed, split=split, skipped=skipped)


def _parse_list(list_file):
    """(paths, labels or None, captions with None where a line has none) of a list file."""
    paths, rows, texts = [], [], []
    first = None  # (line number, number of labels)
    with open(list_file, encoding="utf-8") as f:
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
                    split, skipped=()):
    if texts is not None and labels is not None and labels.ndim == 1:
        # Image-text data's labels are multi-hot rows (`CrossModalData`): class ids become one-hot.
        labels = np.eye(int(labels.max()) + 1, dtype=np.uint8)[labels]
    images, kept, bad = _read_images(root, paths, image_size=options["image_size"], channels=options["channels"],
                                     keep_aspect=options["keep_aspect"], skip_bad=options["skip_bad"],
                                     cache=options["cache"], batch_size=256)
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
    description = (f"Own images, {kind} {source}: {n} images ({', '.join(about)}): {len(split.query)} random "
                   f"queries, {len(split.train)} training images from the database, database = the "
                   f"{len(split.database)} non-query images; mAP@all.")
    protocol = Protocol(name=f"images:{os.path.basename(source.rstrip(os.sep))}",
                        loader="tfhash.data.folders:from_path", seed=split.seed, description=description,
                        num_query=len(split.query), num_train=len(split.train),
                        modalities=("image",) if texts is None else ("image", "text"), committed=False)
    common = dict(root=root, paths=paths, class_names=class_names, skipped=skipped, options=options)
    if texts is None:
        return ImageData(protocol, images, labels, split, **common)
    return ImageTextData(protocol, images, bag_of_words(texts, vocabulary), labels, split, vocabulary=vocabulary,
                         **common)


def listing_sha256(paths, labels):
    """sha256 of the items a split indexes: each path and its labels, in order."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        label = "" if labels is None else " ".join(map(str, np.atleast_1d(labels[i]).tolist()))
        digest.update(f"{path}\t{label}\n".encode())
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
                         f"{listing[:16]}): files or labels changed since; leave split out to draw a new split")
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
    from tfhash.data.open_clip_art import english_stop_words, tokenize

    stop = set(english_stop_words())
    counts = collections.Counter(w for text in captions for w in set(tokenize(text, stop)))
    frequent = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    return tuple(sorted(frequent))


def bag_of_words(captions, vocabulary):
    """uint8 (n, V): 1 where a caption holds a vocabulary word."""
    from tfhash.data.open_clip_art import english_stop_words, tokenize

    stop = set(english_stop_words())
    index = {w: i for i, w in enumerate(vocabulary)}
    texts = np.zeros((len(captions), len(vocabulary)), np.uint8)
    for row, text in enumerate(captions):
        texts[row, [index[w] for w in set(tokenize(text, stop)) if w in index]] = 1
    return texts
