"""Fail fast when a protocol's data is neither on disk nor reachable.

TFDS retries a download for minutes before it gives up; a user offline should
learn within seconds what to fetch and where to put it.
"""

import os
import socket
import urllib.parse

# Seconds to wait for the download host before calling it unreachable.
PROBE_SECONDS = 3.0


def reachable(url, timeout=PROBE_SECONDS):
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_tfds(name, data_dir, url):
    """Returns when the TFDS dataset `name` is prepared in `data_dir` (default
    TFDS's ~/tensorflow_datasets) or its source `url` is reachable; raises
    `FileNotFoundError` saying what to download and where otherwise."""
    import logging

    import tensorflow_datasets as tfds

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # TFDS warns about the missing folder this check is for
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    finally:
        absl.setLevel(level)
    if prepared or reachable(url):
        return
    where = data_dir or os.path.join("~", "tensorflow_datasets")
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {where} and {urllib.parse.urlsplit(url).hostname} cannot be "
        f"reached. Expected it prepared there: on a machine with network run `tfds build {name} --data_dir DIR` "
        f"(source: {url}) and copy DIR here, then pass --data-dir DIR. Received: no {builder.data_path}"
    )
