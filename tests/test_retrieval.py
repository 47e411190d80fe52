"""tfhash.Retriever on scikit-learn digits: an untrained 16-bit DHN encoder (the
plumbing, not the learning, is under test), checked against a NumPy brute force."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfhash
import tfhash.io
from tfhash import retrieval
from tfhash.models import DHN, UGACHTextEncoder
from tfhash.retrieval import Retriever


def _dhn(seed=0, bits=16):
    keras.utils.set_random_seed(seed)
    net = DHN(bits=bits, input_shape=(8, 8, 1))
    net.build((None, 8, 8, 1))
    return net.encoders()["image"]


@pytest.fixture(scope="module")
def encoder():
    return _dhn()


@pytest.fixture(scope="module")
def parts(digits_data):
    """(queries, query labels, database images, database labels, database ids)."""
    (xq, yq), (xd, yd) = digits_data.subset("query"), digits_data.subset("database")
    return xq, yq, xd, yd, np.asarray(digits_data.split.database, np.int64)


def _brute_force(query_codes, db_codes, k):
    """Positions and distances of the k nearest rows: Hamming distance by
    np.unpackbits and a count, ties by position (a stable sort)."""
    q, d = np.unpackbits(query_codes, axis=1), np.unpackbits(db_codes, axis=1)
    distances = (q[:, None, :] != d[None, :, :]).sum(axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def test_search_equals_a_brute_force_hamming_ranking(encoder, parts):
    xq, _, xd, yd, db_ids = parts
    retriever = tfhash.Retriever(encoder)
    retriever.add(xd[:1000], ids=db_ids[:1000], metadata=yd[:1000])  # two adds: positions run on
    retriever.add(xd[1000:], ids=db_ids[1000:], metadata=yd[1000:])
    assert len(retriever) == len(xd) and retriever.has_ids

    results = retriever.search(xq, k=25)
    distances, order = _brute_force(encoder.encode(xq), encoder.encode(xd), 25)
    assert results.distances.dtype == np.int32 and results.ids.dtype == np.int64
    assert results.distances.shape == results.ids.shape == (len(xq), 25)
    np.testing.assert_array_equal(results.distances, distances)
    np.testing.assert_array_equal(results.ids, db_ids[order])
    assert results.metadata == yd[order].tolist()
    # An untrained encoder's codes collide a lot: the tie rule is really exercised.
    assert (np.diff(distances, axis=1) == 0).mean() > 0.5

    # Codes as queries, either way in, give the same results; so do unpacked results.
    for same in (retriever.search(encoder.encode(xq), k=25), retriever.search_codes(encoder.encode(xq), k=25)):
        np.testing.assert_array_equal(same.ids, results.ids)
        assert same.metadata == results.metadata
    d, i, m = retriever.search(xq[:3], k=4)
    np.testing.assert_array_equal(i, results.ids[:3, :4])
    assert m == [row[:4] for row in results.metadata[:3]]


def test_codes_only_use(parts, encoder):
    xq, _, xd, _, _ = parts
    db_codes, query_codes = encoder.encode(xd[:30]), encoder.encode(xq[:4])
    retriever = Retriever(bits=16)
    assert retriever.encoder is None and retriever.bits == 16
    retriever.add(db_codes[:20])  # uint8 (n, 2): codes, no encoder needed
    retriever.add_codes(db_codes[20:], metadata=[f"image_{i}.png" for i in range(20, 30)])
    # More than there is: every row, ranked; ids are the running positions.
    results = retriever.search(query_codes, k=100)
    distances, order = _brute_force(query_codes, db_codes, 100)
    assert results.ids.shape == (4, 30)
    np.testing.assert_array_equal(results.ids, order)
    np.testing.assert_array_equal(results.distances, distances)
    # Rows added without metadata have None.
    assert results.metadata == [[None if p < 20 else f"image_{p}.png" for p in row] for row in order.tolist()]
    with pytest.raises(ValueError, match=r"Expected `queries` to be packed codes \(this Retriever has no encoder\)"
                                         r".*Received: dtype=uint8, shape=\(4, 8, 8, 1\)"):
        retriever.search(xq[:4])
    with pytest.raises(ValueError, match=r"Expected `codes` to be packed codes.*\(n, 2\).*Received: dtype=int64"):
        retriever.add_codes(db_codes.astype(np.int64))


def test_radius_search_finds_every_row_within_the_radius(encoder, parts):
    """`search` / `search_codes(..., radius=R)` (issue 29), on 8-bit codes whose distances
    are counted by hand: from query 0b00000000 a row's distance is its number of set bits,
    from 0b11111111 its number of clear bits."""
    rows = np.array([[0b00000000], [0b00000001], [0b00000011], [0b11111111], [0b10000000]], np.uint8)
    retriever = Retriever(bits=8)
    retriever.add_codes(rows, ids=np.array([10, 11, 12, 13, 14]), metadata=["a", "b", "c", "d", "e"])
    queries = np.array([[0b00000000], [0b11111111], [0b01111110]], np.uint8)
    # Radius 1 (inclusive). Query 0: 0b0 at 0 (id 10), 0b1 and 0b10000000 at 1 (ids 11, 14: the tie in
    # insertion order); 0b11 is at 2, 0b11111111 at 8. Query 1: only itself (id 13); 0b10000000 is at 7.
    # Query 2, 0b01111110 (bits 1-6 set): at 6 from 0b0, 7 from 0b1, 6 from 0b11 (bit 1 shared, bit 0 not),
    # 2 from 0b11111111, 7 from 0b10000000: none within 1.
    distances, ids, metadata = retriever.search_codes(queries, radius=1)
    assert [d.tolist() for d in distances] == [[0, 1, 1], [0], []]
    assert [i.tolist() for i in ids] == [[10, 11, 14], [13], []]
    assert metadata == [["a", "b", "e"], ["d"], []]
    assert all(d.dtype == np.int32 for d in distances) and all(i.dtype == np.int64 for i in ids)
    # Radius 2 from query 2 reaches 0b11111111; k keeps the k nearest of those within the radius.
    assert [i.tolist() for i in retriever.search_codes(queries, radius=2).ids] == [[10, 11, 14, 12], [13], [13]]
    assert [i.tolist() for i in retriever.search(queries, k=2, radius=2).ids] == [[10, 11], [13], [13]]
    # `search` takes codes (no encoder) the same way; radius 8 (= bits) is every row, ranked.
    assert [d.tolist() for d in retriever.search(queries[:1], radius=8).distances] == [[0, 1, 1, 2, 8]]
    # Without ids or metadata: insertion positions and None, as `search` gives them.
    bare = Retriever(bits=8)
    bare.add_codes(rows)
    result = bare.search_codes(queries[:1], radius=1)
    assert [i.tolist() for i in result.ids] == [[0, 1, 4]] and result.metadata == [[None, None, None]]
    with pytest.raises(ValueError, match=r"`radius` must be an int in \[0, bits=8\]. Received: radius=9"):
        retriever.search_codes(queries, radius=9)
    with pytest.raises(ValueError, match=r"Expected `k` to be a positive int. Received: k=0"):
        retriever.search_codes(queries, k=0, radius=1)
    # With an encoder, images are encoded first, as for k-NN: the same rows as the codes' radius search.
    xq, _, xd, _, _ = parts
    images = Retriever(encoder)
    images.add(xd[:50])
    by_images = images.search(xq[:3], radius=3)
    by_codes = images.search_codes(encoder.encode(xq[:3]), radius=3)
    assert [i.tolist() for i in by_images.ids] == [i.tolist() for i in by_codes.ids]


def test_ids_and_metadata_round_trip_through_save_and_load(encoder, parts, tmp_path):
    xq, _, xd, yd, db_ids = parts
    retriever = Retriever(encoder)
    metadata = [{"label": label, "file": f"{i}.png", "box": (1, 2)} for i, label in zip(db_ids[:200], yd[:200])]
    retriever.add(xd[:200], ids=db_ids[:200] * 10, metadata=metadata)  # NumPy values inside: kept as JSON
    before = retriever.search(xq, k=7)
    assert before.metadata[0][0] == json.loads(json.dumps(before.metadata[0][0]))  # plain JSON already
    assert isinstance(before.metadata[0][0]["label"], int) and before.metadata[0][0]["box"] == [1, 2]

    path = tmp_path / "retriever"
    retriever.save(path)
    assert sorted(os.listdir(path)) == ["ids.npy", "index.tfhi", "manifest.json", "metadata.json"]
    # No temporaries left; the folder's two lock files stay beside it (tfhash.io.transaction).
    assert sorted(os.listdir(tmp_path)) == [".retriever.lock", ".retriever.version.lock", "retriever"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "tfhash.Retriever" and manifest["version"] == retrieval.FORMAT_VERSION
    assert manifest["bits"] == 16 and manifest["size"] == 200 and manifest["has_encoder"] is False
    assert manifest["encoder"] == retrieval.encoder_identity(encoder)
    assert manifest["encoder"]["class"] == "DHN" and manifest["encoder"]["inputs"] == {"images": [8, 8, 1]}
    # The index file is a HammingIndex file, readable alone.
    assert tfhash.HammingIndex.load(path / "index.tfhi").ntotal == 200

    loaded = Retriever.load(path, encoder=encoder)
    after = loaded.search(xq, k=7)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(after.ids, before.ids)
    assert after.metadata == before.metadata
    # It keeps going: ids continue to be required, metadata appended.
    loaded.add(xd[200:210], ids=np.arange(10), metadata=list(range(10)))
    assert len(loaded) == 210

    # Without an encoder: codes only, same answers.
    codes_only = Retriever.load(path)
    assert codes_only.encoder is None
    np.testing.assert_array_equal(codes_only.search(encoder.encode(xq), k=7).ids, before.ids)
    with pytest.raises(ValueError, match="no encoder"):
        codes_only.search(xq)
    # Saved again, it keeps the encoder's identity, so the encoder is still checked on load.
    codes_only.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["encoder"] == manifest["encoder"]


def test_include_encoder_saves_a_loadable_encoder(encoder, parts, tmp_path):
    xq, _, xd, _, _ = parts
    retriever = Retriever(encoder)
    retriever.add(xd[:100])
    retriever.save(tmp_path / "r", include_encoder=True)
    assert (tmp_path / "r" / "encoder.keras").is_file()
    loaded = Retriever.load(tmp_path / "r")
    assert type(loaded.encoder).__name__ == "DHN"
    np.testing.assert_array_equal(loaded.search(xq, k=5).ids, retriever.search(xq, k=5).ids)
    with pytest.raises(ValueError, match="Expected a Retriever with an encoder for include_encoder=True"):
        Retriever(bits=16).save(tmp_path / "x", include_encoder=True)


def test_a_mismatched_encoder_is_refused(encoder, parts, tmp_path):
    _, _, xd, _, _ = parts
    retriever = Retriever(encoder)
    retriever.add(xd[:50])
    retriever.save(tmp_path / "r")
    with pytest.raises(ValueError, match=r"Expected the encoder that made the codes in .*DHN\(bits=16, inputs: "
                                         r"images \(8, 8, 1\), weights sha256 \w{12}\)\. Received: DHN\(bits=16"):
        Retriever.load(tmp_path / "r", encoder=_dhn(seed=1))  # same architecture, other weights
    with pytest.raises(ValueError, match=r"Expected the encoder.*Received: DHN\(bits=32"):
        Retriever.load(tmp_path / "r", encoder=_dhn(bits=32))
    text = UGACHTextEncoder(bits=16, vocabulary_size=64, hidden_units=8)
    with pytest.raises(ValueError, match=r"Received: UGACHTextEncoder\(bits=16, inputs: bow \(64,\)"):
        Retriever.load(tmp_path / "r", encoder=text)


def test_an_encoder_changed_after_the_first_add_is_refused(parts, tmp_path):
    _, _, xd, _, _ = parts
    changing = _dhn(seed=2)
    retriever = Retriever(changing)
    retriever.add(xd[:10])
    kernel = changing.hash_layer.weights[0]
    kernel.assign(kernel.numpy() + 1.0)  # e.g. trained further
    with pytest.raises(ValueError, match="Expected the encoder that made this Retriever's codes.*changed after"):
        retriever.add(xd[10:20])
    with pytest.raises(ValueError, match="changed after"):
        retriever.save(tmp_path / "r")
    assert len(retriever) == 10 and not (tmp_path / "r").exists()


def test_a_newer_format_version_or_a_missing_folder_is_refused(tmp_path):
    retriever = Retriever(bits=8)
    retriever.add(np.arange(4, dtype=np.uint8)[:, None])
    retriever.save(tmp_path / "r")
    manifest_file = tmp_path / "r" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "version": retrieval.FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=rf"format version {retrieval.FORMAT_VERSION + 1} \(written by a newer "
                                         rf"tfhash\?\); this tfhash reads version {retrieval.FORMAT_VERSION}"):
        Retriever.load(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="No Retriever at .*Received: no such folder"):
        Retriever.load(tmp_path / "nothing")
    manifest_file.write_text(json.dumps({**manifest, "size": 5}))
    with pytest.raises(ValueError, match=r"inconsistent: expected an index of 5 codes"):
        Retriever.load(tmp_path / "r")


def test_a_failed_save_leaves_the_old_folder_and_a_good_one_replaces_it(tmp_path, monkeypatch):
    path = tmp_path / "r"
    retriever = Retriever(bits=8)
    retriever.add(np.arange(4, dtype=np.uint8)[:, None], metadata=["a", "b", "c", "d"])
    retriever.save(path)
    retriever.add(np.arange(4, 8, dtype=np.uint8)[:, None], metadata=["e", "f", "g", "h"])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # Fails after the index is written beside the folder's files, before the commit.
    monkeypatch.setattr(tfhash.io.Transaction, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        retriever.save(path)
    monkeypatch.undo()
    assert sorted(os.listdir(path)) == ["index.tfhi", "manifest.json", "metadata.json"]  # the temporaries are gone
    old = Retriever.load(path)
    assert len(old) == 4 and old.search_codes(np.zeros((1, 1), np.uint8), k=8).metadata == [["a", "b", "c", "d"]]

    retriever.save(path)
    assert sorted(os.listdir(path)) == ["index.tfhi", "manifest.json", "metadata.json"]
    assert len(Retriever.load(path)) == 8

    # A version-1 save (a folder renamed into place) killed between moving the old folder
    # aside and the new one in: load finds the old one.
    dead = tmp_path / ".r.999999999-0000abcd.partial.old"  # a writer pid no process has
    os.rename(path, dead)
    assert len(Retriever.load(path)) == 8 and "r" in os.listdir(tmp_path) and not dead.exists()


def test_save_refuses_to_replace_what_is_not_a_retriever(tmp_path):
    retriever = Retriever(bits=8)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"...")
    with pytest.raises(ValueError, match=r"refusing to replace another folder. Received: .*photos"):
        retriever.save(tmp_path / "photos")
    assert os.listdir(tmp_path / "photos") == ["cat.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="Received: .*an existing file"):
        retriever.save(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    retriever.save(tmp_path / "empty")  # an empty folder, and an empty retriever, are fine
    assert len(Retriever.load(tmp_path / "empty")) == 0


def test_bad_inputs_are_refused_and_leave_the_retriever_unchanged(encoder, parts):
    xq, _, xd, yd, _ = parts
    retriever = Retriever(encoder)
    with pytest.raises(ValueError, match=r"Expected a Retriever holding rows to search.*Received: size=0"):
        retriever.search(xq)
    retriever.add(xd[:10], metadata=yd[:10])
    cases = [
        (lambda: retriever.add(xd[:3], metadata=[1, 2]), r"Expected `metadata` to hold 3 items.*Received: 2 items"),
        (lambda: retriever.add(xd[:3], metadata="abc"), r"Expected `metadata` to be a sequence.*Received: str"),
        (lambda: retriever.add(xd[:3], metadata=[1, object(), 3]), r"JSON can hold.*Received: object is not JSON"),
        (lambda: retriever.add(xd[:3], metadata=[1.0, float("nan"), 3]), r"JSON can hold.*Received: Out of range"),
        (lambda: retriever.add(xd[:3], ids=[1, 2, 3]), r"Expected no `ids`.*Received: ids with shape \(3,\)"),
        (lambda: retriever.add(xd[:3, :4]), r"Expected `items` to be this encoder's inputs \(images \(None, 8, 8, 1"
                                            r"\)\) or packed codes.*\(n, 2\)\. Received: dtype=uint8, "
                                            r"shape=\(3, 4, 8, 1\)"),
        (lambda: retriever.add(np.zeros((3, 3), np.uint8)), r"Received: dtype=uint8, shape=\(3, 3\)"),
        (lambda: retriever.add(xd[:3] / 255.0), r"look normalized to \[0, 1\]"),  # the encoder's own check
        (lambda: retriever.search(xq, k=0), r"Expected `k` to be a positive int. Received: k=0"),
        (lambda: retriever.search(xq, k=2.0), r"Received: k=2.0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
        assert len(retriever) == 10 and len(retriever._metadata) == 10
    with_ids = Retriever(bits=16)
    with_ids.add_codes(np.zeros((2, 2), np.uint8), ids=[5, 6])
    for ids, message in [(None, r"Expected `ids` in every add\(\).*Received: ids=None"),
                         ([1.5, 2.5], r"1-D integer array of length 2.*Received: dtype=float64, shape=\(2,\)"),
                         ([1, 2, 3], r"length 2.*Received: dtype=int64, shape=\(3,\)"),
                         ([-1, 2], r"Expected `ids` in \[0, 2\*\*63 - 1\].*Received: min=-1")]:
        with pytest.raises(ValueError, match=message):
            with_ids.add_codes(np.zeros((2, 2), np.uint8), ids=ids)
    assert len(with_ids) == 2
    with pytest.raises(ValueError, match=r"Expected `bits` \(the code length\).*Received: encoder=None, bits=None"):
        Retriever()
    with pytest.raises(ValueError, match=r"Expected `bits` to equal the encoder's bits \(16\).*Received: bits=32"):
        Retriever(encoder, bits=32)
    with pytest.raises(ValueError, match=r"Expected `encoder` to be a tfhash encoder.*Received: ndarray"):
        Retriever(np.zeros(3))
    with pytest.raises(ValueError, match=r"Expected `bits` to be a positive multiple of 8"):
        Retriever(bits=12)


def test_text_encoder_inputs_and_the_ambiguous_case(digits_two_view):
    _, texts, _ = digits_two_view["database"]
    text = UGACHTextEncoder(bits=16, vocabulary_size=64, hidden_units=8)
    retriever = Retriever(text)
    retriever.add(texts[:50])  # float32 bags of words: encoded
    retriever.add(texts[:5].astype(np.uint8))  # uint8 (n, 64) is not (n, 2): encoded too
    np.testing.assert_array_equal(retriever.search(texts[:3], k=1).distances, np.zeros((3, 1)))
    # A vocabulary of bits / 8 words: a uint8 (n, 2) array is both; refused, with the way out.
    tiny = Retriever(UGACHTextEncoder(bits=16, vocabulary_size=2, hidden_units=8))
    with pytest.raises(ValueError, match=r"Expected `items` to be unambiguous.*Use add_codes\(\) for codes, or "
                                         r"pass float32 inputs. Received: dtype=uint8, shape=\(3, 2\)"):
        tiny.add(np.ones((3, 2), np.uint8))
    tiny.add_codes(np.ones((3, 2), np.uint8))
    tiny.add(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"Use search_codes\(\)"):
        tiny.search(np.ones((1, 2), np.uint8))
    assert tiny.search_codes(np.ones((1, 2), np.uint8), k=1).ids.tolist() == [[0]]


def test_importing_the_module_loads_no_tensorflow():
    code = "import sys, tfhash.retrieval; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
