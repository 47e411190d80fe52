"""The pretrained zoo: named encoders, downloaded, verified and cached.

A zoo is a folder, served as it is (over HTTP, or as a `file://` copy):

    manifest.json        one entry per encoder: its file, sha256 and size, the
                         input contract, the code length and the mAP its recipe
                         reached on the protocol it was measured on
    files/NAME.keras     the encoders (JSON config + HDF5 weights, no pickle)
    recipes/NAME.json    the recipes that made them

`tfhash zoo publish` writes one. `TFHASH_ZOO_URL` pointing at such a folder
(`http://host/zoo/`, `file:///srv/zoo/`) is the only setting a user needs:
the manifest is read from there and each file fetched beside it. Without it,
the manifest shipped in the package lists the published entries and their
figures, and its files are looked for beside it (a source checkout after
`zoo publish`) or at its `base_url`. Files are cached under
`~/.keras/tfhash_zoo/` (or `TFHASH_ZOO_CACHE`).

A download is written to a temporary name, checked against the manifest's
sha256 and only then renamed into the cache, so the cache never holds a
partial or corrupted file; a file in the cache is checked again before use.
Nothing is unpickled: `.keras` files hold a JSON config and HDF5 weights,
and are loaded with `safe_mode=True`.

This module finds, fetches and verifies files and imports no model: loading
one is the models' `from_preset` (or `load` once `tfhash.models` is imported).

    >>> from tfhash import zoo
    >>> from tfhash.models import HashModel
    >>> [entry["name"] for entry in zoo.list()]
    >>> encoder = HashModel.from_preset("dhn_fashion_mnist_32")
    >>> codes = encoder.encode(images)
"""

import importlib.resources
import json
import os
import re
import urllib.error
from pathlib import Path

from tfhash.io import sha256, write_atomically

URL_ENV = "TFHASH_ZOO_URL"
CACHE_ENV = "TFHASH_ZOO_CACHE"
MANIFEST_ENV = "TFHASH_ZOO_MANIFEST"
MANIFEST_FORMAT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_REQUIRED = ("file", "sha256", "size", "class", "bits", "input", "protocol", "metric", "recipe")


class ZooError(Exception):
    """A zoo entry could not be listed, fetched or verified."""


def manifest_path():
    """The local manifest in use: `TFHASH_ZOO_MANIFEST`, else the one shipped in the package."""
    return Path(os.environ.get(MANIFEST_ENV) or importlib.resources.files(__name__) / "manifest.json")


def _folder_url(url):
    return url if url.endswith("/") else url + "/"


def read_manifest(path=None):
    """The manifest as a dict, checked for the fields every entry needs.

    From `path` if given, else `TFHASH_ZOO_MANIFEST`, else the zoo at
    `TFHASH_ZOO_URL` (`URL/manifest.json`), else the packaged manifest. The
    folder its files are relative to is kept under the key "_base" (not
    written back): `TFHASH_ZOO_URL` if set (a mirror of a local manifest's
    files), else the manifest's `base_url`, else the manifest's own folder.
    """
    url = os.environ.get(URL_ENV)
    if path is None and url and not os.environ.get(MANIFEST_ENV):
        base = origin = _folder_url(url)
        text, where = fetch_text(base + "manifest.json"), base + "manifest.json"
    else:
        path = Path(path or manifest_path())
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
        raise ZooError(f"The zoo manifest {path} has format {manifest.get('format')!r}; expected {MANIFEST_FORMAT}")
    for name, entry in manifest.get("entries", {}).items():
        missing = [key for key in _REQUIRED if key not in entry]
        if missing or not _NAME.match(name):
            raise ZooError(f"Zoo manifest entry {name!r} is malformed: missing {missing}")
    if path is not None and not url and manifest.get("base_url"):  # a local manifest, its files hosted elsewhere
        base = manifest["base_url"]
    manifest["_base"], manifest["_origin"] = base, origin  # its files' folder; its own folder (recipes/)
    return manifest


def write_manifest(manifest, path):
    """Writes a manifest (atomically), without the keys `read_manifest` adds."""
    from tfhash.io import write_json

    write_json({k: v for k, v in manifest.items() if not k.startswith("_")}, path, sort_keys=True)


# Seconds to wait for a zoo server before giving up.
TIMEOUT = 30


def fetch_text(url):
    """The text at `url` (http, https or file), or a `ZooError` naming it."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as e:
        raise ZooError(f"Could not read {url}: {e}. Expected a zoo folder (manifest.json, files/, recipes/) "
                       f"there: check {URL_ENV}") from None


def list(manifest=None):  # noqa: A001  (zoo.list(), as torch.hub.list)
    """Every entry: name, method, bits, protocol, the mAP it reached, file size."""
    manifest = manifest or read_manifest()
    return [
        {
            "name": name,
            "class": entry["class"],
            "bits": entry["bits"],
            "protocol": entry["protocol"],
            "metric": entry["metric"],
            "size": entry["size"],
        }
        for name, entry in sorted(manifest["entries"].items())
    ]


def entry(name, manifest=None):
    """One entry of the manifest, with its name."""
    manifest = manifest or read_manifest()
    entries = manifest["entries"]
    if name not in entries:
        raise ZooError(f"Unknown zoo entry {name!r}. Available: {sorted(entries)}")
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


def download(name, *, manifest=None, force=False):
    """The verified local path of an entry's file, downloading it if needed.

    Raises:
        ZooError: unknown name, a file name leaving the cache, no network (or a
            missing file at the base URL), or a sha256 mismatch (the bad file
            is removed; the cache keeps only verified files).
    """
    import keras

    manifest = manifest or read_manifest()
    item = entry(name, manifest)
    cache = cache_dir()
    path = _cached_path(item, cache)
    if path.exists() and not force:
        if sha256(path) == item["sha256"]:
            return str(path)
        path.unlink()  # corrupted or stale in the cache: fetch again
    path.parent.mkdir(parents=True, exist_ok=True)
    origin = base_url(manifest) + item["file"]

    def fetch(partial):
        # get_file writes where it is told: the temporary name beside `path`,
        # checked before the rename, so nothing partial or wrong is ever at `path`.
        keras.utils.get_file(os.path.basename(partial), origin, cache_dir=str(path.parent), cache_subdir=".")
        got = sha256(partial)
        if got != item["sha256"]:
            raise ZooError(
                f"sha256 mismatch for zoo entry {name!r} from {origin}: expected {item['sha256']}, "
                f"received {got} ({os.path.getsize(partial)} bytes; expected {item['size']}). "
                "The file was removed."
            )

    try:
        write_atomically(path, fetch)
    except ZooError:
        raise
    except Exception as e:  # get_file wraps URL errors in a bare Exception
        cause = e.__cause__ or e
        if isinstance(cause, (urllib.error.URLError, OSError)) or "URL fetch failure" in str(e):
            raise ZooError(f"Could not download zoo entry {name!r} from {origin}: {e}. "
                           f"Check the network, or set {URL_ENV} to a mirror or an offline copy.") from None
        raise
    return str(path)


def verify(name, *, manifest=None):
    """Whether the cached file of an entry matches the manifest's sha256 (False if absent)."""
    item = entry(name, manifest)
    path = _cached_path(item, cache_dir())
    return path.exists() and sha256(path) == item["sha256"]


def load(name, *, manifest=None):
    """The entry's encoder (a `tfhash.models.HashModel`), downloaded and verified as needed.

    The zoo sits below the models and does not import them (their
    `from_preset` comes here): the entry's class must be registered, which
    importing `tfhash.models` does. `HashModel.from_preset(name)` always is.
    """
    import keras

    manifest = manifest or read_manifest()
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
