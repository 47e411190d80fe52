"""Reliability figures (issues 21, 27): writers killed mid-write, results of several files killed
between their files, several processes on one result, bad inputs, a bounded load on `tfhash serve`,
bounded waits.

    .venv/bin/python bench/reliability.py [--kills 20] [--slow-kills 8] [--clients 16] [--requests 50]
        [--result-kills 6] [--updates 40] [--slow-clients 8 64] [--seed 0] [--sections 1,2,3,4,5]
        [--output bench/results/reliability.json]
    .venv/bin/python bench/reliability.py --quick --output /tmp/reliability.json   # smoke run

Prints five figures, each with its target:

1. Files lost per writer (target 0). For each way tfhash writes a file
   (`io.write_json`, `io.save_arrays`, a Keras `.keras` save through
   `io.write_atomically`, `export.export_tflite`, `HammingIndex.save`,
   `export.export_savedmodel`), a child process writes version A, then
   rewrites its target forever, alternating versions A and B, and is SIGKILLed
   at a seeded random point: uniform in [1, W] ms after it says it is ready,
   W = max(40 ms, one write's duration, measured once per writer). The target
   must then load whole as A or B (a SavedModel writer makes a new version each
   time: every all-digit version folder must load as A or B, a killed one being
   absent). After the kills, one more normal write must leave no stale
   temporary beside the target (target 0: each write removes the temporaries
   of dead writers first). `temp seen` counts the kills that left a temporary
   beside the target (they interrupted the write-and-rename step); `tmp dir`
   counts what the killed children left in their TMPDIR (Keras's, TensorFlow's
   and `export_tflite`'s scratch files: not beside the target, so no write
   removes them; not a lost file, listed by pattern under the row).
2. Bad inputs let through (target 0): each bad input must be refused with a
   ValueError / FileExistsError whose message is one line, or, for the CLI
   (`tfhash.cli.main` in-process), exit code 2 with exactly one stderr line and
   no traceback.
3. A bounded load test against `tfhash serve` (a subprocess): C client threads
   x R Predict requests of 32 images each, through the stock TF Serving stub;
   unexpected errors (target 0), p50/p99 latency, and the server's RSS before
   and after (bounded: no growth beyond the model's working set). Probes:
   max_batch + 1 rows must get RESOURCE_EXHAUSTED; shapes with no values must
   be refused at once, before anything is decoded.

4. Results of several files (target 0 lost, 0 mixed, 0 stale): a run directory
   (`training.save_run`), an encode's codes and index (`tfhash encode --output
   --index`), a zoo entry (`publish.publish`, its training replaced by two fixed
   results of 32 and 16 bits) and a Retriever folder are rewritten A, B, A, ...
   by a child SIGKILLed at a random point, or aimed: just after a commit's
   first member is renamed into place, before the next. Each must then read
   through tfhash's own readers as A or B, whole (`mixed`: parts of both).
   Then two processes each add rows to one Retriever folder through
   `Retriever.update` while a third loads it in a loop (lost rows, rows whose
   metadata belongs to another writer's code), and two `tfhash train` start
   on one new `--output` (exactly one may succeed).
5. Bounded waits (target 0 blocked, nothing left): `zoo.download` from a
   server that sends the manifest and stalls on the file (1 s timeout), and
   normal Predicts beside 8 and 64 slow gRPC clients (`bench/slow_clients.py`).

TensorFlow is imported inside the functions that need it, so the children of
the light writers (JSON, NumPy, index) start in well under a second.
"""

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfhash.io import save_arrays, write_atomically, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (8, 8, 1)
PROBE = np.random.default_rng(0).integers(0, 256, (8, *IMAGE_SHAPE), dtype=np.uint8)
PROBE_CODES = np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)  # 32-bit index queries
KILL_WINDOW_MS = 40  # at least: kill points uniform in [1, max(40, one write)] ms after "ready"
READY_TIMEOUT_S = 300


def digest(*parts):
    """A short sha256 of strings / bytes / arrays: the identity of a loaded version."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray) else str(part).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# 1. Writers killed mid-write
# ----------------------------------------------------------------------------


def encoder(seed, bits=16):
    """A small DHN image encoder (16 bits, 8x8x1 images) with seeded weights."""
    import keras

    from tfhash.models import DHN

    keras.utils.set_random_seed(seed)
    net = DHN(bits=bits, input_shape=IMAGE_SHAPE)
    net.build((None, *IMAGE_SHAPE))
    return net.encoders()["image"]


def json_versions():
    rng = [np.random.default_rng(s) for s in (1, 2)]
    return [{"version": v, "history": r.random(n).tolist()} for v, r, n in zip("AB", rng, (50_000, 60_000))]


def array_versions():
    return [np.random.default_rng(s).integers(0, 256, (n, 4), dtype=np.uint8) for s, n in ((1, 200_000), (2, 250_000))]


def index_versions():
    from tfhash.index import HammingIndex

    indexes = []
    for codes in array_versions():
        index = HammingIndex(32)
        index.add(codes)
        indexes.append(index)
    return indexes


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return digest(json.dumps(json.load(f), sort_keys=True))


def load_array(path):
    array = np.load(path, allow_pickle=False)
    return digest(array.shape, array)


def load_index(path):
    from tfhash.index import HammingIndex

    index = HammingIndex.load(path)
    return digest(index.ntotal, *index.search(PROBE_CODES, 10))


def load_keras(path):
    import keras

    import tfhash.models  # noqa: F401  (registers the classes for deserialization)

    model = keras.saving.load_model(path)
    return digest(keras.ops.convert_to_numpy(model(PROBE, training=False)))  # a call: no predict() retracing


def load_tflite(path):
    from tfhash.export import TFLiteEncoder

    return digest(TFLiteEncoder(path).encode_real(PROBE))


def load_savedmodel(version_dir):
    import tensorflow as tf

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    return digest(signature(images=tf.constant(PROBE))["codes"].numpy())


def save_keras(model, path):
    """What `training.save_run` and `publish` do."""
    write_atomically(path, model.save, suffix=".keras")


def save_tflite(model, path):
    from tfhash.export import export_tflite

    export_tflite(model, path)


def save_savedmodel(model, model_dir):
    """A new version folder under `model_dir` (versions are immutable)."""
    from tfhash.export import export_savedmodel

    export_savedmodel(model, os.path.dirname(model_dir), os.path.basename(model_dir))


@dataclasses.dataclass(frozen=True)
class Writer:
    """One way tfhash writes a file: its versions A and B, how to write one, how to load one."""

    label: str
    target: str  # file name (for "savedmodel": the model folder holding the versions)
    versions: Callable  # () -> [A, B]
    write: Callable  # (version, path) -> None
    load: Callable  # path -> identity (a digest); raises if the file does not load whole
    slow: bool = False  # imports TensorFlow; fewer kills, kill window from one write's duration


WRITERS = {
    "json": Writer("io.write_json", "run.json", json_versions, lambda obj, path: write_json(obj, path), load_json),
    "arrays": Writer("io.save_arrays", "codes.npy", array_versions, lambda a, path: save_arrays(path, a), load_array),
    "keras": Writer("keras .keras save", "encoder.keras", lambda: [encoder(1), encoder(2)], save_keras, load_keras,
                    slow=True),
    "tflite": Writer("export_tflite", "encoder.tflite", lambda: [encoder(1), encoder(2)], save_tflite, load_tflite,
                     slow=True),
    "index": Writer("HammingIndex.save", "codes.tfhi", index_versions, lambda index, path: index.save(path),
                    load_index),
    "savedmodel": Writer("export_savedmodel", "encoder", lambda: [encoder(1), encoder(2)], save_savedmodel,
                         load_savedmodel, slow=True),
}


def reference_path(kind, refs, name, loadable=False):
    """Where the first child writes version `name` ("A", "B") once, for comparison
    (`loadable`: the path to load it from: a SavedModel's version folder)."""
    if kind == "savedmodel":
        return os.path.join(refs, name, "1") if loadable else os.path.join(refs, name)
    return os.path.join(refs, f"{name}.{WRITERS[kind].target}")


def child(kind, folder, refs):
    """Child mode: (first child only: writes versions A and B as references), writes
    A to the target, times one write of B, prints `ready SECONDS`, then rewrites the
    target forever (A, B, A, ...) until killed."""
    writer = WRITERS[kind]
    versions = writer.versions()
    target = os.path.join(folder, writer.target)
    if refs:
        os.makedirs(refs, exist_ok=True)
        for name, version in zip("AB", versions):
            writer.write(version, reference_path(kind, refs, name))
    writer.write(versions[0], target)
    start = time.perf_counter()
    writer.write(versions[1], target)
    print("ready", time.perf_counter() - start, flush=True)
    for i in itertools.count():
        writer.write(versions[i % 2], target)


def start_child(kind, folder, refs, tmpdir, log):
    """Starts a writer child; returns (process, seconds of one write) once it is ready."""
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, folder]
    if refs:
        command += ["--refs", refs]
    env = {**os.environ, "TMPDIR": tmpdir, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    watchdog = threading.Timer(READY_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith("ready"):
                return proc, float(line.split()[1])
        raise RuntimeError(f"{kind} writer exited before it was ready (see {log.name})")
    except BaseException:
        stop(proc)
        raise
    finally:
        watchdog.cancel()


def stop(proc):
    """SIGKILL, then reap (so its pid is gone when the next writer looks)."""
    proc.kill()
    proc.wait()
    proc.stdout.close()


def leftover_kinds(names):
    """{"tfhash-tflite-*": 2, ...}: leftover names with their random part as `*`."""
    return dict(collections.Counter(re.sub(r"[a-z0-9_]{8}(\.py)?$", "*", name) for name in names))


def temporaries(kind, folder):
    """Entries beside the target that are not the target: a writer's temporaries."""
    if kind == "savedmodel":
        model_dir = os.path.join(folder, WRITERS[kind].target)
        names = os.listdir(model_dir) if os.path.isdir(model_dir) else []
        return [n for n in names if not re.fullmatch(r"\d+", n)]
    return [n for n in os.listdir(folder) if n != WRITERS[kind].target]


def lost_files(kind, folder, known, checked):
    """Targets that do not load whole as A or B: 0 or 1 for a file; for SavedModels,
    the version folders (all-digit names) not checked before that do not."""
    writer = WRITERS[kind]
    target = os.path.join(folder, writer.target)
    if kind != "savedmodel":
        paths = [target]
    else:
        versions = {n for n in os.listdir(target) if re.fullmatch(r"\d+", n)} if os.path.isdir(target) else set()
        paths = [os.path.join(target, v) for v in sorted(versions - checked, key=int)]
        checked |= versions
    lost = []
    for path in paths:
        try:
            if writer.load(path) not in known:
                lost.append(f"{os.path.basename(path)}: loads as neither A nor B")
        except Exception as error:  # noqa: BLE001  (any failure to load is a lost file)
            lost.append(f"{os.path.basename(path)}: {type(error).__name__}: {' '.join(str(error).split())[:120]}")
    return lost


def kill_writer(kind, kills, rng, root):
    """Kills `kills` writer children of `kind` at random points; returns the writer's row."""
    writer = WRITERS[kind]
    folder, refs, tmpdir = (os.path.join(root, f"{kind}{s}") for s in ("", "-refs", "-tmpdir"))
    for path in (folder, tmpdir):
        os.makedirs(path)
    window_ms, known, checked, lost, temp_seen, delays = None, None, set(), [], 0, []
    with open(os.path.join(root, f"{kind}-children.log"), "w") as log:
        for kill in range(kills):
            proc, write_seconds = start_child(kind, folder, refs if kill == 0 else None, tmpdir, log)
            try:
                if window_ms is None:  # measured once, by the first child
                    window_ms = max(KILL_WINDOW_MS, 1000 * write_seconds)
                delay = float(rng.uniform(1, window_ms))
                time.sleep(delay / 1000)
            finally:
                stop(proc)
            delays.append(round(delay, 1))
            if known is None:
                known = {writer.load(reference_path(kind, refs, name, loadable=True)) for name in "AB"}
                if len(known) != 2:
                    raise RuntimeError(f"{kind}: versions A and B load the same; a loss could pass unseen")
            temp_seen += bool(temporaries(kind, folder))
            lost += lost_files(kind, folder, known, checked)
    # One more normal write: it must remove what the killed writers left, and load whole.
    version_a = writer.versions()[0]
    writer.write(version_a, os.path.join(folder, writer.target))
    lost += lost_files(kind, folder, known, checked)
    stale = temporaries(kind, folder)
    return {
        "writer": writer.label, "target": writer.target, "kills": kills, "window_ms": round(window_ms, 1),
        "delays_ms": delays, "temp_seen": temp_seen, "files_lost": len(lost), "lost": lost,
        "stale_temporaries": len(stale), "stale": stale, "tmp_dir_leftovers": leftover_kinds(os.listdir(tmpdir)),
    }


def kill_points(args, root):
    """Section 1: files lost per writer (target 0) and stale temporaries after the next write (target 0)."""
    rng = np.random.default_rng(args.seed)
    print(f"\n1. Writers SIGKILLed at random points (uniform in [1, W] ms after ready, W = max({KILL_WINDOW_MS} ms, "
          f"one write)); target 0 lost, 0 stale")
    print(f"{'writer':20s} {'target':15s} {'kills':>5s} {'W ms':>6s} {'temp seen':>9s} {'lost':>5s} {'stale':>5s} "
          f"{'tmp dir':>7s}")
    rows = []
    for kind, writer in WRITERS.items():
        row = kill_writer(kind, args.slow_kills if writer.slow else args.kills, rng, root)
        rows.append(row)
        leftovers = row["tmp_dir_leftovers"]
        print(f"{row['writer']:20s} {row['target']:15s} {row['kills']:5d} {row['window_ms']:6.0f} "
              f"{row['temp_seen']:9d} {row['files_lost']:5d} {row['stale_temporaries']:5d} "
              f"{sum(leftovers.values()):7d}")
        for problem in row["lost"] + [f"stale: {name}" for name in row["stale"]]:
            print(f"    {problem}")
        if leftovers:
            print("    tmp dir: " + ", ".join(f"{count} {pattern}" for pattern, count in leftovers.items()))
    return rows


# ----------------------------------------------------------------------------
# 2. Bad inputs
# ----------------------------------------------------------------------------


def expect_error(call):
    """(problem, answer): problem None if `call()` raises ValueError / FileExistsError
    / ZooError with a one-line message (the answer), else what happened."""
    from tfhash.zoo import ZooError

    try:
        result = call()
    except (ValueError, FileExistsError, ZooError) as error:
        message = str(error).strip()
        if not message or "\n" in message:
            return f"{type(error).__name__} without a one-line message: {message[:100]!r}", message
        return None, f"{type(error).__name__}: {message}"
    except BaseException as error:  # noqa: BLE001  (MemoryError, TypeError, ...: not a clear refusal)
        return f"{type(error).__name__}: {' '.join(str(error).split())[:100]}", str(error)
    return f"accepted, returned {type(result).__name__}", None


@contextlib.contextmanager
def captured_stderr():
    """Everything written to stderr meanwhile (file descriptor 2: Python and native logs alike)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 2)
        out = io.StringIO()
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            out.write(capture.read())


def expect_cli_refusal(argv, limit_s=None):
    """(problem, stderr): problem None if `tfhash.cli.main(argv)` exits 2 with
    exactly one stderr line, no traceback (and within `limit_s`), else what happened."""
    from tfhash import cli

    start = time.perf_counter()
    with captured_stderr() as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        except BaseException as error:  # noqa: BLE001
            code = f"{type(error).__name__}: {' '.join(str(error).split())[:100]}"
    seconds = time.perf_counter() - start
    stderr = err.getvalue()
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code != 2:
        problem = f"exit {code!r}" + (f"; stderr {lines[-1][:100]!r}" if lines else "")
    elif any("Traceback" in line for line in lines) or len(lines) != 1:
        problem = f"{len(lines)} stderr lines: " + " | ".join(line[:80] for line in lines[:3])
    elif limit_s is not None and seconds > limit_s:
        problem = f"refused after {seconds:.1f} s (limit {limit_s} s)"
    else:
        problem = None
    return problem, stderr.strip()


def bounded_search():
    """(problem, answer): problem None if k=2**40 on a 3-code index answers with at most
    3 columns, else what happened."""
    from tfhash.index import HammingIndex

    index = HammingIndex(8)
    index.add(np.array([[0], [1], [3]], np.uint8))
    try:
        distances, _ = index.search(np.zeros((1, 1), np.uint8), 2**40)
    except BaseException as error:  # noqa: BLE001
        return f"{type(error).__name__}: {str(error)[:100]}", None
    answer = f"{distances.shape[1]} columns"
    return (None if distances.shape[1] <= 3 else f"answered {answer}"), answer


def index_with_header(path, source, **fields):
    """Copies the index file `source` with header fields replaced (bits, n) and the
    header CRC recomputed, so only the bounds checks can refuse it."""
    from tfhash.index import _HEADER  # magic, version, bits, flags, n; then a CRC-32 of those

    with open(source, "rb") as f:
        content = f.read()
    magic, version, bits, flags, n = _HEADER.unpack_from(content)
    values = {"bits": bits, "n": n, **fields}
    header = _HEADER.pack(magic, version, values["bits"], flags, values["n"])
    with open(path, "wb") as f:
        f.write(header + struct.pack("<I", zlib.crc32(header)) + content[_HEADER.size + 4 :])
    return path


def bad_input_cases(folder):
    """[(name, check)]: each check returns (problem, answer), problem None when the bad
    input is refused clearly (or, for k=2**40, answered within the index's size)."""
    from tfhash.index import HammingIndex

    model = encoder(1)
    files = {name: os.path.join(folder, name) for name in
             ("good.keras", "truncated.keras", "images.npy", "empty.npy", "codes.tfhi", "queries.npy", "existing")}
    save_keras(model, files["good.keras"])
    with open(files["good.keras"], "rb") as f:
        content = f.read()
    with open(files["truncated.keras"], "wb") as f:
        f.write(content[: len(content) // 2])
    save_arrays(files["images.npy"], PROBE)
    open(files["empty.npy"], "wb").close()
    index = HammingIndex(16)
    index.add(np.random.default_rng(0).integers(0, 256, (3, 2), dtype=np.uint8))
    index.save(files["codes.tfhi"])
    save_arrays(files["queries.npy"], np.zeros((2, 2), np.uint8))
    os.makedirs(files["existing"])
    write_json({"recipe": {"method": "dhn"}}, os.path.join(files["existing"], "run.json"))
    huge_bits = index_with_header(os.path.join(folder, "bits31.tfhi"), files["codes.tfhi"], bits=2**31)
    huge_n = index_with_header(os.path.join(folder, "n60.tfhi"), files["codes.tfhi"], n=2**60)

    def images(value, dtype=np.float32, shape=(2, *IMAGE_SHAPE)):
        return np.full(shape, value, dtype)

    nan = images(100.0)
    nan[1, 3, 3, 0] = np.nan
    encode_cases = {
        "float pixels 300": images(300.0),
        "float pixels -50": images(-50.0),
        "images in [0, 1] (linspace)": np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, *IMAGE_SHAPE),
        "NaN pixel": nan,
        "wrong shape (2, 9, 9, 1)": images(0, np.uint8, (2, 9, 9, 1)),
        "no channel axis (2, 8, 8)": images(0, np.uint8, (2, 8, 8)),
        "empty batch (0, 8, 8, 1)": images(0, np.uint8, (0, *IMAGE_SHAPE)),
        "string pixels": images("7", "<U1"),
    }
    cases = [(f"encode: {name}", lambda x=x: expect_error(lambda: model.encode(x))) for name, x in encode_cases.items()]
    cases += [
        ("HammingIndex(bits=12)", lambda: expect_error(lambda: HammingIndex(12))),
        ("HammingIndex.add int64 codes", lambda: expect_error(lambda: index.add(np.zeros((2, 2), np.int64)))),
        ("HammingIndex.search k=0", lambda: expect_error(lambda: index.search(np.zeros((1, 2), np.uint8), 0))),
        ("HammingIndex.search k=2**40 on 3 codes", bounded_search),
        ("HammingIndex.load header bits=2**31", lambda: expect_error(lambda: HammingIndex.load(huge_bits))),
        ("HammingIndex.load header n=2**60", lambda: expect_error(lambda: HammingIndex.load(huge_n))),
    ]

    outputs = (os.path.join(folder, f"run{i}") for i in itertools.count())

    def train(*flags, method="dhn", output=None):
        output = output or next(outputs)
        return ["train", "--method", method, "--protocol", "digits", "--quiet", "--output", output, *flags]

    cli_cases = {
        "train --learning-rate nan": train("--learning-rate", "nan", "--epochs", "1"),
        "train --learning-rate -1": train("--learning-rate", "-1", "--epochs", "1"),
        "train --learning-rate 0": train("--learning-rate", "0", "--epochs", "1"),
        "train --epochs 0": train("--epochs", "0"),
        "train --batch-size -5": train("--batch-size", "-5", "--epochs", "1"),
        "train bgan --g-learning-rat 1e-4": train("--g-learning-rat", "1e-4", "--epochs", "1", method="bgan"),
        "train onto a run without --overwrite": train("--epochs", "1", output=files["existing"]),
        "encode a truncated .keras": ["encode", files["truncated.keras"], "--inputs", files["images.npy"]],
        "encode --inputs 0-byte .npy": ["encode", files["good.keras"], "--inputs", files["empty.npy"]],
        "search -k -3": ["search", files["codes.tfhi"], "--queries", files["queries.npy"], "-k", "-3"],
        "search -k -3 --radius 0": ["search", files["codes.tfhi"], "--queries", files["queries.npy"], "-k", "-3",
                                    "--radius", "0"],
        "search header bits=2**31": ["search", huge_bits, "--queries", files["queries.npy"]],
        "search header n=2**60": ["search", huge_n, "--queries", files["queries.npy"]],
        "train --dropout 1.0": train("--dropout", "1.0", "--epochs", "1"),
        "encode a .keras that is no tfhash encoder": ["encode", foreign_keras(folder), "--inputs", files["images.npy"]],
        "encode a .keras asking for ImageNet weights offline": ["encode", imagenet_keras(files["good.keras"], folder),
                                                                "--inputs", files["images.npy"]],
    }
    cases += [(f"cli {name}", lambda argv=argv: expect_cli_refusal(argv)) for name, argv in cli_cases.items()]
    cases.append(("zoo manifest whose recipe is ../outside/x.json",
                  lambda: expect_error(lambda: zoo_manifest_with_recipe(folder, "../outside/x.json"))))
    reproduce = ["reproduce", "dhn_fashion_mnist_32", "--protocol", "cifar10_54000"]
    cases.append(("cli reproduce --protocol cifar10_54000 (<= 10 s)", lambda: expect_cli_refusal(reproduce, 10)))
    return cases


def foreign_keras(folder):
    """A Keras model that is no tfhash encoder, saved as .keras."""
    import keras

    path = os.path.join(folder, "foreign.keras")
    inputs = keras.Input(IMAGE_SHAPE)
    keras.Model(inputs, keras.layers.Flatten()(inputs)).save(path)
    return path


def imagenet_keras(good, folder):
    """`good` (a tfhash encoder) with its config asking for a MobileNetV2 trunk with ImageNet weights:
    offline, Keras cannot build it."""
    import zipfile

    path = os.path.join(folder, "imagenet.keras")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"].update(backbone="MobileNetV2", backbone_weights="imagenet",
                                        backbone_input_size=32)
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return path


def zoo_manifest_with_recipe(folder, recipe):
    from tfhash import zoo

    path = os.path.join(folder, "zoo-manifest.json")
    write_json({"format": zoo.MANIFEST_FORMAT, "entries": {"x": {
        "file": "files/x.keras", "sha256": "0" * 64, "size": 1, "class": "DHNEncoder", "bits": 16, "input": {},
        "protocol": "digits", "metric": {}, "recipe": recipe}}}, path)
    return zoo.read_manifest(path)


def bad_inputs(args, root):
    """Section 2: bad inputs tried, and let through (target 0)."""
    folder = os.path.join(root, "bad-inputs")
    os.makedirs(folder)
    print("\n2. Bad inputs: refused with a one-line ValueError / FileExistsError, or CLI exit 2 with one stderr "
          "line (target 0 let through)")
    results = []
    for name, check in bad_input_cases(folder):
        problem, answer = check()
        results.append({"input": name, "let_through": problem is not None, "problem": problem, "answer": answer})
        print(f"  {'LET THROUGH' if problem else 'ok':11s} {name}" + (f": {problem}" if problem else ""))
    let_through = sum(r["let_through"] for r in results)
    print(f"tried {len(results)}, let through {let_through}")
    return {"tried": len(results), "let_through": let_through, "cases": results}


# ----------------------------------------------------------------------------
# 3. Load test against `tfhash serve`
# ----------------------------------------------------------------------------


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def start_server(base_dir, name, max_batch, log_path):
    """`tfhash serve` as a subprocess; returns (process, address) once it listens."""
    with socket.socket() as s:  # a free port (the server prints no port it picked itself when given 0)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tfhash.cli", "serve", "--base-dir", base_dir, "--model-name", name,
               "--port", str(port), "--max-batch", str(max_batch), "--poll-seconds", "0"]
    log = open(log_path, "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path) as f:
            found = re.search(r"tfhash serve: gRPC .* on (\S+)", f.read())
        if found:
            return proc, found.group(1)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"tfhash serve did not start (exit code {proc.poll()}); see {log_path}")


def predict_request(name, images=None, shape=None):
    """A Predict request as any TF Serving client builds it; `shape` without `images`: a
    tensor that claims a shape and carries no values."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    if images is not None:
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    else:
        tensor = request.inputs["images"]
        tensor.dtype = tf.uint8.as_datatype_enum
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
    return request


def client_thread(address, name, requests, rows, seed, latencies, errors):
    """One client: its own channel, `requests` Predict calls of `rows` images each."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    images = np.random.default_rng(seed).integers(0, 256, (rows, *IMAGE_SHAPE), dtype=np.uint8)
    request = predict_request(name, images)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(requests):
            start = time.perf_counter()
            try:
                reply = stub.Predict(request, timeout=60)
                latencies.append(time.perf_counter() - start)
                codes = tf.make_ndarray(reply.outputs["binary_codes"])
                if codes.shape != (rows, 2) or codes.dtype != np.uint8:
                    errors.append(f"binary_codes {codes.dtype} {codes.shape}, expected uint8 ({rows}, 2)")
            except grpc.RpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")


def probe(stub, request, expected):
    """(status code name, seconds, ok) of a request that must fail with one of `expected`."""
    import grpc

    start = time.perf_counter()
    try:
        stub.Predict(request, timeout=60)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
    seconds = time.perf_counter() - start
    return code, seconds, code in expected and seconds < 1.0


def load_test(args, root):
    """Section 3: clients x requests against `tfhash serve`: unexpected errors (target 0),
    p50/p99 latency, server RSS before and after; refusal probes."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tfhash.export import export_savedmodel

    name, max_batch, rows = "dhn8", 1024, 32
    base_dir = os.path.join(root, "serve")
    export_savedmodel(encoder(1), base_dir, name)
    proc, address = start_server(base_dir, name, max_batch, os.path.join(root, "serve.log"))
    try:
        rss_before = rss_mb(proc.pid)
        latencies, errors = [], []
        threads = [threading.Thread(target=client_thread,
                                    args=(address, name, args.requests, rows, seed, latencies, errors))
                   for seed in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            oversize = np.zeros((max_batch + 1, *IMAGE_SHAPE), np.uint8)
            probes = [(f"{max_batch + 1} rows", predict_request(name, oversize), {"RESOURCE_EXHAUSTED"})] * 3
            probes += [
                # Over max_batch: refused on its row count, before the (absent) values are looked at.
                ("shape (100000, 8, 8, 1), no values", predict_request(name, shape=(100_000, *IMAGE_SHAPE)),
                 {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}),
                (f"shape ({max_batch}, 8, 8, 1), no values", predict_request(name, shape=(max_batch, *IMAGE_SHAPE)),
                 {"INVALID_ARGUMENT"}),
            ]
            answers = [(label, *probe(stub, request, expected)) for label, request, expected in probes]
        rss_after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    ms = np.array(latencies) * 1000
    p50, p99 = (float(np.percentile(ms, q)) if len(ms) else float("nan") for q in (50, 99))
    print(f"\n3. Load on `tfhash serve --max-batch {max_batch}` (subprocess), {rows} images of 8x8x1 per request; "
          "target 0 errors")
    print(f"{'clients x requests':>18s} {'errors':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'req/s':>6s} "
          f"{'RSS before MB':>13s} {'RSS after MB':>12s}")
    print(f"{f'{args.clients} x {args.requests}':>18s} {len(errors):6d} {p50:7.1f} {p99:7.1f} "
          f"{len(latencies) / seconds:6.0f} {rss_before:13.0f} {rss_after:12.0f}")
    for error in sorted(set(errors))[:5]:
        print(f"    error: {error}")
    for label, group in itertools.groupby(answers, key=lambda answer: answer[0]):
        group = list(group)
        codes = "/".join(sorted({code for _, code, _, _ in group}))
        slowest = max(1000 * took for _, _, took, _ in group)
        unexpected = sum(not ok for *_, ok in group)
        print(f"  probe {len(group)} x {label}: {codes}, slowest {slowest:.0f} ms"
              + (f"  UNEXPECTED: {unexpected}" if unexpected else ""))
    return {
        "clients": args.clients, "requests": args.requests, "rows": rows, "max_batch": max_batch,
        "errors": len(errors) + sum(not ok for *_, ok in answers), "error_samples": sorted(set(errors))[:5],
        "p50_ms": p50, "p99_ms": p99, "requests_per_s": len(latencies) / seconds,
        "rss_before_mb": rss_before, "rss_after_mb": rss_after,
        "probes": [{"request": label, "code": code, "ms": 1000 * took, "ok": ok} for label, code, took, ok in answers],
    }



# ----------------------------------------------------------------------------
# 4. Results of several files, and several processes on one result
# ----------------------------------------------------------------------------


def result_versions(kind, folder):
    """(write(version), check() -> "A" / "B" / raises on a mix or a loss) for a result of several files."""
    from tfhash import training

    if kind == "run":
        results = [training.Result({"name": name}, {"image": encoder(seed)}, {}, 0.0, None, {"loss": [1.0]})
                   for name, seed in (("A", 1), ("B", 2))]
        probes = {r.recipe["name"]: digest(r.encoders["image"].encode(PROBE)) for r in results}
        run = os.path.join(folder, "run")

        def check():
            record, encoders = training.load_run(run)
            name = record["recipe"]["name"]
            if digest(encoders["image"].encode(PROBE)) != probes[name]:
                raise AssertionError(f"mixed: run.json of {name} beside another encoder")
            return name

        return (lambda i: training.save_run(results[i], run)), check
    if kind == "encode":
        from tfhash.cli import _write_codes
        from tfhash.index import HammingIndex

        codes = [np.zeros((3, 2), np.uint8), np.full((5, 2), 7, np.uint8)]
        output, index_file = os.path.join(folder, "db.npy"), os.path.join(folder, "db.thi")

        def check():
            n = HammingIndex.load(index_file).ntotal  # finishes a half-done commit first
            saved = np.load(output, allow_pickle=False)
            if len(saved) != n:
                raise AssertionError(f"mixed: {len(saved)} codes beside an index of {n}")
            return "AB"[n == 5]

        return (lambda i: _write_codes(codes[i], None, output, index_file, wait=True)), check
    if kind == "zoo":
        from tfhash import publish, recipes, zoo

        base = recipes.load("dhn_fashion_mnist_32")
        recipe_files = []
        for name, bits in (("A", 32), ("B", 16)):
            path = os.path.join(folder, f"recipe-{name}.json")
            write_json({**base, "bits": bits, "name": "probe"}, path)
            recipe_files.append(path)
        encoders = {32: encoder(1, bits=32), 16: encoder(2, bits=16)}
        publish.train = lambda recipe, **_: training.Result(
            recipe, {"image": encoders[recipe["bits"]]}, {"image": {"map": 0.5}}, 0.0)
        zoo_dir = os.path.join(folder, "zoo")

        def check():
            manifest = zoo.read_manifest(os.path.join(zoo_dir, "manifest.json"))
            item = manifest["entries"]["probe"]
            recipe = publish.entry_recipe("probe", manifest)  # checks the recipe's sha256
            if io_sha256(os.path.join(zoo_dir, item["file"])) != item["sha256"] or recipe["bits"] != item["bits"]:
                raise AssertionError("mixed: the manifest's sha256 or bits do not match its file or recipe")
            return "AB"[item["bits"] == 16]

        return (lambda i: publish.publish(recipe_files[i], zoo_dir=zoo_dir)), check
    if kind == "retriever":
        from tfhash.retrieval import Retriever

        path = os.path.join(folder, "retriever")
        versions = []
        for name, n in (("A", 3), ("B", 5)):
            retriever = Retriever(bits=16)
            retriever.add_codes(np.full((n, 2), n, np.uint8), ids=np.arange(n) * 10, metadata=[name] * n)
            versions.append(retriever)

        def check():
            loaded = Retriever.load(path)
            names = set(loaded._metadata)
            if len(names) != 1 or loaded.size != {"A": 3, "B": 5}[names.pop()] or loaded._ids[-1] != 10 * (
                    loaded.size - 1):
                raise AssertionError(f"mixed: {loaded.size} rows with metadata {sorted(set(loaded._metadata))}")
            return loaded._metadata[0]

        return (lambda i: versions[i].save(path)), check
    raise ValueError(kind)


def io_sha256(path):
    from tfhash.io import sha256

    return sha256(path)


def result_child(kind, folder, aimed):
    """Child mode: writes version A of a result, says `ready`, then writes B, A, ...
    forever. `aimed`: after each commit's record and first member rename, says
    `between` and waits to be killed there."""
    write, _ = result_versions(kind, folder)
    if aimed:
        from tfhash import io as tfhash_io

        real = os.replace

        def rename(source, target):
            real(source, target)
            if ".partial" in os.path.basename(source) and not os.path.basename(target).endswith(".commit"):
                print("between", flush=True)
                time.sleep(60)

        write(0)
        tfhash_io.os.replace = rename
        print("ready 0", flush=True)
        write(1)
        return
    write(0)
    start = time.perf_counter()
    write(1)
    print("ready", time.perf_counter() - start, flush=True)
    for i in itertools.count():
        write(i % 2)


RESULTS = ("run", "encode", "zoo", "retriever")


def kill_results(args, root):
    """Section 4a: results of several files killed at random points and aimed between their files."""
    rng = np.random.default_rng(args.seed + 1)
    print("\n4. Results of several files (run directory, encode's codes + index, zoo entry, Retriever folder): "
          "writers SIGKILLed at random points and aimed between two files of one commit; each must then read "
          "as version A or B, whole (target 0 lost, 0 mixed, 0 stale)")
    print(f"{'result':10s} {'random':>6s} {'aimed':>5s} {'lost':>5s} {'mixed':>5s} {'stale':>5s}")
    rows = []
    for kind in RESULTS:
        folder = os.path.join(root, f"result-{kind}")
        os.makedirs(folder)
        _, check = result_versions(kind, folder)
        lost, mixed, log_path = [], [], os.path.join(root, f"result-{kind}.log")
        window_ms = None
        with open(log_path, "w") as log:
            for kill in range(args.result_kills * 2):
                aimed = kill % 2 == 1
                command = [sys.executable, os.path.abspath(__file__), "--result-child", kind, folder]
                command += ["--aimed"] if aimed else []
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                        env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
                try:
                    for line in proc.stdout:
                        if line.startswith("ready") and not aimed:
                            window_ms = window_ms or max(KILL_WINDOW_MS, 1000 * float(line.split()[1]))
                            time.sleep(float(rng.uniform(1, window_ms)) / 1000)
                            break
                        if line.startswith("between"):
                            break
                finally:
                    stop(proc)
                try:
                    check()
                except AssertionError as error:
                    mixed.append(str(error))
                except Exception as error:  # noqa: BLE001  (any failure to read is a lost result)
                    lost.append(f"{type(error).__name__}: {' '.join(str(error).split())[:120]}")
        write, _ = result_versions(kind, folder)
        write(0)  # one more normal write: nothing stale may stay
        stale = [name for _, _, names in os.walk(folder) for name in names if ".partial" in name or
                 name.endswith(".commit")]
        rows.append({"result": kind, "random_kills": args.result_kills, "aimed_kills": args.result_kills,
                     "lost": len(lost), "mixed": len(mixed), "stale": len(stale), "problems": lost + mixed + stale})
        print(f"{kind:10s} {args.result_kills:6d} {args.result_kills:5d} {len(lost):5d} {len(mixed):5d} "
              f"{len(stale):5d}")
        for problem in rows[-1]["problems"]:
            print(f"    {problem}")
    return rows


def updater_child(folder, writer, n):
    """Child mode: `n` updates of the Retriever at `folder`, each adding one row (code = writer)."""
    from tfhash.retrieval import Retriever

    for i in range(n):
        with Retriever.update(folder, bits=8) as retriever:
            retriever.add_codes(np.array([[writer]], np.uint8), metadata=[{"writer": writer, "i": i}])


def reader_child(folder, seconds):
    """Child mode: loads the Retriever at `folder` for `seconds`; prints loads and rows whose metadata
    belongs to another row's code."""
    from tfhash.retrieval import Retriever

    loads = mixed = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            retriever = Retriever.load(folder)
        except FileNotFoundError:
            continue
        except Exception:  # noqa: BLE001
            errors += 1
            continue
        loads += 1
        if retriever.size:
            # Writer 1's code is 0b00000001, writer 2's 0b00000010: from query 1, writer 1's rows are at
            # distance 0 and writer 2's at distance 2, so each row's metadata must name that writer.
            distances, positions, _ = retriever.search_codes(np.array([[1]], np.uint8), retriever.size)
            for distance, row in zip(distances[0], positions[0]):
                writer = retriever._metadata[row]["writer"]
                mixed += {0: 1, 2: 2}.get(int(distance)) != writer
    print(json.dumps({"loads": loads, "mixed": mixed, "errors": errors}), flush=True)


def concurrent_writers(args, root):
    """Section 4b: two writers and a reader on one Retriever folder; two trains on one new output."""
    folder = os.path.join(root, "shared-retriever")
    n = args.updates
    print(f"\n4b. Two processes updating one Retriever folder ({n} rows each) beside a reader; two `tfhash "
          f"train` on one new --output (targets: 0 lost, 0 mixed, 0 errors; exactly one train succeeds)")
    env = {**os.environ, "PYTHONPATH": ROOT}
    script = os.path.abspath(__file__)
    log = open(os.path.join(root, "concurrency.log"), "w")
    writers = [subprocess.Popen([sys.executable, script, "--updater", folder, str(w), str(n)], env=env, cwd=ROOT,
                                stderr=log) for w in (1, 2)]
    reader = subprocess.Popen([sys.executable, script, "--reader", folder, str(args.reader_seconds)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    codes = [w.wait() for w in writers]
    seen = json.loads(reader.communicate()[0].strip().splitlines()[-1])
    from tfhash.retrieval import Retriever

    final = Retriever.load(folder)
    rows = {(m["writer"], m["i"]) for m in final._metadata}
    lost = 2 * n - len(rows)
    print(f"  writers exited {codes}; rows {final.size} of {2 * n} (lost {lost}); reader: {seen['loads']} loads, "
          f"{seen['mixed']} mixed rows, {seen['errors']} errors")
    output = os.path.join(root, "one-output")
    trains = [subprocess.Popen([sys.executable, "-m", "tfhash.cli", "train", "--method", "dhn", "--protocol",
                                "digits", "--bits", "16", "--epochs", "1", "--quiet", "--output", output],
                               env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    answers = [(t.wait(), t.stderr.read().strip()) for t in trains]
    succeeded = sum(code == 0 for code, _ in answers)
    print(f"  two trains on one new --output: {succeeded} succeeded; the other said: "
          f"{next((err for code, err in answers if code), '-')[:160]}")
    return {"updates_per_writer": n, "writer_exit_codes": codes, "rows": final.size, "lost": lost,
            "reader": seen, "trains_succeeded": succeeded, "train_answers": answers}


# ----------------------------------------------------------------------------
# 5. Bounded waits: a stalled zoo download, slow gRPC clients beside normal ones
# ----------------------------------------------------------------------------


def stalled_download(root, timeout_s=1.0):
    """`zoo.download` from a server that sends the manifest, then stalls on the file.
    Returns (blocked: still waiting after 10 x the timeout, answer, files left in the cache)."""
    import http.server

    from tfhash import zoo

    manifest = json.dumps({"format": zoo.MANIFEST_FORMAT, "entries": {"stalled": {
        "file": "files/stalled.keras", "sha256": "0" * 64, "size": 1000, "class": "DHNEncoder", "bits": 16,
        "input": {}, "protocol": "digits", "metric": {}, "recipe": "recipes/stalled.json"}}}).encode()
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.endswith("manifest.json"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(manifest)))
                self.end_headers()
                self.wfile.write(manifest)
                return
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            release.wait(60)  # sends nothing: a stalled transfer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = os.path.join(root, "stalled-cache")
    saved = {key: os.environ.get(key) for key in (zoo.URL_ENV, zoo.CACHE_ENV, zoo.MANIFEST_ENV)}
    os.environ.update({zoo.URL_ENV: f"http://127.0.0.1:{server.server_port}/", zoo.CACHE_ENV: cache})
    os.environ.pop(zoo.MANIFEST_ENV, None)
    answer = []

    def fetch():
        try:
            answer.append(f"returned {zoo.download('stalled', timeout=timeout_s)}")
        except Exception as error:  # noqa: BLE001
            answer.append(f"{type(error).__name__}: {error}")

    try:
        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        thread.join(10 * timeout_s)
        blocked = thread.is_alive()
    finally:
        release.set()
        server.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    left = [name for _, _, names in os.walk(cache) for name in names] if os.path.isdir(cache) else []
    return blocked, (answer or ["still waiting"])[0], left


def bounded_waits(args, root):
    """Section 5: every wait bounded (targets: 0 blocked, 0 left behind)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import slow_clients

    print("\n5. Bounded waits (target 0 blocked, nothing left behind)")
    blocked, answer, left = stalled_download(root)
    print(f"  zoo download from a stalled server (timeout 1 s): {'BLOCKED' if blocked else 'answered'}; "
          f"{len(left)} files left in the cache; {' '.join(answer.split())[:160]}")
    with slow_clients.tiny_server() as (target, name, images):
        rows = slow_clients.probe(target, name, images, args.slow_clients, args.normal_requests, 5.0, 2.0, 60.0)
    for row in rows:
        print(f"  {row['slow']:3d} slow clients (60 MB declared, 1 byte/s): {row['ok']}/{args.normal_requests} normal "
              f"Predicts answered, {row['blocked']} blocked, slowest {row['slowest_s']:.2f} s, "
              f"{row['held']} slow calls still held")
    return {"download": {"blocked": blocked, "answer": answer, "left_in_cache": left},
            "slow_clients": [{k: v for k, v in row.items() if k != "errors"} | {"errors": row["errors"][:3]}
                             for row in rows]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, help="kills per fast writer (default 20; --quick: 3)")
    parser.add_argument("--slow-kills", type=int, help="kills per TensorFlow writer (default 8; --quick: 2)")
    parser.add_argument("--clients", type=int, help="concurrent client threads (default 16; --quick: 4)")
    parser.add_argument("--requests", type=int, help="requests per client (default 50; --quick: 10)")
    parser.add_argument("--quick", action="store_true", help="few kills and requests: a smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    parser.add_argument("--sections", default="1,2,3,4,5", help="which sections to run (default: all)")
    parser.add_argument("--output", default="bench/results/reliability.json")
    parser.add_argument("--result-kills", type=int, help="random and aimed kills per result (default 6; --quick: 2)")
    parser.add_argument("--updates", type=int, help="rows each of two Retriever writers adds (default 40; --quick: 8)")
    parser.add_argument("--reader-seconds", type=float, default=5.0, help="how long the reader loads")
    parser.add_argument("--slow-clients", type=int, nargs="+", default=[8, 64], help="counts of slow gRPC clients")
    parser.add_argument("--normal-requests", type=int, default=10, help="normal Predicts beside the slow clients")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--result-child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--aimed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--updater", nargs=3, metavar=("FOLDER", "WRITER", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--reader", nargs=2, metavar=("FOLDER", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--refs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.refs)
    if args.result_child:
        return result_child(*args.result_child, args.aimed)
    if args.updater:
        return updater_child(args.updater[0], int(args.updater[1]), int(args.updater[2]))
    if args.reader:
        return reader_child(args.reader[0], float(args.reader[1]))
    for key, full, quick in (("kills", 20, 3), ("slow_kills", 8, 2), ("clients", 16, 4), ("requests", 50, 10),
                             ("result_kills", 6, 2), ("updates", 40, 8)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1. Received: {getattr(args, key)}")
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    root = tempfile.mkdtemp(prefix="tfhash-reliability-")
    try:
        record = {"command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        chosen = set(args.sections.split(","))
        for section, key, run in (("1", "kill_points", kill_points), ("2", "bad_inputs", bad_inputs),
                                  ("3", "load_test", load_test), ("4", "results", kill_results),
                                  ("4", "concurrency", concurrent_writers), ("5", "waits", bounded_waits)):
            if section in chosen:
                record[key] = run(args, root)
    except BaseException:
        print(f"kept {root} (children's and server's logs) for inspection", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)
    write_json(record, args.output)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
