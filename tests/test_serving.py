"""The embedded TF Serving-compatible server and the gRPC client, on 127.0.0.1.

Requests go through the stock `tensorflow_serving.apis` stubs (raw protos) and
through `tfhash.serving.Client`; codes are compared with `model.encode`.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfhash.data import load_protocol
from tfhash.export import export_savedmodel
from tfhash.models import DHN
from tfhash.serving import Client, ModelServer, ServingError, add_serve_command
from tfhash.serving import server as server_module

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.build((None, 8, 8, 1))
    return model


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images():
    return load_protocol("digits").images  # uint8 (1797, 8, 8, 1)


@pytest.fixture(scope="module")
def models():
    return tiny_model(0), tiny_model(1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, models):
    base = str(tmp_path_factory.mktemp("models"))
    export_savedmodel(models[0], base, name="dhn")
    export_savedmodel(models[1], base, name="other")
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    with ModelServer(base_dir, poll_seconds=0) as server:
        yield server


@pytest.fixture(scope="module")
def small_server(base_dir):
    """At most 10 rows per request, run 4 rows at a time."""
    with ModelServer(base_dir, model_name="dhn", poll_seconds=0, max_batch=10, chunk_rows=4) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def predict_request(images, name="dhn", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)
    return error.value.code(), error.value.details()


# Stock stubs, raw protos.


@pytest.mark.parametrize("batch", [1, 50])
def test_stock_predict_matches_keras_encode(channel, models, images, batch):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(predict_request(images[:batch]), timeout=10)
    binary = tf.make_ndarray(response.outputs["binary_codes"])
    assert binary.dtype == np.uint8 and binary.shape == (batch, 2)
    np.testing.assert_array_equal(binary, models[0].encode(images[:batch]))
    codes = tf.make_ndarray(response.outputs["codes"])
    np.testing.assert_allclose(codes, models[0].encode_real(images[:batch]), atol=1e-5)
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("dhn", 1, "serving_default")


def test_output_filter_and_models_served_side_by_side(server, channel, models, images):
    assert server.served_versions() == {"dhn": [1], "other": [1]}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(images[:5], name="other")
    request.output_filter.append("binary_codes")
    response = stub.Predict(request, timeout=10)
    assert list(response.outputs) == ["binary_codes"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["binary_codes"]), models[1].encode(images[:5]))


def test_stock_metadata_lists_signature(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "dhn"
    response = stub.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("dhn", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]

    def described(infos):
        return {k: (tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

    assert described(signature.inputs) == {"images": ("uint8", [-1, 8, 8, 1])}
    assert described(signature.outputs) == {"codes": ("float32", [-1, 16]), "binary_codes": ("uint8", [-1, 2])}


def test_stock_model_status_available(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "dhn"
    (status,) = stub.GetModelStatus(request, timeout=10).model_version_status
    assert status.version == 1 and status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    request.model_spec.name = "missing"
    assert rpc_error(stub.GetModelStatus, request)[0] == NOT_FOUND


def test_unknown_model_and_version_not_found(channel, images):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, details = rpc_error(stub.Predict, predict_request(images[:2], name="missing"))
    assert code == NOT_FOUND and "Latest(missing)" in details
    code, details = rpc_error(stub.Predict, predict_request(images[:2], version=7))
    assert code == NOT_FOUND and "Specific(dhn, 7)" in details and "'dhn': [1]" in details


def with_input(name, array):
    def change(request):
        del request.inputs["images"]
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))

    return change


def with_spec(field, value):
    return lambda request: setattr(request.model_spec, field, value)


@pytest.mark.parametrize(
    "change, message",
    [
        (with_input("images", np.zeros((3, 8, 8, 1), "float32")), "must be uint8. Received: dtype=float32"),
        (with_input("images", np.zeros((3, 8, 7, 1), "uint8")), "(-1, 8, 8, 1) (-1: any size). Received: shape=(3,"),
        (with_input("pixels", np.zeros((3, 8, 8, 1), "uint8")), "takes inputs ['images']. Received: ['pixels']"),
        (with_spec("signature_name", "nope"), '"nope" not found in signature def. Expected one of [\'serving'),
        (lambda request: request.output_filter.append("hash"), "unknown outputs ['hash']"),
        (with_spec("version_label", "stable"), "Unrecognized servable version label: stable"),
        (with_input("images", np.zeros((0, 8, 8, 1), "uint8")), "expected at least 1 row. Received: shape=(0, 8,"),
    ],
    ids=["float32", "shape", "input_name", "signature", "output_filter", "version_label", "empty"],
)
def test_invalid_argument_says_expected_and_received(channel, images, change, message):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(images[:3])
    change(request)
    code, details = rpc_error(stub.Predict, request)
    assert code == INVALID and message in details


def raw_images(shape, int_val=(), content=b""):
    """A uint8 TensorProto of `shape` holding only the given values, as a hand-made request may."""
    proto = tf.make_tensor_proto(np.zeros((1, 8, 8, 1), np.uint8))
    proto.ClearField("tensor_content")
    proto.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
    proto.int_val.extend(int_val)
    proto.tensor_content = content
    return proto


def with_raw(**kwargs):
    return lambda request: request.inputs["images"].CopyFrom(raw_images(**kwargs))


@pytest.mark.parametrize(
    "change, message",
    [
        (with_raw(shape=(4, 8, 8, 1), int_val=[1, 2, 3]), "expected 256 values (no padding, no implied zeros). "),
        (with_raw(shape=(1000, 8, 8, 1)), "expected 64000 values (no padding, no implied zeros). Received: 0 values"),
        (with_raw(shape=(4, 8, 8, 1), content=bytes(255)), "256 bytes of tensor_content (256 uint8 values). Rec"),
        (with_raw(shape=(4, 8, 8, 1), content=bytes(257)), "256 bytes of tensor_content (256 uint8 values). Rec"),
    ],
    ids=["padding", "implied_zeros", "short_content", "long_content"],
)
def test_values_must_match_shape(channel, images, change, message):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(images[:4])
    change(request)
    code, details = rpc_error(stub.Predict, request)
    received = len(request.inputs["images"].int_val or request.inputs["images"].tensor_content)
    assert code == INVALID and message in details and f"Received: {received} " in details


def test_values_in_int_val_are_decoded(channel, models, images):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(images[:4])
    request.inputs["images"].CopyFrom(raw_images((4, 8, 8, 1), int_val=images[:4].ravel().tolist()))
    codes = tf.make_ndarray(stub.Predict(request, timeout=10).outputs["binary_codes"])
    np.testing.assert_array_equal(codes, models[0].encode(images[:4]))


def test_rows_over_max_batch_resource_exhausted(server, small_server, channel, images):
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    # A few bytes asking for 100,000 images: refused from the shape alone.
    request = predict_request(images[:1])
    request.inputs["images"].CopyFrom(raw_images((100000, 8, 8, 1)))
    code, details = rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request)
    assert server.max_batch == server_module.DEFAULT_MAX_BATCH == 1024
    assert code == exhausted and "expected at most 1024 rows per request" in details
    assert "Received: 100000 rows" in details
    with grpc.insecure_channel(small_server.address) as small:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(small)
        code, details = rpc_error(stub.Predict, predict_request(images[:11]))
        assert code == exhausted and "at most 10 rows per request (the server's max_batch). Received: 11" in details
        assert tf.make_ndarray(stub.Predict(predict_request(images[:10]), timeout=10).outputs["codes"]).shape[0] == 10
    with pytest.raises(ServingError, match="at most 10 rows.*lower max_batch, now 25") as error:
        Client("dhn", target=small_server.address, max_batch=25).encode(images[:25])
    assert error.value.code == exhausted


def test_model_runs_in_chunks(small_server, models, images, monkeypatch):
    servable = small_server.servable(model_pb2.ModelSpec(name="dhn"))
    signature = servable.signatures["serving_default"]
    calls = []

    def spy(**inputs):
        calls.append(len(inputs["images"]))
        return signature(**inputs)

    monkeypatch.setitem(servable.signatures, "serving_default", spy)
    codes = Client("dhn", target=small_server.address).encode(images[:10])
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(codes, models[0].encode(images[:10]))


def test_oversized_message_resource_exhausted(base_dir, images):
    # 50 images are 3,200 bytes of pixels; one is 64.
    with ModelServer(base_dir, model_name="dhn", poll_seconds=0, max_message_bytes=2048) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert rpc_error(stub.Predict, predict_request(images[:50]))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.Predict(predict_request(images[:1]), timeout=10).outputs["binary_codes"].dtype == tf.uint8
        with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED.*lower max_batch") as error:
            Client("dhn", target=server.address).encode(images[:50])
        assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert Client("dhn", target=server.address, max_batch=10).encode(images[:50]).shape == (50, 2)


# Our client.


def test_client_codes_and_metadata(server, models, images):
    with Client("dhn", target=server.address) as client:
        assert client.wait_until_ready(timeout=5) == {1: "AVAILABLE"}
        np.testing.assert_array_equal(client.encode(images[:50]), models[0].encode(images[:50]))
        np.testing.assert_allclose(client.encode_real(images[:50]), models[0].encode_real(images[:50]), atol=1e-5)
        meta = client.metadata()
        assert (meta["model_name"], meta["version"], meta["signature_name"]) == ("dhn", 1, "serving_default")
        assert meta["inputs"] == {"images": {"dtype": np.uint8, "shape": (None, 8, 8, 1)}}
        assert meta["outputs"] == {
            "binary_codes": {"dtype": np.uint8, "shape": (None, 2)},
            "codes": {"dtype": np.float32, "shape": (None, 16)},
        }
        both = client.predict(images[:3])
        assert sorted(both) == ["binary_codes", "codes"]


def test_client_splits_large_inputs_in_order(server, models, images, monkeypatch):
    client = Client("dhn", target=server.address, max_batch=256)
    sent = []
    original = client._predict_once

    def counting(chunk, names):
        sent.append(len(chunk["images"]))
        return original(chunk, names)

    monkeypatch.setattr(client, "_predict_once", counting)
    codes = client.encode(images[:700])
    assert sent == [256, 256, 188]
    np.testing.assert_array_equal(codes, models[0].encode(images[:700]))


def test_client_errors(server, images):
    client = Client("dhn", target=server.address)
    with pytest.raises(ValueError, match=r"must be uint8 .*Received: dtype=float32"):
        client.encode(images[:3].astype("float32"))
    with pytest.raises(ValueError, match=r"shape \(None, 8, 8, 1\). Received: shape=\(3, 8, 7, 1\)"):
        client.encode(images[:3, :, :7])
    with pytest.raises(ServingError, match="Latest\\(missing\\)") as error:
        Client("missing", target=server.address).encode(images[:2])
    assert error.value.code == NOT_FOUND
    with pytest.raises(ServingError, match="Specific\\(dhn, 9\\)") as error:
        Client("dhn", target=server.address, version=9).encode(images[:2])
    assert error.value.code == NOT_FOUND


def test_client_connection_error_is_fast():
    target = f"127.0.0.1:{free_port()}"
    # Fast means refused on the first attempt, not waited out: "no TF Serving available"
    # is the client's message for UNAVAILABLE (a refused connection); had the call waited
    # for its deadline, it would read "no reply ... within 2 s" (DEADLINE_EXCEEDED).
    with pytest.raises(ConnectionError, match=f"no TF Serving available at {target}"):
        Client("dhn", target=target, timeout=2).encode(np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(TimeoutError, match="not ready"):
        Client("dhn", target=target, timeout=0.5).wait_until_ready(timeout=0.5)


class BadReplies(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Real metadata, broken Predict replies: a missing output or a wrong dtype."""

    def __init__(self, upstream, mode):
        self.upstream, self.mode = upstream, mode

    def GetModelMetadata(self, request, context):
        return self.upstream.GetModelMetadata(request, timeout=10)

    def Predict(self, request, context):
        response = self.upstream.Predict(request, timeout=10)
        if self.mode == "missing":
            del response.outputs["binary_codes"]
        else:
            codes = tf.make_ndarray(response.outputs["binary_codes"])
            response.outputs["binary_codes"].CopyFrom(tf.make_tensor_proto(codes.astype("int32")))
        return response


@pytest.mark.parametrize(
    "mode, message",
    [
        ("missing", "lacks output 'binary_codes'"),
        ("dtype", r"must be uint8 with shape \(3, 2\). Received: dtype=int32"),
    ],
)
def test_client_rejects_bad_replies(channel, images, mode, message):
    fake = grpc.server(ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        BadReplies(prediction_service_pb2_grpc.PredictionServiceStub(channel), mode), fake
    )
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        with pytest.raises(ValueError, match=message):
            Client("dhn", target=f"127.0.0.1:{port}").encode(images[:3])
    finally:
        fake.stop(0).wait()


# Versions, shutdown, load.


def test_new_version_swapped_in_without_restart(tmp_path, models, images):
    base = str(tmp_path)
    first, second = models
    expected = [m.encode(images[:20]) for m in models]
    assert (expected[0] != expected[1]).any()
    export_savedmodel(first, base, name="dhn")
    with ModelServer(base, poll_seconds=0.1) as server:
        client = Client("dhn", target=server.address)
        np.testing.assert_array_equal(client.encode(images[:20]), expected[0])
        # Requests keep going during the swap: each answer is one version's codes, never an error.
        answers, errors, swapped = [], [], threading.Event()

        def keep_asking():
            for _ in range(5000):  # bounded, in case the swap never comes
                if swapped.is_set():
                    return
                try:
                    answers.append(client.encode(images[:20]))
                except Exception as error:  # recorded, then asserted empty
                    errors.append(error)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        export_savedmodel(second, base, name="dhn")  # version 2
        found = wait_for(lambda: server.served_versions() == {"dhn": [2]})
        swapped.set()
        asker.join(timeout=30)
        assert found and not asker.is_alive() and not errors and answers
        assert all(any((a == e).all() for e in expected) for a in answers)
        np.testing.assert_array_equal(client.encode(images[:20]), expected[1])
        assert client.metadata()["version"] == 2
        # Latest-version policy (num_versions=1): version 1 is unloaded once 2 is served.
        with pytest.raises(ServingError, match="Specific\\(dhn, 1\\)"):
            Client("dhn", target=server.address, version=1).encode(images[:2])
        assert client.status() == {1: "END", 2: "AVAILABLE"}
    # Keeping two versions: both answer, each with its own model.
    with ModelServer(base, poll_seconds=0, num_versions=2) as server:
        assert server.served_versions() == {"dhn": [1, 2]}
        for version in (1, 2):
            codes = Client("dhn", target=server.address, version=version).encode(images[:20])
            np.testing.assert_array_equal(codes, expected[version - 1])


def test_broken_version_keeps_previous_served(tmp_path, models, images):
    export_savedmodel(models[0], str(tmp_path), name="dhn")
    with ModelServer(str(tmp_path), poll_seconds=0) as server:
        os.makedirs(tmp_path / "dhn" / "2")
        (tmp_path / "dhn" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
        for _ in range(5):  # tried three times, then left alone
            server.poll()
        assert server.served_versions() == {"dhn": [1]}
        states = Client("dhn", target=server.address).status()
        assert states == {1: "AVAILABLE", 2: "END"}
        state, code, message = server.version_states("dhn")[2]
        assert code != 0 and message


def test_failed_version_retried_when_its_files_change(tmp_path, base_dir, models, images, monkeypatch):
    export_savedmodel(models[0], str(tmp_path), name="dhn")
    loads, load = [], server_module.load_servable

    def counting(name, version, path):
        loads.append(version)
        return load(name, version, path)

    monkeypatch.setattr(server_module, "load_servable", counting)
    with ModelServer(str(tmp_path), poll_seconds=0) as server:
        broken = tmp_path / "dhn" / "2"
        os.makedirs(broken)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        for _ in range(5):
            server.poll()
        assert loads == [1, 2, 2, 2]  # three tries, then left alone while its files stay the same
        assert server.served_versions() == {"dhn": [1]}
        # The operator fixes version 2 in place (the other model's SavedModel): it is tried again.
        shutil.rmtree(broken)
        shutil.copytree(os.path.join(base_dir, "other", "1"), broken, copy_function=shutil.copyfile)
        server.poll()
        assert loads == [1, 2, 2, 2, 2]
        assert server.served_versions() == {"dhn": [2]}
        assert Client("dhn", target=server.address).status() == {1: "END", 2: "AVAILABLE"}
        codes = Client("dhn", target=server.address).encode(images[:5])
        np.testing.assert_array_equal(codes, models[1].encode(images[:5]))


def test_stop_is_clean(base_dir, images):
    server = ModelServer(base_dir, model_name="dhn", poll_seconds=0.1).start()
    port = server.port
    poller = f"tfhash-serving-poll-{port}"
    assert any(t.name == poller for t in threading.enumerate())
    Client("dhn", target=server.address).encode(images[:2])
    # stop returns (a hang would be the bug; 60 s is far beyond its 1 s grace and a
    # poll interval of 0.1 s on any machine), and leaves no poller and no open port.
    stopping = threading.Thread(target=server.stop, kwargs={"grace": 1}, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    assert not stopping.is_alive(), "ModelServer.stop did not return"
    assert not any(t.name == poller for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(ConnectionError):
        Client("dhn", target=f"127.0.0.1:{port}", timeout=2).encode(images[:2])


def test_port_in_use_is_an_oserror(server, base_dir):
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{server.port}: port in use"):
        ModelServer(base_dir, port=server.port, poll_seconds=0).start()


def test_load_8_threads_x_200_requests(server, models, images):
    expected = models[0].encode(images[:1600])
    client = Client("dhn", target=server.address)  # one client, shared: it is thread-safe
    replies, errors = [], []

    def worker(thread):
        # Each thread asks for its own 200 images, in random small batches.
        rng = np.random.default_rng(thread)
        own = np.arange(thread * 200, (thread + 1) * 200)
        for _ in range(200):
            rows = rng.choice(own, size=rng.integers(1, 5), replace=False)
            try:
                codes = client.encode(images[rows])
            except Exception as error:  # recorded, then asserted empty
                errors.append(error)
                continue
            replies.append(bool((codes == expected[rows]).all()) and codes.shape == (len(rows), 2))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and len(replies) == 1600 and all(replies)


# `tfhash serve`, in a process of its own.

SERVE = """
import argparse, sys
from tfhash.serving import add_serve_command
parser = argparse.ArgumentParser(prog="tfhash")
add_serve_command(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
args.run(args)
"""


def test_serve_command_max_batch(monkeypatch, tmp_path):
    parser = argparse.ArgumentParser(prog="tfhash")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["serve", "--base-dir", "x"]).max_batch == server_module.DEFAULT_MAX_BATCH
    created = []

    class Stopped(Exception):
        pass

    class FakeServer:
        def __init__(self, base_dir, **kwargs):
            created.append(kwargs)

        def start(self):
            raise Stopped

        def stop(self):
            pass

    monkeypatch.setattr(server_module, "ModelServer", FakeServer)
    args = parser.parse_args(["serve", "--base-dir", str(tmp_path), "--max-batch", "7"])
    with pytest.raises(Stopped):
        args.run(args)
    assert created[0]["max_batch"] == 7
    args = parser.parse_args(["serve", "--base-dir", str(tmp_path), "--max-batch", "0"])
    with pytest.raises(ValueError, match="--max-batch must be a positive number of rows. Received: 0"):
        args.run(args)


@pytest.mark.slow
def test_serve_command_until_sigterm(base_dir, models, images):
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--base-dir", base_dir, "--model-name", "dhn", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        lines = []
        # readline blocks, but the process prints its address or exits within the timeout below.
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
        reader.start()
        assert wait_for(lambda: any("model dhn: version 1" in line for line in lines), timeout=60), lines
        address = next(line for line in lines if "on 127.0.0.1:" in line).split()[-1]
        assert not any("other" in line for line in lines)
        codes = Client("dhn", target=address).encode(images[:10])
        np.testing.assert_array_equal(codes, models[0].encode(images[:10]))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=5)
        assert "tfhash serve: stopped" in "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
