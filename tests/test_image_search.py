"""tfhash.image_search: image files encoded into an index that keeps their paths,
resumed after an interruption, searched by image file. An untrained encoder on
real Fashion-MNIST images written as PNG: what is checked holds for any weights
(a file's code is the code of its decoded pixels, row for row)."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from tfhash.cli import main
from tfhash.image_search import encode_files, load_image_index, search_files
from tfhash.index import HammingIndex
from tfhash.io import Busy

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
pytestmark = pytest.mark.needs_data(not os.path.exists(FASHION),
                                    reason="Fashion-MNIST (Debian dataset-fashion-mnist)")
N = 40


@pytest.fixture(scope="module")
def images():
    from tfhash.data import load_fashion_mnist

    return load_fashion_mnist()[0][:N]


@pytest.fixture
def folder(tmp_path, images):
    """N greyscale PNGs, in two class folders, named by their row."""
    for i, image in enumerate(images):
        path = tmp_path / "photos" / ("a" if i % 2 else "b") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(path)
    return tmp_path / "photos"


@pytest.fixture(scope="module")
def encoder():
    from tfhash.models.dhn import DHN

    keras.utils.set_random_seed(0)
    return DHN(bits=32, input_shape=(28, 28, 1))


def rows_of(index):
    """The Fashion-MNIST row of each index row, read from its file name."""
    return [int(os.path.basename(path)[:2]) for path in index.metadata["paths"]]


class Interrupt(Exception):
    pass


class StopAfter:
    """A progress object recording what it was told, interrupting the encode after `updates` calls."""

    def __init__(self, updates=None):
        self.target, self.seen, self.updates = None, [], updates

    def update(self, current, finalize=False):
        self.seen.append(current)
        if self.updates is not None and len(self.seen) > self.updates:
            raise Interrupt


def test_each_row_is_its_files_code_and_path(folder, images, encoder, tmp_path):
    index = encode_files(encoder, folder, tmp_path / "db.thi", output=tmp_path / "db.npy", batch_size=16)
    # Rows in sorted path order: folder a (odd rows) before folder b (even rows).
    expected = [f"a/{i:02d}.png" for i in range(1, N, 2)] + [f"b/{i:02d}.png" for i in range(0, N, 2)]
    loaded = load_image_index(tmp_path / "db.thi")
    assert loaded.metadata["paths"] == expected and loaded.metadata["skipped"] == 0
    assert loaded.metadata["image_size"] == [28, 28] and loaded.metadata["channels"] == 1
    # PNG is lossless and the size is the encoder's own: the codes are those of the arrays, row for row.
    np.testing.assert_array_equal(loaded.codes(), encoder.encode(images[rows_of(loaded)]))
    np.testing.assert_array_equal(np.load(tmp_path / "db.npy"), loaded.codes())
    assert len(index) == N


def test_an_interrupted_encode_resumes_where_it_stopped(folder, encoder, tmp_path):
    whole = encode_files(encoder, folder, tmp_path / "whole.thi", batch_size=8)
    first = StopAfter(updates=3)  # update(0), then one per batch of 8: stopped after 16 files
    with pytest.raises(Interrupt):
        encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=first, checkpoint_seconds=0)
    assert not (tmp_path / "db.thi").exists()
    partial = HammingIndex.load(tmp_path / ".db.thi.partial")
    assert partial.metadata["next"] == 16 and len(partial) == 16
    second = StopAfter()
    index = encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=second)
    assert second.seen[0] == 16 and second.seen[-1] == N  # it started at the 17th file
    np.testing.assert_array_equal(index.codes(), whole.codes())
    assert index.metadata["paths"] == whole.metadata["paths"]
    assert not (tmp_path / ".db.thi.partial").exists()  # removed with the commit


def test_a_partial_encode_of_other_files_is_not_continued(folder, encoder, tmp_path):
    with pytest.raises(Interrupt):
        encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=StopAfter(3), checkpoint_seconds=0)
    (folder / "a" / "01.png").unlink()  # the listing changed: start over
    progress = StopAfter()
    index = encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=progress)
    assert progress.seen[0] == 0 and len(index) == N - 1


def test_a_file_replaced_since_the_interruption_is_encoded_again(folder, images, encoder, tmp_path):
    """The partial encode is continued only for the same files: a file rewritten since (same path, new
    pixels) makes the encode start over, so no row keeps the old file's code."""
    with pytest.raises(Interrupt):
        encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=StopAfter(3), checkpoint_seconds=0)
    Image.fromarray(images[39][..., 0]).save(folder / "a" / "01.png")  # a/01.png, encoded already, now row 39
    progress = StopAfter()
    index = encode_files(encoder, folder, tmp_path / "db.thi", batch_size=8, progress=progress)
    assert progress.seen[0] == 0
    np.testing.assert_array_equal(index.codes()[0], encoder.encode(images[39:40])[0])


def test_an_index_whose_rows_and_paths_disagree_is_refused(folder, encoder, tmp_path):
    index = encode_files(encoder, folder, tmp_path / "db.thi")
    index.add(index.codes()[:1])  # one more row than paths
    index.save(tmp_path / "db.thi")
    with pytest.raises(ValueError, match=f"expected one path per row.*Received: {N + 1} rows, {N} paths"):
        load_image_index(tmp_path / "db.thi")


def test_radius_search_counts_every_row_within_it(folder, encoder, tmp_path, capsys):
    encoder.save(tmp_path / "enc.keras")
    assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(folder), "--index",
                 str(tmp_path / "db.thi"), "--quiet"]) == 0
    query = str(folder / "b" / "04.png")
    [(_, within)] = search_files(tmp_path / "db.thi", [query], radius=32, k=None, encoder=encoder)
    assert len(within) == N  # every row is within 32 of a 32-bit code
    capsys.readouterr()
    assert main(["search", str(tmp_path / "db.thi"), "--image", query, "--radius", "32", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{query}: {N} within radius 32, nearest 3 shown" and len(lines) == 4
    assert main(["search", str(tmp_path / "db.thi"), "--image", query, "--output", "x.npz"]) == 2
    assert "--image prints paths" in capsys.readouterr().err


def test_bad_files_stop_the_encode_or_are_skipped_and_counted(folder, encoder, tmp_path):
    (folder / "a" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="zz.png"):
        encode_files(encoder, folder, tmp_path / "db.thi")
    assert not (tmp_path / "db.thi").exists()
    index = encode_files(encoder, folder, tmp_path / "db.thi", skip_bad=True)
    assert len(index) == N and index.metadata["skipped"] == 1 and "a/zz.png" not in index.metadata["paths"]


def test_search_by_image_with_the_encoder_that_made_the_index(folder, encoder, tmp_path):
    encode_files(encoder, folder, tmp_path / "db.thi")
    query = str(folder / "b" / "04.png")
    [(file, hits)] = search_files(tmp_path / "db.thi", [query], k=3, encoder=encoder)
    assert file == query and hits[0].distance == 0 and len(hits) == 3
    assert "b/04.png" in [hit.path for hit in hits if hit.distance == 0]
    assert hits[0].file == os.path.join(str(folder), hits[0].path)
    [(_, within)] = search_files(tmp_path / "db.thi", [query], radius=0, k=N, encoder=encoder)
    assert {hit.distance for hit in within} == {0}
    from tfhash.models.dhn import DHN

    other = DHN(bits=32, input_shape=(28, 28, 1))  # other weights: its codes would not match the index
    with pytest.raises(ValueError, match="Expected the encoder that made this index"):
        search_files(tmp_path / "db.thi", [query], encoder=other)


def test_a_second_writer_of_the_index_waits_or_fails(folder, encoder, tmp_path):
    from tfhash.io import transaction

    with transaction(tmp_path / "db.thi"):
        with pytest.raises(Busy):
            encode_files(encoder, folder, tmp_path / "db.thi")


def test_cli_errors_are_one_line(folder, encoder, tmp_path, capsys):
    encoder.save(tmp_path / "enc.keras")
    assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(folder)]) == 2
    assert "Expected --index FILE for --images" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(tmp_path / "none"), "--index",
                 str(tmp_path / "x.thi")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "none" in err
    index = HammingIndex(32)
    index.add(np.zeros((1, 4), np.uint8))
    index.save(tmp_path / "codes.thi")
    assert main(["search", str(tmp_path / "codes.thi"), "--image", str(folder / "a" / "01.png")]) == 2
    assert "expected an index of image files" in capsys.readouterr().err
    # A folder where an array or a protocol was expected: the error points to --images.
    assert main(["encode", str(tmp_path / "enc.keras"), "--inputs", str(folder), "--output", "x.npy"]) == 2
    assert "Received: a folder (image files go through --images DIR)" in capsys.readouterr().err
    assert main(["train", "--method", "dhn", "--protocol", str(folder), "--output", str(tmp_path / "run")]) == 2
    assert "(your own images: --images PATH" in capsys.readouterr().err


def test_encode_takes_what_predict_takes(folder, images, encoder):
    """`encode` of a `keras.utils.image_dataset_from_directory` dataset ((images, labels) batches, float32
    0-255) and of a generator of batches: the codes of the same pixels as an array (PNG is lossless and the
    size is the encoder's, so nothing is resized)."""
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(28, 28), color_mode="grayscale",
                                                       shuffle=False, batch_size=8, verbose=False)
    order = [int(os.path.basename(path)[:2]) for path in dataset.file_paths]
    np.testing.assert_array_equal(encoder.encode(dataset), encoder.encode(images[order]))
    batches = (images[i : i + 16] for i in range(0, N, 16))
    np.testing.assert_array_equal(encoder.encode(batches), encoder.encode(images))
    with pytest.raises(ValueError, match=r"Expected a dataset of batches \(None, 28, 28, 1\)"):
        encoder.encode(keras.utils.image_dataset_from_directory(folder, image_size=(32, 32), verbose=False))
