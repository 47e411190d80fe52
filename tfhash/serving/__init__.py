"""Serving exported models with TF Serving's gRPC protocol.

`Client` talks to TF Serving or to `ModelServer`, the embedded server behind
`tfhash serve` (for tests and machines without TF Serving). For production,
see serving/README.md.
"""

from tfhash.serving.client import Client, ServingError
from tfhash.serving.command import add_serve_command
from tfhash.serving.server import ModelServer

__all__ = ["Client", "ModelServer", "ServingError", "add_serve_command"]
