"""The `tfhash` command end to end on the digits protocol."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import method_checks
from tfhash import registry, training
from tfhash.cli import main

# Any setting is a flag too: --batch-size reaches the method's batch_size.
TINY = ["--protocol", "digits", "--bits", "16", "--epochs", "3", "--batch-size", "50", "--quiet"]


def _map_of_saved_encoder(run_dir):
    from tfhash.data import load_protocol

    data = load_protocol("digits")
    encoder = training.load_model(run_dir)
    (queries, query_labels), (database, database_labels) = data.subset("query"), data.subset("database")
    return method_checks.map_by_hand(encoder.encode(queries), encoder.encode(database), query_labels, database_labels)


try:  # imported here, not under capsys: pymilvus's import reconfigures logging (dictConfig), closing handlers
    import pymilvus
except ImportError:
    pymilvus = None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    assert main(["train", "--recipe", "dhn_fashion_mnist_32", *TINY, "--output", out]) == 0
    return out


@pytest.mark.slow
def test_train_writes_the_encoder_and_run_record(run_dir):
    record = training.read_run(run_dir)
    # Flags override the recipe (protocol, bits, epochs, batch size); the rest comes from it, then DHN's defaults.
    recipe, settings = record["recipe"], record["recipe"]["settings"]
    assert (recipe["method"], recipe["bits"], recipe["protocol"], settings["epochs"]) == ("dhn", 16, "digits", 3)
    assert recipe["name"] == "dhn_digits_16" and settings["batch_size"] == 50
    assert settings["alpha"] == 0.25 and settings["balanced"] is True
    assert settings["learning_rate"] == 1e-3 and settings["quantization"] == "log_cosh"
    assert len(record["history"]["loss"]) == 3
    assert sorted(f for f in os.listdir(run_dir) if f.endswith(".keras")) == ["image_encoder.keras"]
    # The recorded score is the saved encoder's mAP@all on the protocol's queries (the
    # digits' metric), recomputed here from its codes apart from tfhash.metrics.
    assert record["scores"]["image"]["map"] == pytest.approx(_map_of_saved_encoder(run_dir), rel=method_checks.MAP_RTOL)


@pytest.mark.slow
def test_evaluate_prints_metrics_neighbours_and_writes_plot(run_dir, tmp_path, capsys):
    plot, report = str(tmp_path / "pr.png"), str(tmp_path / "m.json")
    assert main(["evaluate", run_dir, "--protocol", "digits", "--plot", plot, "--json", report]) == 0
    out = capsys.readouterr().out
    assert "mAP@all (retrieved, no_relevant=zero):" in out and "P@100:" in out
    assert "10 nearest database images" in out
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    result = json.load(open(report))
    assert result["protocol"]["num_queries"] == 100 and result["map_k"] == "all"
    # The saved encoder's mAP@all recomputed from its codes, and the score train recorded.
    expected = _map_of_saved_encoder(run_dir)
    assert result["map"] == pytest.approx(expected, rel=method_checks.MAP_RTOL)
    assert result["map"] == pytest.approx(training.read_run(run_dir)["scores"]["image"]["map"], rel=method_checks.MAP_RTOL)
    assert f"mAP@all (retrieved, no_relevant=zero): {result['map']:.4f}" in out
    assert len(result["pr_curve"]["precision"]) == 17  # radius 0..16


@pytest.mark.slow
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
    # Multi-index hashing finds the same neighbours, ties in the same order.
    assert main(["search", index, "--queries", queries, "-k", "5", "--method", "mih", "--output", found]) == 0
    np.testing.assert_array_equal(np.load(found)["ids"], database_ids[order])
    # Radius search prints every database image within Hamming distance 1 of query 0.
    capsys.readouterr()
    assert main(["search", index, "--queries", queries, "--radius", "1", "-k", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    within = database_ids[d[0] <= 1]
    assert first.startswith(f"query 0: {len(within)} within radius 1, nearest 3: {within[np.argsort(d[0][d[0] <= 1], kind='stable')][:3].tolist()}")


@pytest.mark.slow
def test_encode_into_milvus_then_search_it_as_the_index_file(run_dir, tmp_path, capsys):
    if pymilvus is None or importlib.util.find_spec("milvus_lite") is None:
        pytest.skip('needs `pip install "tfhash[milvus]"`')
    index, milvus = str(tmp_path / "db.thi"), f"milvus:{tmp_path / 'codes.db'}#digits"
    queries, found, found_milvus = (str(tmp_path / name) for name in ("q.npy", "nn.npz", "nn_milvus.npz"))
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "database", "--index", index]) == 0
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "database", "--index", milvus]) == 0
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "query", "--output", queries]) == 0
    capsys.readouterr()
    # 16-bit codes of 1,697 digits: many exact ties, which Milvus must break as the file index does.
    assert main(["search", index, "--queries", queries, "-k", "20", "--output", found]) == 0
    assert main(["search", milvus, "--queries", queries, "-k", "20", "--output", found_milvus]) == 0
    for key in ("distances", "ids"):
        np.testing.assert_array_equal(np.load(found_milvus)[key], np.load(found)[key])
    assert main(["search", milvus, "--queries", queries, "--method", "auto"]) == 2
    assert "--method chooses how a Hamming index file is searched" in capsys.readouterr().err
    # A second encode into the same collection would add every row twice: refused in one line.
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "database", "--index", milvus]) == 2
    assert "Expected an empty or new Milvus collection" in capsys.readouterr().err


@pytest.mark.slow
def test_train_any_method_then_evaluate_the_run(tmp_path, capsys):
    """`tfhash train --method`: the one training path for every method, to a run directory `evaluate` reads."""
    out = str(tmp_path / "bgan")
    assert main(["train", "--method", "bgan", "--protocol", "digits", "--bits", "16", "--epochs", "1", "--quiet",
                 "--output", out]) == 0
    record = training.read_run(out)
    recipe = record["recipe"]
    assert (recipe["method"], recipe["bits"], recipe["protocol"]) == ("bgan", 16, "digits")
    # Unflagged settings are BGAN's defaults.
    assert recipe["settings"] == {**registry.get("bgan").defaults(), "epochs": 1}
    assert sorted(f for f in os.listdir(out) if f.endswith(".keras")) == ["image_encoder.keras"]
    capsys.readouterr()
    # The run names its protocol: evaluate needs no --protocol.
    assert main(["evaluate", out]) == 0
    assert "image: mAP@all (retrieved, no_relevant=zero):" in capsys.readouterr().out


def test_a_misspelt_setting_flag_fails_before_training_naming_the_known_ones(tmp_path, capsys, monkeypatch):
    # Training would build the method's plan first: make that fail loudly.
    monkeypatch.setattr(registry.Method, "plan_function", lambda self: pytest.fail("trained despite the typo"))
    out = tmp_path / "r"
    assert main(["train", "--method", "bgan", "--protocol", "digits", "--bits", "16", "--epochs", "1",
                 "--g-learning-rat", "1e-4", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tfhash train: error: Unknown setting ['g_learning_rat'] for method 'bgan'. Expected one of: " in err
    assert str(sorted(registry.get("bgan").defaults())) in err and not out.exists()


def test_methods_lists_the_registry_and_one_methods_settings_with_their_meanings(capsys):
    assert main(["methods"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]  # under the header
    assert [row.split()[0] for row in rows] == registry.names()
    assert main(["methods", "dhn"]) == 0
    out = capsys.readouterr().out
    assert "DHN: supervised, image." in out
    # DHN's docstring documents alpha; the record, the training settings.
    assert "  --alpha 1.0: scale of the inner product in the pairwise loss (paper: 1)." in out
    assert "  --epochs 30: passes over the training split" in out


def test_methods_name_loads_no_tensorflow():
    """`tfhash methods NAME` reads the trainer's settings from its source (tfhash.signatures)."""
    code = ("import sys; from tfhash.cli import main; "
            "[main(['methods', name]) for name in __import__('tfhash.registry').registry.names()]; "
            "print('LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'LIGHT')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "LIGHT", done.stderr[-2000:]
    assert done.stderr == ""  # no TensorFlow start-up lines either


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--recipe", "nope", "--output", str(tmp_path / "r")]) == 2
    assert "No published recipe 'nope'. Expected one of ['bgan_fashion_mnist_32'," in capsys.readouterr().err
    # A recipe of another method than the one named.
    assert main(["train", "--method", "dhn", "--recipe", "ugach_open_clip_art_32",
                 "--output", str(tmp_path / "r")]) == 2
    assert "Recipe 'ugach_open_clip_art_32' trains 'ugach', not 'dhn'." in capsys.readouterr().err
    # A recipe file's settings reach the method, so a misspelt one is an error, not ignored.
    from tfhash import recipes

    recipe = recipes.published("dhn_fashion_mnist_32")
    recipe["settings"]["alpah"] = 0.5
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(recipe))
    assert main(["train", "--recipe", str(path), *TINY, "--output", str(tmp_path / "r")]) == 2
    assert "typo.json: Unknown setting ['alpah'] for method 'dhn'. Expected one of: [" in capsys.readouterr().err
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


def _free_ports(n):
    """n distinct ports free at this moment. The workers' gRPC servers bind
    0.0.0.0, so the ports are probed there; all n are held together so none repeats."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _train_two_workers(folder, argv, timeout=300):
    """`tfhash train ARGV --strategy multi_worker` as both workers of a local
    cluster, each writing to folder/w0, folder/w1; returns (exit codes, outputs).

    A worker that fails stops the other, which would wait for its peer until the timeout.
    """
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs, logs = [], [folder / f"w{index}.log" for index in range(2)]
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "tfhash.cli", "train", *argv, "--strategy", "multi_worker",
               "--output", str(folder / f"w{index}")]
        with open(logs[index], "w") as log:  # a file, not a pipe: nothing blocks on a full pipe while we poll
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs]


@pytest.mark.slow
def test_multi_worker_training_with_two_local_processes(tmp_path):
    argv = ["--method", "dhn", *TINY, "--epochs", "2"]
    for attempt in range(2):
        # The ports are free when chosen but released before the workers bind
        # them, seconds later (each worker must know the others' host:port in
        # advance, so none can bind port 0): another process may take one
        # meanwhile. That worker then cannot start its server and exits; run
        # the cluster once more on fresh ports, where a second collision is
        # negligible. (Holding the ports with SO_REUSEPORT until the workers
        # bind would rely on gRPC's socket options; a retry relies on nothing.)
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        codes, outputs = _train_two_workers(folder, argv)
        if not any("Could not start gRPC server" in out for out in outputs):
            break
    assert codes == [0, 0], outputs
    # Only the chief (worker 0) writes the run; both trained as 2 replicas in sync.
    record = training.read_run(str(folder / "w0"))
    assert record["replicas"] == 2 and record["strategy"] == tf.distribute.MultiWorkerMirroredStrategy.__name__
    assert os.path.exists(folder / "w0" / "image_encoder.keras") and not (folder / "w1").exists()
    assert len(record["history"]["loss"]) == 2
    # Two workers with one replica each take the steps one device takes on the
    # same global batches (pairs over the gathered batch, synchronized batch
    # norm), up to the order of the float32 sums in the all-reduce. Adam
    # amplifies that: its first steps are about lr * sign(gradient) per weight,
    # so a weight whose gradient is near zero may step either way, and which do
    # depends on the CPU's summation (vector width, FMA). So the first epoch's
    # mean loss agrees to no fixed number of digits: 8e-7 relative here
    # (2 cores, AVX-512), more than 1e-4 on another machine, and the second
    # epoch's 2e-3 here. 1e-2 leaves room for any CPU's order while still
    # meaning "the same run": a 2x loss scaling is far outside it, and another
    # seed's run lands 1.5e-2 away (measured). Exact step equivalence is the
    # in-process MirroredStrategy tests' job.
    one = training.train("dhn", "digits", bits=16, epochs=2, batch_size=50, verbose=0, score=False)
    np.testing.assert_allclose(record["history"]["loss"][0], one.history["loss"][0], rtol=1e-2)


@pytest.mark.slow
def test_evaluate_show_writes_the_neighbours_picture(run_dir, tmp_path):
    from PIL import Image

    picture = tmp_path / "neighbours.png"
    assert main(["evaluate", run_dir, "--protocol", "digits", "--show", str(picture), "--quiet"]) == 0
    with Image.open(picture) as image:
        assert image.width > image.height > 0  # 5 query rows, a query and 10 neighbours per row


@pytest.mark.slow
def test_evaluate_reuses_the_database_codes_of_an_unchanged_model(run_dir, monkeypatch, capsys):
    from tfhash.models import base

    assert main(["evaluate", run_dir, "--protocol", "digits", "--quiet"]) == 0
    first = capsys.readouterr().out
    (cached,) = os.listdir(os.path.join(run_dir, "codes"))
    encoded = []
    real = base.HashModel.encode
    monkeypatch.setattr(base.HashModel, "encode", lambda self, x, **kw: encoded.append(len(x)) or real(self, x, **kw))
    assert main(["evaluate", run_dir, "--protocol", "digits", "--quiet"]) == 0
    assert encoded == [100]  # the 100 digits queries only; the 1,697 database codes came from codes/
    assert capsys.readouterr().out == first and os.listdir(os.path.join(run_dir, "codes")) == [cached]


@pytest.mark.slow
def test_encode_database_shares_the_runs_codes_with_evaluate(run_dir, tmp_path, monkeypatch):
    from tfhash.data import load_protocol
    from tfhash.models import base

    assert main(["evaluate", run_dir, "--protocol", "digits", "--quiet"]) == 0
    encoded = []
    real = base.HashModel.encode
    monkeypatch.setattr(base.HashModel, "encode", lambda self, x, **kw: encoded.append(len(x)) or real(self, x, **kw))
    output = str(tmp_path / "database.npy")
    assert main(["encode", run_dir, "--protocol", "digits", "--output", output, "--quiet"]) == 0
    assert encoded == []  # evaluate's 1,697 database codes, read from codes/
    assert main(["encode", run_dir, "--protocol", "digits", "--part", "query", "--output", output, "--quiet"]) == 0
    assert encoded == [100]  # other parts are encoded
    # What encode wrote equals encoding the database now.
    model = training.load_model(run_dir)
    assert main(["encode", run_dir, "--protocol", "digits", "--output", output, "--quiet"]) == 0
    data = load_protocol("digits")
    np.testing.assert_array_equal(np.load(output), real(model, data.subset("database")[0]))
