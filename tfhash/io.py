"""Where the library keeps its own files, and how it writes every file
(models, run records, codes, exports, caches, the zoo): atomically, so a
reader, or a writer killed half way, never leaves half a file."""

import contextlib
import hashlib
import json
import os
import secrets
import shutil

CACHE_ENV = "TFHASH_CACHE_DIR"


def cache_dir():
    """The data cache (decoded datasets, drawn splits): `$TFHASH_CACHE_DIR`, else ~/.cache/tfhash."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tfhash")


def write_json(obj, path, **options):
    """Writes `obj` as JSON (indent 2 unless `options` say otherwise, final
    newline) through `write_atomically`."""

    def write(partial):
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(obj, f, **{"indent": 2, **options})
            f.write("\n")

    write_atomically(path, write, suffix=".json")


def sha256(path):
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Temporary names: `.{target}.{pid}-{random}.partial{suffix}`, so the next
# writer to the same place can tell a dead writer's leftovers from a live one's.
_PARTIAL = ".partial"


def _temporary_name(path, suffix=""):
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{_PARTIAL}{suffix}")


@contextlib.contextmanager
def temporary_folder(path, suffix=""):
    """A work folder beside `path`, named as a temporary of it (so
    `remove_stale_temporaries(path)` removes it if its writer is killed),
    removed on exit."""
    remove_stale_temporaries(path)
    folder = _temporary_name(path, suffix)
    os.makedirs(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid):
    """False only when `pid` certainly names no process on this machine."""
    # Our own pid: maybe a write in another thread. A reused pid merely keeps a
    # stale file until the next write.
    if pid == os.getpid() or pid <= 0 or os.name != "posix":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, someone else's
        return True
    return True


def remove_stale_temporaries(path):
    """Removes what writers of `path` killed mid-write left beside it
    (temporary files and folders whose writer process is gone); a live
    writer's temporary is kept. Best effort: a failure leaves the file and
    never fails the write. The check sees this machine's processes only: on a
    folder shared between machines, another machine's concurrent write may
    lose its temporary and fail, loudly, without harming `path`. Returns the
    names removed."""
    folder, name = os.path.split(os.fspath(path))
    folder = folder or "."
    prefix, removed = f".{name}.", []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix) or _PARTIAL not in entry:
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        full = os.path.join(folder, entry)
        try:
            if entry.endswith(_PARTIAL + ".old") and not os.path.lexists(path):
                os.rename(full, path)  # killed between moving the old folder aside and the new one in
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
        except OSError:  # removed by another writer already, or not ours to remove
            continue
        removed.append(entry)
    return removed


def fsync_tree(path):
    """Syncs a file, or every file and folder under a folder, to disk."""
    paths = [path]
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, n) for n in files + dirs]
    for item in paths:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_folder(folder):
    # Makes the rename itself durable; folders cannot be opened for syncing on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path, content):
    """Writes `content` (bytes) through `write_atomically`."""

    def write(partial):
        with open(partial, "wb") as f:
            f.write(content)

    write_atomically(path, write)


def save_arrays(path, array=None, compressed=False, **arrays):
    """Writes one array as `.npy` (`array`), or named `arrays` as `.npz`,
    through `write_atomically`; never pickled."""
    import numpy as np

    def write(partial):
        with open(partial, "wb") as f:  # a file object: NumPy would add its own extension to a name
            if array is not None:
                np.save(f, array, allow_pickle=False)
            else:
                (np.savez_compressed if compressed else np.savez)(f, **arrays)

    write_atomically(path, write)


def write_atomically(path, write, suffix=""):
    """Calls `write(temporary_path)` for a new file (or folder) beside `path`,
    syncs it to disk and renames it into place, so a reader finds the old
    file or the new one, whole, whenever the writer is killed. The temporary
    is removed if `write` fails; temporaries of earlier killed writes to
    `path` are removed first. Every file tfhash writes goes through here.

    `suffix` ends the temporary name (writers that infer the format from it,
    such as Keras's `.keras` and `.weights.h5`, need it). A folder replaces a
    folder: the old one is renamed aside, the new one in, the old one removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path)
    remove_stale_temporaries(path)
    partial = _temporary_name(path, suffix)
    try:
        write(partial)
        fsync_tree(partial)  # the data is on disk before the name points at it
        if os.path.isdir(partial) and os.path.isdir(path):
            aside = _temporary_name(path, ".old")
            os.rename(path, aside)
            os.rename(partial, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(partial, path)
        _sync_folder(folder)
    finally:
        if os.path.isdir(partial) and not os.path.islink(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.remove(partial)
