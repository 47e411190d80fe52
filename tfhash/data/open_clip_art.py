"""Open Clip Art: public-domain clip art as an image-text dataset, from local files.

The Debian packages `openclipart-png` and `openclipart-svg` (release 0.18)
install 8,121 drawings under `/usr/share/openclipart/{png,svg}`, the two trees
mirroring each other: `png/<category>/.../<name>.png` is the rendering of
`svg/<category>/.../<name>.svg`. Each SVG carries RDF metadata: a title
(`cc:Work/dc:title`), a description (`dc:description`, mostly empty) and
keyword tags (`dc:subject/rdf:Bag/rdf:li`).

Items. The packages store many drawings more than once, as symlinks under
several categories (1,884 symlinks; 118 gradient swatches even render to one
PNG). A duplicate in both the query and the database sets would be a free
exact match, and one drawing would carry different labels under different
paths, so paths that resolve to the same PNG or the same SVG file form one
item: 6,899 items. An item is named by its first path in sorted order, its
category is that path's top folder, and its text and labels merge those of
all its paths. Items are sorted by name. Items without a vocabulary word are
dropped, as MIRFlickr-25K drops pairs without tags: 13 (mostly Italian or
Polish titles and tags no other item shares), leaving 6,886.

Labels (multi-hot, 71). The 22 top-level category folders, plus every tag
that at least `min_label_items` (40) items carry (49 tags), after:
- dropping tags that say nothing about the picture (`label_stop_tags`:
  collection, theme, format and colour words such as `hash`, `magick`,
  `icons`, `lemon_theme_icon`, `mimetypes`), and tags that are not a single
  lowercase word (numbers such as `11`, author names such as
  `architetto francesco rollandin`);
- mapping tags that name a category (`animal`, `shape`, `geometry`,
  `transport`, ...) onto that category's label (`category_aliases`), and
  plural or spelling variants onto one tag (`tag_aliases`).
An item is labelled with each folder it is stored under, whatever its tags.

Text. Titles, descriptions and tags, tokenized: lowercased, split on
everything that is not a letter (so `lemon_theme_icon` gives three words),
English stop words (scikit-learn's list) and 1-letter tokens dropped. The
vocabulary is every word in the text of at least `min_word_items` (3) items,
at most `max_words` (1,500) of them (most frequent first), stored sorted:
1,021 words. The text
modality is the binary bag of words over it, like MIRFlickr-25K's 1,386-d
tag vectors. Tags are both text and the source of most labels, so text is
the easier modality; the 22 folder labels come from outside the text.

The vocabulary and label names are built once by `build_vocabulary` and
committed as `splits/open_clip_art_vocabulary.json`; `write_vocabulary`
rebuilds it and a test checks the rebuild equals the committed file.

Images. The PNG is composited over white (most have transparent
backgrounds), padded with white to a square keeping its aspect ratio, and
resized to `image_size` (Lanczos), RGB uint8. Decoding all items takes a
while, so `load_open_clip_art` caches the full arrays as an `.npz` file.
"""

import collections
import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import re
import threading
import xml.etree.ElementTree as ET

import numpy as np

from tfhash.io import cache_dir as default_cache_dir, save_arrays, write_json

DEBIAN_DIR = "/usr/share/openclipart"
ENV_VAR = "TFHASH_OPEN_CLIP_ART_DIR"
INSTALL_HINT = "sudo apt-get install openclipart-png openclipart-svg"
# Package data, found through the import system (a Path in a regular install).
VOCABULARY_PATH = importlib.resources.files("tfhash.data") / "splits" / "open_clip_art_vocabulary.json"
VOCABULARY_VERSION = 1
# Bump when the decoded arrays change for the same files and vocabulary.
CACHE_FORMAT_VERSION = 1

NAMESPACES = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
}

# The settings `build_vocabulary` uses; they are recorded in the committed file.
MIN_LABEL_ITEMS = 40
MIN_WORD_ITEMS = 3
MAX_WORDS = 1500
# Tags that describe the collection, the icon theme, the file or the style
# rather than what is drawn.
LABEL_STOP_TAGS = (
    "appicon", "black", "blue", "bordered", "clip_art", "clipart", "green", "gradients",
    "hash", "icon", "icons", "lemon_theme_icon", "magick", "mime-types", "mimetypes",
    "miscellany", "misc", "openclipart", "red", "simple", "special", "stock", "theme",
    "unsorted", "white",
)
# Tags that name a category: they add that category's label.
CATEGORY_ALIASES = {
    "animal": "animals", "building": "buildings", "button": "buttons", "container": "containers",
    "decoration": "decorations", "electronic": "electronics", "geometry": "shapes",
    "logo": "logos", "plant": "plants", "shape": "shapes", "signs": "signs_and_symbols",
    "tool": "tools", "transport": "transportation",
}
# Plural and spelling variants of one tag.
TAG_ALIASES = {
    "desserts": "dessert", "flags": "flag", "icecream": "ice_cream", "symbols": "symbol",
}
_LABEL_TAG_RE = re.compile(r"^[a-z][a-z_]*[a-z]$")
_WORD_SPLIT_RE = re.compile(r"[^a-z]+")


def find_local_dir(data_dir=None):
    """Returns the Open Clip Art directory (holding `png/` and `svg/`), or None.

    Args:
        data_dir: a directory to use instead of the defaults. When given it is
            the only candidate (`None` if it lacks `png/` or `svg/`).
            Otherwise `$TFHASH_OPEN_CLIP_ART_DIR`, then `/usr/share/openclipart`.
    """
    candidates = [data_dir] if data_dir else [os.environ.get(ENV_VAR), DEBIAN_DIR]
    for candidate in candidates:
        if candidate and all(os.path.isdir(os.path.join(candidate, d)) for d in ("png", "svg")):
            return os.fspath(candidate)
    return None


def _require_dir(data_dir):
    directory = find_local_dir(data_dir)
    if directory is None:
        looked = [data_dir] if data_dir else [f"${ENV_VAR}={os.environ.get(ENV_VAR)!r}", DEBIAN_DIR]
        raise FileNotFoundError(
            "Open Clip Art not found: expected a directory holding `png/` and `svg/` "
            f"sub-folders. Looked in: {', '.join(map(str, looked))}. Install the Debian "
            f"packages (`{INSTALL_HINT}`), or set ${ENV_VAR} to such a directory."
        )
    return directory


def list_paths(directory):
    """Sorted relative paths (no extension) present as both `.png` and `.svg`."""
    png_root = os.path.join(directory, "png")
    paths = []
    for root, dirs, files in os.walk(png_root):
        dirs.sort()
        for name in files:
            if name.endswith(".png"):
                rel = os.path.relpath(os.path.join(root, name[:-4]), png_root).replace(os.sep, "/")
                if os.path.isfile(os.path.join(directory, "svg", rel + ".svg")):
                    paths.append(rel)
    return sorted(paths)


def parse_metadata(path):
    """Reads title, description and tags from an SVG's RDF metadata.

    Args:
        path: an `.svg` file.

    Returns:
        dict with `title` (str), `description` (str) and `tags` (list of
        str, stripped, empty ones dropped, in file order); empty when the SVG
        has no `cc:Work` metadata.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(
            f"Malformed SVG {path}: expected well-formed XML. Received: {error}"
        ) from error
    work = root.find(".//cc:Work", NAMESPACES)
    if work is None:
        return {"title": "", "description": "", "tags": []}

    def text(tag):
        return " ".join((work.findtext(tag, default="", namespaces=NAMESPACES) or "").split())

    tags = [" ".join(li.text.split()) for li in work.findall("dc:subject/rdf:Bag/rdf:li", NAMESPACES)
            if li.text and li.text.strip()]
    return {"title": text("dc:title"), "description": text("dc:description"), "tags": tags}


def tokenize(text, stop_words):
    """Lowercase letter-only words of `text`, without stop words and 1-letter tokens."""
    return [w for w in _WORD_SPLIT_RE.split(text.lower()) if len(w) > 1 and w not in stop_words]


def count_words(texts, stop_words):
    """A Counter of how many of `texts` hold each word (`tokenize`)."""
    stop = set(stop_words)
    return collections.Counter(w for text in texts for w in set(tokenize(text, stop)))


def bag_of_words(texts, words, stop_words):
    """uint8 (len(texts), len(words)): 1 where a text holds the word (`tokenize`)."""
    index = {w: i for i, w in enumerate(words)}
    stop = set(stop_words)
    bags = np.zeros((len(texts), len(index)), np.uint8)
    for row, text in enumerate(texts):
        bags[row, [index[w] for w in set(tokenize(text, stop)) if w in index]] = 1
    return bags


def english_stop_words():
    """scikit-learn's English stop words (318), sorted."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return sorted(ENGLISH_STOP_WORDS)


@dataclasses.dataclass(frozen=True)
class Item:
    """One drawing: every path of the packages that stores it, merged.

    Attributes:
        name: the first of `paths` (relative, no extension), e.g.
            "animals/birds/baby_tux_01".
        paths: all relative paths resolving to this drawing's PNG or SVG.
        category: the top folder of `name`.
        categories: the top folders of all `paths`, sorted.
        titles, descriptions, tags: unique non-empty values over `paths`, in
            order of appearance.
    """

    name: str
    paths: tuple
    category: str
    categories: tuple
    titles: tuple
    descriptions: tuple
    tags: tuple

    @property
    def text(self):
        """Titles, descriptions and tags as one string (the raw text modality)."""
        return "\n".join(part for part in (*self.titles, *self.descriptions, ", ".join(self.tags)) if part)


def _unique(values):
    return tuple(dict.fromkeys(v for v in values if v))


def _group_paths(directory, paths):
    """Groups paths that resolve to the same PNG or SVG file (union-find)."""
    parent = {p: p for p in paths}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for ext in ("png", "svg"):
        first = {}
        for p in paths:
            target = os.path.realpath(os.path.join(directory, ext, f"{p}.{ext}"))
            if target in first:
                a, b = find(first[target]), find(p)
                parent[max(a, b)] = min(a, b)  # The root is the first path in sorted order.
            else:
                first[target] = p
    groups = collections.defaultdict(list)
    for p in paths:  # Sorted, so each group is sorted and groups come in order of their root.
        groups[find(p)].append(p)
    return list(groups.values())


def listing_fingerprint(directory):
    """sha256 of the file listing: paths, symlink grouping and file sizes."""
    digest = hashlib.sha256()
    for group in _group_paths(directory, list_paths(directory)):
        for p in group:
            sizes = [os.path.getsize(os.path.join(directory, ext, f"{p}.{ext}")) for ext in ("png", "svg")]
            digest.update(f"{group[0]}\t{p}\t{sizes[0]}\t{sizes[1]}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _all_items(directory, fingerprint):
    del fingerprint  # Only part of the cache key: a changed listing is parsed again.
    items = []
    for group in _group_paths(directory, list_paths(directory)):
        meta = [parse_metadata(os.path.join(directory, "svg", f"{p}.svg")) for p in group]
        items.append(
            Item(
                name=group[0],
                paths=tuple(group),
                category=group[0].split("/")[0],
                categories=tuple(sorted({p.split("/")[0] for p in group})),
                titles=_unique(m["title"] for m in meta),
                descriptions=_unique(m["description"] for m in meta),
                tags=_unique(t for m in meta for t in m["tags"]),
            )
        )
    return tuple(items)


def all_items(data_dir=None):
    """Every item of the packages, before dropping those with empty text.

    Args:
        data_dir: see `find_local_dir`.

    Returns:
        tuple of `Item`, sorted by name.
    """
    directory = _require_dir(data_dir)
    return _all_items(directory, listing_fingerprint(directory))


def label_tokens(item, vocabulary):
    """The label names an item carries, under the rules recorded in `vocabulary`."""
    stop = set(vocabulary["label_stop_tags"])
    out = set(item.categories)
    for tag in item.tags:
        tag = tag.lower()
        tag = vocabulary["tag_aliases"].get(tag, tag)
        if tag in stop or not _LABEL_TAG_RE.match(tag):
            continue
        tag = vocabulary["category_aliases"].get(tag, tag)
        out.add(tag)  # A category's name is its label; other tags count if frequent.
    return out


def build_vocabulary(data_dir=None):
    """Builds the vocabulary and label names from the data (deterministic).

    Args:
        data_dir: see `find_local_dir`.

    Returns:
        the dict committed as `open_clip_art_vocabulary.json`.
    """
    directory = _require_dir(data_dir)
    items = all_items(directory)
    stop_words = english_stop_words()
    config = {
        "version": VOCABULARY_VERSION,
        "categories": sorted(
            d for d in os.listdir(os.path.join(directory, "png"))
            if os.path.isdir(os.path.join(directory, "png", d))
        ),
        "min_label_items": MIN_LABEL_ITEMS,
        "label_stop_tags": sorted(LABEL_STOP_TAGS),
        "category_aliases": dict(sorted(CATEGORY_ALIASES.items())),
        "tag_aliases": dict(sorted(TAG_ALIASES.items())),
        "min_word_items": MIN_WORD_ITEMS,
        "max_words": MAX_WORDS,
        "english_stop_words": stop_words,
    }
    tag_counts = collections.Counter(t for item in items for t in label_tokens(item, config))
    categories = set(config["categories"])
    tags = sorted(t for t, n in tag_counts.items() if n >= MIN_LABEL_ITEMS and t not in categories)
    word_counts = count_words((item.text for item in items), stop_words)
    frequent = sorted((w for w, n in word_counts.items() if n >= MIN_WORD_ITEMS), key=lambda w: (-word_counts[w], w))
    config["label_names"] = config["categories"] + tags
    config["words"] = sorted(frequent[:MAX_WORDS])
    config["num_items"] = len(items)
    return config


def write_vocabulary(data_dir=None, path=VOCABULARY_PATH):
    """Rebuilds the vocabulary from the data and writes the committed JSON file."""
    vocabulary = build_vocabulary(data_dir)
    write_json(vocabulary, path, indent=1, ensure_ascii=False)
    load_vocabulary.cache_clear()
    return vocabulary


@functools.lru_cache(maxsize=2)
def load_vocabulary(path=VOCABULARY_PATH):
    """Reads the committed vocabulary file (words, label names, the rules used)."""
    with open(path, encoding="utf-8") as f:
        vocabulary = json.load(f)
    required = {"version", "categories", "label_names", "words", "english_stop_words",
                "label_stop_tags", "category_aliases", "tag_aliases"}
    if not isinstance(vocabulary, dict) or required - set(vocabulary):
        raise ValueError(
            f"{path} is not an Open Clip Art vocabulary file: expected keys {sorted(required)}. "
            f"Received: {sorted(vocabulary) if isinstance(vocabulary, dict) else type(vocabulary).__name__}"
        )
    if vocabulary["version"] != VOCABULARY_VERSION:
        raise ValueError(f"{path}: expected vocabulary version {VOCABULARY_VERSION}. Received: {vocabulary['version']}")
    return vocabulary


def _vocabulary_sha256(path=VOCABULARY_PATH):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def encode_items(items, vocabulary):
    """Binary bag-of-words (n, V) and multi-hot labels (n, C), both uint8."""
    texts = bag_of_words([item.text for item in items], vocabulary["words"], vocabulary["english_stop_words"])
    label_index = {name: i for i, name in enumerate(vocabulary["label_names"])}
    labels = np.zeros((len(items), len(label_index)), np.uint8)
    for row, item in enumerate(items):
        labels[row, [label_index[t] for t in label_tokens(item, vocabulary) if t in label_index]] = 1
    return texts, labels


def load_items(data_dir=None):
    """The dataset's items, in order: all items whose bag of words is not empty.

    Args:
        data_dir: see `find_local_dir`.

    Returns:
        `(items, texts, labels)`: tuple of `Item`, uint8 (n, V) 0/1 bag of
        words, uint8 (n, C) multi-hot labels.
    """
    items = all_items(data_dir)
    texts, labels = encode_items(items, load_vocabulary())
    keep = texts.any(axis=1)  # As MIRFlickr-25K drops pairs without text.
    return tuple(i for i, k in zip(items, keep) if k), texts[keep], labels[keep]


def load_labels(data_dir=None):
    """Multi-hot labels of all items, without decoding images (for drawing splits)."""
    return load_items(data_dir)[2]


# The packages hold 17 PNGs above 20 megapixels (up to 20,990 x 29,700); Pillow
# refuses images over ~179 megapixels as possible decompression bombs. These
# are local package files, so the limit is raised while one of them is opened,
# one at a time (a lock), which also bounds memory to one huge image.
MAX_PIXELS = 10**9
_HUGE_PIXELS = 2 * 10**7
_huge_lock = threading.Lock()


def decode_image(path, image_size):
    """A PNG as RGB uint8 `(image_size, image_size, 3)`.

    Transparent pixels become white, the picture is padded with white to a
    square (centred, aspect ratio kept) and resized with Lanczos filtering.

    Args:
        path: a `.png` file.
        image_size: side of the output.
    """
    from PIL import Image

    width, height = _png_size(path)
    if width * height <= _HUGE_PIXELS:
        return _decode(path, image_size)
    with _huge_lock:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
        try:
            return _decode(path, image_size)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _png_size(path):
    """(width, height) from a PNG's IHDR chunk, without Pillow's size checks."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file: expected the PNG signature and IHDR. Received: {head[:16]!r}")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# PNGs above this many pixels are decoded in strips (`_reduced_rgba`).
_STRIP_PIXELS = _HUGE_PIXELS
_STRIP_ROWS = 512
# Colour types whose 8-bit rows a strip can carry as they are: grey, RGB, grey + alpha, RGBA.
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _png_header(path):
    """(width, height, bit depth, colour type, interlace) from the IHDR chunk."""
    import struct

    with open(path, "rb") as f:
        head = f.read(33)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, colour, interlace


def _png_strips(path, rows):
    """A big PNG as small PNGs of `rows` rows each, in order, decoded one at a
    time: its zlib stream is inflated incrementally and each strip's filtered
    rows re-wrapped, after the row above them (stored unfiltered), which the
    row filters refer to. Yields (top row, RGBA-or-other PIL image)."""
    import io
    import struct
    import zlib

    from PIL import Image

    width, height, depth, colour, _ = _png_header(path)
    row_bytes = 1 + width * _CHANNELS[colour]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def idat_payloads():
        with open(path, "rb") as f:
            f.seek(8)
            while True:
                length, kind = struct.unpack(">I4s", f.read(8))
                data = f.read(length)
                f.seek(4, 1)
                if kind == b"IDAT":
                    yield data
                elif kind == b"IEND":
                    return

    inflate, compressed, top, above = zlib.decompressobj(), b"", 0, None
    payloads = idat_payloads()
    while top < height:
        n = min(rows, height - top)
        strip = b""
        while len(strip) < n * row_bytes:  # inflate no more than the strip: 2.7 MB of IDAT hold 2.5 GB
            compressed = compressed or next(payloads)
            strip += inflate.decompress(compressed, n * row_bytes - len(strip))
            compressed = inflate.unconsumed_tail
        prefix = b"" if above is None else b"\x00" + above
        header = struct.pack(">IIBBBBB", width, n + (above is not None), depth, colour, 0, 0, 0)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(prefix + strip, 1))
               + chunk(b"IEND", b""))
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            decoded = image if above is None else image.crop((0, 1, width, n + 1))
        above = np.asarray(decoded)[-1].tobytes()
        yield top, decoded
        top += n


def _reduced_rgba(path, size, reducing_gap=3.0):
    """What `rgba.resize(size, LANCZOS, reducing_gap=3.0)` gives for the PNG at
    `path` (the same pixels: Pillow's premultiplied box reduction, then its
    Lanczos step), without holding the full image: strips of `_STRIP_ROWS`
    rows, a multiple of the reduction factor, are reduced one at a time."""
    from PIL import Image

    width, height, _, _, _ = _png_header(path)
    fx = int(width / size[0] / reducing_gap) or 1
    fy = int(height / size[1] / reducing_gap) or 1
    rows = max(fy, _STRIP_ROWS // fy * fy)
    reduced = Image.new("RGBa", (-(-width // fx), -(-height // fy)))
    for top, strip in _png_strips(path, rows):
        reduced.paste(strip.convert("RGBA").convert("RGBa").reduce((fx, fy)), (0, top // fy))
    return reduced.resize(size, Image.Resampling.LANCZOS, box=(0, 0, width / fx, height / fy)).convert("RGBA")


def _decode(path, image_size):
    from PIL import Image

    width, height, depth, colour, interlace = _png_header(path)
    if width * height > _STRIP_PIXELS and depth == 8 and colour in _CHANNELS and not interlace:
        # Decoded whole, the two 623-megapixel drawings take 2.5 GB, and Pillow's
        # premultiplied copy for resizing as much again.
        scale = image_size / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return _on_white(_reduced_rgba(path, size), image_size)


    with Image.open(path) as image:
        image.load()
        image = eight_bit(image)  # 16-bit grey (none in the packages): rounded to 8 bits first
        # convert() copies even to the same mode: an RGBA drawing of 623
        # megapixels is 2.5 GB, so it is kept as it is (the same pixels).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    # Resize in RGBA (Pillow premultiplies alpha, so transparent pixels' colours
    # do not bleed in), then pad with transparent pixels: resizing first never
    # allocates the padded square of a huge drawing.
    scale = image_size / max(rgba.size)
    size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
    resized = rgba.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    del rgba
    return _on_white(resized, image_size)


def _on_white(resized, image_size):
    """A resized RGBA picture centred on a white `image_size` square, as RGB uint8."""
    from PIL import Image

    small = Image.new("RGBA", (image_size, image_size), (0, 0, 0, 0))
    small.paste(resized, ((image_size - resized.width) // 2, (image_size - resized.height) // 2))
    white = Image.new("RGBA", small.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, small).convert("RGB"), np.uint8)


def _decode_all(directory, items, image_size, progress=True):
    from concurrent.futures import ThreadPoolExecutor

    from tfhash.console import Progress

    images = np.empty((len(items), image_size, image_size, 3), np.uint8)

    def decode(row):
        images[row] = decode_image(os.path.join(directory, "png", f"{items[row].name}.png"), image_size)

    # Pillow releases the GIL while decoding and resizing.
    what = f"decoding Open Clip Art at {image_size} px (once; then read from the cache)"
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, Progress(what, len(items)) as shown:
        for _ in pool.map(decode, range(len(items))):
            if progress:
                shown.advance()
    return images


def _cache_path(cache_dir, image_size, key):
    cache_dir = cache_dir or default_cache_dir()
    return os.path.join(cache_dir, f"open_clip_art_{image_size}px_{key[:16]}.npz")


def _read_cache(path, key):
    """The cached arrays, or None when absent, corrupt or for other data."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return f["images"], f["texts"], f["labels"]
    except Exception:  # Absent, truncated, not an npz, wrong keys: rebuild, never trust it.
        return None


def _write_cache(path, key, images, texts, labels):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_arrays(path, key=np.array(key), images=images, texts=texts, labels=labels)
    except OSError:  # A read-only cache directory only costs speed.
        pass


def load_open_clip_art(data_dir=None, image_size=64, indices=None, cache_dir=None):
    """Loads Open Clip Art as aligned images, bags of words and multi-hot labels.

    Args:
        data_dir: directory holding `png/` and `svg/`; default
            `$TFHASH_OPEN_CLIP_ART_DIR`, then `/usr/share/openclipart`.
        image_size: side of the square RGB images.
        indices: optional positions in the item list; only those images are
            decoded (nothing is cached).
        cache_dir: where the decoded arrays of a full load are cached; default
            `$TFHASH_CACHE_DIR`, then `~/.cache/tfhash`.

    Returns:
        `(images, texts, labels)`: uint8 (n, image_size, image_size, 3),
        uint8 (n, V) 0/1 bag of words, uint8 (n, C) multi-hot labels.
    """
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer. Received: image_size={image_size!r}")
    image_size = int(image_size)
    directory = _require_dir(data_dir)
    if indices is None:
        key = hashlib.sha256(
            f"{CACHE_FORMAT_VERSION}\n{image_size}\n{listing_fingerprint(directory)}\n{_vocabulary_sha256()}".encode()
        ).hexdigest()
        path = _cache_path(cache_dir, image_size, key)
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    items, texts, labels = load_items(directory)
    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < -len(items) or indices.max() >= len(items)):
            raise ValueError(f"indices must be in [0, {len(items)}). Received: min {indices.min()}, max {indices.max()}")
        items, texts, labels = [items[i] for i in indices], texts[indices], labels[indices]
    images = _decode_all(directory, items, image_size, progress=indices is None)
    if indices is None:
        _write_cache(path, key, images, texts, labels)
    return images, texts, labels


def load_open_clip_art_images(data_dir=None, image_size=64, cache_dir=None):
    """Open Clip Art's images and multi-hot labels, for image-only methods
    (the `open_clip_art_images` protocol): `load_open_clip_art` less the texts.

    Returns:
        `(images, labels)`: uint8 (n, image_size, image_size, 3), uint8 (n, C).
    """
    images, _, labels = load_open_clip_art(data_dir, image_size=image_size, cache_dir=cache_dir)
    return images, labels


def eight_bit(image):
    """A 16- or 32-bit grey Pillow image ("I;16", "I;16B", "I", "F") as 8-bit
    "L": integers as v * 255 / 65535 rounded (clipped to 0..65535 first),
    floats clipped to 0..255 and rounded. Other modes come back unchanged."""
    from PIL import Image

    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image).clip(0, 65535).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.nan_to_num(np.asarray(image)).clip(0, 255).round().astype(np.uint8))
    return image
