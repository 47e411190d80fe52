"""Where the library keeps its own files, and how it writes every file
(models, run records, codes, exports, caches, the zoo): atomically, so a
reader, or a writer killed half way, never leaves half a file."""

import contextlib
import functools
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
    write_atomically(path, array_writer(array, compressed, **arrays))


def array_writer(array=None, compressed=False, **arrays):
    """A `write(file)` for `write_atomically` or a transaction member: one
    array as `.npy`, or named `arrays` as `.npz`; never pickled."""
    import numpy as np

    def write(partial):
        with open(partial, "wb") as f:  # a file object: NumPy would add its own extension to a name
            if array is not None:
                np.save(f, array, allow_pickle=False)
            else:
                (np.savez_compressed if compressed else np.savez)(f, **arrays)

    return write


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


# ---------------------------------------------------------------------------
# Results of several files (a run directory, an encode's codes and index, a zoo
# entry, a Retriever folder): one mechanism, a transaction on the result's
# *home* (its folder, or its main file).
#
# Why a commit record rather than a folder renamed into place: the members of
# a result do not always share one folder (an encode's `db.npy` and `db.thi`,
# a zoo entry's file, recipe and manifest line), a folder cannot replace a
# folder in one atomic step everywhere (there is an instant with no folder),
# and a rename leaves files a user keeps beside the result (`codes/`, plots)
# alone. So: each member is written to a temporary beside it and synced; a
# commit record naming every (temporary -> member) rename is written
# atomically (the instant the new version exists); the renames are done; the
# record is removed. Whoever touches the result next (writer or reader)
# finishes a record a killed writer left, so the result is the old version
# (killed before the record: its temporaries are stale and removed) or the
# new one (killed after), whole.
#
# Two lock files beside the home (fcntl.flock, released by the kernel when a
# process dies): `.{name}.lock`, held by a writer for its whole transaction,
# so writers of one result take turns (the second waits or fails with `Busy`,
# by option); and `.{name}.version.lock`, held exclusively while a record is
# applied and shared by readers while they read the members, so a reader sees
# one version and is held up only by the renames, never by a long write.
# Where no lock file can be made (a read-only folder, a platform without
# fcntl), nothing can be written either, and reads go unlocked.

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; results are still written by records
    fcntl = None

COMMIT_RECORD = "tfhash.commit"


class Busy(BlockingIOError):
    """Another process is writing the same result and the caller chose not to wait (an OSError, so
    every command reports it in one line)."""


def _beside(home, kind):
    folder, name = os.path.split(os.path.abspath(os.fspath(home)))
    return os.path.join(folder, f".{name}.{kind}")


def _open_lock(file, create_folder):
    if create_folder:
        os.makedirs(os.path.dirname(file), exist_ok=True)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(file, flags, 0o644)
        except OSError:
            continue
    return None


def _holder(fd):
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        return f"pid {int(text)}" if text else "another process"
    return "another process"


@contextlib.contextmanager
def _flock(home, kind, exclusive, wait):
    """Holds the `kind` lock of `home`. `wait`: True (block), False (fail at
    once) or seconds; past it, `Busy` names the holder."""
    import time

    file = _beside(home, kind)
    # Only a writer makes the folder its lock lives in; a reader of a missing place reads nothing.
    fd = _open_lock(file, create_folder=exclusive and kind == "lock") if fcntl is not None else None
    if fd is None:
        yield
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if wait is True:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + (0.0 if wait is False or wait is None else float(wait))
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        waited = "" if not wait else f" for {float(wait):g} s"
                        raise Busy(f"{os.fspath(home)} is being written by {_holder(fd)}. Expected no other writer: "
                                   f"wait for it (wait=True, --wait) or write elsewhere. Received: its lock "
                                   f"{file} held{waited}") from None
                    time.sleep(0.05)
        if exclusive and kind == "lock":  # who holds it, for the next writer's message
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _apply_record(record_file):
    """Finishes the commit `record_file` describes (idempotent: a rename
    already done is skipped), then removes the record."""
    folder = os.path.dirname(record_file)
    try:
        with open(record_file, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return
    if not isinstance(record, dict) or record.get("format") != COMMIT_RECORD:
        raise ValueError(f"{record_file} is not a tfhash commit record. Expected format {COMMIT_RECORD!r}. "
                         f"Received: {str(record)[:80]!r}")
    folders = {folder}
    targets = set()
    for temporary, target in record["moves"]:
        temporary, target = os.path.join(folder, temporary), os.path.join(folder, target)
        targets.add(os.path.normpath(target))
        folders.add(os.path.dirname(target))
        if os.path.lexists(temporary):
            os.replace(temporary, target)
    for gone in record["removes"]:
        gone = os.path.join(folder, gone)
        if os.path.normpath(gone) in targets:
            continue
        if os.path.isdir(gone) and not os.path.islink(gone):
            shutil.rmtree(gone, ignore_errors=True)
        elif os.path.lexists(gone):
            os.remove(gone)
        folders.add(os.path.dirname(gone))
    for each in folders:
        _sync_folder(each)
    with contextlib.suppress(FileNotFoundError):
        os.remove(record_file)
    _sync_folder(folder)


def recover(home):
    """Finishes a commit of `home` that a killed writer left half done (see
    above); nothing when there is none. Returns whether there was one."""
    record = _beside(home, "commit")
    if not os.path.exists(record):
        return False
    with _flock(home, "version.lock", exclusive=True, wait=True):
        _apply_record(record)
    return True


@contextlib.contextmanager
def reading(home):
    """Holds `home` at one version while the caller reads its members: any
    half-done commit is finished first, and a writer's renames wait until the
    block ends (they are the only thing that does)."""
    while True:
        recover(home)
        with _flock(home, "version.lock", exclusive=False, wait=True):
            if not os.path.exists(_beside(home, "commit")):
                yield
                return
        # A writer died between our look and our lock: finish its commit, look again.


class Transaction:
    """The members of one result, written aside and committed together (see
    `transaction`)."""

    def __init__(self, home):
        self.home = os.path.abspath(os.fspath(home))
        self._moves = {}  # target -> temporary
        self._removes = []

    def write(self, path, write, suffix=""):
        """Calls `write(temporary)` for the member `path` (a file), syncs it
        and keeps it for the commit; a second write of one member replaces the
        first. `suffix` ends the temporary's name, as in `write_atomically`.
        Returns `path`."""
        path = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        remove_stale_temporaries(path)
        partial = _temporary_name(path, suffix)
        try:
            write(partial)
            if not os.path.isfile(partial):
                raise ValueError(f"Expected a transaction member to be a file. Received: {path} written as "
                                 f"{'a folder' if os.path.isdir(partial) else 'nothing'}")
            fsync_tree(partial)
        except BaseException:
            _remove(partial)
            raise
        if path in self._moves:
            _remove(self._moves.pop(path))
        self._moves[path] = partial
        return path

    def staged(self, path):
        """Where the member `path` waits for the commit (its temporary)."""
        return self._moves[os.path.abspath(os.fspath(path))]

    def sha256(self, path):
        """The sha256 of the member `path` as this transaction wrote it (before the commit)."""
        return sha256(self.staged(path))

    def write_json(self, obj, path, **options):
        """`write` of `obj` as JSON, as `tfhash.io.write_json` writes it."""

        def write(partial):
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(obj, f, **{"indent": 2, **options})
                f.write("\n")

        return self.write(path, write, suffix=".json")

    def remove(self, path):
        """Removes `path` (a file or folder) at the commit, unless the commit writes it."""
        self._removes.append(os.path.abspath(os.fspath(path)))

    def discard(self):
        for partial in self._moves.values():
            _remove(partial)
        self._moves.clear()

    def commit(self):
        """Writes the record (from here the new version exists), renames each
        member into place and removes the record. Readers wait for the renames."""
        record_file = _beside(self.home, "commit")
        folder = os.path.dirname(record_file)
        relative = functools.partial(os.path.relpath, start=folder)
        record = {
            "format": COMMIT_RECORD,
            "pid": os.getpid(),
            "moves": [[relative(partial), relative(target)] for target, partial in self._moves.items()],
            "removes": [relative(path) for path in self._removes],
        }
        with _flock(self.home, "version.lock", exclusive=True, wait=True):
            try:
                write_json(record, record_file)
            except BaseException:  # no record: the old version stands, and the temporaries go
                self.discard()
                raise
            _apply_record(record_file)
        self._moves.clear()


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def transaction(home, *, wait=False):
    """Writes one result of several files whole: every member or none.

        >>> with transaction("runs/dhn32") as t:
        ...     t.write("runs/dhn32/image_encoder.keras", encoder.save, suffix=".keras")
        ...     t.write_json(record, "runs/dhn32/run.json")

    Holds `home`'s writer lock for the whole block (a second writer waits or
    gets `Busy`, as `wait` says: True, False or seconds), finishes a commit a
    killed writer left, and commits when the block ends without an exception;
    with one, the temporaries are removed and the result is untouched.
    """
    with _flock(home, "lock", exclusive=True, wait=wait):
        recover(home)
        result = Transaction(home)
        try:
            yield result
        except BaseException:
            result.discard()
            raise
        result.commit()
