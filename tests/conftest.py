"""CPU-only test setup: two logical CPU devices so MirroredStrategy runs here."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initializes its devices, hence at import time.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import pytest  # noqa: E402

# ---------------------------------------------------------------------------
# Data that `make setup` installs (the Debian packages dataset-fashion-mnist,
# openclipart-png and openclipart-svg; the tfhash[pretrained] wheels). A test
# that needs some is marked
#
#     @pytest.mark.needs_data(MISSING, reason="what is missing and what installs it")
#
# (or calls the `missing_data` fixture's function). Where MISSING is true it is
# skipped with the reason, counted in a NOTE at the end of the run; under CI
# (the CI variable set, as `.ci/run` sets it) it fails instead: CI installs the
# data, so a test skipped for the lack of it would be a test that never runs.

DATA_SKIP_PREFIX = "missing data: "


def in_ci():
    """Whether this run is CI's: CI set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_for_data(reason):
    """Skips the running test for missing data; under CI, fails it."""
    if in_ci():
        pytest.fail(f"{DATA_SKIP_PREFIX}{reason}. CI (CI={os.environ['CI']!r}) requires it: `.ci/run` installs it "
                    f"with `make test` (make setup, as root)", pytrace=False)
    pytest.skip(DATA_SKIP_PREFIX + reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data(missing, reason): skipped with the reason where `missing` is true "
                                       "(data `make setup` installs); under CI (CI=true), failed instead")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_data"):
        missing = mark.args[0] if mark.args else mark.kwargs["missing"]
        if missing:
            skip_or_fail_for_data(mark.kwargs["reason"])


@pytest.fixture
def missing_data():
    """`missing_data(reason)`: skips the test for missing data (fails it under CI)."""
    return skip_or_fail_for_data


def pytest_terminal_summary(terminalreporter):
    """A NOTE naming the data-skipped tests' reasons: `make test -q` shows no skip reasons."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(DATA_SKIP_PREFIX):
            reasons[reason[len(DATA_SKIP_PREFIX):]] = reasons.get(reason[len(DATA_SKIP_PREFIX):], 0) + 1
    if reasons:
        terminalreporter.write_sep("-", "NOTE: tests skipped for missing data (CI=true fails them)")
        for reason, count in sorted(reasons.items()):
            terminalreporter.write_line(f"{count:4d} skipped: {reason}")


# ---------------------------------------------------------------------------
# The order of the files, for `make test`: two workers, each taking whole files
# (`--dist loadfile`) in the order collected (`--no-loadscope-reorder`; by default
# xdist would start the files with the most tests first, and the README's, with
# one long test (a quarter of the suite's time before its Fashion-MNIST database
# was thinned, about three minutes since), started 33rd of 48 and ran alone at
# the end). The README's file starts first, so the other worker takes the
# rest meanwhile, the longest files first (measured), none long left for the end;
# the files not named follow in collection (alphabetical) order. A worker is handed
# its next file when two tests of its file are left: the one handed while the
# README's long test runs waits for it, so it is a short file of a few tests.
RUN_FIRST = (
    "test_readme.py",
    "test_methods.py",
    "test_signatures.py",  # waits behind the README's long test: a short file
    "test_zoo.py",
    "test_export.py",
    "test_own_images.py",
    "test_dsh_gan.py",
    "test_cli_output.py",
    "test_keras_habits.py",
    "test_ssah.py",
    "test_pretrained.py",
    "test_cli.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the 2 logical CPUs, shared by every test in the
    process: separate instances reuse collective instance keys and abort each
    other's all-reduces ("Shape mismatch in the collective instance")."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="module")
def digits_two_view():
    """scikit-learn's digits as image-text pairs, for the cross-modal models:
    the 8x8 image, and the "text" of its 64 pixels thresholded to words (pixel
    on / off), with one-hot labels. {part: (images, texts, labels)} for the
    query, train and database parts of the committed split."""
    import numpy as np

    from tfhash.data import load_protocol

    data = load_protocol("digits")

    def triple(part):
        images, labels = data.subset(part)
        texts = (images.reshape(len(images), -1) >= 128).astype(np.float32)
        return images, texts, np.eye(10, dtype=np.float32)[labels]

    return {part: triple(part) for part in ("query", "train", "database")}


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's digits under its committed split (`tfhash.data` protocol "digits")."""
    from tfhash.data import load_protocol

    return load_protocol("digits")


@pytest.fixture(scope="session")
def digits_cross_modal(digits_data):
    """The digits as an image-text protocol, for training the image-text methods
    through `tfhash.training.train`: the 8x8 image, the "text" of its 64 pixels
    thresholded to words (on / off) and one-hot labels, on the digits split."""
    import dataclasses

    import numpy as np

    from tfhash.data import CrossModalData
    from tfhash.data.protocols import get_protocol

    images, labels = digits_data.images, digits_data.labels
    protocol = dataclasses.replace(get_protocol("open_clip_art"), name="digits_two_view", description="digits, two views")
    texts = (images.reshape(len(images), -1) >= 128).astype(np.uint8)
    return CrossModalData(protocol, images, texts, np.eye(10, dtype=np.uint8)[labels], digits_data.split)
