"""What the `tfhash` command prints besides its results: TensorFlow's logging
silenced before TensorFlow loads, and Keras progress drawn only on a terminal.

Quiet by default, because a log should hold the results: TensorFlow's C++
start-up lines (oneDNN, cudart, cuInit, absl's pre-initialization notice)
and progress bars, which a file keeps as `\\r`-joined frames with ANSI codes,
bury them. `tfhash --verbose` leaves TensorFlow's logging as TensorFlow sets it.

This module imports nothing heavy: the parser and `tfhash --help` use it.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

# absl/glog's line prefix, "I0000 00:00:1796049090.213845    3252 port.cc:153] " before
# absl is initialized (seconds since the epoch), and its severities as TF_CPP_MIN_LOG_LEVEL counts them.
_CPP_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_NOISE = (
    # absl's notice that its logging is not initialized yet: about logging, not about the run.
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    # The TFLite quantizer's settings, printed bare to stderr on every int8 conversion.
    b"fully_quantize: ",
)


def silence_tensorflow(verbose=False):
    """Sets TensorFlow's C++ and Python logging to errors only, unless verbose.

    Call it before TensorFlow is imported: TensorFlow reads its environment
    variables once, as it loads. Variables the user set are kept.
    """
    if verbose:
        return
    # 3: C++ INFO, WARNING and ERROR lines dropped (cuInit's "UNKNOWN ERROR
    # (303)" without a GPU driver, Grappler's "remapper failed"); FATAL kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):  # absl-py comes with TensorFlow
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def import_tensorflow(verbose=False):
    """Imports TensorFlow and Keras now, without the lines their C++ libraries
    print while loading, unless verbose.

    Those lines are written by static initializers before absl's logging is
    initialized, so TF_CPP_MIN_LOG_LEVEL does not reach them (TensorFlow
    2.21 prints each twice); only file descriptor 2 does. Everything else
    printed meanwhile (a Python warning, an ImportError's message) comes back.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def _is_noise(line, min_level):
    match = _CPP_LINE.match(line)
    if match:
        return _SEVERITY[match.group(1)] < min_level
    return line.startswith(_NOISE)


@contextlib.contextmanager
def filtered_stderr(keep=True):
    """Runs the block with file descriptor 2 sent to a temporary file, then
    writes back what it got, less C++ log lines below TF_CPP_MIN_LOG_LEVEL and
    the known noise lines (`_NOISE`); with `keep=False`, nothing (for a step
    whose outcome is checked and reported in one line instead).

    A file rather than a pipe: a C++ library writing while holding the GIL
    cannot block on a full pipe. The lines come back when the block ends,
    also when it raises; a crash inside the block loses them (`--verbose`
    filters nothing).
    """
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if keep and not _is_noise(line, min_level)]
            if kept:
                os.write(2, b"".join(kept))


def keras_verbose(quiet=False, kind="fit"):
    """Keras' `verbose=` for a command's `fit` (kind "fit") or `predict` (kind "predict").

    Progress bars on a terminal only: elsewhere (a log file, a pipe) Keras'
    redrawn bar becomes one long line of `\\r`-joined frames with ANSI codes,
    so `fit` prints one line per epoch and `predict` nothing. `quiet`: no
    progress at all.
    """
    if kind not in ("fit", "predict"):
        raise ValueError(f"Expected kind 'fit' or 'predict'. Received: {kind!r}")
    if quiet:
        return 0
    if sys.stdout is not None and sys.stdout.isatty():
        return 1
    return 2 if kind == "fit" else 0


class Progress:
    """A count of work done on stderr: redrawn in place on a terminal, else
    one line per tenth of the work (a log gets no carriage returns).

    >>> with Progress("decoding Open Clip Art", 6886) as progress:
    ...     progress.advance()
    """

    def __init__(self, what, total, stream=None):
        import sys

        self.what, self.total, self.done = what, int(total), 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._reported = -1

    def advance(self, n=1):
        self.done += n
        tenth = self.done * 10 // max(self.total, 1)
        if self.tty:
            self.stream.write(f"\r{self.what}: {self.done}/{self.total}")
        elif tenth > self._reported:
            self.stream.write(f"{self.what}: {self.done}/{self.total}\n")
        else:
            return
        self._reported = tenth
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tty and self._reported >= 0:  # a line was drawn: end it
            self.stream.write("\n")
            self.stream.flush()
