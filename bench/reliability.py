"""Reliability figures (issue 21): writers killed mid-write, bad inputs, a bounded load on `tfhash serve`.

    .venv/bin/python bench/reliability.py [--kills 20] [--slow-kills 8] [--clients 16] [--requests 50]
        [--seed 0] [--output bench/results/reliability.json]
    .venv/bin/python bench/reliability.py --quick --output /tmp/reliability.json   # smoke run, about a minute

Prints three figures, each with its target:

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


def encoder(seed):
    """A small DHN image encoder (16 bits, 8x8x1 images) with seeded weights."""
    import keras

    from tfhash.models import DHN

    keras.utils.set_random_seed(seed)
    net = DHN(bits=16, input_shape=IMAGE_SHAPE)
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
    with a one-line message (the answer), else what happened."""
    try:
        result = call()
    except (ValueError, FileExistsError) as error:
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
    }
    cases += [(f"cli {name}", lambda argv=argv: expect_cli_refusal(argv)) for name, argv in cli_cases.items()]
    reproduce = ["reproduce", "dhn_fashion_mnist_32", "--protocol", "cifar10_54000"]
    cases.append(("cli reproduce --protocol cifar10_54000 (<= 10 s)", lambda: expect_cli_refusal(reproduce, 10)))
    return cases


def bad_inputs(root):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, help="kills per fast writer (default 20; --quick: 3)")
    parser.add_argument("--slow-kills", type=int, help="kills per TensorFlow writer (default 8; --quick: 2)")
    parser.add_argument("--clients", type=int, help="concurrent client threads (default 16; --quick: 4)")
    parser.add_argument("--requests", type=int, help="requests per client (default 50; --quick: 10)")
    parser.add_argument("--quick", action="store_true", help="few kills and requests: a smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    parser.add_argument("--output", default="bench/results/reliability.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--refs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.refs)
    for key, full, quick in (("kills", 20, 3), ("slow_kills", 8, 2), ("clients", 16, 4), ("requests", 50, 10)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1. Received: {getattr(args, key)}")
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    root = tempfile.mkdtemp(prefix="tfhash-reliability-")
    try:
        record = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "kill_points": kill_points(args, root),
            "bad_inputs": bad_inputs(root),
            "load_test": load_test(args, root),
        }
    except BaseException:
        print(f"kept {root} (children's and server's logs) for inspection", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)
    write_json(record, args.output)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
