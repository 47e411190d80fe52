"""An embedded gRPC server speaking TF Serving's protocol, for machines without TF Serving.

It serves the SavedModels `tfhash.export.export_savedmodel` writes
(`BASE/<name>/<version>/`) through the stock `tensorflow_serving.apis`
services, so the same client code talks to it and to `tensorflow_model_server`:

    PredictionService.Predict, .GetModelMetadata ("signature_def")
    ModelService.GetModelStatus
    (Classify, Regress, MultiInference, HandleReloadConfigRequest: UNIMPLEMENTED)

Version policy, as TF Serving's default `latest { num_versions: 1 }`: the
highest `num_versions` versions on disk are served; a new version is loaded
first and swapped in only once loaded, then older ones are unloaded (a request
naming an unloaded version gets NOT_FOUND). A version that fails to load is
retried on the next two polls, reported by GetModelStatus as END with its
error, and the versions already loaded stay served; once its files change
(newest mtime, total size or count), it gets three more tries. Version labels
are not configurable here: a request with `version_label` gets
INVALID_ARGUMENT ("Unrecognized servable version label"), as TF Serving
answers for a label missing from its config.

Limits: a Predict request carries at most `max_batch` rows (more get
RESOURCE_EXHAUSTED) and `max_message_bytes`; every input must hold exactly the
values its shape implies, checked before any is decoded; the model runs on at
most `chunk_rows` rows at a time, so memory stays bounded whatever is accepted.

Slow clients: the server is gRPC's asyncio server. A request message is
received whole on its event loop, and only then is the handler run, on one
of `max_workers` threads; a client that declares a large message and sends it
byte by byte holds a pending call on the loop, never a worker, so the others
keep being answered. (gRPC's threaded server takes a worker as a call starts
and keeps it while the message arrives: as many slow clients as workers stop
it. Capping concurrent RPCs turns them away instead; capping streams per
connection does nothing against one connection per slow client; a maximum
connection age frees workers only until the slow clients reconnect.)

Not a replacement for TF Serving: no request batching, model warmup, REST API,
monitoring or config file (see serving/README.md).
"""

import asyncio
import dataclasses
import logging
import math
import os
import re
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
DEFAULT_MAX_BATCH = 1024  # rows per Predict request; the Client sends 256 by default
DEFAULT_CHUNK_ROWS = 256  # rows per model call
SIGNATURE_DEF = "signature_def"
MAX_LOAD_ATTEMPTS = 3
State = get_model_status_pb2.ModelVersionStatus.State
# TF error codes are gRPC status codes, number for number.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of a model: the SavedModel and its signature defs."""

    name: str
    version: int
    path: str
    signatures: dict  # signature name -> concrete function
    signature_defs: dict  # signature name -> SignatureDef proto


def load_servable(name, version, path):
    """Loads the `serve` meta graph of the SavedModel at `path`."""
    loaded = tf.saved_model.load(path, tags=["serve"])
    meta_graph = next(m for m in _read_saved_model(path).meta_graphs if "serve" in m.meta_info_def.tags)
    # Only callable signatures (this drops TF2's __saved_model_init_op).
    names = [key for key in meta_graph.signature_def if key in loaded.signatures]
    return Servable(
        name=name,
        version=version,
        path=path,
        signatures={key: loaded.signatures[key] for key in names},
        signature_defs={key: meta_graph.signature_def[key] for key in names},
    )


def _read_saved_model(path):
    proto = saved_model_pb2.SavedModel()
    binary = os.path.join(path, "saved_model.pb")
    if os.path.exists(binary):
        with open(binary, "rb") as f:
            proto.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), proto)
    return proto


def versions_on_disk(model_dir):
    """Sorted integer version directories of a model (what TF Serving would load)."""
    try:
        names = os.listdir(model_dir)
    except FileNotFoundError:
        return []
    # Digits only: export_savedmodel writes into a hidden temporary name first.
    return sorted(int(d) for d in names if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(model_dir, d)))


def files_fingerprint(path):
    """(newest mtime in ns, total size, count) of the files and folders under `path`.

    Cheap to take every poll, and it changes when a version's files are
    replaced, added or removed: a version that failed to load is retried once
    someone fixes it.
    """
    newest, total, count = 0, 0, 0
    for folder, _, files in os.walk(path):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            try:
                stat = os.stat(entry)
            except OSError:  # removed while we walk: the next poll sees the change
                continue
            newest, total, count = max(newest, stat.st_mtime_ns), total + stat.st_size, count + 1
    return newest, total, count


class _Abort(Exception):
    """A gRPC error status to answer with."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def shape_tuple(tensor_shape):
    """A TensorShapeProto as a tuple, None for unknown sizes (None if the rank is unknown)."""
    if tensor_shape.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in tensor_shape.dim)


def shape_fits(shape, expected):
    """Whether `shape` has the rank of `expected` and its sizes where they are known (not None)."""
    return len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))


def _dtype_name(enum):
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"dtype enum {enum}"


# The TensorProto field holding each dtype's values (as `tf.make_ndarray` reads
# them) and its entries per value; the other integer types use int_val.
_VALUE_FIELDS = {
    "float16": ("half_val", 1),
    "bfloat16": ("half_val", 1),
    "float32": ("float_val", 1),
    "float64": ("double_val", 1),
    "int64": ("int64_val", 1),
    "uint32": ("uint32_val", 1),
    "uint64": ("uint64_val", 1),
    "bool": ("bool_val", 1),
    "string": ("string_val", 1),
    "complex64": ("scomplex_val", 2),
    "complex128": ("dcomplex_val", 2),
    "float8_e5m2": ("float8_val", 1),
    "float8_e4m3fn": ("float8_val", 1),
    "float4_e2m1fn": ("float8_val", 1),
}


def _check_input(name, tensor, info, max_batch):
    """Checks a TensorProto against the signature's TensorInfo and the row cap; returns its shape.

    Reads only the proto's header (dtype, shape, length of its values), never
    decodes a value: `tf.make_ndarray` pads short values and fills absent ones
    with zeros, so a few bytes could otherwise ask for gigabytes.
    """
    if tensor.dtype != info.dtype:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' must be {_dtype_name(info.dtype)}. Received: dtype={_dtype_name(tensor.dtype)}",
        )
    expected, received = shape_tuple(info.tensor_shape), shape_tuple(tensor.tensor_shape)
    if expected is not None and (received is None or not shape_fits(received, expected)):
        shown = tuple(-1 if e is None else e for e in expected)
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' must have shape {shown} (-1: any size). Received: shape={received}",
        )
    if received is None or None in received:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}': expected a shape with every size known. Received: shape={received}",
        )
    if not received or received[0] < 1:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}': expected at least 1 row. Received: shape={received}"
        )
    if received[0] > max_batch:
        raise _Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"input '{name}': expected at most {max_batch} rows per request (the server's max_batch). "
            f"Received: {received[0]} rows",
        )
    count = math.prod(received)
    dtype = tf.dtypes.as_dtype(tensor.dtype)
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.size:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{name}' of shape {received}: expected {count * dtype.size} bytes of tensor_content "
                f"({count} {dtype.name} values). Received: {len(tensor.tensor_content)} bytes",
            )
        return received
    field, entries = _VALUE_FIELDS.get(dtype.name, ("int_val", 1))
    if len(getattr(tensor, field)) != count * entries:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{name}' of shape {received}: expected {count} values (no padding, no implied zeros). "
            f"Received: {len(getattr(tensor, field)) // entries} values in {field}",
        )
    return received


def _decode_input(name, tensor):
    """TensorProto -> ndarray, once `_check_input` has passed."""
    try:
        return tf.make_ndarray(tensor)
    except Exception as error:  # e.g. a dtype make_ndarray cannot decode
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}' is not a valid TensorProto: {error}")


def run_in_chunks(function, inputs, output_names, chunk_rows):
    """Calls a signature on at most `chunk_rows` rows at a time; returns {output name: ndarray}.

    Activations grow with the rows of a call, so chunking bounds the memory of
    a large accepted request; the outputs are concatenated in row order.
    """
    rows = len(next(iter(inputs.values()))) if inputs else 1
    parts = {name: [] for name in output_names}
    for start in range(0, rows, chunk_rows):
        outputs = function(**{key: value[start : start + chunk_rows] for key, value in inputs.items()})
        for name in output_names:
            parts[name].append(outputs[name].numpy())
    return {name: chunks[0] if len(chunks) == 1 else np.concatenate(chunks) for name, chunks in parts.items()}


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """The gRPC handlers; every model lookup goes through the ModelServer."""

    def __init__(self, server):
        self.server = server

    def _answer(self, context, handler, request):
        try:
            return handler(request)
        except _Abort as error:
            context.abort(error.code, str(error))
        except tf.errors.OpError as error:
            context.abort(_GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL), error.message)

    def Predict(self, request, context):
        return self._answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):
        return self._answer(context, self._metadata, request)

    def GetModelStatus(self, request, context):
        return self._answer(context, self._status, request)

    def _predict(self, request):
        servable = self.server.servable(request.model_spec)
        signature_name = request.model_spec.signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        if signature_name not in servable.signature_defs:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{signature_name}" not found in signature def. '
                f"Expected one of {sorted(servable.signature_defs)}",
            )
        signature = servable.signature_defs[signature_name]
        if set(request.inputs) != set(signature.inputs):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"signature '{signature_name}' takes inputs {sorted(signature.inputs)}. "
                f"Received: {sorted(request.inputs)}",
            )
        unknown = sorted(set(request.output_filter) - set(signature.outputs))
        if unknown:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output_filter names unknown outputs {unknown}: "
                f"signature '{signature_name}' has outputs {sorted(signature.outputs)}",
            )
        # Every input is checked before any is decoded.
        shapes = {
            name: _check_input(name, request.inputs[name], signature.inputs[name], self.server.max_batch)
            for name in signature.inputs
        }
        rows = {name: shape[0] for name, shape in sorted(shapes.items())}
        if len(set(rows.values())) > 1:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"expected inputs with the same number of rows. Received: {rows}"
            )
        inputs = {name: _decode_input(name, request.inputs[name]) for name in signature.inputs}
        names = list(request.output_filter or signature.outputs)
        outputs = run_in_chunks(servable.signatures[signature_name], inputs, names, self.server.chunk_rows)
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, servable, signature_name)
        for name in names:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def _metadata(self, request):
        fields = list(request.metadata_field)
        if set(fields) != {SIGNATURE_DEF}:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata_field must be ['{SIGNATURE_DEF}'] (the only one TF Serving supports). Received: {fields}",
            )
        servable = self.server.servable(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, servable)
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response

    def _status(self, request):
        spec = request.model_spec
        states = self.server.version_states(spec.name)
        if not states:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        if spec.WhichOneof("version_choice") == "version":
            if spec.version.value not in states:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            states = {spec.version.value: states[spec.version.value]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, code, message) in sorted(states.items()):
            status = response.model_version_status.add(version=version, state=state)
            status.status.error_code = code
            status.status.error_message = message
        return response

    @staticmethod
    def _fill_spec(spec, servable, signature_name=None):
        spec.name = servable.name
        spec.version.value = servable.version
        if signature_name:
            spec.signature_name = signature_name


class ModelServer:
    """Serves exported tfhash models over gRPC with TF Serving's protocol.

    Serves every model folder under `base_dir` (models added later are picked
    up too), or only `base_dir/<model_name>` when `model_name` is given (TF
    Serving's `--model_name=NAME --model_base_path=BASE/NAME`). A thread polls
    the folders every `poll_seconds` and swaps in new versions without a
    restart; see the module docstring for the version policy.

    Args:
        base_dir: the folder `export_savedmodel` wrote to (`BASE/<name>/<version>/`).
        model_name: serve only this model folder of `base_dir`.
        port: TCP port; 0 picks a free one (read it from `.port` after `start()`).
        host: address to bind; the default accepts local clients only.
        max_message_bytes: largest request or reply; larger ones get RESOURCE_EXHAUSTED.
        max_batch: most rows per Predict request; more get RESOURCE_EXHAUSTED.
        chunk_rows: most rows per model call: larger requests run in chunks,
            which bounds the memory a request takes.
        poll_seconds: seconds between file-system polls; 0 or None loads once at start.
        num_versions: how many of the highest versions stay loaded per model.
        max_workers: threads running handlers (the model) concurrently. A
            request takes one only once its message has been received whole,
            so slow senders do not hold them.

    Examples:
    >>> with ModelServer("export/models", port=0, max_batch=1024) as server:
    ...     client = Client("dhn", target=server.address)
    ...     codes = client.encode(images)
    """

    def __init__(
        self,
        base_dir,
        model_name=None,
        port=0,
        host="127.0.0.1",
        max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        max_batch=DEFAULT_MAX_BATCH,
        chunk_rows=DEFAULT_CHUNK_ROWS,
        poll_seconds=2.0,
        num_versions=1,
        max_workers=8,
    ):
        if not isinstance(num_versions, int) or num_versions < 1:
            raise ValueError(f"num_versions must be a positive int. Received: num_versions={num_versions!r}")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be a positive int. Received: {max_message_bytes!r}")
        for key, value in (("max_batch", max_batch), ("chunk_rows", chunk_rows)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int. Received: {key}={value!r}")
        self.base_dir = base_dir
        self.model_name = model_name
        self.host = host
        self.requested_port = port
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.chunk_rows = chunk_rows
        self.poll_seconds = poll_seconds
        self.num_versions = num_versions
        self.max_workers = max_workers
        self.port = None
        self._models = {}  # name -> {version: Servable}; replaced, never mutated, under _lock
        self._states = {}  # name -> {version: (State, error code, message)}
        self._failed_loads = {}  # (name, version) -> (failed loads, fingerprint of the files tried)
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time (thread or `poll()`)
        self._stopping = threading.Event()
        self._poller = None
        self._grpc = None  # the grpc.aio server, run by an event loop in a thread of its own
        self._loop = self._loop_thread = self._workers = None

    @property
    def address(self):
        """`host:port` to give a client (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self):
        """Loads the models, binds the port and starts answering; returns self."""
        if self._grpc is not None:
            raise RuntimeError("ModelServer already started")
        if not os.path.isdir(self.base_dir):
            raise FileNotFoundError(f"base_dir {self.base_dir!r} is not a directory")
        if self.model_name and not os.path.isdir(os.path.join(self.base_dir, self.model_name)):
            raise FileNotFoundError(f"no model folder {os.path.join(self.base_dir, self.model_name)!r}")
        self.poll()  # like TF Serving: the first versions load before the port opens
        address = f"[{self.host}]:{self.requested_port}" if ":" in self.host else f"{self.host}:{self.requested_port}"
        # The asyncio server receives each request whole on its event loop and only then
        # hands it to a worker: a client that declares a large message and sends it slowly
        # holds a coroutine, not a worker (grpc.server takes a worker as soon as a call
        # starts and keeps it while the message trickles in).
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name=f"tfhash-serving-loop-{id(self):x}", daemon=True
        )
        self._loop_thread.start()
        self._workers = futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="tfhash-serving")
        try:
            server, port = self._on_loop(self._start_grpc(address))
        except BaseException:
            self._close_loop()
            raise
        if not port:
            self._on_loop(server.stop(None))
            self._close_loop()
            raise OSError(f"cannot bind {address}: port in use, or not an address of this machine")
        self.port, self._grpc = port, server
        if self.poll_seconds:
            self._poller = threading.Thread(
                target=self._poll_loop, name=f"tfhash-serving-poll-{self.port}", daemon=True
            )
            self._poller.start()
        return self

    async def _start_grpc(self, address):
        """Creates (on the event loop, which it binds to), binds and starts the gRPC
        server; returns (server, port), port 0 if the address could not be bound."""
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # gRPC sets SO_REUSEPORT by default: two servers could share a port.
            ("grpc.so_reuseport", 0),
        ]
        # The handlers are plain functions (TensorFlow blocks): the server runs them in this pool.
        server = grpc.aio.server(migration_thread_pool=self._workers, options=options)
        services = _Services(self)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # recent grpcio raises where older ones returned 0
            port = 0
        if port:
            await server.start()
        return server, port

    def _on_loop(self, coroutine):
        """Runs `coroutine` on the server's event loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self):
        """Stops the event loop, joins its thread and lets the workers go."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()
        self._workers.shutdown(wait=False)  # a handler still running finishes on its own

    def stop(self, grace=5.0):
        """Stops polling, lets requests in flight finish for up to `grace` seconds, closes the port."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if self._grpc is not None and not self._loop.is_closed():  # a second stop() has nothing to do
            self._on_loop(self._grpc.stop(grace))
            self._close_loop()
        with self._lock:
            self._models = {}

    def __enter__(self):
        return self if self._grpc is not None else self.start()

    def __exit__(self, *exc):
        self.stop()

    def served_versions(self):
        """{model name: [loaded versions, ascending]}."""
        with self._lock:
            return {name: sorted(versions) for name, versions in sorted(self._models.items())}

    def version_states(self, name):
        """{version: (State, error code, message)} of every version of `name` seen so far."""
        with self._lock:
            return dict(self._states.get(name, {}))

    def servable(self, model_spec):
        """The Servable a ModelSpec asks for: its version, else the highest loaded one."""
        name = model_spec.name
        if not name:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is empty")
        with self._lock:
            versions = self._models.get(name, {})
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {model_spec.version_label} "
                "(tfhash serve has no version labels: ask for a version number)",
            )
        if choice == "version":
            servable = versions.get(model_spec.version.value)
            request = f"Specific({name}, {model_spec.version.value})"
        else:
            servable = versions[max(versions)] if versions else None
            request = f"Latest({name})"
        if servable is None:
            served = self.served_versions()
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}. Serving: {served}")
        return servable

    def poll(self):
        """Loads new versions and unloads old ones now (the poll thread calls this)."""
        with self._poll_lock:
            if self.model_name:
                names = [self.model_name]
            else:
                names = sorted(
                    d
                    for d in os.listdir(self.base_dir)
                    if not d.startswith(".") and os.path.isdir(os.path.join(self.base_dir, d))
                )
            with self._lock:
                gone = set(self._models) - set(names)
            for name in names:
                self._sync_model(name, versions_on_disk(os.path.join(self.base_dir, name)))
            for name in gone:  # folder deleted: unload, as TF Serving does when no version is left
                self._sync_model(name, [])

    def _poll_loop(self):
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # keep serving what is loaded; the next poll tries again
                logger.exception("polling %s failed", self.base_dir)

    def _sync_model(self, name, on_disk):
        with self._lock:
            current = self._models.get(name, {})
        candidates = [v for v in on_disk if self._may_load(name, v)]
        loaded = dict(current)
        for version in candidates[-self.num_versions:]:
            if version in loaded:
                continue
            path = os.path.join(self.base_dir, name, str(version))
            self._set_state(name, version, State.LOADING)
            # Taken before loading: files changed during a failed load count as a change.
            fingerprint = files_fingerprint(path)
            try:
                # Load outside the lock: requests keep going to the versions already served.
                loaded[version] = load_servable(name, version, path)
            except Exception as error:
                attempts = self._failed_loads.get((name, version), (0, None))[0]
                self._failed_loads[(name, version)] = (attempts + 1, fingerprint)
                logger.warning("loading %s version %d failed: %s", name, version, error)
                self._set_state(name, version, State.END, getattr(error, "error_code", 2), str(error))
                continue
            self._failed_loads.pop((name, version), None)
            logger.info("loaded %s version %d from %s", name, version, path)
            self._set_state(name, version, State.AVAILABLE)
        # Serve the highest num_versions that loaded: a new version that failed
        # to load leaves the previous one served (availability first).
        keep = [v for v in on_disk if v in loaded][-self.num_versions:]
        with self._lock:
            if keep:
                self._models = {**self._models, name: {v: loaded[v] for v in keep}}
            else:
                self._models = {n: s for n, s in self._models.items() if n != name}
        for version in sorted(set(current) - set(keep)):
            logger.info("unloaded %s version %d", name, version)
            self._set_state(name, version, State.END)

    def _may_load(self, name, version):
        """False for a version that failed MAX_LOAD_ATTEMPTS times, until its files change."""
        attempts, fingerprint = self._failed_loads.get((name, version), (0, None))
        if attempts < MAX_LOAD_ATTEMPTS:
            return True
        if files_fingerprint(os.path.join(self.base_dir, name, str(version))) == fingerprint:
            return False
        logger.info("%s version %d changed on disk since it failed to load: retrying", name, version)
        del self._failed_loads[(name, version)]
        return True

    def _set_state(self, name, version, state, code=0, message=""):
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, code, message)
