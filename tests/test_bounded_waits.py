"""Every wait is bounded (issue 27): zoo transfers against a server that
stalls, a manifest's path fields, and slow gRPC clients beside a normal one.

All on 127.0.0.1: an http.server that serves a manifest and then stalls on
the file, and the embedded gRPC server with raw HTTP/2 slow clients
(bench/slow_clients.py). Time bounds are loose multiples of the timeout
asked for, not measurements: a hang would exceed them by far.
"""

import hashlib
import http.server
import json
import os
import re
import sys
import threading
import time

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfhash import zoo

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from slow_clients import SlowStreams  # noqa: E402

NAME = "tiny"
CONTENT = bytes(range(256)) * 64  # 16 KiB: the "encoder" file; the zoo only checks its bytes
TIMEOUT = 0.5  # seconds: short, so a stalled transfer fails fast
BOUND = 10 * TIMEOUT  # a transfer that honours the timeout ends well within this
LONG = 60  # seconds: where a test is not about stalls, a busy machine's slow answer is no failure


def manifest_with(**changes):
    entry = {
        "class": "DHN", "file": f"files/{NAME}.keras", "sha256": hashlib.sha256(CONTENT).hexdigest(),
        "size": len(CONTENT), "bits": 16, "protocol": "digits", "recipe": f"recipes/{NAME}.json",
        "input": {"name": "images", "shape": [8, 8, 1], "dtype": "uint8"},
        "metric": {"name": "map@all", "value": 0.5, "tolerance": 0.02},
    }
    return {"format": 1, "entries": {NAME: {**entry, **changes}}}


class StallingZoo:
    """A zoo over HTTP on 127.0.0.1: the manifest is served at once; the file
    the way `mode` says: "whole", "silent" (the request is read, nothing is
    answered), "headers" (status and headers, then no byte), "midway" (half
    the bytes, then nothing), "endless" (more bytes than the manifest's size);
    "manifest": the manifest's headers, then no byte. Stalled handlers wait
    until `close()`."""

    def __init__(self, mode):
        self.mode, self.release = mode, threading.Event()
        self.manifest = json.dumps(manifest_with()).encode()
        zoo_server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mode = zoo_server.mode
                if self.path == "/manifest.json" and mode != "manifest":
                    return self.reply(zoo_server.manifest)
                if mode == "whole":
                    return self.reply(CONTENT)
                if mode == "endless":
                    return self.reply(CONTENT + CONTENT)
                if mode != "silent":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(CONTENT)))
                    self.end_headers()
                    if mode == "midway":
                        self.wfile.write(CONTENT[: len(CONTENT) // 2])
                    self.wfile.flush()
                zoo_server.release.wait(60)

            def reply(self, body):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


FILE_STALLS = ("silent", "headers", "midway")


@pytest.fixture
def stalling_zoo(tmp_path, monkeypatch, request):
    """(server, cache folder) with TFHASH_ZOO_URL on the server. Only a test
    of a stall waits TIMEOUT: where the file stalls, the manifest is read
    from a local copy (files still come from the server), so a loaded
    machine slow to serve it cannot fail the test; the others wait LONG."""
    server = StallingZoo(request.param)
    monkeypatch.setenv(zoo.URL_ENV, server.url)
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    if request.param in FILE_STALLS:
        (tmp_path / "manifest.json").write_bytes(server.manifest)
        monkeypatch.setenv(zoo.MANIFEST_ENV, str(tmp_path / "manifest.json"))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    stalls = request.param in FILE_STALLS or request.param == "manifest"
    monkeypatch.setenv(zoo.TIMEOUT_ENV, str(TIMEOUT if stalls else LONG))
    yield server, tmp_path / "cache"
    server.close()


def timed(call):
    """(the ZooError `call` raised, seconds it took); fails if it is still
    waiting after 2 x BOUND (it runs in a thread, so a hang fails the test
    instead of stopping the suite)."""
    outcome = {}

    def run():
        start = time.monotonic()
        try:
            call()
        except Exception as error:  # recorded, then asserted to be a ZooError
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2 * BOUND)
    assert not thread.is_alive(), f"still waiting after {2 * BOUND} s with a {TIMEOUT} s timeout"
    assert isinstance(outcome.get("error"), zoo.ZooError), outcome
    return outcome["error"], outcome["seconds"]


@pytest.mark.parametrize("stalling_zoo", ["silent", "headers", "midway"], indirect=True)
def test_a_stalled_download_times_out_and_leaves_nothing(stalling_zoo):
    server, cache = stalling_zoo
    error, seconds = timed(lambda: zoo.download(NAME))
    message = str(error)
    assert seconds < BOUND, f"the download waited {seconds:.1f} s with a {TIMEOUT} s timeout"
    assert "\n" not in message
    assert f"Could not download zoo entry '{NAME}' from {server.url}files/{NAME}.keras" in message
    assert f"expected data within {TIMEOUT:g} s (TFHASH_ZOO_TIMEOUT); received none" in message
    assert "Set TFHASH_ZOO_TIMEOUT to wait longer" in message
    assert list(cache.iterdir()) == []  # no file, no temporary
    assert not zoo.verify(NAME)


@pytest.mark.parametrize("stalling_zoo", ["headers"], indirect=True)
def test_the_timeout_keyword_overrides_the_environment(stalling_zoo, monkeypatch):
    monkeypatch.setenv(zoo.TIMEOUT_ENV, "3600")
    error, seconds = timed(lambda: zoo.download(NAME, timeout=TIMEOUT))
    assert seconds < BOUND and f"within {TIMEOUT:g} s" in str(error)


@pytest.mark.parametrize("stalling_zoo", ["manifest"], indirect=True)
def test_a_stalled_manifest_times_out(stalling_zoo):
    server, _ = stalling_zoo
    error, seconds = timed(zoo.list)
    assert seconds < BOUND and "\n" not in str(error)
    assert str(error).startswith(f"Could not read {server.url}manifest.json: expected data within {TIMEOUT:g} s")


@pytest.mark.parametrize("stalling_zoo", ["whole"], indirect=True)
def test_a_whole_download_is_verified_and_cached(stalling_zoo):
    _, cache = stalling_zoo
    path = zoo.download(NAME)
    assert open(path, "rb").read() == CONTENT and os.listdir(cache) == [f"{NAME}.keras"]


@pytest.mark.parametrize("stalling_zoo", ["endless"], indirect=True)
def test_more_bytes_than_the_manifest_says_are_refused(stalling_zoo):
    _, cache = stalling_zoo
    with pytest.raises(zoo.ZooError, match=rf"expected {len(CONTENT)} bytes \(the manifest's size\). Received more"):
        zoo.download(NAME)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("value", ["", "0", "-1", "nan", "inf", "soon"])
def test_a_bad_timeout_setting_is_refused_in_one_line(monkeypatch, value):
    monkeypatch.setenv(zoo.TIMEOUT_ENV, value)
    if value == "":  # unset in effect: the default
        assert zoo.timeout_seconds() == zoo.TIMEOUT
        return
    with pytest.raises(zoo.ZooError, match=rf"^TFHASH_ZOO_TIMEOUT must be a positive number of seconds. "
                                           rf"Received: TFHASH_ZOO_TIMEOUT='{value}'$"):
        zoo.timeout_seconds()
    assert zoo.timeout_seconds(2) == 2.0


# A manifest's path fields, checked alike as it is read.


@pytest.mark.parametrize("field", ["recipe", "file"])
@pytest.mark.parametrize(
    "value, reason",
    [
        ("../outside/x.json", "escapes the cache or the zoo folder"),
        ("recipes/../../outside/x.json", "escapes the cache or the zoo folder"),
        ("/etc/passwd", "escapes the cache or the zoo folder"),
        ("..\\outside\\x.json", "escapes the cache or the zoo folder"),
        ("C:/outside/x.json", "escapes the cache or the zoo folder"),
        ("%2e%2e/outside/x.json", "is not a plain relative path"),
        ("http://elsewhere/x.json", "is not a plain relative path"),
        ("recipes//x.json", "is not a plain relative path"),
        ("", "is empty"),
    ],
)
def test_every_path_field_is_checked_as_the_manifest_is_read(tmp_path, monkeypatch, field, value, reason):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.json").write_text("{}")
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    (zoo_dir / "manifest.json").write_text(json.dumps(manifest_with(**{field: value})))
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(zoo_dir / "manifest.json"))
    monkeypatch.delenv(zoo.URL_ENV, raising=False)
    expected = "^" + re.escape(f"Zoo manifest entry '{NAME}': its {field} {value!r} {reason}: refused. Expected a "
                               "relative path inside the zoo folder") + ".*" + re.escape(f"Received: {field}={value!r}")
    with pytest.raises(zoo.ZooError, match=expected + "$"):
        zoo.read_manifest()
    with pytest.raises(zoo.ZooError, match=f"its {field} "):
        zoo.list()
    # A manifest handed over as a dict, not read by read_manifest, is checked on use.
    with pytest.raises(zoo.ZooError, match=f"its {field} "):
        zoo.entry(NAME, {**manifest_with(**{field: value}), "_base": zoo_dir.as_uri() + "/"})


def test_plain_relative_paths_are_accepted(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest_with(file="files/a-b_c.1.keras", recipe="x.json")))
    assert zoo.entry(NAME, zoo.read_manifest(path))["recipe"] == "x.json"


# Slow gRPC clients beside a normal one.


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The embedded server with its defaults (8 workers), serving a tiny DHN."""
    from tfhash.export import export_savedmodel
    from tfhash.models import DHN
    from tfhash.serving import ModelServer

    keras.utils.set_random_seed(0)
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.build((None, 8, 8, 1))
    base = str(tmp_path_factory.mktemp("models"))
    export_savedmodel(model, base, name="dhn")
    with ModelServer(base, model_name="dhn", poll_seconds=0) as server:
        yield server, model


def normal_predict(address, images, timeout):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dhn"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    with grpc.insecure_channel(address) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return tf.make_ndarray(reply.outputs["binary_codes"])


@pytest.mark.parametrize("slow", [8, 64])
def test_slow_clients_do_not_block_a_normal_one(served, slow):
    server, model = served
    assert server.max_workers == 8  # as many slow clients as workers stopped every other client
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    with SlowStreams(server.address, slow) as held:
        assert held.wait_opened(), held.stats()
        time.sleep(0.5)  # the server has taken the calls up
        codes = normal_predict(server.address, images, timeout=5)
        np.testing.assert_array_equal(codes, model.encode(images))
        # Still held, not turned away: the slow calls were neither refused nor cut to make room.
        assert held.held == slow, held.stats()


def test_stop_is_bounded_with_slow_clients_held(served):
    from tfhash.serving import ModelServer

    server, _ = served
    other = ModelServer(server.base_dir, model_name="dhn", poll_seconds=0).start()
    with SlowStreams(other.address, 8) as held:
        assert held.wait_opened()
        time.sleep(0.5)
        start = time.monotonic()
        other.stop(grace=0.5)
        assert time.monotonic() - start < 10 * 0.5
