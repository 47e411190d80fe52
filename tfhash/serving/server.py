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
error, and the versions already loaded stay served. Version labels are not
configurable here: a request with `version_label` gets INVALID_ARGUMENT
("Unrecognized servable version label"), as TF Serving answers for a label
missing from its config.

Not a replacement for TF Serving: no request batching, model warmup, REST API,
monitoring, config file or resource limits (see serving/README.md).
"""

import dataclasses
import logging
import os
import re
import threading
from concurrent import futures

import grpc
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


def _convert_input(name, tensor, info):
    """TensorProto -> ndarray, checked against the signature's TensorInfo."""
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
    try:
        return tf.make_ndarray(tensor)
    except Exception as error:  # inconsistent content, e.g. tensor_content of the wrong length
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input '{name}' is not a valid TensorProto: {error}")


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
        inputs = {name: _convert_input(name, request.inputs[name], signature.inputs[name]) for name in signature.inputs}
        outputs = servable.signatures[signature_name](**inputs)
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, servable, signature_name)
        for name in request.output_filter or signature.outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name].numpy()))
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
        poll_seconds: seconds between file-system polls; 0 or None loads once at start.
        num_versions: how many of the highest versions stay loaded per model.
        max_workers: threads answering requests concurrently.

    Examples:
    >>> with ModelServer("export/models", port=0) as server:
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
        poll_seconds=2.0,
        num_versions=1,
        max_workers=8,
    ):
        if not isinstance(num_versions, int) or num_versions < 1:
            raise ValueError(f"num_versions must be a positive int. Received: num_versions={num_versions!r}")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be a positive int. Received: {max_message_bytes!r}")
        self.base_dir = base_dir
        self.model_name = model_name
        self.host = host
        self.requested_port = port
        self.max_message_bytes = max_message_bytes
        self.poll_seconds = poll_seconds
        self.num_versions = num_versions
        self.max_workers = max_workers
        self.port = None
        self._models = {}  # name -> {version: Servable}; replaced, never mutated, under _lock
        self._states = {}  # name -> {version: (State, error code, message)}
        self._load_attempts = {}  # (name, version) -> failed loads
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time (thread or `poll()`)
        self._stopping = threading.Event()
        self._poller = None
        self._grpc = None

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
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # gRPC sets SO_REUSEPORT by default: two servers could share a port.
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="tfhash-serving"), options=options
        )
        services = _Services(self)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
        address = f"[{self.host}]:{self.requested_port}" if ":" in self.host else f"{self.host}:{self.requested_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # recent grpcio raises where older ones returned 0
            port = 0
        if not port:
            server.stop(None)
            raise OSError(f"cannot bind {address}: port in use, or not an address of this machine")
        self.port, self._grpc = port, server
        server.start()
        if self.poll_seconds:
            self._poller = threading.Thread(
                target=self._poll_loop, name=f"tfhash-serving-poll-{self.port}", daemon=True
            )
            self._poller.start()
        return self

    def stop(self, grace=5.0):
        """Stops polling, lets requests in flight finish for up to `grace` seconds, closes the port."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
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
        candidates = [v for v in on_disk if self._load_attempts.get((name, v), 0) < MAX_LOAD_ATTEMPTS]
        loaded = dict(current)
        for version in candidates[-self.num_versions:]:
            if version in loaded:
                continue
            path = os.path.join(self.base_dir, name, str(version))
            self._set_state(name, version, State.LOADING)
            try:
                # Load outside the lock: requests keep going to the versions already served.
                loaded[version] = load_servable(name, version, path)
            except Exception as error:
                self._load_attempts[(name, version)] = self._load_attempts.get((name, version), 0) + 1
                logger.warning("loading %s version %d failed: %s", name, version, error)
                self._set_state(name, version, State.END, getattr(error, "error_code", 2), str(error))
                continue
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

    def _set_state(self, name, version, state, code=0, message=""):
        with self._lock:
            self._states.setdefault(name, {})[version] = (state, code, message)
