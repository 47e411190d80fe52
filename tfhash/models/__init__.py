"""tfhash models: one module per published method."""

from tfhash.models.backbones import Backbone, PixelPCA
from tfhash.models.base import HashModel, ImageHashModel
from tfhash.models.bgan import BGAN, BGANEncoder
from tfhash.models.dhn import DHN
from tfhash.models.dsh_gan import DSHGAN, DSHGANEncoder
from tfhash.models.ssah import SSAH, LabNet, SSAHImageEncoder, SSAHRounds, SSAHTextEncoder
from tfhash.models.ugach import UGACH, TwoLayerHash, UGACHImageEncoder, UGACHTextEncoder

__all__ = [
    "BGAN",
    "BGANEncoder",
    "DHN",
    "DSHGAN",
    "DSHGANEncoder",
    "Backbone",
    "HashModel",
    "ImageHashModel",
    "LabNet",
    "PixelPCA",
    "SSAH",
    "SSAHImageEncoder",
    "SSAHRounds",
    "SSAHTextEncoder",
    "TwoLayerHash",
    "UGACH",
    "UGACHImageEncoder",
    "UGACHTextEncoder",
]
