"""Serving exported models with TF Serving's gRPC protocol.

`Client` talks to TF Serving or to `ModelServer`, the embedded server behind
`tfhash serve` (for tests and machines without TF Serving). For production,
see serving/README.md.
"""

import importlib

# Imported on first use (PEP 562): the client and server load TensorFlow, and
# the CLI's parser needs only `add_serve_command`.
_LAZY = {
    "Client": "tfhash.serving.client",
    "ServingError": "tfhash.serving.client",
    "ModelServer": "tfhash.serving.server",
    "add_serve_command": "tfhash.serving.command",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'tfhash.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})
