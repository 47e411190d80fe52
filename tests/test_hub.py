"""A zoo on the Hugging Face Hub (`tfhash.zoo.hub`), against a local Hub: an
HTTP server on 127.0.0.1 answering the HEAD and GET requests `hf_hub_download`
makes at `{HF_ENDPOINT}/{repo}/resolve/{revision}/{filename}`, serving the
tiny published zoo folder of tests/test_zoo.py. Nothing leaves the machine."""

import functools
import hashlib
import http.server
import json
import shutil
import socket
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
from conftest import in_ci

try:
    import huggingface_hub  # noqa: F401  (the `hub` extra; the `test` extra installs it)
except ImportError:
    if in_ci():
        raise
    pytest.skip('huggingface_hub is not installed: pip install -e ".[test]"', allow_module_level=True)

from test_zoo import NAME, digits, zoo_folder  # noqa: E402, F401  (the tiny published zoo, trained once)
from tfhash import cli, zoo  # noqa: E402
from tfhash.models import DHN, HashModel  # noqa: E402

REPO = "tfhash/zoo"
MAIN, V1 = "a" * 40, "b" * 40  # the commits "main" and the tag "v1" point at


class _Hub(http.server.BaseHTTPRequestHandler):
    """One repository, `REPO`, at a few commits ({commit: folder}; refs
    {branch or tag: commit}). A file is answered with what hf_hub_download
    reads: X-Repo-Commit (the commit the revision resolved to), ETag and
    Content-Length; a missing one with 404 and X-Error-Code: EntryNotFound."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, commits, refs, requests, **kwargs):
        self.commits, self.refs, self.seen = commits, refs, requests
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def _answer(self, body):
        self.seen.append((self.command, urllib.parse.unquote(self.path)))
        prefix = f"/{REPO}/resolve/"
        path = urllib.parse.unquote(self.path)
        revision, _, filename = path[len(prefix):].partition("/") if path.startswith(prefix) else ("", "", "")
        commit = self.refs.get(revision, revision)
        file = self.commits[commit] / filename if commit in self.commits and filename else None
        if file is None or not file.is_file():
            code = ("RepoNotFound" if not path.startswith(prefix) else "EntryNotFound" if commit in self.commits
                    else "RevisionNotFound")
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", f"{code}: {path}")
            if commit in self.commits:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)


class _Server:
    def __init__(self, commits, refs):
        self.requests, self.commits = [], commits  # `commits` may change while it serves
        handler = functools.partial(_Hub, commits=commits, refs=refs, requests=self.requests)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, suffix):
        return [path for method, path in self.requests if method == "GET" and path.endswith(suffix)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _variant(folder, tmp_path, name, **changes):
    """A copy of the zoo folder whose manifest entry has `changes`."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["entries"][NAME].update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def hub(zoo_folder, tmp_path, monkeypatch):
    """The zoo folder as the Hub repository `REPO` ("main" at MAIN; the tag
    "v1" at V1, whose manifest records another mAP), HF_ENDPOINT pointing at
    it, an empty cache, TFHASH_ZOO_URL unset."""
    folder, model = zoo_folder
    v1 = _variant(folder, tmp_path, "v1", metric={"name": "map@all", "value": 0.25, "tolerance": 0.02})
    server = _Server({MAIN: folder, V1: v1}, {"main": MAIN, "v1": V1})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(zoo.URL_ENV, raising=False)
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server, model, tmp_path / "cache" / "huggingface"
    server.close()


def test_an_hf_zoo_is_listed_fetched_verified_and_cached(hub, digits, monkeypatch):
    server, model, cache = hub
    monkeypatch.setenv(zoo.URL_ENV, f"hf://{REPO}")
    images, _ = digits.subset("query")
    (item,) = zoo.list()
    assert (item["name"], item["status"]) == (NAME, zoo.REMOTE)  # not asked without check
    assert zoo.list(check=True)[0]["status"] == zoo.AVAILABLE
    np.testing.assert_array_equal(DHN.from_preset(NAME).encode(images), model.encode(images))
    # In huggingface_hub's cache (under TFHASH_ZOO_CACHE), at the commit the manifest was read at.
    path = zoo.download(NAME)
    assert path.startswith(str(cache / "models--tfhash--zoo" / "snapshots" / MAIN))
    assert zoo.sha256(path) == zoo.entry(NAME)["sha256"] and zoo.verify(NAME)
    assert zoo.list()[0]["status"] == zoo.CACHED
    assert server.gets(f"{NAME}.keras") == [f"/{REPO}/resolve/{MAIN}/{NAME}.keras"]  # once
    # Loading again asks only whether "main" moved: the manifest's metadata, nothing else.
    server.requests.clear()
    np.testing.assert_array_equal(HashModel.from_preset(NAME).encode(images), model.encode(images))
    assert server.requests == [("HEAD", f"/{REPO}/resolve/main/manifest.json")]
    # With the Hub unreachable, the revision last read still serves (as huggingface_hub does offline).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    server.requests.clear()
    np.testing.assert_array_equal(DHN.from_preset(NAME).encode(images), model.encode(images))
    assert server.requests == []


def test_from_preset_takes_an_hf_entry_at_a_revision(hub, digits):
    server, model, _ = hub
    images, _ = digits.subset("query")
    loaded = DHN.from_preset(f"hf://{REPO}@v1/{NAME}")  # no TFHASH_ZOO_URL: the name says where
    np.testing.assert_array_equal(loaded.encode(images), model.encode(images))
    assert zoo.entry(f"hf://{REPO}@v1/{NAME}")["metric"]["value"] == 0.25  # v1's manifest, not main's
    # The tag is resolved by the manifest alone; its files are read at the commit it resolved to.
    assert {path for _, path in server.requests if "/resolve/v1/" in path} == {f"/{REPO}/resolve/v1/manifest.json"}
    assert server.gets(f"{NAME}.keras") == [f"/{REPO}/resolve/{V1}/{NAME}.keras"]
    assert cli.main(["zoo", "verify", f"hf://{REPO}@v1/{NAME}"]) == 0
    for bad in ("hf://tfhash", f"hf://{REPO}", f"hf://{REPO}/a/b", f"hf://{REPO}@/x"):
        with pytest.raises(zoo.ZooError, match=r"expected hf://ORG/REPO or hf://ORG/REPO@REVISION .*Received"):
            DHN.from_preset(bad)


def test_an_hf_file_unlike_the_manifest_is_refused_and_not_kept(hub, tmp_path, zoo_folder, monkeypatch):
    server, _, cache = hub
    wrong = _variant(zoo_folder[0], tmp_path, "wrong", sha256="0" * 64)
    server.commits[MAIN] = wrong
    monkeypatch.setenv(zoo.URL_ENV, f"hf://{REPO}")
    with pytest.raises(zoo.ZooError, match=r"sha256 mismatch .* expected 0{64}, received [0-9a-f]{64} .*removed"):
        zoo.download(NAME)
    assert not list(cache.rglob(f"{NAME}.keras")) and len(list(cache.rglob("blobs/*"))) == 1  # the manifest's
    assert not zoo.verify(NAME)


def test_a_file_missing_from_the_hf_zoo_is_a_clear_error(hub, tmp_path, zoo_folder, monkeypatch, capsys):
    server, _, _ = hub
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(zoo_folder[0] / "manifest.json", bare)
    server.commits[MAIN] = bare
    monkeypatch.setenv(zoo.URL_ENV, f"hf://{REPO}")
    assert zoo.list(check=True)[0]["status"] == zoo.NOT_PUBLISHED
    with pytest.raises(zoo.ZooError, match=rf"Could not download zoo entry '{NAME}' from hf://{REPO}@{MAIN}/"
                                           rf"{NAME}.keras: 404 Client Error. Entry Not Found for url: "):
        zoo.download(NAME)
    assert cli.main(["zoo", "list", "--check"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].endswith("not published") and f"not published at hf://{REPO}@{MAIN}/" in err


def test_an_unreachable_or_silent_hub_fails_within_the_timeout(hub, monkeypatch):
    monkeypatch.setenv(zoo.URL_ENV, f"hf://{REPO}")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(zoo.ZooError, match=rf"Could not read hf://{REPO}/manifest.json: .*Check the network"):
        zoo.list()
    assert time.monotonic() - start < 5  # huggingface_hub alone retries for ~25 s
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv(zoo.TIMEOUT_ENV, "0.5")
        start = time.monotonic()
        with pytest.raises(zoo.ZooError, match=r"expected data within 0.5 s \(TFHASH_ZOO_TIMEOUT\)"):
            zoo.list()
        assert time.monotonic() - start < 5
    finally:
        silent.close()


def test_cli_downloads_an_hf_entry_with_one_line_of_progress_in_a_pipe(hub, capsys):
    server, _, cache = hub
    assert cli.main(["zoo", "download", f"hf://{REPO}/{NAME}"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith(str(cache)) and out.strip().endswith(f"{NAME}.keras")
    assert err == f"downloaded {NAME} ({zoo.entry(f'hf://{REPO}/{NAME}')['size'] / 1e6:.1f} MB, sha256 verified) " \
                  f"from hf://{REPO}@{MAIN}/{NAME}.keras\n"
    assert cli.main(["zoo", "download", f"hf://{REPO}/{NAME}", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # cached: nothing transferred, nothing said


def test_without_huggingface_hub_an_hf_zoo_says_which_extra_to_install(hub, monkeypatch):
    monkeypatch.setenv(zoo.URL_ENV, f"hf://{REPO}")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails, as when not installed
    with pytest.raises(zoo.ZooError, match=r'needs huggingface_hub: pip install "tfhash\[hub\]"'):
        zoo.list()
    assert cli.main(["zoo", "list"]) == 2
