"""tfhash: deep learning to hash for TensorFlow 2 / Keras 3.

`import tfhash` is light: the names below and the submodules (`tfhash.serving`,
`tfhash.models`, ...) are imported on first use (PEP 562), so `tfhash.HammingIndex`
or `tfhash.metrics` never load TensorFlow, and `tfhash.DHN`, `tfhash.train` or
`tfhash.models` load it then.

    >>> import tfhash
    >>> index = tfhash.HammingIndex(bits=32)
    >>> encoder = tfhash.DHN.from_preset("dhn_fashion_mnist_32")
"""

import importlib

from tfhash._version import __version__

# name -> (module, attribute; None for the module itself). The modules of
# tfhash import from their own modules, never these names from `tfhash`.
_LAZY = {
    "HammingIndex": ("tfhash.index", "HammingIndex"),
    "MilvusIndex": ("tfhash.milvus_index", "MilvusIndex"),
    "MultiIndexHashing": ("tfhash.index", "MultiIndexHashing"),
    "Retriever": ("tfhash.retrieval", "Retriever"),
    "metrics": ("tfhash.metrics", None),
    "zoo": ("tfhash.zoo", None),
    "methods": ("tfhash.registry", None),
    "load_model": ("tfhash.training", "load_model"),
    "train": ("tfhash.training", "train"),
}
# The submodules the README and docs name as `tfhash.NAME` (`tfhash.serving.Client(...)`),
# each imported on first use, as `import tfhash.NAME` would.
SUBMODULES = ("baselines", "callbacks", "data", "evaluation", "export", "image_search", "index", "io", "losses",
              "mih", "milvus_index", "models", "neighbours", "registry", "retrieval", "serving", "training")
_LAZY.update({name: (f"tfhash.{name}", None) for name in SUBMODULES})


def _trainers():
    """Each registered method's trainer class, by its name (`DHN`: tfhash.models.dhn): the registry knows them."""
    from tfhash import registry

    return {path.partition(":")[2]: tuple(path.split(":")) for path in (m.trainer for m in registry.METHODS.values())}


_LAZY.update(_trainers())

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    """Imports a name of the curated API on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'tfhash' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})
