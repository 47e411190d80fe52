"""Results of several files appear whole or not at all, writers take turns and
readers see one version (`tfhash.io.transaction`, issue 27).

A kill is simulated by an exception at the step it would interrupt: the
process state it leaves on disk is the same (the kernel releases a dead
process's locks as it releases ours when the exception unwinds). The aimed
SIGKILLs against real processes are `bench/reliability.py`'s.
"""

import json
import os
import threading

import keras
import numpy as np
import pytest

from tfhash import io, training
from tfhash.cli import main
from tfhash.index import HammingIndex
from tfhash.retrieval import Retriever

TINY = ["--protocol", "digits", "--bits", "16", "--epochs", "1"]


def _write(home, version):
    """Writes `version` of a two-member result (a.json, b.json) through one transaction."""
    with io.transaction(home) as t:
        t.write_json({"version": version}, os.path.join(home, "a.json"))
        t.write_json({"version": version}, os.path.join(home, "b.json"))


def _versions(home, n):
    """Writes versions 0..n-1 of the result, one transaction each."""
    for version in range(n):
        _write(home, version)


def _read(home):
    with io.reading(home):
        return [json.load(open(os.path.join(home, name)))["version"] for name in ("a.json", "b.json")]


def test_a_commit_killed_between_its_renames_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    home = str(tmp_path / "result")
    _versions(home, 1)
    real, calls = os.replace, []

    def killed_after_one_rename(source, target):
        calls.append(target)
        if len(calls) == 2 + 1:  # the record's own rename, then one member: killed before the second member
            raise KeyboardInterrupt("killed")
        return real(source, target)

    monkeypatch.setattr(os, "replace", killed_after_one_rename)
    with pytest.raises(KeyboardInterrupt):
        _write(home, 1)
    monkeypatch.undo()
    # On disk now: a.json new, b.json old, the record naming b.json's temporary.
    assert json.load(open(os.path.join(home, "a.json")))["version"] == 1
    assert json.load(open(os.path.join(home, "b.json")))["version"] == 0
    assert os.path.exists(io._beside(home, "commit"))
    assert _read(home) == [1, 1]  # the reader finished the commit first
    assert not os.path.exists(io._beside(home, "commit"))
    assert sorted(os.listdir(home)) == ["a.json", "b.json"]  # no temporary left


def test_a_write_killed_before_its_record_leaves_the_old_version_and_no_temporary(tmp_path, monkeypatch):
    home = str(tmp_path / "result")
    _versions(home, 1)

    def killed(obj, path, **options):
        raise KeyboardInterrupt("killed")  # io.write_json writes the record: killed just before it

    monkeypatch.setattr(io, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(home, 1)
    monkeypatch.undo()
    assert _read(home) == [0, 0]
    assert sorted(os.listdir(home)) == ["a.json", "b.json"]  # the failed write removed its temporaries


def test_writers_take_turns_and_the_second_fails_in_one_line_or_waits(tmp_path):
    home = str(tmp_path / "result")
    with io.transaction(home):
        with pytest.raises(io.Busy, match=rf"being written by pid {os.getpid()}\. Expected no other writer"):
            with io.transaction(home, wait=False):
                pass
        with pytest.raises(io.Busy, match="held for 0.1 s"):
            with io.transaction(home, wait=0.1):
                pass
    order = []
    held, release = threading.Event(), threading.Event()

    def first():
        with io.transaction(home) as t:
            t.write_json({"version": 0}, os.path.join(home, "a.json"))
            held.set()
            release.wait(10)
            order.append("first commits")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(10)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with io.transaction(home, wait=True) as t:  # waits for the first to commit
        order.append("second writes")
        assert json.load(open(os.path.join(home, "a.json")))["version"] == 0
    thread.join()
    assert order == ["first commits", "second writes"]


def test_a_reader_holds_off_a_commit_until_it_has_read_every_member(tmp_path):
    home = str(tmp_path / "result")
    _versions(home, 1)
    reading, seen = threading.Event(), []

    def write():
        reading.wait(10)
        _versions(home, 2)  # its commits wait for the reader below

    writer = threading.Thread(target=write)
    writer.start()
    with io.reading(home):
        seen.append(json.load(open(os.path.join(home, "a.json")))["version"])
        reading.set()
        writer.join(0.3)  # the writer has had time to stage its members and reach its commit
        seen.append(json.load(open(os.path.join(home, "b.json")))["version"])
    writer.join()
    assert seen == [0, 0] and _read(home) == [1, 1]


def test_two_trains_on_one_new_output_cannot_both_succeed(tmp_path, capsys):
    out = str(tmp_path / "run")
    with io.transaction(out):  # another `train` holding the run's lock
        assert main(["train", "--method", "dhn", *TINY, "--output", out]) == 2
    err = capsys.readouterr().err
    assert "is being written by pid" in err and "--wait" in err and err.count("\n") == 1
    assert not os.path.exists(out)


def test_a_run_records_its_encoders_hashes_and_a_changed_encoder_is_refused(tmp_path, digits_data):
    from tfhash.models import DHN

    keras.utils.set_random_seed(0)
    net = DHN(bits=16, input_shape=(8, 8, 1))
    net.build((None, 8, 8, 1))
    result = training.Result({"name": "x"}, {"image": net.encoders()["image"]}, {}, 0.0, net, {"loss": [1.0]})
    run = str(tmp_path / "run")
    training.save_run(result, run)
    record, encoders = training.load_run(run)
    assert record["files"] == {"image_encoder.keras": io.sha256(os.path.join(run, "image_encoder.keras"))}
    images = digits_data.images[:5]
    np.testing.assert_array_equal(encoders["image"].encode(images), net.encoders()["image"].encode(images))
    # Another run's encoder copied over this one's: the record no longer describes it.
    other = DHN(bits=16, input_shape=(8, 8, 1))
    other.build((None, 8, 8, 1))
    other.encoders()["image"].save(os.path.join(run, "image_encoder.keras"))
    with pytest.raises(ValueError, match="is not the encoder its run.json records"):
        training.load_model(run)


def test_an_encode_killed_between_codes_and_index_is_finished_by_the_index_reader(tmp_path, monkeypatch):
    from tfhash.cli import _write_codes

    old, new = np.zeros((3, 2), np.uint8), np.full((4, 2), 7, np.uint8)
    output, index_file = str(tmp_path / "db.npy"), str(tmp_path / "db.thi")
    _write_codes(old, None, output, index_file, wait=False)
    real, calls = os.replace, []

    def killed_after_the_codes(source, target):
        calls.append(target)
        if len(calls) == 3:  # the record, the codes: killed before the index
            raise KeyboardInterrupt("killed")
        return real(source, target)

    monkeypatch.setattr(os, "replace", killed_after_the_codes)
    with pytest.raises(KeyboardInterrupt):
        _write_codes(new, None, output, index_file, wait=False)
    monkeypatch.undo()
    index = HammingIndex.load(index_file)  # finishes the encode's commit first
    distances, positions = index.search(new[:1], k=10)
    # The new index: 4 codes, each equal to the query (distance 0), positions in insertion order.
    assert distances.tolist() == [[0, 0, 0, 0]] and positions.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_array_equal(np.load(output), new)


def test_retriever_saves_cannot_drop_each_others_rows(tmp_path):
    path = str(tmp_path / "r")
    Retriever(bits=8).save(path)
    a, b = Retriever.load(path), Retriever.load(path)  # two processes' copies of generation 1
    a.add_codes(np.array([[1]], np.uint8), metadata=["a"])
    a.save(path)
    b.add_codes(np.array([[2]], np.uint8), metadata=["b"])
    with pytest.raises(ValueError, match="Expected .* at generation 1.*Received: generation 2"):
        b.save(path)  # would replace a's row
    for item in ("c", "d"):  # updates hold the lock from load to save: none is lost
        with Retriever.update(path) as retriever:
            retriever.add_codes(np.array([[3]], np.uint8), metadata=[item])
    loaded = Retriever.load(path)
    assert loaded._metadata == ["a", "c", "d"]
    assert json.load(open(os.path.join(path, "manifest.json")))["generation"] == 4


@pytest.mark.parametrize("name, damage", [
    ("ids.npy", lambda data: data[:-1] + bytes([data[-1] ^ 1])),  # one flipped bit in the last id
    ("metadata.json", lambda data: data.replace(b'"a"', b'"z"')),  # an edited value, still valid JSON
])
def test_a_changed_retriever_file_is_refused(tmp_path, name, damage):
    path = tmp_path / "r"
    retriever = Retriever(bits=8)
    retriever.add_codes(np.array([[1], [2]], np.uint8), ids=np.array([10, 11]), metadata=["a", "b"])
    retriever.save(path)
    (path / name).write_bytes(damage((path / name).read_bytes()))
    with pytest.raises(ValueError, match=f"damaged or was changed: expected {name} with sha256"):
        Retriever.load(path)


def test_a_keras_file_that_is_no_tfhash_encoder_is_refused_in_one_line(tmp_path, capsys):
    path = str(tmp_path / "other.keras")
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Flatten()(inputs)).save(path)
    codes = str(tmp_path / "codes.npy")
    assert main(["encode", path, "--protocol", "digits", "--output", codes]) == 2
    err = capsys.readouterr().err
    assert "does not hold a tfhash encoder" in err and "Received: a Functional model" in err
    assert err.count("\n") == 1 and not os.path.exists(codes)
