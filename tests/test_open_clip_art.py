"""Open Clip Art: items, labels, vocabulary, committed files, loader, cache, TFDS.

Golden values were read by hand from the Debian files (openclipart 0.18,
`ls -l` for the symlinks, the SVGs' RDF metadata for titles and tags).
"""

import os
import shutil

import numpy as np
import pytest

from tfhash.data import open_clip_art, protocols
from tfhash.data.open_clip_art import load_open_clip_art

needs_open_clip_art = pytest.mark.needs_data(  # skipped without it; failed under CI (conftest.py)
    open_clip_art.find_local_dir() is None,
    reason="Debian packages openclipart-png and openclipart-svg are not installed",
)

# Three items, by name: position in the item list, words on, labels on.
GOLDEN = {
    # Stored under education/, and as symlinks (PNG) or copies (SVG) under
    # science/ and signs_and_symbols/: one item with three category labels.
    # Title "Chemical Science Experience", tags hash, science, education,
    # experiences, chemical, signs_and_symbols. "chemical" and "experience(s)"
    # are in fewer than 3 items' text, so not in the vocabulary; "hash" is a
    # word but a stop-listed label; signs_and_symbols splits into two words.
    "education/chemical_science_experience_01": (
        2216,
        ["education", "hash", "science", "signs", "symbols"],
        ["education", "science", "signs_and_symbols"],
    ),
    # Title "R16 sibmission" (sic; "r" has one letter, "16" none), tags food,
    # fruit. "fruit" is a frequent tag, so a label beside the category.
    "food/fruit/pear_simple_bw": (2500, ["food", "fruit", "sibmission"], ["food", "fruit"]),
    # Title "Bretagne", description "Armoiries de Bretagne - Flag from Britain",
    # tags armoiries, europe, france, flag, sign. "from" is a stop word,
    # "armoiries", "bretagne" and "de" are rare; four tags are frequent labels.
    "signs_and_symbols/flags/europe/france/bretagne_01": (
        5691,
        ["britain", "europe", "flag", "france", "sign"],
        ["signs_and_symbols", "europe", "flag", "france", "sign"],
    ),
}


def _copy_items(names, root):
    """Copies items' PNG and SVG (following symlinks) into a tiny local tree."""
    source = open_clip_art.find_local_dir()
    for name in names:
        for ext in ("png", "svg"):
            target = root / ext / f"{name}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(source, ext, f"{name}.{ext}"), target)
    return str(root)


@needs_open_clip_art
def test_golden_items_words_and_labels():
    items, texts, labels = open_clip_art.load_items()
    vocabulary = open_clip_art.load_vocabulary()
    names = [item.name for item in items]
    for name, (position, words, label_names) in GOLDEN.items():
        assert names.index(name) == position
        assert [vocabulary["words"][j] for j in np.flatnonzero(texts[position])] == words
        on = [vocabulary["label_names"][j] for j in np.flatnonzero(labels[position])]
        assert on == label_names  # label_names: the 22 categories first, then tags, each sorted.
    chemical = items[2216]
    assert chemical.titles == ("Chemical Science Experience",)
    assert chemical.paths == (
        "education/chemical_science_experience_01",
        "science/chemical_science_experience_01",
        "signs_and_symbols/chemical_science_experience_01",
    )
    assert chemical.category == "education"
    assert items[5691].descriptions == ("Armoiries de Bretagne - Flag from Britain",)
    # "lam" (title and tag) is in no other item's text: empty bag of words, dropped.
    assert "unsorted/lam_arn_01" not in names


@needs_open_clip_art
def test_item_counts_and_category_labels():
    directory = open_clip_art.find_local_dir()
    assert len(open_clip_art.list_paths(directory)) == 8121
    everything = open_clip_art.all_items()
    assert len(everything) == 6899  # 8,121 paths, symlinked duplicates merged.
    assert sum(len(item.paths) for item in everything) == 8121
    items, texts, labels = open_clip_art.load_items()
    assert len(items) == 6886 and texts.shape == (6886, 1021) and labels.shape == (6886, 71)
    assert set(np.unique(texts)) == {0, 1} and set(np.unique(labels)) == {0, 1}
    assert texts.any(axis=1).all()
    names = open_clip_art.load_vocabulary()["label_names"]
    categories = open_clip_art.load_vocabulary()["categories"]
    assert len(categories) == 22 and names[:22] == categories
    for row, item in enumerate(items):
        for category in item.categories:  # Every folder an item is stored under.
            assert labels[row, names.index(category)] == 1
    # Every label is used by at least 18 items (containers, the smallest category).
    assert labels.sum(axis=0).min() >= 18


@needs_open_clip_art
def test_committed_vocabulary_is_the_rebuild():
    rebuilt = open_clip_art.build_vocabulary()
    assert rebuilt == open_clip_art.load_vocabulary()
    assert len(rebuilt["words"]) == 1021 and len(rebuilt["label_names"]) == 71
    assert rebuilt["words"] == sorted(rebuilt["words"])


@needs_open_clip_art
def test_committed_split_is_the_seeded_random_draw():
    protocol = protocols.get_protocol("open_clip_art")
    labels = open_clip_art.load_labels()
    split = protocols.load_split(protocol.split_path)
    split.check(labels)
    redrawn = protocol.draw(labels)
    for part in ("query", "train", "database"):
        np.testing.assert_array_equal(getattr(split, part), getattr(redrawn, part))
    assert split.seed == 20261122
    assert (len(split.query), len(split.train), len(split.database)) == (2000, 4000, 4886)
    assert not np.intersect1d(split.query, split.database).size
    assert np.isin(split.train, split.database).all()
    np.testing.assert_array_equal(np.union1d(split.query, split.database), np.arange(len(labels)))


@needs_open_clip_art
def test_load_protocol_returns_cross_modal_data(monkeypatch):
    # Images stand in for the real ones (a full decode is slow); texts and
    # labels are the real arrays, so the committed split's hash must match.
    _, texts, labels = open_clip_art.load_items()

    def fake_loader(data_dir=None, image_size=64, **kwargs):
        return np.zeros((len(labels), image_size, image_size, 3), np.uint8), texts, labels

    monkeypatch.setattr(open_clip_art, "load_open_clip_art", fake_loader)
    data = protocols.load_protocol("open_clip_art", image_size=8)
    assert isinstance(data, protocols.CrossModalData)
    assert len(data.vocabulary) == 1021 and data.label_names[:2] == ("animals", "buildings")
    images, query_texts, query_labels = data.subset("query")
    assert images.shape == (2000, 8, 8, 3) and query_texts.shape == (2000, 1021)
    np.testing.assert_array_equal(query_labels, labels[data.split.query])
    assert "2,000 random queries" in data.protocol.description
    # Other data (rows reordered) is refused.
    monkeypatch.setattr(open_clip_art, "load_open_clip_art", lambda **k: (None, texts, labels[::-1]))
    with pytest.raises(ValueError, match="different dataset or ordering"):
        protocols.load_protocol("open_clip_art")


@needs_open_clip_art
def test_loader_with_indices_shapes_and_dtypes(tmp_path):
    images, texts, labels = load_open_clip_art(image_size=32, indices=[2216, 2500, 5691], cache_dir=str(tmp_path))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert texts.shape == (3, 1021) and texts.dtype == np.uint8
    assert labels.shape == (3, 71) and labels.dtype == np.uint8
    _, all_texts, all_labels = open_clip_art.load_items()
    np.testing.assert_array_equal(texts, all_texts[[2216, 2500, 5691]])
    np.testing.assert_array_equal(labels, all_labels[[2216, 2500, 5691]])
    # Transparent background and padding are white; the drawings are not blank.
    assert (images[:, 0, 0] == 255).all() and (images.reshape(3, -1).min(axis=1) < 128).all()
    assert not os.listdir(tmp_path)  # Partial loads are not cached.
    with pytest.raises(ValueError, match=r"indices must be in \[0, 6886\)"):
        load_open_clip_art(indices=[6886])


@needs_open_clip_art
def test_cache_round_trip_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    directory = _copy_items(list(GOLDEN), tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_open_clip_art(directory, image_size=16, cache_dir=str(cache))
    assert first[0].shape == (3, 16, 16, 3) and first[1].shape == (3, 1021)
    (cache_file,) = cache.iterdir()
    assert cache_file.name.startswith("open_clip_art_16px_") and cache_file.suffix == ".npz"

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(open_clip_art, "_decode_all", no_decoding)
    for got, want in zip(load_open_clip_art(directory, image_size=16, cache_dir=str(cache)), first):
        np.testing.assert_array_equal(got, want)
    monkeypatch.undo()
    cache_file.write_bytes(b"PK\x03\x04 not really a zip")
    for got, want in zip(load_open_clip_art(directory, image_size=16, cache_dir=str(cache)), first):
        np.testing.assert_array_equal(got, want)
    with np.load(cache_file, allow_pickle=False) as f:  # Rewritten, valid again.
        np.testing.assert_array_equal(f["images"], first[0])


@needs_open_clip_art
def test_malformed_svg_is_a_clear_error(tmp_path):
    directory = _copy_items(["food/fruit/pear_simple_bw"], tmp_path)
    svg = tmp_path / "svg" / "food" / "fruit" / "pear_simple_bw.svg"
    svg.write_text("<svg><metadata>")
    with pytest.raises(ValueError, match=r"Malformed SVG .*pear_simple_bw\.svg: expected well-formed XML"):
        load_open_clip_art(directory, indices=[0])


def test_missing_directory_is_a_clear_error(tmp_path, monkeypatch):
    assert open_clip_art.find_local_dir(str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match=r"expected a directory holding `png/` and `svg/`.*apt-get install openclipart-png openclipart-svg"):
        load_open_clip_art(str(tmp_path))
    monkeypatch.setenv(open_clip_art.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(open_clip_art, "DEBIAN_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="TFHASH_OPEN_CLIP_ART_DIR"):
        load_open_clip_art()
    with pytest.raises(ValueError, match="image_size must be a positive integer. Received: image_size=0"):
        load_open_clip_art(str(tmp_path), image_size=0)


def test_protocol_needs_one_way_to_draw():
    with pytest.raises(ValueError, match="expected either queries_per_class and train_per_class"):
        protocols.Protocol(name="x", loader="m:f", seed=0, description="", queries_per_class=1, num_query=1)
    with pytest.raises(ValueError, match="expected either"):
        protocols.Protocol(name="x", loader="m:f", seed=0, description="")
    labels = np.eye(3, dtype=np.uint8)[np.arange(10) % 3]
    split = protocols.draw_random_split(labels, 3, 4, seed=1)
    assert (len(split.query), len(split.train), len(split.database)) == (3, 4, 7)
    with pytest.raises(ValueError, match="sum to at most 10 items. Received: num_query=5, num_train=6"):
        protocols.draw_random_split(labels, 5, 6, seed=1)


@needs_open_clip_art
def test_tfds_builder_builds_from_a_tiny_local_copy(tmp_path):
    import tensorflow_datasets as tfds

    from tfhash.data.tfds_builders import OpenClipArtLocal

    manual = _copy_items(list(GOLDEN), tmp_path / "manual")
    builder = OpenClipArtLocal(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    assert builder.info.splits["train"].num_examples == 3
    examples = sorted(tfds.as_numpy(builder.as_dataset(split="all")), key=lambda e: int(e["index"]))
    items, texts, labels = open_clip_art.load_items(manual)
    images, _, _ = load_open_clip_art(manual, image_size=64, indices=[0, 1, 2])
    category = builder.info.features["category"]
    for i, example in enumerate(examples):
        assert example["index"] == i
        assert example["text"].decode() == items[i].text
        assert category.int2str(example["category"]) == items[i].category
        np.testing.assert_array_equal(example["bow"], texts[i])
        np.testing.assert_array_equal(example["labels"], labels[i])
        np.testing.assert_array_equal(example["image"], images[i])
    assert examples[2]["text"].decode().startswith("Bretagne\nArmoiries de Bretagne")


def test_tfds_builder_with_mock_data():
    import tensorflow_datasets as tfds

    import tfhash.data.tfds_builders  # noqa: F401  (registers the builder)

    with tfds.testing.mock_data(num_examples=4):
        dataset = tfds.load("open_clip_art_local", split="train")
    examples = list(tfds.as_numpy(dataset))
    assert len(examples) == 4
    assert examples[0]["image"].shape == (64, 64, 3) and examples[0]["image"].dtype == np.uint8
    assert examples[0]["bow"].shape == (1021,) and examples[0]["labels"].shape == (71,)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "L"])
def test_big_pngs_decode_in_strips_to_the_same_pixels(tmp_path, monkeypatch, mode):
    """The strip decoder (used above 20 megapixels, so a 623-megapixel drawing
    never sits in memory whole) gives exactly the whole decode's pixels: the
    same premultiplied box reduction, strip by strip, and the same Lanczos step."""
    from PIL import Image

    rng = np.random.default_rng(0)
    height, width = 1203, 517  # neither a multiple of the strip height nor of the reduction factor
    y, x = np.mgrid[:height, :width]
    channels = {"RGBA": 4, "RGB": 3, "LA": 2, "L": 1}[mode]
    pixels = np.stack([(x * (c + 1) + y * (3 - c) + rng.integers(0, 40, x.shape)) % 256 for c in range(channels)], -1)
    if mode in ("RGBA", "LA"):  # transparent stripes, where premultiplication matters
        pixels[..., -1] = np.where((y // 37) % 3 == 0, 0, pixels[..., -1])
    path = tmp_path / "big.png"
    Image.fromarray(pixels.astype(np.uint8).squeeze(), mode).save(path)
    whole = open_clip_art._decode(str(path), 32)
    monkeypatch.setattr(open_clip_art, "_STRIP_PIXELS", 1000)  # every image takes the strip path
    monkeypatch.setattr(open_clip_art, "_STRIP_ROWS", 100)  # 13 strips, with the rows above each re-wrapped
    np.testing.assert_array_equal(open_clip_art._decode(str(path), 32), whole)
