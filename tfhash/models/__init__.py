"""tfhash models: one module per published method."""

from tfhash.models.backbones import Backbone
from tfhash.models.base import HashModel
from tfhash.models.bgan import BGAN, BGANEncoder
from tfhash.models.dhn import DHN
from tfhash.models.dsh_gan import DSHGAN, DSHGANEncoder
from tfhash.models.ssah import SSAH, LabNet, SSAHImageEncoder, SSAHRounds, SSAHTextEncoder

__all__ = [
    "BGAN",
    "BGANEncoder",
    "DHN",
    "DSHGAN",
    "DSHGANEncoder",
    "Backbone",
    "HashModel",
    "LabNet",
    "SSAH",
    "SSAHImageEncoder",
    "SSAHRounds",
    "SSAHTextEncoder",
]
