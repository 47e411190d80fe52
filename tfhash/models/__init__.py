"""tfhash models: one module per published method, each found through the registry.

The shared parts are named here; every registered method's module is imported
from its record (`tfhash.registry`), and its public classes (those it defines,
not importing them from elsewhere) are this package's names: a new method's
module needs no line here.
"""

import importlib
import inspect

from tfhash import registry
from tfhash.models.backbones import Backbone, PixelPCA
from tfhash.models.base import HashModel, ImageHashModel

__all__ = ["Backbone", "HashModel", "ImageHashModel", "PixelPCA"]


def _export_methods():
    for module_name in sorted({m.trainer.partition(":")[0] for m in registry.METHODS.values()}):
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module_name and not name.startswith("_"):
                globals()[name] = value
                __all__.append(name)


_export_methods()
__all__.sort()
