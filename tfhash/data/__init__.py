"""Datasets, committed retrieval splits and tf.data pipelines."""

from tfhash.data.digits import load_digits
from tfhash.data.fashion_mnist import load_fashion_mnist
from tfhash.data.folders import (
    ImageData,
    ImageTextData,
    from_directory,
    from_list,
    from_path,
    image_batches,
    list_images,
    read_images,
)
from tfhash.data.open_clip_art import load_open_clip_art
from tfhash.data.pipelines import (
    FIELDS,
    batches,
    cross_modal_batches,
    draw_labelled,
    graph_batches,
    neighbour_batches,
    pair_similarity,
    pairwise_batches,
    semi_supervised_batches,
)
from tfhash.data.protocols import (
    CROSS_MODAL_PROTOCOLS,
    PROTOCOLS,
    CrossModalData,
    RetrievalData,
    Split,
    draw_split,
    load_protocol,
)

__all__ = [
    "CROSS_MODAL_PROTOCOLS",
    "FIELDS",
    "PROTOCOLS",
    "CrossModalData",
    "ImageData",
    "ImageTextData",
    "RetrievalData",
    "Split",
    "batches",
    "cross_modal_batches",
    "draw_labelled",
    "draw_split",
    "from_directory",
    "from_list",
    "from_path",
    "graph_batches",
    "image_batches",
    "list_images",
    "load_digits",
    "load_fashion_mnist",
    "load_open_clip_art",
    "load_protocol",
    "neighbour_batches",
    "pair_similarity",
    "pairwise_batches",
    "read_images",
    "semi_supervised_batches",
]
