"""A client for TF Serving's gRPC API (real TF Serving or `tfhash serve`): images in, codes out."""

import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfhash.checks import check_images
from tfhash.serving.server import DEFAULT_MAX_MESSAGE_BYTES, SIGNATURE_DEF, shape_fits, shape_tuple


class ServingError(RuntimeError):
    """The server answered a request with an error status.

    Attributes:
        code: the `grpc.StatusCode`, e.g. NOT_FOUND (unknown model or version),
            INVALID_ARGUMENT (inputs that do not fit the signature),
            RESOURCE_EXHAUSTED (message over the size limit, or more rows than the server's max_batch).
        details: the server's message.
    """

    def __init__(self, message, code, details):
        super().__init__(message)
        self.code = code
        self.details = details


class Client:
    """Encodes images with a model served by TF Serving or `tfhash serve`, over gRPC.

    Speaks only the stock protocol (`PredictionService`, `ModelService`), so it
    works against `tensorflow_model_server` as well. Inputs are checked against
    the served signature (read once with GetModelMetadata) before they are
    sent, and large inputs go out in requests of at most `max_batch` rows.
    Every call has a deadline of `timeout` seconds. Thread-safe.

    Args:
        model_name: the model's name on the server (the folder name under the base dir).
        target: `host:port` of the gRPC endpoint.
        signature_name: the signature to call.
        version: ask for this version; None: the server's default (the highest loaded).
        timeout: deadline of each call, in seconds.
        max_batch: most rows per Predict request.
        max_message_bytes: largest request or reply this client sends or accepts.

    Raises (from its methods):
        ConnectionError: nothing answers at `target`, or no reply within `timeout`.
        ServingError: the server's error status (`.code`) and message.
        ValueError: inputs that do not fit the signature, or a reply that does not.

    Examples:
    >>> client = Client("dhn_fashion_mnist_32", target="127.0.0.1:8500")
    >>> client.wait_until_ready(timeout=60)
    >>> codes = client.encode(images)      # packed uint8, (n, bits // 8)
    >>> real = client.encode_real(images)  # float32, (n, bits)
    >>> client.metadata()["inputs"]
    {'images': {'dtype': dtype('uint8'), 'shape': (None, 28, 28, 1)}}
    """

    def __init__(
        self,
        model_name,
        target="127.0.0.1:8500",
        signature_name="serving_default",
        version=None,
        timeout=10.0,
        max_batch=256,
        max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
    ):
        if not model_name:
            raise ValueError(f"model_name must be a non-empty string. Received: model_name={model_name!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int. Received: max_batch={max_batch!r}")
        if version is not None and (not isinstance(version, int) or version < 0):
            raise ValueError(f"version must be None or a non-negative int. Received: version={version!r}")
        self.model_name = model_name
        self.target = target
        self.signature_name = signature_name
        self.version = version
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._signature = None  # metadata() of the signature, fetched once
        self._signature_lock = threading.Lock()

    def close(self):
        """Closes the gRPC channel."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature=True):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = self.signature_name

    def _call(self, method, name, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.UNAVAILABLE:
                # Also what a live TF Serving answers when its batching queue is full.
                raise ConnectionError(f"no TF Serving available at {self.target}: {details}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ConnectionError(
                    f"no reply from TF Serving at {self.target} within {self.timeout} s ({name})"
                ) from None
            hint = f" (lower max_batch, now {self.max_batch})" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else ""
            raise ServingError(
                f"{name} of model '{self.model_name}' at {self.target} failed: {code.name}: {details}{hint}",
                code,
                details,
            ) from None

    def status(self):
        """{version: state name} of the model's versions, e.g. {3: "AVAILABLE"} (GetModelStatus)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, signature=False)
        response = self._call(self._models.GetModelStatus, "GetModelStatus", request)
        State = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: State.Name(s.state) for s in response.model_version_status}

    def wait_until_ready(self, timeout=30.0, interval=0.2):
        """Waits until the model has an AVAILABLE version; returns its status().

        Raises:
            TimeoutError: not ready after `timeout` seconds (with the last reason).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.status()
                if "AVAILABLE" in states.values():
                    return states
                reason = f"versions: {states}"
            except (ConnectionError, ServingError) as error:
                reason = str(error)
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"model '{self.model_name}' not ready at {self.target} after {timeout} s: {reason}")
            time.sleep(interval)

    def metadata(self):
        """The signature's inputs and outputs, from GetModelMetadata.

        Returns:
            {"model_name", "version", "signature_name",
             "inputs": {name: {"dtype": np.dtype, "shape": tuple with None for any size}},
             "outputs": same}
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF])
        self._spec(request.model_spec, signature=False)
        response = self._call(self._prediction.GetModelMetadata, "GetModelMetadata", request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if SIGNATURE_DEF not in response.metadata or not response.metadata[SIGNATURE_DEF].Unpack(signatures):
            raise ValueError(
                f"GetModelMetadata reply from {self.target} must hold a SignatureDefMap under "
                f"'{SIGNATURE_DEF}'. Received: metadata fields {sorted(response.metadata)}"
            )
        if self.signature_name not in signatures.signature_def:
            raise ValueError(
                f"model '{self.model_name}' has no signature '{self.signature_name}'. "
                f"Expected one of {sorted(signatures.signature_def)}"
            )
        signature = signatures.signature_def[self.signature_name]

        def describe(infos):
            return {
                name: {
                    "dtype": np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype),
                    "shape": shape_tuple(info.tensor_shape),
                }
                for name, info in sorted(infos.items())
            }

        result = {
            "model_name": response.model_spec.name,
            "version": response.model_spec.version.value,
            "signature_name": self.signature_name,
            "inputs": describe(signature.inputs),
            "outputs": describe(signature.outputs),
        }
        with self._signature_lock:
            self._signature = result
        return result

    def _cached_signature(self):
        with self._signature_lock:
            signature = self._signature
        return signature or self.metadata()

    def predict(self, inputs, output_filter=None):
        """Runs the signature on `inputs`, in requests of at most `max_batch` rows.

        Args:
            inputs: {input name: array}, or one array for a one-input signature.
                Arrays must have the signature's dtype and shape (rows first).
            output_filter: output names to return (default: all).

        Returns:
            {output name: ndarray}, rows in the order of the inputs.
        """
        signature = self._cached_signature()
        specs = signature["inputs"]
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise ValueError(f"signature '{self.signature_name}' takes inputs {sorted(specs)}: pass a dict")
            inputs = {next(iter(specs)): inputs}
        if set(inputs) != set(specs):
            raise ValueError(
                f"signature '{self.signature_name}' takes inputs {sorted(specs)}. Received: {sorted(inputs)}"
            )
        arrays = {name: self._check_input(name, value, specs[name]) for name, value in inputs.items()}
        rows = {name: len(a) for name, a in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"inputs must have the same number of rows. Received: {rows}")
        n = next(iter(rows.values()))
        outputs = signature["outputs"]
        names = list(output_filter) if output_filter is not None else sorted(outputs)
        unknown = sorted(set(names) - set(outputs))
        if unknown:
            raise ValueError(f"unknown outputs {unknown}: signature '{self.signature_name}' has {sorted(outputs)}")
        parts = {name: [] for name in names}
        for start in range(0, n, self.max_batch):
            chunk = {name: a[start : start + self.max_batch] for name, a in arrays.items()}
            reply = self._predict_once(chunk, names)
            rows_sent = len(next(iter(chunk.values())))
            for name in names:
                parts[name].append(self._check_output(name, reply, outputs[name], rows_sent))
        return {name: np.concatenate(p) for name, p in parts.items()}

    def encode(self, inputs):
        """Packed binary codes, uint8 (n, bits // 8), for the signature's one input:
        uint8 images (n, H, W, C), or float32 bag-of-words rows for a text encoder."""
        return self.predict(inputs, ["binary_codes"])["binary_codes"]

    def encode_real(self, inputs):
        """Relaxed codes, float32 (n, bits), for the signature's one input."""
        return self.predict(inputs, ["codes"])["codes"]

    def _check_input(self, name, value, spec):
        shape = spec["shape"]
        if name == "images" and shape is not None and None not in shape[1:]:
            array = check_images(value, shape[1:], name=name)  # the model's own checks
        else:
            array = np.asarray(value)
            if len(array.shape) == 0 or len(array) == 0:
                raise ValueError(f"input '{name}' must have at least one row. Received: shape={array.shape}")
        if array.dtype != spec["dtype"]:
            raise ValueError(
                f"input '{name}' must be {spec['dtype']} (the served signature's dtype). Received: dtype={array.dtype}"
            )
        if shape is not None and not shape_fits(array.shape, shape):
            raise ValueError(f"input '{name}' must have shape {shape}. Received: shape={array.shape}")
        return array

    def _predict_once(self, chunk, output_filter):
        request = predict_pb2.PredictRequest(output_filter=output_filter)
        self._spec(request.model_spec)
        for name, array in chunk.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        try:
            return self._call(self._prediction.Predict, "Predict", request)
        except ServingError as error:
            if error.code == grpc.StatusCode.INVALID_ARGUMENT:
                with self._signature_lock:  # the served version may have changed: re-read its signature
                    self._signature = None
            raise

    def _check_output(self, name, reply, spec, rows):
        if name not in reply.outputs:
            raise ValueError(
                f"Predict reply from {self.target} lacks output '{name}'. Received outputs: {sorted(reply.outputs)}"
            )
        array = tf.make_ndarray(reply.outputs[name])
        # One row per input row, then the signature's sizes (any, when its rank is unknown).
        expected = (rows, *spec["shape"][1:]) if spec["shape"] else (rows,)
        fits = shape_fits(array.shape, expected) if spec["shape"] else array.shape[:1] == expected
        if array.dtype != spec["dtype"] or not fits:
            raise ValueError(
                f"Predict reply from {self.target}: output '{name}' must be {spec['dtype']} with shape {expected}. "
                f"Received: dtype={array.dtype}, shape={array.shape}"
            )
        return array

