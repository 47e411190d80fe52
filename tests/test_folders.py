"""Own images as data (`tfhash.data.folders`): listing, decoding, caching,
splits, list files and bad files, on real images: Fashion-MNIST arrays
written as PNG, JPEG, GIF, BMP, TIFF and WebP files in several modes, and
Open Clip Art PNGs. Expected pixels are derived by hand in the comments.
"""

import inspect
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFile

from tfhash.data import CrossModalData, RetrievalData, fashion_mnist, folders, open_clip_art
from tfhash.data.folders import (
    from_directory,
    from_list,
    from_path,
    image_batches,
    list_images,
    read_images,
)
from tfhash.data.protocols import load_split

pytestmark = pytest.mark.needs_data(  # skipped without it; failed under CI (conftest.py)
    fashion_mnist.find_local_dir() is None, reason="Debian package dataset-fashion-mnist is not installed")
CLIP_ART = "/usr/share/openclipart/png/animals"
needs_clip_art = pytest.mark.needs_data(
    open_clip_art.find_local_dir() is None,
    reason="Debian packages openclipart-png and openclipart-svg are not installed")


@pytest.fixture(scope="module")
def fashion():
    """The first 64 Fashion-MNIST images (28x28) and labels."""
    images, labels = fashion_mnist.load_fashion_mnist()
    return images[:64, ..., 0], labels[:64]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test's own cache folder (never ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(folder))
    return folder / "images"


def save(array, path, mode=None, **options):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **options)
    return path


def decode(root, paths, **options):
    """(images, positions) of all batches of `image_batches`."""
    images, positions = [], []
    for batch, where in image_batches(root, paths, **options):
        images.append(batch.numpy())
        positions.append(where.numpy())
    return np.concatenate(images), np.concatenate(positions)


def one_line_error(error, *words):
    message = str(error.value)
    assert type(error.value) is ValueError and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# ---------------------------------------------------------------------------
# Listing


def test_list_images_walks_sorted_filters_by_extension(tmp_path):
    for name in ("b/x.PNG", "a/z.jpg", "a/sub/y.jpeg", "a/sub/w.Tiff", "c.GIF", "d.png/v.webp", "e.bmp",
                 "a/notes.txt", "a/.hidden.png", ".cache/q.png", "a/png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    root, paths = list_images(tmp_path)
    # Sorted as strings ("a/sub/..." < "a/z.jpg"), any case of extension, a folder named d.png walked
    # into, text files, hidden files and hidden folders out.
    assert root == str(tmp_path)
    assert paths == ["a/sub/w.Tiff", "a/sub/y.jpeg", "a/z.jpg", "b/x.PNG", "c.GIF", "d.png/v.webp", "e.bmp"]
    # A glob: the root is its leading folders without wildcards.
    assert list_images(str(tmp_path / "a" / "**" / "*.jp*g")) == (str(tmp_path / "a"), ["sub/y.jpeg", "z.jpg"])
    assert list_images(str(tmp_path / "*" / "*.PNG")) == (str(tmp_path), ["b/x.PNG"])


def test_empty_or_missing_source_is_one_line_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError) as error:
        list_images(tmp_path / "empty")
    one_line_error(error, str(tmp_path / "empty"), "No images")
    with pytest.raises(ValueError) as error:
        list_images(str(tmp_path / "*.png"))
    one_line_error(error, str(tmp_path / "*.png"))
    with pytest.raises(ValueError) as error:
        list_images(tmp_path / "nope")
    one_line_error(error, str(tmp_path / "nope"), "no such folder")


def test_folder_symlink_loops_are_not_followed_other_links_are(tmp_path, fashion):
    save(fashion[0][0], tmp_path / "cls" / "img.png")
    os.symlink(tmp_path, tmp_path / "cls" / "up")  # a loop: back to a folder being walked
    os.symlink(tmp_path / "cls", tmp_path / "cls" / "self")  # a loop too
    os.symlink(tmp_path / "cls", tmp_path / "other")  # no loop: walked (its own loops not)
    assert list_images(tmp_path)[1] == ["cls/img.png", "other/img.png"]


def test_a_file_reached_by_several_paths_is_one_item(tmp_path, fashion):
    """A picture listed twice would be a free exact match between the queries and the database."""
    for i in range(4):
        save(fashion[0][i], tmp_path / "shop" / "bag" / f"{i}.png")
        save(fashion[0][10 + i], tmp_path / "shop" / "coat" / f"{i}.png")
    os.symlink(tmp_path / "shop" / "bag" / "0.png", tmp_path / "shop" / "coat" / "link.png")  # into another class
    os.link(tmp_path / "shop" / "bag" / "1.png", tmp_path / "shop" / "coat" / "hard.png")  # a hard link
    os.symlink(tmp_path / "shop" / "coat", tmp_path / "shop" / "more")  # a folder link: every coat path again
    assert len(list_images(tmp_path / "shop")[1]) == 16  # listed under every path
    data = from_directory(tmp_path / "shop", image_size=28, channels=1)
    # One item per file, under its first path in sorted order and that path's class: "more" is no class.
    assert data.paths == tuple(f"{c}/{i}.png" for c in ("bag", "coat") for i in range(4))
    assert data.class_names == ("bag", "coat") and data.labels.tolist() == [0] * 4 + [1] * 4
    assert len({image.tobytes() for image in data.images}) == 8
    assert data.duplicates == [("coat/hard.png", "bag/1.png"), ("coat/link.png", "bag/0.png"),
                               *[(f"more/{i}.png", f"coat/{i}.png") for i in range(4)],
                               ("more/hard.png", "bag/1.png"), ("more/link.png", "bag/0.png")]
    assert "8 duplicate paths of files listed already left out" in data.protocol.description
    # A list file: a line naming a link to a listed file, and a path listed twice. Multi-hot labels are OR-ed
    # onto the first line's item: 100 | 001 | 010 = 111.
    (tmp_path / "list.txt").write_text("shop/bag/0.png 1 0 0\nshop/coat/0.png 0 1 0\nshop/coat/link.png 0 0 1\n"
                                       "shop/bag/0.png 0 1 0\n")
    listed = from_list(tmp_path / "list.txt", image_size=28, channels=1)
    assert listed.paths == ("shop/bag/0.png", "shop/coat/0.png") and listed.labels.tolist() == [[1, 1, 1], [0, 1, 0]]
    assert listed.duplicates == [("shop/coat/link.png", "shop/bag/0.png"), ("shop/bag/0.png", "shop/bag/0.png")]
    # Class ids: the first line's.
    (tmp_path / "ids.txt").write_text("shop/bag/0.png 3\nshop/coat/0.png 1\nshop/coat/link.png 2\n")
    assert from_list(tmp_path / "ids.txt", image_size=28).labels.tolist() == [3, 1]


def test_file_names_that_are_not_utf8_are_read_cached_and_listed(tmp_path, fashion, cache):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8: a surrogate escape in the str
    bad = os.fsdecode(b"z\xff.png")
    save(fashion[0][0], tmp_path / "flat" / name)
    save(fashion[0][1], tmp_path / "flat" / "plain.png")
    (tmp_path / "flat" / bad).write_bytes(b"not a png")
    for _ in range(2):  # decoded and cached, then read from the cache
        data = from_directory(tmp_path / "flat", image_size=28, channels=1, skip_bad=True)
        assert data.paths == (name, "plain.png") and data.skipped[0][0] == bad
        np.testing.assert_array_equal(data.images[..., 0], fashion[0][:2])
    assert len(os.listdir(cache)) == 2
    data.save_split(tmp_path / "split.npz")
    again = from_directory(tmp_path / "flat", image_size=28, channels=1, skip_bad=True, split=tmp_path / "split.npz")
    np.testing.assert_array_equal(again.split.query, data.split.query)
    (tmp_path / "list.txt").write_bytes(b"flat/caf\xe9.png 0\nflat/plain.png 1\n")  # the same bytes in a list file
    listed = from_list(tmp_path / "list.txt", image_size=28, channels=1)
    assert listed.paths == ("flat/" + name, "flat/plain.png")
    np.testing.assert_array_equal(listed.images[..., 0], fashion[0][:2])


# ---------------------------------------------------------------------------
# Decoding


def test_greyscale_png_decodes_to_the_array_it_was_written_from(tmp_path, fashion):
    images = fashion[0][:8]
    paths = [os.path.basename(save(image, tmp_path / f"{i}.png")) for i, image in enumerate(images)]
    dataset = image_batches(tmp_path, paths, image_size=28, channels=1, batch_size=3)
    assert isinstance(dataset, tf.data.Dataset)
    assert [tuple(b.shape) for b, _ in dataset] == [(3, 28, 28, 1), (3, 28, 28, 1), (2, 28, 28, 1)]
    grey, positions = decode(tmp_path, paths, image_size=28, channels=1)
    assert grey.dtype == np.uint8 and positions.dtype == np.int64
    np.testing.assert_array_equal(positions, np.arange(8))
    np.testing.assert_array_equal(grey[..., 0], images)
    rgb, _ = decode(tmp_path, paths, image_size=(28, 28), channels=3)  # grey to RGB: each channel the grey
    np.testing.assert_array_equal(rgb, np.repeat(images[..., None], 3, axis=-1))


def test_modes_decode_to_hand_derived_pixels(tmp_path, fashion):
    grey = fashion[0][1]
    files = {}
    # RGBA: alpha 0 on the left half, 255 on the right. Over white, out = (rgb * a + 255 * (255 - a)) / 255:
    # 255 where a = 0, the grey itself where a = 255.
    alpha = np.zeros((28, 28), np.uint8)
    alpha[:, 14:] = 255
    files["rgba"] = save(np.dstack([grey, grey, grey, alpha]), tmp_path / "rgba.png")
    files["la"] = save(np.dstack([grey, alpha]), tmp_path / "la.png")
    on_white = np.where(alpha == 0, 255, grey)
    # Palette with index 0 transparent: indices grey // 64 (0..3) with colours (80 k, 10, 20); 0 -> white.
    palette = Image.fromarray((grey // 64).astype(np.uint8), "P")
    palette.putpalette([v for k in range(256) for v in (80 * k % 256, 10, 20)])
    palette.save(tmp_path / "p.png", transparency=0)
    files["p"] = str(tmp_path / "p.png")
    k = grey // 64
    palette_rgb = np.where((k == 0)[..., None], 255, np.stack([80 * k, np.full_like(k, 10), np.full_like(k, 20)], -1))
    # 16-bit grey: v * 255 / 65535, rounded: 257 g -> g exactly; 128 -> 0.498 -> 0; 129 -> 0.502 -> 1; 65535 -> 255.
    files["i16"] = save((grey.astype(np.uint16) * 257), tmp_path / "i16.png")
    files["i16_row"] = save(np.array([[0, 128, 129, 25700, 65535]], np.uint16), tmp_path / "i16_row.png")
    # Pure red, to grey: L = R * 299 / 1000 = 76.2 -> 76 (ITU-R 601-2 luma, as Pillow converts).
    files["red"] = save(np.full((4, 4, 3), (255, 0, 0), np.uint8), tmp_path / "red.png")
    # CMYK (0, 255, 255, 0) is red: R = 255 - C - K, G = 255 - M - K, B = 255 - Y - K (JPEG: within 3).
    Image.fromarray(np.full((16, 16, 4), (0, 255, 255, 0), np.uint8), "CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    files["cmyk"] = str(tmp_path / "cmyk.jpg")
    # Lossless formats give the grey back; TIFF and WebP as RGB.
    for ext in ("gif", "bmp", "tif", "webp"):
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        files[ext] = save(grey if ext in ("gif", "bmp") else rgb, tmp_path / f"lossless.{ext}", lossless=True)
    assert Image.open(files["i16"]).mode.startswith("I") and Image.open(files["cmyk"]).mode == "CMYK"
    assert Image.open(files["p"]).mode == "P" and Image.open(files["la"]).mode == "LA"

    def one(name, size=28, channels=3):
        return folders.decode_image(files[name], size, channels)

    np.testing.assert_array_equal(one("rgba"), np.repeat(on_white[..., None], 3, axis=-1))
    np.testing.assert_array_equal(one("la", channels=1)[..., 0], on_white)
    np.testing.assert_array_equal(one("p"), palette_rgb)
    np.testing.assert_array_equal(one("i16", channels=1)[..., 0], grey)
    np.testing.assert_array_equal(one("i16_row", size=(1, 5), channels=1).ravel(), [0, 0, 1, 100, 255])
    assert one("red", size=4, channels=1).ravel().tolist() == [76] * 16
    assert np.abs(one("cmyk", size=16).astype(int) - (255, 0, 0)).max() <= 3
    for ext in ("gif", "bmp", "tif", "webp"):
        np.testing.assert_array_equal(one(ext, channels=1)[..., 0], grey, err_msg=ext)


def test_keep_aspect_fits_and_pads_with_zeros_centred(tmp_path):
    save(np.full((10, 20, 3), 255, np.uint8), tmp_path / "wide.png")  # 20 wide, 10 high
    save(np.full((40, 10, 3), 255, np.uint8), tmp_path / "tall.png")  # 10 wide, 40 high
    # EXIF orientation 6 (rotated 90 degrees): stored 20 wide x 10 high, shown 10 wide x 20 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((10, 20, 3), 255, np.uint8)).save(tmp_path / "turned.jpg", exif=exif, quality=95)

    def one(name, size, keep_aspect=True):
        return folders.decode_image(str(tmp_path / name), size, channels=1, keep_aspect=keep_aspect)[..., 0]

    # wide into 16x16: scale min(16/20, 16/10) = 0.8 -> 16 x 8, top (16 - 8) // 2 = 4: rows 4..11.
    expected = np.zeros((16, 16), np.uint8)
    expected[4:12] = 255
    np.testing.assert_array_equal(one("wide.png", 16), expected)
    np.testing.assert_array_equal(one("wide.png", 16, keep_aspect=False), np.full((16, 16), 255))  # squashed
    # tall into (height 8, width 16): scale min(16/10, 8/40) = 0.2 -> 2 wide x 8 high, left (16 - 2) // 2 = 7.
    expected = np.zeros((8, 16), np.uint8)
    expected[:, 7:9] = 255
    np.testing.assert_array_equal(one("tall.png", (8, 16)), expected)
    # turned, shown 10 x 20, into 16x16: scale 0.8 -> 8 wide x 16 high, left 4: columns 4..11 (JPEG: >= 250).
    turned = one("turned.jpg", 16)
    assert (turned[:, 4:12] >= 250).all() and (turned[:, :4] == 0).all() and (turned[:, 12:] == 0).all()


def test_keep_aspect_odd_margins_and_thin_images(tmp_path):
    """The geometry PIL.ImageOps.pad would change: it centres with round() (3.5 -> 4) and shrinks a thin
    image's side to 0 pixels (nothing drawn)."""
    save(np.full((10, 20), 255, np.uint8), tmp_path / "wide.png")
    save(np.full((1, 200), 255, np.uint8), tmp_path / "line.png")

    def one(name, size):
        return folders.decode_image(str(tmp_path / name), size, channels=1, keep_aspect=True)[..., 0]

    # wide (20 x 10) into height 15, width 16: scale min(16/20, 15/10) = 0.8 -> 16 x 8; a margin of 7 rows:
    # 7 // 2 = 3 above, 4 below.
    expected = np.zeros((15, 16), np.uint8)
    expected[3:11] = 255
    np.testing.assert_array_equal(one("wide.png", (15, 16)), expected)
    # line (200 x 1) into 16 x 16: scale 0.08 -> 16 x 0.08, kept 1 row high; a margin of 15: row 15 // 2 = 7.
    expected = np.zeros((16, 16), np.uint8)
    expected[7] = 255
    np.testing.assert_array_equal(one("line.png", 16), expected)


def test_transparency_is_composited_after_resizing(tmp_path, monkeypatch):
    """Composited at the output size, not at the file's (a full-size copy or two less)."""
    rgba = np.zeros((300, 400, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, transparent on the left half, opaque on the right
    rgba[:, 200:, 3] = 255
    save(rgba, tmp_path / "half.png")
    sizes, composite = [], Image.alpha_composite
    monkeypatch.setattr(Image, "alpha_composite", lambda under, over: sizes.append(over.size) or composite(under, over))
    out = folders.decode_image(tmp_path / "half.png", (12, 16)).astype(int)
    assert sizes == [(16, 12)]
    # White on the left, red on the right; between them, white and red mixed: R stays 255, G = B fall.
    assert (out[:, :6] == 255).all() and (out[:, 10:] == (255, 0, 0)).all() and (out[..., 0] == 255).all()
    assert (out[..., 1] == out[..., 2]).all() and (np.diff(out[..., 1], axis=1) <= 0).all()


def test_huge_images_decode_one_at_a_time(tmp_path, fashion, monkeypatch):
    """Above HUGE_PIXELS, one image's pixels in memory at a time: the decoding threads take turns."""
    paths = [os.path.basename(save(fashion[0][i], tmp_path / f"{i}.png")) for i in range(8)]
    monkeypatch.setattr(folders, "DECODE_CHUNK", 1)
    monkeypatch.setattr(folders, "DECODE_THREADS", 4)
    counting, running, most, load = threading.Lock(), [0], [0], ImageFile.ImageFile.load

    def slow_load(image):
        with counting:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        try:
            return load(image)
        finally:
            with counting:
                running[0] -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)

    def most_at_once(huge_pixels):
        monkeypatch.setattr(folders, "HUGE_PIXELS", huge_pixels)
        most[0] = 0
        images, _ = decode(tmp_path, paths, image_size=28, channels=1)
        np.testing.assert_array_equal(images[..., 0], fashion[0][:8])
        return most[0]

    assert most_at_once(28 * 28 - 1) == 1  # every image huge
    assert most_at_once(28 * 28) > 1  # none: decoded side by side


def test_sixteen_bit_grey_rounds_alike_in_both_decoders(tmp_path):
    # 25900 / 257 = 100.78: 101 rounded (Open Clip Art's decoder truncated it to 100; its packages hold no
    # 16-bit grey PNG, so its arrays do not change).
    save(np.full((8, 8), 25900, np.uint16), tmp_path / "grey16.png")
    assert folders.decode_image(tmp_path / "grey16.png", 8, channels=1).ravel().tolist() == [101] * 64
    assert open_clip_art.decode_image(str(tmp_path / "grey16.png"), 8).ravel().tolist() == [101] * 192


@needs_clip_art
def test_clip_art_transparency_composited_on_white(tmp_path):
    for name in ("bugs/bee.png", "dragon_head_nicu_buculei_01.png"):  # RGBA; palette with an alpha per index
        rgba = np.asarray(Image.open(os.path.join(CLIP_ART, name)).convert("RGBA")).astype(np.int64)
        rgb, a = rgba[..., :3], rgba[..., 3:]
        expected = (rgb * a + 255 * (255 - a) + 127) // 255  # over white, rounded
        decoded = folders.decode_image(os.path.join(CLIP_ART, name), rgba.shape[:2], channels=3)
        assert np.abs(decoded.astype(np.int64) - expected).max() <= 1, name
        assert (a == 0).any() and (decoded[(a == 0)[..., 0]] == 255).all(), name


# ---------------------------------------------------------------------------
# Bad files


def png_bytes(width, height, idat=b""):
    """A PNG of an 8-bit grey header claiming `width` x `height` (no pixels unless `idat`)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_bad_files(folder, fashion):
    """One file of each kind of bad, and the words its error says."""
    good = save(fashion[0][2], folder / "good.png")
    with open(good, "rb") as f:
        whole = f.read()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "text.jpg").write_text("not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    (folder / "huge.png").write_bytes(png_bytes(30000, 30000))  # 900 megapixels claimed, a few bytes stored
    os.symlink(folder / "gone.png", folder / "dangling.png")
    return {"truncated.png": "truncated or corrupt PNG", "text.jpg": "not an image", "empty.png": "empty file",
            "loop_a.png": "symbolic link loop", "loop_b.png": "symbolic link loop", "huge.png": "too large",
            "dangling.png": "dangling symbolic link"}


def test_each_bad_file_is_one_line_naming_it(tmp_path, fashion):
    bad = write_bad_files(tmp_path, fashion)
    for name, words in bad.items():
        with pytest.raises(ValueError) as error:
            decode(tmp_path, ["good.png", name], image_size=28)
        one_line_error(error, str(tmp_path / name), words, "skip_bad=True")
        with pytest.raises(ValueError) as error:
            read_images(tmp_path, ["good.png", name, "good.png"], image_size=28, cache=False)
        one_line_error(error, str(tmp_path / name), words)
    with pytest.raises(ValueError) as error:
        decode(tmp_path, ["good.png", "missing.png"], image_size=28)
    one_line_error(error, str(tmp_path / "missing.png"), "no such file")


def test_a_bad_file_is_one_line_and_tensorflow_logs_nothing(tmp_path, fashion):
    """Iterated in Python, the dataset raises the decoder's ValueError itself: TensorFlow, which logs a
    failing op's error with its Python traceback (twice), never sees it. In a fresh process, TensorFlow's
    warnings on."""
    save(fashion[0][0], tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    script = ("import sys; from tfhash.data.folders import image_batches\n"
              "try:\n"
              f"    list(image_batches({str(tmp_path)!r}, ['good.png', 'bad.png'], image_size=8))\n"
              "except ValueError as error:\n"
              "    print('ValueError:', error, file=sys.stderr)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"}  # warnings and errors shown
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert f"ValueError: {tmp_path / 'bad.png'}: not an image" in done.stderr
    assert "Traceback" not in done.stderr and "INVALID_ARGUMENT" not in done.stderr, done.stderr


def test_huge_header_refused_by_our_limit_where_pillow_lifted_its_own(tmp_path, monkeypatch):
    (tmp_path / "huge.png").write_bytes(png_bytes(30000, 30000))
    (tmp_path / "big.png").write_bytes(png_bytes(20000, 10001))  # 200.02 megapixels: just above MAX_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for name, size in (("huge.png", "30000x30000 pixels (900 megapixels)"), ("big.png", "20000x10001 pixels")):
        with pytest.raises(ValueError) as error:
            read_images(tmp_path, [name], image_size=8, cache=False)
        one_line_error(error, str(tmp_path / name), size, "MAX_PIXELS (200 megapixels)")


def test_skip_bad_leaves_bad_files_out_and_counts_them(tmp_path, fashion):
    bad = write_bad_files(tmp_path / "cls", fashion)
    for i in range(3):
        save(fashion[0][10 + i], tmp_path / "cls" / f"z{i}.png")
    root, paths = list_images(tmp_path)
    assert len(paths) == 11  # 4 good, 7 bad (the dangling and looping links listed too)
    dataset = image_batches(root, paths, image_size=28, channels=1, skip_bad=True, batch_size=2)
    positions = np.concatenate([p.numpy() for _, p in dataset])
    assert [paths[i] for i in positions] == ["cls/good.png", "cls/z0.png", "cls/z1.png", "cls/z2.png"]
    # The 7 bad files in path order, each once, also after iterating again.
    for _ in range(2):
        assert [path for path, _ in dataset.skipped] == sorted(f"cls/{name}" for name in bad)
        positions = np.concatenate([p.numpy() for _, p in dataset])
    for path, reason in dataset.skipped:
        assert bad[path[4:]] in reason and "\n" not in reason
    data = from_directory(tmp_path, image_size=28, channels=1, skip_bad=True)
    assert data.paths == ("cls/good.png", "cls/z0.png", "cls/z1.png", "cls/z2.png") and len(data.skipped) == 7
    np.testing.assert_array_equal(data.images[1:, ..., 0], fashion[0][10:13])
    assert "7 unreadable files skipped" in data.protocol.description


# ---------------------------------------------------------------------------
# Folders as retrieval data


KINDS = ("L.png", "RGB.jpg", "RGBA.png", "P.png", "I;16.png", "CMYK.jpg", "RGB.bmp", "L.gif")


def write_class_folders(folder, fashion, per_class=(10, 9, 1)):
    """Class folders of Fashion-MNIST images in the KINDS above, mixed sizes
    (28 px, and 40x30 / 30x40 for the JPEGs); the last class one image."""
    images, labels = fashion
    names = ("bag", "coat", "trouser")
    i = 0
    for name, count in zip(names, per_class):
        for j in range(count):
            mode, ext = KINDS[i % len(KINDS)].split(".")
            grey = images[i]
            if mode == "RGBA":
                array = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
            elif mode == "I;16":
                array = grey.astype(np.uint16) * 257
            else:
                array = grey
            image = Image.fromarray(array)
            if ext == "jpg":
                image = image.resize((40, 30) if j % 2 else (30, 40))
            if mode in ("RGB", "P", "CMYK"):
                image = image.convert(mode)
            sub = "winter/" if name == "coat" and j == 0 else ""  # nested folders belong to their class
            os.makedirs(folder / name / sub, exist_ok=True)
            image.save(folder / name / f"{sub}{j:02d}.{ext}")
            i += 1
    return names


def test_class_folders_give_class_ids_and_a_seeded_split(tmp_path, fashion):
    names = write_class_folders(tmp_path / "shop", fashion)
    data = from_directory(tmp_path / "shop", image_size=32)
    assert isinstance(data, RetrievalData) and isinstance(data, folders.ImageData)
    assert data.images.shape == (20, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names == names and data.labels.dtype == np.int32
    assert data.paths[:3] == ("bag/00.png", "bag/01.jpg", "bag/02.png") and data.paths[10] == "coat/01.png"
    assert data.paths[-2:] == ("coat/winter/00.png", "trouser/00.png")  # "coat/w" sorts after "coat/0"
    np.testing.assert_array_equal(data.labels, [0] * 10 + [1] * 9 + [2])
    assert data.root == str(tmp_path / "shop") and data.skipped == []
    protocol = data.protocol
    assert protocol.name == "images:shop" and protocol.modalities == ("image",) and not protocol.cross_modal
    assert protocol.loader == "tfhash.data.folders:from_path" and protocol.committed is False
    assert "folder" in protocol.description and "20 images (3 classes)" in protocol.description
    # Defaults: num_query = min(1000, max(1, 20 // 10)) = 2; the database is the other 18; num_train = the 18
    # less a validation share of min(500, max(1, 18 // 10)) = 1: 17.
    split = data.split
    assert (len(split.query), len(split.train), len(split.database)) == (2, 17, 18)
    assert (protocol.num_query, protocol.num_train) == (2, 17)
    assert not set(split.query) & set(split.database) and set(split.train) <= set(split.database)
    assert sorted([*split.query, *split.database]) == list(range(20))
    images, labels = data.subset("query")
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == data.labels[split.query].tolist()
    # The same seed draws the same split; another seed another one.
    again = from_directory(tmp_path / "shop", image_size=32, num_query=5, num_train=10, seed=3)
    other = from_directory(tmp_path / "shop", image_size=32, num_query=5, num_train=10, seed=4)
    assert (len(again.split.query), len(again.split.train), len(again.split.database)) == (5, 10, 15)
    assert set(again.split.train) < set(again.split.database)
    np.testing.assert_array_equal(again.split.query,
                                  from_directory(tmp_path / "shop", image_size=32, num_query=5, num_train=10,
                                                 seed=3).split.query)
    assert again.split.query.tolist() != other.split.query.tolist()


@pytest.mark.parametrize("sizes, words", [
    ({"num_query": 0}, "num_query must be in [1, 19]"),
    ({"num_query": 20}, "num_query must be in [1, 19]"),
    ({"num_query": 5, "num_train": 16}, "num_train must be in [1, 15]"),
    ({"num_train": 0}, "num_train must be in [1, 18]"),
    ({"num_query": 2.5}, "num_query must be an int"),
])
def test_split_sizes_out_of_range_are_one_line(tmp_path, fashion, sizes, words):
    write_class_folders(tmp_path / "shop", fashion)
    with pytest.raises(ValueError) as error:
        from_directory(tmp_path / "shop", image_size=8, **sizes)
    one_line_error(error, words)


def test_unlabelled_folder_and_mixed_layout(tmp_path, fashion):
    for i in range(4):
        save(fashion[0][i], tmp_path / "flat" / f"{i}.png")
    data = from_directory(tmp_path / "flat", image_size=28, channels=1)
    assert data.labels is None and data.class_names is None and "unlabelled" in data.protocol.description
    images, labels = data.subset("train")
    # 4 images: 1 query; the 3 others less a validation share of max(1, 3 // 10) = 1: 2 to train on.
    assert labels is None and images.shape == (2, 28, 28, 1)
    save(fashion[0][5], tmp_path / "flat" / "cls" / "5.png")
    with pytest.raises(ValueError) as error:
        from_directory(tmp_path / "flat", image_size=28)
    one_line_error(error, str(tmp_path / "flat"), "mixes images", "cls/")
    with pytest.raises(ValueError) as error:
        from_path(tmp_path / "nothing")
    one_line_error(error, str(tmp_path / "nothing"))


def test_split_file_is_reused_and_refused_after_a_change(tmp_path, fashion):
    write_class_folders(tmp_path / "shop", fashion)
    data = from_directory(tmp_path / "shop", image_size=16, num_query=4, seed=7)
    data.save_split(tmp_path / "split.npz")
    assert load_split(tmp_path / "split.npz").query.tolist() == data.split.query.tolist()  # protocols' format
    again = from_directory(tmp_path / "shop", image_size=16, split=tmp_path / "split.npz")
    for part in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(again.split, part), getattr(data.split, part))
    assert again.split.seed == 7 and again.options["seed"] == 7
    with pytest.raises(ValueError) as error:
        from_directory(tmp_path / "shop", image_size=16, num_query=5, split=tmp_path / "split.npz")
    one_line_error(error, "num_query=5 disagrees")
    save(fashion[0][30], tmp_path / "shop" / "bag" / "new.png")
    with pytest.raises(ValueError) as error:
        from_directory(tmp_path / "shop", image_size=16, split=tmp_path / "split.npz")
    one_line_error(error, str(tmp_path / "split.npz"), "expected the 20 files the split was drawn on",
                   "Received: 21 files", "restore the files the split was drawn on, or train again")
    os.remove(tmp_path / "shop" / "bag" / "new.png")
    os.rename(tmp_path / "shop" / "bag" / "00.png", tmp_path / "shop" / "coat" / "00.png")  # a label changed
    with pytest.raises(ValueError) as error:
        from_directory(tmp_path / "shop", image_size=16, split=tmp_path / "split.npz")
    one_line_error(error, "expected the 20 files", "Received: 20 files")
    # A list file: the same paths with one label changed.
    (tmp_path / "list.txt").write_text("".join(f"shop/bag/0{i}.jpg {i % 2}\n" for i in (1, 5, 9)))
    from_list(tmp_path / "list.txt", image_size=8).save_split(tmp_path / "list_split.npz")
    (tmp_path / "list.txt").write_text("".join(f"shop/bag/0{i}.jpg {i % 3}\n" for i in (1, 5, 9)))
    with pytest.raises(ValueError) as error:
        from_list(tmp_path / "list.txt", image_size=8, split=tmp_path / "list_split.npz")
    one_line_error(error, "expected the 3 files the split was drawn on", "Received: 3 files")


def test_options_load_the_same_data_again(tmp_path, fashion):
    write_class_folders(tmp_path / "shop", fashion)
    data = from_directory(tmp_path / "shop", image_size=(12, 16), channels=1, keep_aspect=True, seed=5)
    options = json.loads(json.dumps(data.options))  # JSON-able
    # The source under SOURCE_OPTION, the name of from_path's first argument (what `from_path(**options)` needs).
    assert options[folders.SOURCE_OPTION] == str(tmp_path / "shop")
    assert next(iter(inspect.signature(from_path).parameters)) == folders.SOURCE_OPTION
    assert "progress" not in options  # how it is shown is no part of the data
    again = from_path(**options)
    assert again.images.shape == (20, 12, 16, 1) and again.paths == data.paths
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.split.query, data.split.query)
    np.testing.assert_array_equal(again.labels, data.labels)


# ---------------------------------------------------------------------------
# Cache


def test_cache_is_written_once_then_mapped_and_keyed_by_the_files(tmp_path, fashion, cache, monkeypatch):
    paths = [os.path.basename(save(fashion[0][i], tmp_path / f"{i}.png")) for i in range(6)]
    images, kept = read_images(tmp_path, paths, image_size=28, channels=1)
    assert sorted(os.listdir(cache))[0].endswith(".kept.npz") and len(os.listdir(cache)) == 2
    np.testing.assert_array_equal(images[..., 0], fashion[0][:6])
    np.testing.assert_array_equal(kept, np.arange(6))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(folders, "decode_image", no_decoding)
        mapped, kept = read_images(tmp_path, paths, image_size=28, channels=1)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, images)
    # Another file content (and time) for 3.png: a new key, decoded again; the older entry removed.
    save(fashion[0][40], tmp_path / "3.png")
    os.utime(tmp_path / "3.png", ns=(1, 1))
    changed, _ = read_images(tmp_path, paths, image_size=28, channels=1)
    np.testing.assert_array_equal(changed[3, ..., 0], fashion[0][40])
    assert len(os.listdir(cache)) == 2
    plain, _ = read_images(tmp_path, paths, image_size=28, channels=1, cache=False)
    assert not isinstance(plain, np.memmap)
    np.testing.assert_array_equal(plain, changed)


def test_cache_sees_a_rewrite_of_the_same_size_and_modification_time(tmp_path, fashion):
    """As a tool restoring times (or a coarse clock) leaves it: the change time (which no tool can set) and
    the inode are in the key too."""
    paths = [os.path.basename(save(fashion[0][i], tmp_path / f"{i}.bmp")) for i in range(3)]  # BMP: size by shape
    read_images(tmp_path, paths, image_size=28, channels=1)
    before = os.stat(tmp_path / "1.bmp")
    save(fashion[0][7], tmp_path / "1.bmp")  # rewritten in place: other pixels, the same size
    os.utime(tmp_path / "1.bmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(tmp_path / "1.bmp")
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    images, _ = read_images(tmp_path, paths, image_size=28, channels=1)
    np.testing.assert_array_equal(images[1, ..., 0], fashion[0][7])


def test_progress_on_a_terminal_by_default_never_when_off(tmp_path, fashion, monkeypatch):
    paths = [os.path.basename(save(fashion[0][i], tmp_path / f"{i}.png")) for i in range(3)]
    monkeypatch.setattr(folders, "PROGRESS_MIN_FILES", 3)

    class Stderr(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    def shown(tty, read=read_images, *args, **options):
        with monkeypatch.context() as patch:
            patch.setattr(sys, "stderr", Stderr(tty))
            read(*args, image_size=28, cache=False, **options)
            return sys.stderr.getvalue()

    what = f"decoding 3 images of {tmp_path} at 28x28"
    assert shown(True, read_images, tmp_path, paths) == f"\r{what}: 3/3\n"  # default: on a terminal, redrawn
    assert shown(False, read_images, tmp_path, paths) == ""  # default: not in a log
    assert shown(False, read_images, tmp_path, paths, progress=True) == f"{what}: 3/3\n"  # a line per tenth
    assert shown(True, read_images, tmp_path, paths, progress=False) == ""  # the CLI's --quiet
    assert shown(True, from_directory, tmp_path, progress=False) == ""
    assert shown(True, read_images, tmp_path, paths[:2]) == ""  # fewer files than PROGRESS_MIN_FILES


def test_cache_of_skipped_files_and_no_half_cache_on_failure(tmp_path, fashion, cache):
    paths = [os.path.basename(save(fashion[0][i], tmp_path / f"{i}.png")) for i in range(5)]
    (tmp_path / "bad.png").write_text("not a png")
    paths.insert(2, "bad.png")
    with pytest.raises(ValueError):
        read_images(tmp_path, paths, image_size=28, channels=1)
    assert not cache.exists() or os.listdir(cache) == []  # neither a cache file nor a temporary left
    for _ in range(2):  # written, then mapped: the rows of the 5 good files, the bad one's position missing
        images, kept = read_images(tmp_path, paths, image_size=28, channels=1, skip_bad=True)
        assert isinstance(images, np.memmap) and images.shape == (5, 28, 28, 1)
        np.testing.assert_array_equal(kept, [0, 1, 3, 4, 5])
        np.testing.assert_array_equal(images[..., 0], fashion[0][:5])
    data = from_directory(tmp_path, image_size=28, channels=1, skip_bad=True)
    assert data.skipped == [("bad.png", "not an image Pillow can read (the file starts with b'not a pn')")]


# ---------------------------------------------------------------------------
# List files


def test_list_file_multi_hot_class_ids_tabs_and_malformed_lines(tmp_path, fashion):
    for i in range(6):
        save(fashion[0][i], tmp_path / "img" / f"{i}.png")
    save(fashion[0][6], tmp_path / "img" / "with space.png")
    (tmp_path / "multi.txt").write_text(
        "# DeepHash-pytorch's format\n\n"
        + "".join(f"img/{i}.png {i % 2} {1 - i % 2} 1\n" for i in range(5))
        + f"{tmp_path}/img/5.png 0 0 1\n"  # absolute
        + "img/with space.png\t1 1 0\n")  # tab-separated: a path with a space
    data = from_list(tmp_path / "multi.txt", image_size=28, channels=1)
    assert data.labels.dtype == np.uint8 and data.labels.shape == (7, 3)
    np.testing.assert_array_equal(data.labels[:2], [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(data.labels[5:], [[0, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(data.images[6, ..., 0], fashion[0][6])
    assert data.paths[6] == "img/with space.png" and data.class_names is None
    assert "list" in data.protocol.description and "3 multi-hot labels" in data.protocol.description
    (tmp_path / "ids.txt").write_text("".join(f"img/{i}.png {i % 3}\n" for i in range(6)))
    ids = from_path(tmp_path / "ids.txt", image_size=28)
    assert ids.labels.dtype == np.int32 and ids.labels.tolist() == [0, 1, 2, 0, 1, 2]
    for lines, words in (("img/0.png 1 0\nimg/1.png 0 2\n", "bad.txt:2: expected 0/1 multi-hot values"),
                         ("img/0.png 1 0\n\nimg/1.png 1\n", "bad.txt:3: expected 2 label values as on line 1"),
                         ("img/0.png cat\n", "bad.txt:1: expected integer labels"),
                         ("img/0.png\t1\tcap\textra\n", "bad.txt:1: expected at most 3 tab-separated fields"),
                         ("img/0.png -1\n", "bad.txt:1: expected a class id >= 0"),
                         ("# nothing\n", "no item")):
        (tmp_path / "bad.txt").write_text(lines)
        with pytest.raises(ValueError) as error:
            from_list(tmp_path / "bad.txt", image_size=8)
        one_line_error(error, words)
    (tmp_path / "missing.txt").write_text("img/0.png 0\nimg/1.png 1\nimg/nope.png 1\nimg/2.png 0\n")
    with pytest.raises(ValueError) as error:
        from_list(tmp_path / "missing.txt", image_size=8)
    one_line_error(error, str(tmp_path / "img" / "nope.png"), "no such file")
    data = from_list(tmp_path / "missing.txt", image_size=8, skip_bad=True)
    assert data.paths == ("img/0.png", "img/1.png", "img/2.png") and data.labels.tolist() == [0, 1, 0]
    assert data.skipped == [("img/nope.png", "no such file")]


def test_class_ids_become_one_hot_rows_without_an_identity_matrix():
    ids = np.array([0, 2999, 7])
    tracemalloc.start()
    try:
        rows = folders._one_hot(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 3 rows of 3,000 bytes (9 kB); np.eye(3000)[ids] would allocate 9 MB first.
    assert rows.dtype == np.uint8 and rows.shape == (3, 3000) and peak < 100_000
    assert rows.sum() == 3 and rows.argmax(axis=1).tolist() == [0, 2999, 7]


def caption(i):
    """Item i's caption: "photo" in all, "shoe" in even items, a word of its own (letters only), stop words."""
    return f"A photo of the {'shoe ' if i % 2 == 0 else ''}uniq{chr(97 + i // 26)}{chr(97 + i % 26)} x 42"


def test_list_captions_vocabulary_from_the_training_items_only(tmp_path, fashion):
    for i in range(20):
        save(fashion[0][i], tmp_path / f"{i}.png")
    (tmp_path / "captions.txt").write_text("".join(f"{i}.png\t{fashion[1][i]}\t{caption(i)}\n" for i in range(20)))
    data = from_list(tmp_path / "captions.txt", image_size=28, num_query=4, num_train=10, seed=1)
    assert isinstance(data, CrossModalData) and isinstance(data, folders.ImageTextData)
    assert data.protocol.modalities == ("image", "text") and data.protocol.cross_modal
    train = set(data.split.train.tolist())
    assert len(train) == 10 and len(set(data.split.database.tolist()) - train) == 6
    # Words: "photo", "shoe" and the 10 training items' own words; not "of", "the" (stop words), "a", "x"
    # (one letter), "42" (not letters), nor the 4 queries' and 6 other database items' own words.
    own = {f"uniq{chr(97 + i // 26)}{chr(97 + i % 26)}": i for i in range(20)}
    assert set(data.vocabulary) == {"photo", "shoe"} | {w for w, i in own.items() if i in train}
    assert list(data.vocabulary) == sorted(data.vocabulary) and data.texts.dtype == np.uint8
    column = {w: c for c, w in enumerate(data.vocabulary)}
    assert data.texts.shape == (20, 12) and data.texts[:, column["photo"]].all()
    np.testing.assert_array_equal(data.texts[:, column["shoe"]], np.arange(20) % 2 == 0)
    assert data.texts.sum(axis=1).tolist() == [1 + (i % 2 == 0) + (i in train) for i in range(20)]
    images, texts, labels = data.subset("query")
    # Image-text data's labels are multi-hot rows (as CrossModalData's): these class ids become one-hot.
    assert images.shape == (4, 28, 28, 3) and texts.shape == (4, 12) and labels.dtype == np.uint8
    assert labels.shape == (4, 10) and (labels.sum(axis=1) == 1).all()
    # Most frequent first: "photo" (10 training items), "shoe" (5), then the own words (1 each) by word.
    small = from_list(tmp_path / "captions.txt", image_size=28, num_query=4, num_train=10, seed=1,
                      vocabulary_size=3)
    first_own = min(w for w, i in own.items() if i in train)
    assert small.vocabulary == tuple(sorted(("photo", "shoe", first_own)))
    # The split file keeps the vocabulary; loading with it gives the same texts.
    small.save_split(tmp_path / "split.npz")
    again = from_list(tmp_path / "captions.txt", image_size=28, vocabulary_size=3, split=tmp_path / "split.npz")
    assert again.vocabulary == small.vocabulary
    np.testing.assert_array_equal(again.texts, small.texts)
    # captions=False: the images alone.
    assert type(from_list(tmp_path / "captions.txt", image_size=28, captions=False)) is folders.ImageData


def test_list_captions_from_files_beside_the_images(tmp_path, fashion):
    for i in range(6):
        save(fashion[0][i], tmp_path / f"{i}.jpg")
        (tmp_path / f"{i}.txt").write_text(caption(i))
    (tmp_path / "list.txt").write_text("".join(f"{i}.jpg 1 {i % 2}\n" for i in range(6)))
    data = from_list(tmp_path / "list.txt", captions="files", image_size=28, num_query=1, seed=2)
    assert "photo" in data.vocabulary and data.texts.shape[0] == 6 and data.labels.shape == (6, 2)
    os.remove(tmp_path / "4.txt")
    with pytest.raises(ValueError) as error:
        from_list(tmp_path / "list.txt", captions="files", image_size=28)
    one_line_error(error, str(tmp_path / "4.txt"), str(tmp_path / "4.jpg"))
    data = from_list(tmp_path / "list.txt", captions="files", image_size=28, skip_bad=True)
    assert len(data.paths) == 5 and data.skipped[0][0] == "4.jpg" and "4.txt" in data.skipped[0][1]
