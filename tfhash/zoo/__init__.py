"""The pretrained zoo: named encoders, downloaded, verified and cached.

A zoo is a folder, served as it is (over HTTP, or as a `file://` copy):

    manifest.json        one entry per encoder: its file, sha256 and size, the
                         input contract, the code length and the mAP its recipe
                         reached on the protocol it was measured on
    files/NAME.keras     the encoders (JSON config + HDF5 weights, no pickle)
    recipes/NAME.json    the recipes that made them

`tfhash zoo publish` writes one. `TFHASH_ZOO_URL` pointing at such a folder
(`http://host/zoo/`, `file:///srv/zoo/`, or a Hugging Face Hub repository
`hf://ORG/REPO[@REVISION]`, see `tfhash.zoo.hub`) is the only setting a user
needs: the manifest is read from there and each file fetched beside it.
Without it, the manifest shipped in the package lists the published entries
and their figures, and its files are looked for beside it (a source checkout
after `zoo publish`) or at its `base_url`; `list` says which entries can be
fetched (`status`), and fetching one that is not there says how to publish
it. Files are cached under `~/.keras/tfhash_zoo/` (or `TFHASH_ZOO_CACHE`);
a Hub zoo's in huggingface_hub's cache (`TFHASH_ZOO_CACHE/huggingface/` when
that is set).

A download is written to a temporary name, checked against the manifest's
sha256 and only then renamed into the cache, so the cache never holds a
partial or corrupted file; a file in the cache is checked again before use.
Every transfer gives up once the server is silent for `TFHASH_ZOO_TIMEOUT`
seconds (30 by default), connecting or between two reads, and removes what
it had written.

A manifest's path fields (an entry's `file` and `recipe`) must be plain
relative paths inside the zoo folder: a manifest naming `../x` or `/x` is
refused as it is read.

Nothing is unpickled: `.keras` files hold a JSON config and HDF5 weights,
and are loaded with `safe_mode=True`.

This module finds, fetches and verifies files and imports no model: loading
one is the models' `from_preset` (or `load` once `tfhash.models` is imported).

    >>> from tfhash import zoo
    >>> from tfhash.models import HashModel
    >>> [entry["name"] for entry in zoo.list()]
    >>> encoder = HashModel.from_preset("dhn_fashion_mnist_32")
    >>> encoder = HashModel.from_preset("hf://ORG/REPO/dhn_fashion_mnist_32")
    >>> codes = encoder.encode(images)
"""

import importlib.resources
import json
import math
import os
import re
import sys
import urllib.error
from pathlib import Path

from tfhash.io import recover, sha256, write_atomically

URL_ENV = "TFHASH_ZOO_URL"
CACHE_ENV = "TFHASH_ZOO_CACHE"
MANIFEST_ENV = "TFHASH_ZOO_MANIFEST"
TIMEOUT_ENV = "TFHASH_ZOO_TIMEOUT"
MANIFEST_FORMAT = 1
# Seconds a zoo server may stay silent (to connect, or between two reads) before a transfer gives up.
TIMEOUT = 30
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_REQUIRED = ("file", "sha256", "size", "class", "bits", "input", "protocol", "metric", "recipe")
# The fields of an entry that are paths relative to the zoo folder.
PATH_FIELDS = ("file", "recipe")
# One name of such a path: no '%' (a file:// URL would decode '%2e%2e' to '..'),
# no ':' (drives, URL schemes), no backslash.
_PATH_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")
_BLOCK = 2**20  # bytes per read while downloading
HF = "hf://"  # a zoo on the Hugging Face Hub (tfhash.zoo.hub)
# What `status` says of an entry's file.
CACHED, AVAILABLE, NOT_PUBLISHED, REMOTE, UNREACHABLE = "cached", "available", "not published", "remote", "unreachable"


class ZooError(Exception):
    """A zoo entry could not be listed, fetched or verified."""


def manifest_path():
    """The local manifest in use: `TFHASH_ZOO_MANIFEST`, else the one shipped in the package."""
    return Path(os.environ.get(MANIFEST_ENV) or importlib.resources.files(__name__) / "manifest.json")


def _folder_url(url):
    return url if url.endswith("/") else url + "/"


def local_path(url):
    """The local path of a `file://` URL."""
    import urllib.parse
    import urllib.request

    return urllib.request.url2pathname(urllib.parse.urlparse(url).path)


def read_manifest(path=None, *, url=None):
    """The manifest as a dict, checked for the fields every entry needs.

    From `path` if given, else the zoo at `url` if given, else
    `TFHASH_ZOO_MANIFEST`, else the zoo at `TFHASH_ZOO_URL`
    (`URL/manifest.json`), else the packaged manifest. The folder its files
    are relative to is kept under the key "_base" (not written back): the
    zoo's URL if set (a mirror of a local manifest's files), else the
    manifest's `base_url`, else the manifest's own folder. A Hub zoo's
    (`hf://ORG/REPO@REVISION`) is pinned to the commit its manifest was read at.
    """
    given, url = url, url or os.environ.get(URL_ENV)
    if path is None and url and (given or not os.environ.get(MANIFEST_ENV)):
        base = origin = _folder_url(url)
        where = base + "manifest.json"
        if base.startswith(HF):
            from tfhash.zoo import hub

            file, commit = hub.fetch(where, timeout_seconds())
            text = Path(file).read_text(encoding="utf-8")
            base = origin = hub.pinned(base, commit)  # its files at the manifest's commit
        else:
            if base.startswith("file://"):  # a local zoo: finish a publish killed half way (tfhash.io.transaction)
                recover(local_path(base).rstrip(os.sep))
            text = fetch_text(where)
    else:
        path = Path(path or manifest_path())
        recover(path.resolve().parent)  # a publish killed half way is finished before its manifest is read
        origin = path.resolve().parent.as_uri() + "/"
        where, base = str(path), _folder_url(url) if url else origin
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ZooError(f"No zoo manifest at {path}: expected a zoo folder's manifest.json "
                           f"(set {URL_ENV} to a zoo folder or URL)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ZooError(f"The zoo manifest {where} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else f"none (a JSON {type(manifest).__name__})"
        raise ZooError(f"The zoo manifest {where} has format {found!r}; expected {MANIFEST_FORMAT}")
    entries = manifest.get("entries", {})
    if not isinstance(entries, dict):
        raise ZooError(f"The zoo manifest {where} is malformed: expected 'entries' to be an object. "
                       f"Received: {type(entries).__name__}")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ZooError(f"Zoo manifest entry {name!r} is malformed: expected an object. "
                           f"Received: {type(entry).__name__}")
        missing = [key for key in _REQUIRED if key not in entry]
        if missing or not _NAME.match(name):
            raise ZooError(f"Zoo manifest entry {name!r} is malformed: missing {missing}")
        check_paths(name, entry)
    if path is not None and not url and manifest.get("base_url"):  # a local manifest, its files hosted elsewhere
        base = manifest["base_url"]
    manifest["_base"], manifest["_origin"] = base, origin  # its files' folder; its own folder (recipes/)
    return manifest


def check_paths(name, entry):
    """Refuses an entry whose path fields (`PATH_FIELDS`) could leave the zoo
    folder or the cache: each must be a non-empty relative path of
    '/'-separated names of letters, digits, '.', '_' and '-', none of them
    '.' or '..' (so no absolute path, drive, URL scheme, backslash or
    percent-escape). One checker for every path field, so none is followed
    unchecked."""
    for field in PATH_FIELDS:
        value = entry.get(field)
        if not isinstance(value, str) or not value:
            reason = "is empty" if value in ("", None) else "is not a path"
        elif value.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", value) or re.match(r"^[A-Za-z]:", value):
            reason = "escapes the cache or the zoo folder"
        elif not all(_PATH_PART.match(part) and part != "." for part in value.split("/")):
            reason = "is not a plain relative path"
        else:
            continue
        raise ZooError(
            f"Zoo manifest entry {name!r}: its {field} {value!r} {reason}: refused. Expected a relative path "
            "inside the zoo folder ('/'-separated names of letters, digits, '.', '_' and '-'; no '..', "
            f"no leading '/', no backslash, drive or '%'). Received: {field}={value!r}"
        )


def write_manifest(manifest, path, transaction):
    """Writes a manifest as a member of `transaction` (`tfhash.io`), without
    the keys `read_manifest` adds."""
    transaction.write_json({k: v for k, v in manifest.items() if not k.startswith("_")}, path, sort_keys=True)


def timeout_seconds(timeout=None):
    """The transfer timeout in seconds: `timeout` if given, else
    `TFHASH_ZOO_TIMEOUT`, else `TIMEOUT`; a positive finite number."""
    given = timeout if timeout is not None else os.environ.get(TIMEOUT_ENV) or TIMEOUT
    try:
        seconds = float(given)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        source = "timeout" if timeout is not None else TIMEOUT_ENV
        raise ZooError(f"{source} must be a positive number of seconds. Received: {source}={given!r}")
    return seconds


def _transfer_error(url, error, seconds, what, advice):
    """A one-line ZooError for a failed transfer: `what` URL, the cause and
    `advice` (a sentence); a timeout says how long it waited and how to wait longer."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, TimeoutError):  # connecting (a URLError around it) or reading (bare)
        return ZooError(f"{what} {url}: expected data within {seconds:g} s ({TIMEOUT_ENV}); received none for "
                        f"{seconds:g} s (timed out). Set {TIMEOUT_ENV} to wait longer, or {advice[0].lower()}"
                        f"{advice[1:]}.")
    detail = " ".join(str(error).split())  # one line
    return ZooError(f"{what} {url}: {detail}. {advice}.")


def _open(url, seconds):
    """urlopen with `seconds` as the connect timeout and the timeout of every read (the socket's)."""
    import urllib.request

    return urllib.request.urlopen(url, timeout=seconds)


def fetch_text(url, *, timeout=None):
    """The text at `url` (http, https, file or hf), or a `ZooError` naming it.

    `timeout`: seconds the server may stay silent, connecting or between two
    reads (default: `timeout_seconds()`).
    """
    seconds = timeout_seconds(timeout)
    if url.startswith(HF):
        from tfhash.zoo import hub

        try:
            return Path(hub.fetch(url, seconds)[0]).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ZooError(f"Could not read {url}: {e}. Expected UTF-8 text (a zoo manifest or recipe)") from None
    try:
        with _open(url, seconds) as response:
            return response.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ZooError(f"Could not read {url}: {e}. Expected UTF-8 text (a zoo manifest or recipe)") from None
    except (urllib.error.URLError, OSError) as e:
        advice = f"Check {URL_ENV}: expected a zoo folder (manifest.json, files/, recipes/) there"
        raise _transfer_error(url, e, seconds, "Could not read", advice) from None


def list(manifest=None, *, check=False, timeout=None):  # noqa: A001  (zoo.list(), as torch.hub.list)
    """Every entry: name, method, bits, protocol, the mAP it reached, file
    size, and whether its file can be had (`status`; `check`: ask a remote
    zoo's server)."""
    manifest = manifest or read_manifest()
    return [
        {
            "name": name,
            "class": entry["class"],
            "bits": entry["bits"],
            "protocol": entry["protocol"],
            "metric": entry["metric"],
            "size": entry["size"],
            "status": status(name, manifest, check=check, timeout=timeout),
        }
        for name, entry in sorted(manifest["entries"].items())
    ]


def status(name, manifest=None, *, check=False, timeout=None):
    """Whether an entry's file can be had, decided cheaply:

    - "cached": in the cache with the manifest's size (its sha256 is checked on use);
    - "available": at the zoo (a local zoo's file exists; a remote one answered, with `check`);
    - "not published": absent from the zoo (a local zoo, or a remote one answering 404 to `check`);
    - "remote": at an http(s) or hf:// zoo, not asked (`check=False`);
    - "unreachable": a remote zoo that did not answer `check` (`timeout`, as `download`).
    """
    manifest = manifest or read_manifest()
    item = entry(name, manifest)
    url = base_url(manifest) + item["file"]
    if url.startswith(HF):
        from tfhash.zoo import hub

        path = hub.cached(url)
    else:
        path = _cached_path(item, cache_dir())
    if path is not None and os.path.isfile(path) and os.path.getsize(path) == item["size"]:
        return CACHED
    if url.startswith("file:"):
        return AVAILABLE if os.path.isfile(local_path(url)) else NOT_PUBLISHED
    if not check:
        return REMOTE
    seconds = timeout_seconds(timeout)
    if url.startswith(HF):
        try:
            hub.metadata(url, seconds)
        except Exception as error:  # noqa: BLE001  (huggingface_hub raises several kinds)
            return NOT_PUBLISHED if hub._status(error) in (404, 410) else UNREACHABLE
        return AVAILABLE
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds):
            return AVAILABLE
    except urllib.error.HTTPError as error:
        return NOT_PUBLISHED if error.code in (404, 410) else UNREACHABLE
    except (urllib.error.URLError, OSError):
        return UNREACHABLE


def _locate(name, manifest):
    """`(entry name, manifest)`: an `hf://ORG/REPO[@REVISION]/ENTRY` name
    reads that zoo's manifest; any other the manifest given or in use."""
    if manifest is None and name.startswith(HF):
        from tfhash.zoo import hub

        zoo_url, name = hub.split_entry(name)
        return name, read_manifest(url=zoo_url)
    return name, manifest or read_manifest()


def entry(name, manifest=None):
    """One entry of the manifest, with its name; its paths checked (a manifest
    given as a dict may not have been through `read_manifest`)."""
    name, manifest = _locate(name, manifest)
    entries = manifest["entries"]
    if name not in entries:
        raise ZooError(f"Unknown zoo entry {name!r}. Available: {sorted(entries)}")
    check_paths(name, entries[name])
    return {"name": name, **entries[name]}


def cache_dir():
    return Path(os.environ.get(CACHE_ENV) or Path(os.path.expanduser("~")) / ".keras" / "tfhash_zoo")


def base_url(manifest):
    """The folder the manifest's file paths are relative to."""
    url = manifest.get("_base") or manifest.get("base_url")
    if not url:
        raise ZooError(f"No base URL for the zoo: set {URL_ENV} to a zoo folder or URL")
    return _folder_url(url)


def _cached_path(item, cache):
    """Where an entry's file lives in the cache; refuses names that leave the zoo."""
    cache = cache.resolve()
    path = (cache / Path(item["file"]).name).resolve()
    if cache not in path.parents or item["file"].startswith("/") or ".." in Path(item["file"]).parts:
        raise ZooError(
            f"Zoo entry {item['name']!r} names the file {item['file']!r}, which escapes the cache {cache}: refused"
        )
    return path


def _terminal():
    """Whether both stdout and stderr are terminals (not a pipe, a file or a log)."""
    return all(stream is not None and hasattr(stream, "isatty") and stream.isatty()
               for stream in (sys.stdout, sys.stderr))


class _Progress:
    """A download's progress on stderr: on a terminal (stdout and stderr
    both), one line redrawn with a carriage return (no ANSI codes); elsewhere
    (a pipe, a log) one line once the file is in place; nothing when off."""

    def __init__(self, name, size, enabled):
        self.name, self.size, self.enabled = name, size, enabled
        self.tty = enabled and _terminal()
        self.drawn = False

    def update(self, received):
        if self.tty:
            sys.stderr.write(f"\rdownloading {self.name}: {received / 1e6:.1f}/{self.size / 1e6:.1f} MB")
            sys.stderr.flush()
            self.drawn = True

    def end(self, origin=None):
        """Closes the redrawn line; with `origin` (a success, not shown on a terminal), the one line."""
        if self.drawn:
            sys.stderr.write("\n")
        elif self.enabled and origin is not None and not self.tty:
            sys.stderr.write(f"downloaded {self.name} ({self.size / 1e6:.1f} MB, sha256 verified) from {origin}\n")
        sys.stderr.flush()


def _not_published(name, item, manifest, local):
    """The error for an entry whose file a local zoo lacks: how to publish it, or where to find a published zoo."""
    folder = Path(local[: -len(item["file"])] if local.endswith(item["file"]) else os.path.dirname(local))
    recipe_name = Path(item["recipe"]).stem
    origin = manifest.get("_origin", "")
    recipe_file = Path(local_path(origin)) / item["recipe"] if origin.startswith("file:") else None
    packaged = Path(__file__).resolve().parent
    # The package's recipes by name; another zoo's by its file (publish takes either).
    recipe = (str(recipe_file) if recipe_file is not None and recipe_file.is_file()
              and recipe_file.resolve().parent.parent != packaged else recipe_name)
    return ZooError(
        f"Zoo entry {name!r} is not published here: no file {local}. Publish it with `tfhash zoo publish {recipe} "
        f"--zoo-dir {folder.resolve()}` (trains its recipe; `--run RUN` publishes a run of that recipe instead), or "
        f"set {URL_ENV} to a published zoo (http(s)://, file:// or hf://ORG/REPO)."
    )


def download(name, *, manifest=None, force=False, timeout=None, progress=False):
    """The verified local path of an entry's file, downloading it if needed.

    The file is read in blocks into a temporary name beside its place in the
    cache (`tfhash.io.write_atomically`), checked against the manifest's size
    and sha256, then renamed into place; any failure removes the temporary.
    A Hub zoo's file goes through huggingface_hub instead (`tfhash.zoo.hub`),
    checked the same way. `name` may be `hf://ORG/REPO[@REVISION]/ENTRY`.

    Args:
        timeout: seconds the server may stay silent, connecting or between
            two reads (default: `TFHASH_ZOO_TIMEOUT`, else `TIMEOUT`).
        progress: report a transfer on stderr: redrawn on a terminal, else
            one line once done (nothing for a file already cached).

    Raises:
        ZooError: unknown name, a file name leaving the cache, an entry a
            local zoo has not published (saying how to publish it), no
            network (or a missing file at the base URL), a server silent for
            `timeout`, more bytes than the manifest's size, or a sha256
            mismatch (the cache keeps only verified files).
    """
    name, manifest = _locate(name, manifest)
    item = entry(name, manifest)
    seconds = timeout_seconds(timeout)
    origin = base_url(manifest) + item["file"]
    report = _Progress(name, item["size"], progress)
    if origin.startswith(HF):
        from tfhash.zoo import hub

        path, transferred = hub.download(name, item, origin, seconds, force=force, progress=report.tty)
        if transferred:
            report.end(origin)
        return path
    cache = cache_dir()
    path = _cached_path(item, cache)
    if path.exists() and not force:
        if sha256(path) == item["sha256"]:
            return str(path)
        path.unlink()  # corrupted or stale in the cache: fetch again
    if origin.startswith("file:") and not os.path.isfile(local_path(origin)):
        raise _not_published(name, item, manifest, local_path(origin))
    path.parent.mkdir(parents=True, exist_ok=True)

    def fetch(partial):
        received = 0
        with _open(origin, seconds) as response, open(partial, "wb") as out:
            while block := response.read(_BLOCK):
                received += len(block)
                if received > item["size"]:  # a server sending without end cannot fill the disk
                    raise ZooError(f"Zoo entry {name!r} from {origin}: expected {item['size']} bytes (the "
                                   f"manifest's size). Received more; the file was removed.")
                out.write(block)
                report.update(received)
        got = sha256(partial)
        if got != item["sha256"]:
            raise ZooError(
                f"sha256 mismatch for zoo entry {name!r} from {origin}: expected {item['sha256']}, "
                f"received {got} ({received} bytes; expected {item['size']}). "
                "The file was removed."
            )

    try:
        write_atomically(path, fetch)
    except (urllib.error.URLError, OSError) as e:  # HTTP errors, refused, timed out, reset
        report.end()
        if origin.startswith("file:"):  # a local file: nothing to do with a network
            advice = f"Check the file, or set {URL_ENV} to a published zoo"
        else:
            advice = f"Check the network, or set {URL_ENV} to a mirror or an offline copy"
        raise _transfer_error(origin, e, seconds, f"Could not download zoo entry {name!r} from", advice) from None
    except BaseException:
        report.end()
        raise
    report.end(origin)
    return str(path)


def verify(name, *, manifest=None):
    """Whether the cached file of an entry matches the manifest's sha256 (False if absent)."""
    name, manifest = _locate(name, manifest)
    item = entry(name, manifest)
    url = base_url(manifest) + item["file"]
    if url.startswith(HF):
        from tfhash.zoo import hub

        path = hub.cached(url)
        return path is not None and sha256(path) == item["sha256"]
    path = _cached_path(item, cache_dir())
    return path.exists() and sha256(path) == item["sha256"]


def load(name, *, manifest=None):
    """The entry's encoder (a `tfhash.models.HashModel`), downloaded and verified as needed.

    The zoo sits below the models and does not import them (their
    `from_preset` comes here): the entry's class must be registered, which
    importing `tfhash.models` does. `HashModel.from_preset(name)` always is.
    """
    import keras

    name, manifest = _locate(name, manifest)
    item = entry(name, manifest)
    if keras.saving.get_registered_object(f"tfhash>{item['class']}") is None:
        raise ZooError(
            f"Zoo entry {name!r} needs the class {item['class']} registered: import tfhash.models first, "
            f"or load it with tfhash.models.HashModel.from_preset({name!r}). "
            f"Received: nothing registered as 'tfhash>{item['class']}'"
        )
    model = keras.saving.load_model(download(name, manifest=manifest), safe_mode=True)
    if type(model).__name__ != item["class"]:
        raise ZooError(f"Zoo entry {name!r} should hold a {item['class']}; the file holds a {type(model).__name__}")
    return model
