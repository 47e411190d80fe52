"""Your own images, end to end: real image files (Fashion-MNIST and Open Clip
Art, written as PNG and JPEG in mixed sizes and modes) trained on, encoded into
an index and searched by image, through the CLI and from Python.

What holds by construction, and is asserted: a query file that is itself in
the index is decoded the same way (the same pipeline, the same size) and
encoded by the same encoder, so its own row is at Hamming distance 0; the
nearest hit is then at distance 0, and where no other row shares its code, it
is the query file itself. A run re-scored by `tfhash evaluate` on the split it
recorded gives the mAP the training printed (the same codes, the same split).
"""

import glob
import itertools
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from tfhash import registry
from tfhash.cli import main

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
CLIP_ART = "/usr/share/openclipart"
needs_images = pytest.mark.needs_data(
    not (os.path.exists(FASHION) and os.path.isdir(os.path.join(CLIP_ART, "svg"))),
    reason="Fashion-MNIST and Open Clip Art (Debian dataset-fashion-mnist, openclipart-png, openclipart-svg)")
pytestmark = [needs_images, pytest.mark.slow]

# Fashion-MNIST classes written as class folders, and two Open Clip Art categories.
FASHION_CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker", 8: "bag"}
CLIP_ART_CATEGORIES = ("animals", "food")


@pytest.fixture(scope="module")
def fashion():
    from tfhash.data import load_fashion_mnist

    return load_fashion_mnist()


def pixels(file):
    with Image.open(file) as image:  # reads the header only
        return image.width * image.height


def clip_art_files(category, n, skip=0):
    """The first `n` PNGs of an Open Clip Art category (after `skip`), sorted, no symlinked duplicates, none
    past 4 megapixels (a 169-megapixel drawing of "food" took 3 s to decode; its header is read, not its pixels)."""
    files = sorted(f for f in glob.glob(os.path.join(CLIP_ART, "png", category, "**", "*.png"), recursive=True)
                   if not os.path.islink(f))
    small = (f for f in files if pixels(f) <= 4_000_000)
    return list(itertools.islice(small, skip + n))[skip:]


def write_image(array_or_file, path, i):
    """Writes a real image as one of five kinds, by `i`: greyscale PNG, RGB
    JPEG upscaled, RGBA PNG, palette PNG, 16-bit greyscale PNG."""
    image = Image.open(array_or_file) if isinstance(array_or_file, str) else Image.fromarray(array_or_file[..., 0])
    image.load()
    if image.mode == "P":  # Open Clip Art's palette PNGs: through RGBA, as Pillow asks of transparent ones
        image = image.convert("RGBA")
    kind = i % 5
    base = os.path.splitext(path)[0]
    if kind == 0:
        image.convert("L").save(base + ".png")
    elif kind == 1:
        image.convert("RGB").resize((40 + i % 7, 36)).save(base + ".jpg", quality=95)
    elif kind == 2:
        image.convert("RGBA").save(base + ".png")
    elif kind == 3:
        image.convert("RGB").convert("P", palette=Image.ADAPTIVE).save(base + ".png")
    else:
        Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257).save(base + ".png")


def write_folder(root, fashion, per_class, offset, labelled=True):
    """Class folders (or one flat folder) of real images; returns the files written."""
    images, labels = fashion
    written = []
    for c, name in FASHION_CLASSES.items():
        rows = np.flatnonzero(labels == c)[offset : offset + per_class]
        folder = os.path.join(root, name if labelled else "")
        os.makedirs(folder, exist_ok=True)
        for j, row in enumerate(rows):
            write_image(images[row], os.path.join(folder, f"{name}_{row}"), j)
    for name in CLIP_ART_CATEGORIES:
        folder = os.path.join(root, name if labelled else "")
        os.makedirs(folder, exist_ok=True)
        for j, file in enumerate(clip_art_files(name, per_class // 2, skip=offset // 2)):
            write_image(file, os.path.join(folder, f"{name}_{j + offset}"), j)
    return sorted(glob.glob(os.path.join(root, "**", "*.*"), recursive=True))


def cli(capsys, *argv):
    """Runs `tfhash ARGV` in this process; returns its stdout (failing on a non-zero exit)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"tfhash {' '.join(map(str, argv))} exited {code}: {err}"
    return out


def parse_search(out):
    """{query file: [(distance, path), ...]} from `tfhash search --image`'s output."""
    results, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            distance, path = line.split(maxsplit=1)
            results[current].append((int(distance), path))
        elif re.match(r".*: \d+ (nearest|within radius \d+, nearest \d+ shown)$", line):
            current = line.rsplit(":", 1)[0]
            results[current] = []
    return results


def assert_finds_itself(capsys, index_file, queries, root):
    """`search --image`: each query's nearest hit is at distance 0 and is the query file itself where no other
    row shares its code; with ties, its file is among the rows at distance 0 (`--radius 0`)."""
    from tfhash.index import HammingIndex

    from tfhash.data.folders import read_images
    from tfhash.training import load_model

    index = HammingIndex.load(index_file)
    codes, paths = index.codes(), index.metadata["paths"]
    # Row r is the code of file paths[r], decoded as the index says: rows and paths aligned.
    model = load_model(index.metadata["run"])
    images, kept = read_images(root, paths, image_size=model.image_shape[:2], channels=model.image_shape[2],
                               cache=False)
    assert len(kept) == len(paths)
    np.testing.assert_array_equal(codes, model.encode(images))
    nearest = parse_search(cli(capsys, "search", index_file, "--image", *queries, "-k", 1))
    tied = parse_search(cli(capsys, "search", index_file, "--image", *queries, "--radius", 0, "-k", len(index)))
    assert sorted(nearest) == sorted(tied) == sorted(queries)
    unique = 0
    for query in queries:
        own = os.path.relpath(query, root)
        assert nearest[query][0][0] == 0 and own in [path for _, path in tied[query]], (query, tied[query][:5])
        row = paths.index(own)
        if (codes == codes[row]).all(axis=1).sum() == 1:
            unique += 1
            assert nearest[query] == [(0, own)]
    return unique


def test_folder_through_the_cli(tmp_path, fashion, capsys):
    """DHN trained on class folders through `tfhash train --images`, scored again by `evaluate` on the split it
    recorded, a second folder encoded into an index, and each query file found by `search --image`."""
    train_dir, db_dir, run = tmp_path / "photos", tmp_path / "more", tmp_path / "run"
    files = write_folder(train_dir, fashion, per_class=40, offset=0)
    assert len(files) == 4 * 40 + 2 * 20
    tiny = {f"--{k.replace('_', '-')}": v for k, v in registry.get("dhn").tiny.items()}
    out = cli(capsys, "train", "--method", "dhn", "--images", train_dir, "--image-size", 32, "--bits", 32,
              "--num-query", 30, *[x for kv in tiny.items() for x in kv], "--output", run, "--quiet")
    record = json.loads((run / "run.json").read_text())
    assert record["recipe"]["data"]["image_size"] == 32 and (run / "split.npz").exists()
    trained_map = record["scores"]["image"]["map"]
    assert f"mAP@all (image): {trained_map:.4f}" in out

    # The split kept in the run, not one drawn again: with the recorded seed changed, evaluate still scores
    # the queries it trained with (a redrawn split would hold other queries, and give another mAP).
    record["recipe"]["data"]["seed"] += 1
    (run / "run.json").write_text(json.dumps(record))
    out = cli(capsys, "evaluate", run, "--quiet")
    assert re.search(rf"^image: mAP@all .*: {trained_map:.4f}$", out, re.M), out

    write_folder(db_dir, fashion, per_class=10, offset=100)
    out = cli(capsys, "encode", run, "--images", db_dir, "--index", tmp_path / "db.thi", "--quiet")
    written = sorted(os.path.relpath(f, db_dir) for f in glob.glob(str(db_dir / "**" / "*.*"), recursive=True))
    from tfhash.index import HammingIndex

    index = HammingIndex.load(tmp_path / "db.thi")
    assert index.metadata["paths"] == written and len(index) == len(written)
    assert f"wrote Hamming index of {len(written)} images" in out

    queries = [str(db_dir / path) for path in written[::9]]
    assert assert_finds_itself(capsys, tmp_path / "db.thi", queries, db_dir) > 0
    out = cli(capsys, "search", tmp_path / "db.thi", "--image", *queries[:3], "-k", 5, "--show", tmp_path / "hits.png")
    assert len(parse_search(out)) == 3 and Image.open(tmp_path / "hits.png").format == "PNG"


def test_list_with_multi_hot_labels_from_python(tmp_path, fashion, capsys):
    """DeepHash-pytorch's list format ("path l1 ... lC", multi-hot) through `tfhash.data.from_list` and
    `tfhash.train(data=...)`; a glob encoded into an index; each query found by `search --image`."""
    import tfhash
    from tfhash.data import from_list

    folder = tmp_path / "images"
    files = write_folder(folder, fashion, per_class=30, offset=0, labelled=False)
    # Six labels: the four Fashion-MNIST classes, the two clip art categories; and a seventh, "worn",
    # shared by the t-shirts, trousers and sneakers: items of two classes can then be relevant.
    names = [*FASHION_CLASSES.values(), *CLIP_ART_CATEGORIES]
    lines = []
    for file in files:
        name = os.path.basename(file).rsplit("_", 1)[0]  # tshirt_123.png, animals_4.jpg
        row = [int(name == n) for n in names] + [int(name in ("tshirt", "trouser", "sneaker"))]
        lines.append(f"{os.path.relpath(file, tmp_path)} {' '.join(map(str, row))}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")

    data = from_list(tmp_path / "train.txt", image_size=28, channels=1, num_query=20)
    assert data.labels.shape == (len(files), 7) and data.labels[:, 6].sum() == 3 * 30
    result = tfhash.train("dhn", data=data, bits=16, output_dir=tmp_path / "run", **registry.get("dhn").tiny)
    # The mAP is that of the trained encoder's codes, with multi-hot relevance (a shared label).
    from tfhash import metrics

    encoder = result.encoders["image"]
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    expected = metrics.mean_average_precision(encoder.encode(xq), encoder.encode(xd), yq, yd)
    assert result.scores["image"]["map"] == pytest.approx(expected, abs=1e-12)
    out = cli(capsys, "evaluate", tmp_path / "run", "--quiet")
    assert re.search(rf"^image: mAP@all .*: {expected:.4f}$", out, re.M), out

    pattern = str(folder / "*.png")  # a glob: the PNGs only
    cli(capsys, "encode", tmp_path / "run", "--images", pattern, "--index", tmp_path / "png.thi", "--quiet")
    pngs = sorted(glob.glob(pattern))
    queries = pngs[::11]
    assert_finds_itself(capsys, tmp_path / "png.thi", queries, folder)


def test_unsupervised_method_on_a_folder_without_labels(tmp_path, fashion, capsys):
    """BGAN on a flat folder (no class folders: no labels, so no scores), then encode and search by image."""
    folder = tmp_path / "flat"
    write_folder(folder, fashion, per_class=20, offset=0, labelled=False)
    tiny = registry.get("bgan").tiny
    out = cli(capsys, "train", "--method", "bgan", "--images", folder, "--image-size", 28, "--bits", 16,
              *[x for k, v in tiny.items() for x in (f"--{k.replace('_', '-')}", json.dumps(v))],
              "--output", tmp_path / "run", "--quiet")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["scores"] == {} and "mAP" not in out
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "Scoring needs labels" in capsys.readouterr().err
    cli(capsys, "encode", tmp_path / "run", "--images", folder, "--index", tmp_path / "flat.thi", "--quiet")
    queries = sorted(glob.glob(str(folder / "*")))[::13]
    assert_finds_itself(capsys, tmp_path / "flat.thi", queries, folder)


def test_image_text_method_on_a_list_with_captions(tmp_path, capsys):
    """SSAH (supervised image-text) on a list with a caption column: Open Clip Art drawings, their titles and
    tags as captions, their category as the label; scored image->text and text->image."""
    from tfhash.data.open_clip_art import parse_metadata

    lines = []
    for c, category in enumerate(("animals", "food", "people", "transportation")):
        for file in clip_art_files(category, 40):
            svg = os.path.join(CLIP_ART, "svg", os.path.relpath(file, os.path.join(CLIP_ART, "png")))[:-4] + ".svg"
            meta = parse_metadata(svg) if os.path.exists(svg) else {"title": "", "tags": []}
            caption = " ".join([meta["title"], *meta["tags"]]).replace("\t", " ")
            lines.append(f"{file}\t{c}\t{caption or category}")
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    tiny = registry.get("ssah").tiny
    out = cli(capsys, "train", "--method", "ssah", "--images", tmp_path / "captions.txt", "--image-size", 32,
              "--bits", 16, "--num-query", 40,
              *[x for k, v in tiny.items() for x in (f"--{k.replace('_', '-')}", json.dumps(v))],
              "--output", tmp_path / "run", "--quiet")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(record["scores"]) == {"image", "text"}
    assert "mAP@all (image->text)" in out and "mAP@all (text->image)" in out
    out = cli(capsys, "evaluate", tmp_path / "run", "--quiet")
    for direction, modality in (("image->text", "image"), ("text->image", "text")):
        assert re.search(rf"^{direction}: mAP@all .*: {record['scores'][modality]['map']:.4f}$", out, re.M), out
