"""What the `tfhash` command prints: its results, without TensorFlow's start-up
lines, and progress only on a terminal (issue 22)."""

import argparse
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfhash import console
from tfhash._version import __version__
from tfhash.cli import build_parser

REPO = str(Path(__file__).resolve().parents[1])
NOISE = ("\x1b[", "\r", "cuInit", "oneDNN", "cudart", "absl::InitializeLog", "cpu_feature_guard")


def _tfhash(args, log, cwd):
    """Runs `python -m tfhash.cli ARGS` with stdout and stderr in the file `log`,
    as a user's shell would, and returns (exit code, what the log holds)."""
    # The user's environment, less the test session's TF_CPP_MIN_LOG_LEVEL (conftest):
    # the command's own default is what is tested.
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "tfhash.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, cwd=cwd, timeout=600).returncode
    with open(log, newline="") as f:  # newline="": a \r stays a \r
        return code, f.read()


def _assert_clean(text):
    found = [noise for noise in NOISE if noise in text]
    assert not found, f"{found} in:\n{text}"


@pytest.mark.slow
def test_train_then_evaluate_write_clean_logs_ending_in_the_summary(tmp_path):
    run = tmp_path / "run"
    train = ["train", "--method", "dhn", "--protocol", "digits", "--epochs", "1", "--bits", "16", "--output", str(run)]
    code, text = _tfhash(train, tmp_path / "train.log", tmp_path)
    assert code == 0, text
    _assert_clean(text)
    lines = text.splitlines()
    # Not a terminal: one line per epoch instead of a progress bar, then one summary line.
    assert len([line for line in lines if re.match(r"\d+/\d+ - \d+s - .*loss: ", line)]) == 1, text
    assert re.fullmatch(rf"dhn_digits_16: trained dhn on digits \(16 bits\) in \d+ s; final loss \d+\.\d+.*; "
                        rf"mAP@all \(image\): \d\.\d+, P@100 \d\.\d+; saved to {re.escape(str(run))}; "
                        rf"evaluate it with: tfhash evaluate {re.escape(str(run))}", lines[-1]), text

    code, text = _tfhash(["evaluate", str(run), "--quiet"], tmp_path / "evaluate.log", tmp_path)
    assert code == 0, text
    _assert_clean(text)
    assert re.search(r"^image: mAP@all \(retrieved, no_relevant=zero\): \d\.\d+$", text, re.M), text

    # --quiet: the summary line and nothing else.
    code, text = _tfhash([*train, "--overwrite", "--quiet"], tmp_path / "quiet.log", tmp_path)
    assert code == 0, text
    assert len(text.splitlines()) == 1 and text.startswith("dhn_digits_16: trained dhn on digits"), text


# A line TensorFlow, absl, oneDNN or CUDA print (C++ log lines, "rebuild TensorFlow with the appropriate
# compiler flags", Python loggers' "WARNING:tensorflow"), or terminal control (ANSI escapes, redrawn lines).
TF_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+|absl|onednn|cuda|cuinit|cpu_feature_guard|rebuild tensorflow"
                     r"|^warning:(tensorflow|absl)|tensorflow/(core|compiler|python|tsl)|\x1b\[|\r", re.I | re.M)
# The commands that answer at once, without TensorFlow.
QUICK = (["--version"], ["--help"], ["methods"], ["methods", "dhn"], ["methods", "ssah"], ["zoo", "list"],
         ["zoo", "missing"])


def _command_words(parser, prefix=()):
    """Every command and nested command of the parser, as its words: ("train",), ("zoo", "list"), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield (*prefix, name)
                yield from _command_words(command, (*prefix, name))


def test_every_help_and_quick_command_prints_no_tensorflow_line(tmp_path):
    """`--help` of every command (found in the parser, nested ones included) and the quick commands
    (`QUICK`), their stdout and stderr in a file as a user's log would have them (issue 29): no
    TensorFlow, absl, oneDNN or CUDA line, no ANSI escape, and TensorFlow never loaded. One process
    calls `tfhash.cli.main` for each (argparse's exits caught), so the test stays fast."""
    helps = [[*words, "--help"] for words in _command_words(build_parser())]
    assert ["zoo", "list", "--help"] in helps and ["export", "savedmodel", "--help"] in helps
    commands = helps + [list(q) for q in QUICK]
    code = ("import sys\nfrom tfhash import cli\n"
            f"for argv in {commands!r}:\n"
            "    print('$ tfhash', *argv, flush=True)\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "    sys.stdout.flush()\n"
            "print('loaded:', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    log = tmp_path / "log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, cwd=tmp_path, timeout=300)
    with open(log, newline="") as f:  # newline="": a \r stays a \r
        text = f.read()
    assert done.returncode == 0, text
    assert text.count("usage: tfhash") == len(helps) + 1, text  # and `tfhash --help`
    assert not TF_LINE.search(text), f"{TF_LINE.search(text).group(0)!r} in:\n{text}"
    assert text.splitlines()[-1] == "loaded: False False", text[-2000:]


def test_a_command_that_loads_tensorflow_prints_none_of_its_start_up_lines(tmp_path):
    """A real `tfhash` process that loads TensorFlow (`evaluate`) and fails at once: its log is
    the one error line, without TensorFlow's start-up lines."""
    code, text = _tfhash(["evaluate", "no_such_run", "--quiet"], tmp_path / "log", tmp_path)
    assert (code, text) == (2, "tfhash evaluate: error: No model at no_such_run: expected a run directory or a "
                               ".keras file\n"), text


@pytest.mark.slow
def test_evaluate_quiet_prints_the_results_only(tmp_path, capfd):
    """`evaluate --quiet` (issue 29): the scores and the file it wrote; no protocol description,
    no "encoding ..." notice, no sample query's neighbours, no progress."""
    from tfhash import training
    from tfhash.cli import main

    run = str(tmp_path / "run")
    training.train("dhn", "digits", bits=16, epochs=1, batch_size=64, output_dir=run, verbose=0, score=False)
    capfd.readouterr()
    report = str(tmp_path / "m.json")
    assert main(["evaluate", run, "--quiet", "--json", report]) == 0
    out, err = capfd.readouterr()
    patterns = [r"image: mAP@all \(retrieved, no_relevant=zero\): \d\.\d{4}", r"  P@100: \d\.\d{4}",
                r"  precision / recall within radius 2: \d\.\d{4} / \d\.\d{4}", re.escape(f"wrote metrics to {report}")]
    lines = out.splitlines()
    assert len(lines) == len(patterns) and all(re.fullmatch(p, line) for p, line in zip(patterns, lines)), out
    assert err == "", err


def test_version_prints_the_version_and_loads_no_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-m", "tfhash.cli", "--version"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"tfhash {__version__}\n", "")
    code = ("import sys\nfrom tfhash import cli\ntry:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert out.stdout.splitlines()[-1] == "False False"


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`tfhash search ... | head` (issue 29): the reader closes the pipe after its line; the
    command stops there, with nothing on stderr (no "[Errno 32] Broken pipe", no
    "Exception ignored" at exit) and exit status 1, as the Python docs' recipe has it."""
    import numpy as np

    from tfhash.index import HammingIndex

    rng = np.random.default_rng(0)
    index = HammingIndex(bits=32)
    index.add(rng.integers(0, 256, (500, 4), dtype=np.uint8))
    index.save(str(tmp_path / "db.thi"))
    # 5,000 rows of about 100 bytes: far more than a pipe holds (64 KiB), so the command is still
    # writing when the pipe closes.
    np.save(tmp_path / "q.npy", rng.integers(0, 256, (5000, 4), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "tfhash.cli", "search", "db.thi", "--queries", "q.npy", "-k", "10"]
    search = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              cwd=tmp_path, env=env)
    first = search.stdout.readline()
    search.stdout.close()  # as `head -n 1` does once it has its line
    err = search.stderr.read()
    search.stderr.close()
    assert (search.wait(timeout=60), err.decode()) == (1, "")
    assert first.startswith(b"query 0: ids ["), first


def test_verbose_is_accepted_before_and_after_any_command():
    parser = build_parser()
    train = ["train", "--method", "dhn", "--output", "r"]
    for argv, verbose in ((train, False), (["--verbose", *train], True), ([*train, "--verbose"], True),
                          (["evaluate", "r", "--verbose", "--quiet"], True),
                          (["export", "tflite", "r", "--verbose"], True), (["zoo", "list"], False)):
        args, extra = parser.parse_known_args(argv)
        assert (args.verbose, extra) == (verbose, []), argv
    # Every long command takes --quiet.
    for argv in (train, ["reproduce", "x"], ["evaluate", "r"], ["encode", "r"], ["export", "savedmodel", "r"],
                 ["export", "tflite", "r"], ["zoo", "publish", "x"]):
        assert parser.parse_known_args([*argv, "--quiet"])[0].quiet is True, argv


def test_silence_tensorflow_keeps_the_users_settings_and_verbose_changes_nothing(monkeypatch):
    from absl import logging as absl_logging

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    console.silence_tensorflow(verbose=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    logger, verbosity = logging.getLogger("tensorflow"), absl_logging.get_verbosity()
    level = logger.level
    try:
        console.silence_tensorflow()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and logger.level == logging.ERROR
        assert absl_logging.get_verbosity() == absl_logging.ERROR
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
        console.silence_tensorflow()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def test_filtered_stderr_drops_cpp_lines_below_the_log_level_and_keeps_the_rest(monkeypatch, capfd):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with console.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796049090.213845    3252 port.cc:153] oneDNN custom operations are on.\n"
                    b"W0000 00:00:1796049090.213845    3252 x.cc:1] a warning\n"
                    b"E0000 00:00:1796049093.379632    3252 cuda_platform.cc:52] an error\n"
                    b"fully_quantize: 0, inference_type: 6\n"
                    b"a Python warning\n")
    err = capfd.readouterr().err
    assert err.splitlines() == ["E0000 00:00:1796049093.379632    3252 cuda_platform.cc:52] an error",
                                "a Python warning"]
    # What the block wrote comes back when it raises, too.
    with pytest.raises(ImportError), console.filtered_stderr():
        os.write(2, b"why the import failed\n")
        raise ImportError("no")
    assert capfd.readouterr().err == "why the import failed\n"


class _Stdout(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_keras_progress_is_drawn_on_a_terminal_only(monkeypatch):
    for tty, fit, predict in ((True, 1, 1), (False, 2, 0)):
        monkeypatch.setattr(sys, "stdout", _Stdout(tty))
        assert (console.keras_verbose(False, "fit"), console.keras_verbose(False, "predict")) == (fit, predict)
        assert console.keras_verbose(True, "fit") == console.keras_verbose(True, "predict") == 0
    with pytest.raises(ValueError, match="Expected kind 'fit' or 'predict'. Received: 'train'"):
        console.keras_verbose(False, "train")
