"""Datasets, committed retrieval splits and tf.data pipelines."""

from tfhash.data.digits import load_digits
from tfhash.data.fashion_mnist import load_fashion_mnist
from tfhash.data.pipelines import neighbour_batches, pair_similarity, pairwise_batches
from tfhash.data.protocols import PROTOCOLS, RetrievalData, Split, draw_split, load_protocol

__all__ = [
    "PROTOCOLS",
    "RetrievalData",
    "Split",
    "draw_split",
    "load_digits",
    "load_fashion_mnist",
    "load_protocol",
    "neighbour_batches",
    "pair_similarity",
    "pairwise_batches",
]
