"""Where the library keeps its own files, and how it writes JSON records (run
records, scores, the zoo manifest, the vocabulary): atomically, so a reader
never sees half a file."""

import hashlib
import json
import os
import tempfile

CACHE_ENV = "TFHASH_CACHE_DIR"


def cache_dir():
    """The data cache (decoded datasets, drawn splits): `$TFHASH_CACHE_DIR`, else ~/.cache/tfhash."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tfhash")


def write_json(obj, path, **options):
    """Writes `obj` as JSON (indent 2 unless `options` say otherwise, final newline)
    to a temporary file beside `path`, then renames it into place."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **{"indent": 2, **options})
        f.write("\n")
    os.replace(tmp, path)


def sha256(path):
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path, write, suffix=""):
    """Calls `write(temporary_path)` on a new file beside `path`, syncs it to
    disk and renames it into place, so a reader finds the old file or the new
    one, whole; the temporary file is removed if anything fails.

    `suffix` ends the temporary name (writers that infer the format from it,
    such as Keras's `.weights.h5`, need it)."""
    path = os.fspath(path)
    handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial" + suffix,
                                       dir=os.path.dirname(path) or ".")
    os.close(handle)
    try:
        write(partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
