"""tfhash models: one module per published method."""

from tfhash.models.backbones import Backbone
from tfhash.models.base import HashModel
from tfhash.models.dhn import DHN

__all__ = ["DHN", "Backbone", "HashModel"]
