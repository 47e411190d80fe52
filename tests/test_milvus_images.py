"""A folder of images encoded straight into a Milvus collection (milvus-lite), in
batches, resumed after an interruption, and searched by image file: the same
rows, ids and `Hit`s as the Hamming index file of the same folder and encoder.

tests/test_image_search.py's folder (40 Fashion-MNIST PNGs) and untrained
encoder: what is checked holds for any weights. Here one more file cannot be
decoded (`a/00.bad.png`, first in the listing) and is skipped (`skip_bad`), so
listing positions and row ids differ by one: a resume from the wrong one of
them leaves a duplicate or a missing row. The tests share one milvus-lite file
(one server process), each its own collection.
"""

import re

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import pymilvus  # noqa: E402, F401  (its import reconfigures logging: here, not under capsys)
from test_image_search import N, Interrupt, StopAfter, encoder, folder, images  # noqa: E402, F401

from one_line import refusal  # noqa: E402
from tfhash.cli import main  # noqa: E402
from tfhash.image_search import encode_files, load_image_index, search_files  # noqa: E402
from tfhash.milvus_index import MilvusIndex  # noqa: E402

QUERIES = ("b/04.png", "a/17.png", "b/38.png")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """The module's milvus-lite file."""
    return tmp_path_factory.mktemp("milvus") / "images.db"


@pytest.fixture
def address(database, request):
    """`milvus:FILE.db#COLLECTION` of this test's own collection."""
    return f"milvus:{database}#" + re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def photos(folder):
    """The 40 PNGs and one file that is not an image, first in path order."""
    (folder / "a" / "00.bad.png").write_bytes(b"not a png")
    return folder


def rows_of(index):
    """(codes, paths) of every row of a MilvusIndex of images, in row order."""
    return index.codes(), index.paths(np.arange(index.ntotal))


def test_a_milvus_encode_has_the_rows_and_hits_of_the_file_index(photos, encoder, address, tmp_path):
    reference = encode_files(encoder, photos, tmp_path / "db.thi", skip_bad=True, batch_size=16)
    with encode_files(encoder, photos, address, output=tmp_path / "db.npy", skip_bad=True, batch_size=16) as index:
        codes, paths = rows_of(index)
        np.testing.assert_array_equal(codes, reference.codes())
        assert paths == reference.metadata["paths"] and len(paths) == N  # row id = position among kept files
        assert index.metadata["skipped"] == reference.metadata["skipped"] == 1
        np.testing.assert_array_equal(np.load(tmp_path / "db.npy"), codes)
    loaded = load_image_index(address)
    with loaded:
        for key in ("root", "image_size", "channels", "keep_aspect", "run", "encoder", "skipped"):
            assert loaded.metadata[key] == reference.metadata[key], key
    queries = [str(photos / query) for query in QUERIES]
    for options in ({"k": 7}, {"radius": 9, "k": None}, {"k": N + 5}):
        found = search_files(address, queries, encoder=encoder, **options)
        assert found == search_files(tmp_path / "db.thi", queries, encoder=encoder, **options), options
    for query, (_, hits) in zip(QUERIES, found):  # each query file is in the index: at distance 0
        assert hits[0].distance == 0 and query in [hit.path for hit in hits if hit.distance == 0]


def test_the_command_line_encodes_into_milvus_and_searches_it_as_the_file(photos, encoder, address, tmp_path, capsys):
    encoder.save(tmp_path / "enc.keras")
    for index in (str(tmp_path / "db.thi"), address):
        assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(photos), "--index", index,
                     "--skip-bad", "--batch-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    uri, collection = address[len("milvus:"):].split("#")
    assert out[-1] == (f"wrote {N} image codes (32 bits), each with its file, to Milvus collection {collection} at "
                       f"{uri}; skipped 1 unreadable (--skip-bad)")
    query = ["--image", str(photos / "b" / "04.png"), str(photos / "a" / "17.png"), "-k", "5"]
    printed = []
    for index in (str(tmp_path / "db.thi"), address):  # the run recorded in each: enc.keras
        assert main(["search", index, *query]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].count("\n") == 2 * 6
    # Rerun on the complete collection: nothing left to encode, no row added.
    assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(photos), "--index", address,
                 "--skip-bad", "--quiet"]) == 0
    assert f"wrote {N} image codes" in capsys.readouterr().out


def test_an_interrupted_encode_resumes_where_the_collection_stops(photos, encoder, address, database):
    clean = f"milvus:{database}#clean_encode"  # the rows an uninterrupted encode writes
    with encode_files(encoder, photos, clean, skip_bad=True, batch_size=8) as index:
        expected = rows_of(index)
    first = StopAfter(updates=3)  # update(0), then one per batch: interrupted once 3 batches are in
    with pytest.raises(Interrupt):
        encode_files(encoder, photos, address, skip_bad=True, batch_size=8, progress=first)
    # Batches of 8 images: the first 25 files (the bad one skipped) are 24 rows.
    assert first.seen == [0, 9, 17, 25]
    with MilvusIndex.open(address) as index:
        assert index.ntotal == 24
    second = StopAfter()
    with encode_files(encoder, photos, address, skip_bad=True, batch_size=8, progress=second) as index:
        assert second.seen[0] == 25 and second.seen[-1] == N + 1  # it went on from the 26th file
        codes, paths = rows_of(index)
        assert index.ntotal == index.next_position == N and len(set(paths)) == N  # no duplicate, no gap
    np.testing.assert_array_equal(codes, expected[0])
    assert paths == expected[1]


def test_an_insert_that_fails_leaves_whole_batches_to_resume_from(photos, encoder, address, monkeypatch):
    """A failure inside a batch's insert (the server gone, the process stopped): that batch's rows are
    deleted, the batches before it kept, and the rerun goes on from the first file not held."""
    insert = pymilvus.MilvusClient.insert
    calls = []

    def insert_then_fail(self, *args, **kwargs):
        calls.append(1)
        result = insert(self, *args, **kwargs)
        if len(calls) == 2:  # the second batch is in: fail after it, as a stopped call does
            raise Interrupt
        return result

    monkeypatch.setattr(pymilvus.MilvusClient, "insert", insert_then_fail)
    with pytest.raises(Interrupt):
        encode_files(encoder, photos, address, skip_bad=True, batch_size=16)
    monkeypatch.undo()
    with MilvusIndex.open(address) as index:
        assert index.ntotal == 16  # the first batch: 16 images (17 files, the bad one skipped)
    with encode_files(encoder, photos, address, skip_bad=True, batch_size=16) as index:
        codes, paths = rows_of(index)
    reference = encode_files(encoder, photos, photos.parent / "db.thi", skip_bad=True)
    np.testing.assert_array_equal(codes, reference.codes())
    assert paths == reference.metadata["paths"]


def test_a_collection_of_other_files_or_codes_is_refused(photos, encoder, address, database, tmp_path, capsys):
    with pytest.raises(Interrupt):
        encode_files(encoder, photos, address, skip_bad=True, batch_size=8, progress=StopAfter(updates=2))
    (photos / "a" / "01.png").unlink()  # the listing changed: the rows held are not this listing's
    message = refusal(lambda: encode_files(encoder, photos, address, skip_bad=True, batch_size=8))
    assert message.startswith(f"Expected a new Milvus collection, or one an encode of these files was interrupted "
                              f"in, for --index {address}. Received: one holding 16 codes of other files, decoding "
                              f"or encoder (listing sha256 ")
    assert message.endswith(": drop it, or name another collection")
    encoder.save(tmp_path / "enc.keras")
    assert main(["encode", str(tmp_path / "enc.keras"), "--images", str(photos), "--index", address,
                 "--skip-bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop it, or name another collection" in err
    with MilvusIndex.open(address) as index:
        assert index.ntotal == 16  # nothing added
    # A collection of codes without files (tfhash encode --part ..., MilvusIndex.add): neither filled nor searched.
    plain = f"milvus:{database}#plain_codes"
    with MilvusIndex.open(plain, 32) as index:
        index.add(np.zeros((3, 4), np.uint8))
    assert refusal(lambda: encode_files(encoder, photos, plain, skip_bad=True)).endswith(
        "Received: one holding 3 codes without paths: drop it, or name another collection")
    assert refusal(lambda: load_image_index(plain)) == (
        f"{plain}: expected a collection of image files (tfhash encode RUN --images DIR --index milvus:...). "
        f"Received: a collection of 3 codes without ['root', 'files', 'image_size', 'channels', 'keep_aspect']")
