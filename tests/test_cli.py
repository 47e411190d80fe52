"""The `tfhash` command end to end on the digits protocol."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfhash.cli import main

pytestmark = pytest.mark.slow
TINY = ["--protocol", "digits", "--bits", "16", "--epochs", "3", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    assert main(["train", "--recipe", "dhn_fashion_mnist_32", *TINY, "--output", out]) == 0
    return out


def test_train_writes_model_and_run_record(run_dir):
    record = json.load(open(os.path.join(run_dir, "run.json")))
    # Flags override the recipe (protocol, bits, epochs); the rest comes from it.
    settings = record["settings"]
    assert (settings["bits"], settings["protocol"], settings["epochs"]) == (16, "digits", 3)
    assert settings["model_kwargs"]["alpha"] == 0.25 and settings["model_kwargs"]["balanced"] is True
    assert settings["learning_rate"] == 1e-3 and settings["model_kwargs"]["quantization"] == "log_cosh"
    assert len(record["history"]["loss"]) == 3
    assert os.path.exists(os.path.join(run_dir, "model.keras"))


def test_evaluate_prints_metrics_neighbours_and_writes_plot(run_dir, tmp_path, capsys):
    plot, report = str(tmp_path / "pr.png"), str(tmp_path / "m.json")
    assert main(["evaluate", run_dir, "--protocol", "digits", "--plot", plot, "--json", report]) == 0
    out = capsys.readouterr().out
    assert "mAP@all (retrieved, no_relevant=zero):" in out and "P@100:" in out
    assert "10 nearest database images" in out
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    result = json.load(open(report))
    assert 0.0 < result["map"] <= 1.0 and result["protocol"]["num_queries"] == 100
    assert len(result["pr_curve"]["precision"]) == 17  # radius 0..16


def test_encode_then_search_matches_brute_force(run_dir, tmp_path, capsys):
    db, index = str(tmp_path / "db.npy"), str(tmp_path / "db.thi")
    queries, found = str(tmp_path / "q.npy"), str(tmp_path / "nn.npz")
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "database", "--output", db, "--index", index]) == 0
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "query", "--output", queries]) == 0
    assert main(["search", index, "--queries", queries, "-k", "5", "--output", found]) == 0
    codes, q = np.load(db), np.load(queries)
    assert codes.dtype == np.uint8 and codes.shape == (1697, 2)
    result = np.load(found)
    # Brute force: Hamming distance to every database code; ids are the protocol's
    # database image indices, ties in database order.
    from tfhash.data import load_protocol

    database_ids = load_protocol("digits").split.database
    d = np.unpackbits(q[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result["ids"], database_ids[order])
    np.testing.assert_array_equal(result["distances"], np.take_along_axis(d, order, 1))
    # Radius search prints every database image within Hamming distance 1 of query 0.
    capsys.readouterr()
    assert main(["search", index, "--queries", queries, "--radius", "1", "-k", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    within = database_ids[d[0] <= 1]
    assert first.startswith(f"query 0: {len(within)} within radius 1, nearest 3: {within[np.argsort(d[0][d[0] <= 1], kind='stable')][:3].tolist()}")


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--recipe", "nope", "--output", str(tmp_path / "r")]) == 2
    assert "No published recipe 'nope'. Expected one of ['bgan_fashion_mnist_32'," in capsys.readouterr().err
    # A recipe of another method: `train` trains DHN and says what runs the rest.
    assert main(["train", "--recipe", "ugach_open_clip_art_32", "--output", str(tmp_path / "r")]) == 2
    assert "recipe 'ugach_open_clip_art_32' is 'ugach'. Run it with `tfhash.recipes.run`" in capsys.readouterr().err
    # A recipe file's model options reach the model, so a misspelt one is an error, not ignored.
    from tfhash import recipes

    recipe = recipes.published("dhn_fashion_mnist_32")
    recipe["model"]["alpah"] = 0.5
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(recipe))
    assert main(["train", "--recipe", str(path), *TINY, "--output", str(tmp_path / "r")]) == 2
    assert "Unrecognized keyword arguments passed to DHN: {'alpah': 0.5}" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing"), "--protocol", "digits"]) == 2
    assert "No model at" in capsys.readouterr().err
    bad = str(tmp_path / "q.npy")
    np.save(bad, np.zeros((3, 2), np.int64))
    index = str(tmp_path / "i.thi")
    from tfhash.index import HammingIndex

    idx = HammingIndex(16)
    idx.add(np.zeros((4, 2), np.uint8))
    idx.save(index)
    assert main(["search", index, "--queries", bad]) == 2
    err = capsys.readouterr().err
    assert "uint8" in err and "int64" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_training_with_two_local_processes(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "tfhash.cli", "train", *TINY, "--epochs", "2",
               "--strategy", "multi_worker", "--output", str(tmp_path / f"w{index}")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Only the chief (worker 0) writes the run; both trained as 2 replicas in sync.
    record = json.load(open(tmp_path / "w0" / "run.json"))
    assert record["settings"]["replicas"] == 2 and record["settings"]["strategy"] == "multi_worker"
    assert not (tmp_path / "w1" / "model.keras").exists()
    # Two workers with one replica each take the steps one device takes on the
    # same global batches (pairs over the gathered batch, synchronized batch norm).
    from tfhash import training

    _, history = training.train("dhn", "digits", bits=16, epochs=2, batch_size=50, verbose=0)
    np.testing.assert_allclose(record["history"]["loss"][0], history.history["loss"][0], rtol=1e-4)
