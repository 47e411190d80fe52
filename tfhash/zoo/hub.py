"""A zoo on the Hugging Face Hub: `hf://ORG/REPO[@REVISION]`, through `huggingface_hub`.

The repository holds a zoo folder as `tfhash zoo publish` writes it, at its
root (`manifest.json`, `files/`, `recipes/`). Two forms name things in it:

    hf://ORG/REPO[@REVISION]           the zoo (TFHASH_ZOO_URL)
    hf://ORG/REPO[@REVISION]/ENTRY     one entry (from_preset, zoo download)

REVISION is a branch, a tag or a commit (default `main`). The manifest is
read at REVISION and every file of its entries at the commit the manifest
was read at, so a push between the two cannot mix versions.

Files go through `hf_hub_download` into huggingface_hub's cache (its
`HF_HUB_CACHE`; `TFHASH_ZOO_CACHE/huggingface/` when that is set), which
writes to a temporary and renames; each is then checked against the
manifest's sha256, and removed from that cache when it does not match.
`HF_ENDPOINT` (a mirror, a local Hub) is read at each call, `HF_TOKEN` as
huggingface_hub reads it. Each file's metadata is asked for once first, with
`TFHASH_ZOO_TIMEOUT` and no retry, so an unreachable Hub fails in one line
within it (huggingface_hub 1.x alone retries for about 25 s); when nothing
answers, the copy cached for that revision is used, as huggingface_hub does
offline, and a file already cached at the commit the revision points to is
not fetched again. The transfer's read timeout is set to `TFHASH_ZOO_TIMEOUT`
for the call (unless `HF_HUB_DOWNLOAD_TIMEOUT` is set; huggingface_hub
>= 0.25 reads it per call); huggingface_hub resumes a stalled transfer up to
5 times. Tested with huggingface_hub 0.24 and 2.4.

huggingface_hub is optional: `pip install "tfhash[hub]"`.
"""

import contextlib
import os
import re
import threading
from pathlib import Path

from tfhash.io import sha256
from tfhash.zoo import CACHE_ENV, URL_ENV, ZooError, _transfer_error, cache_dir as _zoo_cache

SCHEME = "hf://"
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
# hf://ORG/REPO[@REVISION][/PATH]: a zoo, or (with PATH) an entry or a file in it.
_URL = re.compile(rf"^hf://(?P<repo>{_PART}/{_PART})(?:@(?P<revision>{_PART}))?(?:/(?P<path>.*))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
FORMS = "hf://ORG/REPO or hf://ORG/REPO@REVISION (a zoo), hf://ORG/REPO[@REVISION]/ENTRY (an entry)"
_LOCK = threading.Lock()  # the huggingface_hub settings a call changes (see `_settings`)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ZooError('A zoo on the Hugging Face Hub (hf://) needs huggingface_hub: pip install "tfhash[hub]" '
                       "(or pip install huggingface_hub)") from None
    return huggingface_hub


def parse(url):
    """`(repo_id, revision, path)` of an `hf://` URL; revision "main" when
    not given, path "" for the zoo itself."""
    match = _URL.match(url)
    if not match or ".." in (match["path"] or "").split("/"):
        raise ZooError(f"Not a Hugging Face Hub zoo address: expected {FORMS}. Received: {url!r}")
    return match["repo"], match["revision"] or "main", match["path"] or ""


def split_entry(preset):
    """`(zoo URL, entry name)` of `hf://ORG/REPO[@REVISION]/ENTRY`."""
    repo, _, path = parse(preset)
    if not path or "/" in path.rstrip("/"):
        raise ZooError(f"Not a zoo entry on the Hugging Face Hub: expected {FORMS}. Received: {preset!r}")
    zoo = preset[: -len(path)].rstrip("/")
    return zoo, path.rstrip("/")


def pinned(zoo_url, commit):
    """The zoo URL at `commit`: `hf://ORG/REPO@COMMIT/`."""
    repo, _, _ = parse(zoo_url)
    return f"{SCHEME}{repo}@{commit}/"


def cache_dir():
    """huggingface_hub's cache, or `TFHASH_ZOO_CACHE/huggingface` when that is set."""
    if os.environ.get(CACHE_ENV):
        return str(_zoo_cache() / "huggingface")
    return None  # huggingface_hub's own (HF_HUB_CACHE)


def _endpoint():
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


@contextlib.contextmanager
def _settings(seconds, progress):
    """huggingface_hub's transfer read timeout set to `seconds` (unless the
    user set HF_HUB_DOWNLOAD_TIMEOUT) and, without `progress`, its progress
    bars off; both as they were afterwards. They are module settings, so
    calls here take turns."""
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    with _LOCK:
        timeout = getattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", None)
        if timeout is not None and not os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT"):
            constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
        silenced = not progress and not are_progress_bars_disabled()
        if silenced:
            disable_progress_bars()
        try:
            yield hub
        finally:
            if silenced:
                enable_progress_bars()
            if timeout is not None:
                constants.HF_HUB_DOWNLOAD_TIMEOUT = timeout


def _status(error):
    """The HTTP status of a huggingface_hub error, None when no server answered."""
    return getattr(getattr(error, "response", None), "status_code", None)


def _is_timeout(error):
    return isinstance(error, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(error).__mro__)


def _error(url, error, seconds, what):
    """A one-line ZooError for a failed Hub request."""
    if _is_timeout(error) or _status(error) is None:  # no answer
        advice = f"Check the network and HF_ENDPOINT, or set {URL_ENV} to a mirror or an offline copy"
        return _transfer_error(url, TimeoutError() if _is_timeout(error) else error, seconds, what, advice)
    # huggingface_hub's message on one line: its first two sentences ("404 Client Error. Entry Not Found for url: U.")
    detail = " ".join(re.split(r"(?<=\.) ", " ".join(str(error).split()))[:2])
    return ZooError(f"{what} {url}: {detail[:300]} Check the repository, its revision and the file (HF_TOKEN for "
                    f"a private repository), or set {URL_ENV} to another zoo.")


def _commit_of(path, filename):
    """The commit of a file in huggingface_hub's cache: `snapshots/COMMIT/FILENAME`."""
    return Path(path).parents[len(filename.split("/")) - 1].name


def cached(url):
    """The path of `url`'s file in the cache, or None; no network."""
    repo, revision, filename = parse(url)
    found = _hub().try_to_load_from_cache(repo, filename, cache_dir=cache_dir(), revision=revision)
    return found if isinstance(found, str) else None


def metadata(url, seconds):
    """huggingface_hub's `HfFileMetadata` of `url` (commit, etag, size): one
    HEAD request, bounded by `seconds`, not retried."""
    hub = _hub()
    repo, revision, filename = parse(url)
    return hub.get_hf_file_metadata(hub.hf_hub_url(repo, filename, revision=revision, endpoint=_endpoint()),
                                    timeout=seconds)


def fetch(url, seconds, *, what="Could not read", force=False, size=None, progress=False):
    """`(local path, commit)` of the file at `url`, through `hf_hub_download`.

    Its metadata is asked for first (`metadata`); when no server answers (or
    it answers 5xx) the copy cached for that revision is used if there is
    one, else a one-line ZooError. `size`, when given, must be the Hub's
    size of the file (checked before the transfer).
    """
    repo, revision, filename = parse(url)
    hub = _hub()
    if not force and _COMMIT.match(revision) and (path := cached(url)):
        return path, revision  # a commit's files never change: no request
    try:
        meta = metadata(url, seconds)
    except Exception as error:  # noqa: BLE001  (huggingface_hub raises several kinds; each becomes one line)
        status = _status(error)
        if not force and (status is None or status >= 500) and (path := cached(url)):
            return path, _commit_of(path, filename)
        raise _error(url, error, seconds, what) from None
    if size is not None and meta.size is not None and meta.size != size:
        raise ZooError(f"{what} {url}: expected {size} bytes (the manifest's size). Received: the Hub holds "
                       f"{meta.size} bytes at commit {meta.commit_hash}; nothing was downloaded.")
    if not force and meta.commit_hash and (path := cached(f"{SCHEME}{repo}@{meta.commit_hash}/{filename}")):
        return path, meta.commit_hash  # the revision has not moved since it was fetched
    try:
        with _settings(seconds, progress):  # at `revision` as given: a branch or tag is recorded in the cache's refs/
            path = hub.hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir(),
                                       endpoint=_endpoint(), etag_timeout=seconds, force_download=force)
    except Exception as error:  # noqa: BLE001
        raise _error(url, error, seconds, what) from None
    return path, _commit_of(path, filename)


def remove(path):
    """Removes a file from huggingface_hub's cache: its snapshot entry and the blob it points to."""
    blob = os.path.realpath(path)
    for file in {path, blob}:
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)


def download(name, item, url, seconds, *, force=False, progress=False):
    """`(verified local path, whether it was transferred)` of a zoo entry's
    file on the Hub (see `tfhash.zoo.download`); `progress`: huggingface_hub's
    bar (a terminal's), else none."""
    if not force and (path := cached(url)):
        if sha256(path) == item["sha256"]:
            return path, False
        remove(path)  # corrupted or stale in the cache: fetch again
    path, _ = fetch(url, seconds, what=f"Could not download zoo entry {name!r} from", force=force,
                    size=item["size"], progress=progress)
    got = sha256(path)
    if got != item["sha256"]:
        received = os.path.getsize(path)
        remove(path)
        raise ZooError(f"sha256 mismatch for zoo entry {name!r} from {url}: expected {item['sha256']}, received "
                       f"{got} ({received} bytes; expected {item['size']}). The file was removed.")
    return path, True
