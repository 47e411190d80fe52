"""Nothing lost, nothing let through (issue 21): atomic writes under SIGKILL,
stale temporaries cleaned, training input validated before any work, a
diverged run saving nothing, encoders refusing what the served signature
refuses, damaged files reported in one line, configs that cannot steer file
access, and an absent dataset failing fast."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from tfhash import io, training
from tfhash.cli import main

TINY = ["--protocol", "digits", "--bits", "16", "--epochs", "1", "--batch-size", "50", "--quiet"]

# A child that rewrites one file forever, alternating two versions, each
# through `tfhash.io.save_arrays`; it says "ready" once the first is whole.
_REWRITER = """
import sys
import numpy as np
from tfhash.io import save_arrays
path = sys.argv[1]
versions = [np.full(4_000_000, v, np.uint8) for v in (1, 2)]  # 4 MB: a write takes milliseconds
save_arrays(path, versions[0])
print("ready", flush=True)
i = 1
while True:
    save_arrays(path, versions[i % 2])
    i += 1
"""


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_writer_killed_at_any_point_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "codes.npy"
    rng = np.random.default_rng(0)
    for _ in range(12):  # 12 kill points, 1-40 ms into the rewriting
        child = subprocess.Popen([sys.executable, "-c", _REWRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.001, 0.040))
        child.send_signal(signal.SIGKILL)
        child.wait()
        array = np.load(path, allow_pickle=False)  # whole: one version or the other, never a mix
        assert array.shape == (4_000_000,) and array[0] in (1, 2) and (array == array[0]).all()
    # The next write to the place removes what the killed writers left.
    io.save_arrays(path, np.zeros(3, np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["codes.npy"]


def test_stale_temporaries_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    target = tmp_path / "run.json"
    dead = tmp_path / f".run.json.{_dead_pid()}-00000000.partial.json"
    live = tmp_path / f".run.json.{os.getpid()}-11111111.partial.json"
    folder = tmp_path / f".run.json.{_dead_pid()}-22222222.partial"  # an interrupted export's folder
    other = tmp_path / f".other.json.{_dead_pid()}-33333333.partial.json"  # another target's: not ours to clean
    for p in (dead, live, other):
        p.write_text("{")
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"x")
    io.write_json({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, live.name, other.name])


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    io.write_json({"old": True}, path)

    def fail(partial):
        with open(partial, "w") as f:
            f.write('{"new": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_atomically(path, fail)
    assert json.loads(path.read_text()) == {"old": True} and os.listdir(tmp_path) == ["run.json"]


def test_every_writer_goes_through_one_of_the_two_writers(monkeypatch, tmp_path, digits_data):
    """Single files (codes, TFLite, a commit record) are written by `io.write_atomically`;
    the run directory's files are members of one `io.transaction`, committed together."""
    from tfhash.export import export_tflite
    from tfhash.models import DHN

    singles, members = [], []
    real_single, real_member = io.write_atomically, io.Transaction.write

    def single(path, write, suffix=""):
        singles.append(os.path.basename(os.fspath(path)))
        return real_single(path, write, suffix)

    def member(self, path, write, suffix=""):
        members.append(os.path.basename(os.fspath(path)))
        return real_member(self, path, write, suffix)

    monkeypatch.setattr(io, "write_atomically", single)
    monkeypatch.setattr(sys.modules["tfhash.export"], "write_atomically", single)
    monkeypatch.setattr(io.Transaction, "write", member)
    keras.utils.set_random_seed(0)
    net = DHN(bits=16, input_shape=(8, 8, 1))
    net.build((None, 8, 8, 1))
    result = training.Result({"name": "x"}, {"image": net.encoders()["image"]}, {}, 0.0, net, {"loss": [1.0]})
    training.save_run(result, str(tmp_path / "run"))
    io.save_arrays(tmp_path / "codes.npy", np.zeros((2, 2), np.uint8))
    export_tflite(net.encoders()["image"], str(tmp_path / "e.tflite"))
    assert members == ["image_encoder.keras", "run.json"]
    assert singles == [".run.commit", "codes.npy", "e.tflite"]


def test_train_onto_an_existing_run_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"recipe": "the user\'s"}')
    start = time.time()
    assert main(["train", "--method", "dhn", *TINY, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and err.count("\n") == 1
    assert time.time() - start < 10  # refused before loading data or training
    assert (out / "run.json").read_text() == '{"recipe": "the user\'s"}'


@pytest.mark.slow
def test_train_with_overwrite_replaces_the_run(tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", "--method", "dhn", *TINY, "--output", out]) == 0
    first = training.read_run(out)
    assert main(["train", "--method", "dhn", *TINY, "--seed", "1", "--output", out]) == 2
    assert main(["train", "--method", "dhn", *TINY, "--seed", "1", "--output", out, "--overwrite"]) == 0
    assert (first["recipe"]["seed"], training.read_run(out)["recipe"]["seed"]) == (0, 1)


@pytest.mark.parametrize("flag, value, expected", [
    ("--learning-rate", "nan", "must be float"),
    ("--learning-rate", "-0.001", "must be positive"),
    ("--learning-rate", "0", "must be positive"),
    ("--epochs", "0", "must be positive"),
    ("--batch-size", "-5", "must be positive"),
    ("--alpha", "-1", "must be non-negative"),
    ("--dropout", "1.0", "must be in [0, 1)"),  # drops every unit: no gradient reaches the trunk
])
def test_bad_hyper_parameters_are_refused_before_any_work(flag, value, expected, tmp_path, capsys):
    args = ["train", "--method", "dhn", "--protocol", "digits", "--output", str(tmp_path / "run")]
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_diverging_run_stops_exits_non_zero_and_saves_nothing(tmp_path, capsys):
    # Adam's first step moves every weight by about the learning rate: at 1e30
    # the next forward pass overflows float32 (max 3.4e38) in the first
    # products of 1e30-sized weights with 1e30-sized activations.
    out = tmp_path / "run"
    assert main(["train", "--method", "dhn", *TINY, "--learning-rate", "1e30", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Training diverged" in err and "Nothing was saved" in err
    assert not out.exists() or os.listdir(out) == []


def test_stop_on_non_finite_names_the_loss():
    from tfhash.callbacks import StopOnNonFinite, TrainingDiverged

    callback = StopOnNonFinite()
    callback.on_epoch_begin(2)
    callback.on_train_batch_end(0, {"loss": 0.5})
    with pytest.raises(TrainingDiverged, match=r"pairwise_loss = nan at epoch 3, step 8"):
        callback.on_train_batch_end(7, {"loss": 0.5, "pairwise_loss": float("nan")})


@pytest.fixture(scope="module")
def encoder():
    from tfhash.models import DHN

    keras.utils.set_random_seed(0)
    net = DHN(bits=16, input_shape=(8, 8, 1))
    net.build((None, 8, 8, 1))
    return net.encoders()["image"]


@pytest.mark.parametrize("images, expected", [
    (np.full((2, 8, 8, 1), 300.0), r"must hold pixel values 0-255. Received: dtype=float64, values in \[300.0, 300.0\]"),
    (np.full((2, 8, 8, 1), -50.0), r"must hold pixel values 0-255. Received: dtype=float64, values in \[-50.0, -50.0\]"),
    (np.linspace(0, 1, 128).reshape(2, 8, 8, 1), r"look normalized to \[0, 1\]: expected raw pixels on a 0-255 scale"),
])
def test_encode_refuses_what_the_exported_encoder_refuses_with_the_same_message(encoder, images, expected):
    from tfhash.export import as_uint8_images

    with pytest.raises(ValueError, match=expected) as keras_side:
        encoder.encode(images)
    with pytest.raises(ValueError) as served_side:
        as_uint8_images(images, (8, 8, 1))
    assert str(keras_side.value) == str(served_side.value)


def test_encode_takes_raw_pixels_whatever_their_dtype(encoder):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1))
    codes = encoder.encode(images.astype(np.uint8))
    np.testing.assert_array_equal(encoder.encode(images.astype(np.float32)), codes)
    np.testing.assert_array_equal(encoder.encode(np.zeros((3, 8, 8, 1), np.float32)).shape, codes.shape)


def test_damaged_model_files_are_reported_in_one_line(encoder, tmp_path, capsys):
    path = tmp_path / "model.keras"
    encoder.save(path)
    whole = path.read_bytes()
    cases = {
        "truncated.keras": whole[:1256],
        "empty.keras": b"",
        # A flipped byte in the zip's central directory (a member's name), and one in the weights.
        "flipped_name.keras": whole[:-30] + bytes([whole[-30] ^ 0xFF]) + whole[-29:],
        "flipped_data.keras": whole[:5000] + bytes([whole[5000] ^ 0xFF]) + whole[5001:],
    }
    for name, content in cases.items():
        damaged = tmp_path / name
        damaged.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable .keras archive"):
            training.load_model(str(damaged))
        assert main(["encode", str(damaged), "--protocol", "digits", "--output", str(tmp_path / "c.npy")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tfhash encode: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_a_loaded_config_never_opens_the_weights_it_names(encoder, tmp_path):
    """A crafted archive whose config names weights (a path here; "imagenet"
    would download) loads without reading them: weights come from the archive."""
    path = tmp_path / "model.keras"
    encoder.save(path)
    crafted = tmp_path / "crafted.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(crafted, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(content)
                config["config"]["backbone_weights"] = str(tmp_path / "no_such_weights.h5")
                content = json.dumps(config).encode()
            target.writestr(item, content)
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_array_equal(training.load_model(str(crafted)).encode(images), encoder.encode(images))


def test_an_absent_unreachable_dataset_fails_within_seconds(monkeypatch, tmp_path):
    from tfhash.data import remote
    from tfhash.data.cifar10 import load_cifar10

    monkeypatch.setattr(remote, "reachable", lambda url, timeout=remote.PROBE_SECONDS: False)
    start = time.time()
    with pytest.raises(FileNotFoundError, match=r"'cifar10' is not prepared in .* cannot be reached.*--data-dir"):
        load_cifar10(str(tmp_path))
    assert time.time() - start < 10


def test_reachable_gives_up_within_its_timeout():
    # A closed port on this machine: refused at once, never a long retry.
    start = time.time()
    assert remote_reachable("http://127.0.0.1:9/") is False
    assert time.time() - start < 5


def remote_reachable(url):
    from tfhash.data.remote import reachable

    return reachable(url, timeout=1.0)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (5,"])
def test_damaged_arrays_are_reported_in_one_line(encoder, tmp_path, capsys, content):
    model = tmp_path / "model.keras"
    encoder.save(model)
    damaged = tmp_path / "inputs.npy"
    damaged.write_bytes(content)
    assert main(["encode", str(model), "--inputs", str(damaged), "--output", str(tmp_path / "codes.npy")]) == 2
    err = capsys.readouterr().err
    assert f"expected inputs in a .npy file (np.save). Received: an unreadable file of {len(content)} bytes" in err
    assert err.count("\n") == 1 and not (tmp_path / "codes.npy").exists()


def test_max_epochs_caps_every_trainer_and_says_so(digits_data, monkeypatch, capsys):
    from tfhash.data import pairwise_batches
    from tfhash.models import DHN

    monkeypatch.setenv("TFHASH_MAX_EPOCHS", "1")
    net = DHN(bits=16, input_shape=(8, 8, 1))
    net.compile(optimizer="adam")
    images, labels = digits_data.subset("train")
    history = net.fit(pairwise_batches(images, labels, 100), epochs=30, verbose=0)
    assert len(history.history["loss"]) == 1 and "TFHASH_MAX_EPOCHS=1: training 1 of 30 epochs" in capsys.readouterr().out
    monkeypatch.setenv("TFHASH_MAX_EPOCHS", "zero")
    with pytest.raises(ValueError, match="TFHASH_MAX_EPOCHS must be a positive int. Received: 'zero'"):
        net.fit(pairwise_batches(images, labels, 100), epochs=2, verbose=0)
