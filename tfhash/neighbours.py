"""Label-free similarity from k-nearest neighbours in a fixed feature space.

BGAN (Song et al., AAAI 2018) builds S from the K1 nearest neighbours of each
item, then widens it with second-order neighbours: items whose rows of S are
close. For K1-NN indicator rows, ||S_i - S_j||^2 = 2 K1 - 2 |N_i & N_j|, so the
closest rows are the items sharing the most neighbours with i, and only items
two hops away share any. That is what makes it computable for N = 60,000
without an N x N matrix: per row, count the neighbours of its neighbours.
"""

import faiss
import numpy as np


def pixel_features(images, dims=64, seed=0):
    """A fixed, label-free feature space: PCA of the flattened pixels (0-1 scale).

    The paper uses 2048-d CNN features from an ImageNet model; offline, the
    principal components of the pixels stand in for them.
    """
    from sklearn.decomposition import PCA

    flat = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    dims = min(dims, *flat.shape)
    return PCA(n_components=dims, random_state=seed).fit_transform(flat).astype(np.float32)


def knn(features, k, batch_size=4096):
    """Exact k nearest neighbours (Euclidean) of every row, itself excluded.

    Args:
        features: float array (n, d).
        k: neighbours per item, 1 <= k < n.

    Returns:
        int64 array (n, k), nearest first, ties by smaller index.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(
            f"features must be a finite float array (n, d). Received: shape={x.shape}, "
            f"finite={bool(np.isfinite(x).all())}"
        )
    n = len(x)
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, {n - 1}] for {n} items. Received: k={k!r}")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        # k + 1 to drop the item itself; duplicates of it may come first, so drop by id.
        _, ids = index.search(x[rows], k + 1)
        keep = ids != rows[:, None]
        # Rows where the item itself was not returned (exact duplicates) keep k of k+1.
        keep[keep.sum(axis=1) > k, -1] = False
        out[rows] = ids[keep].reshape(len(rows), k)
    return out


def second_order(neighbours, k2, batch_size=4096):
    """The k2 items sharing the most first-order neighbours with each item.

    Args:
        neighbours: int array (n, k1) from `knn`.
        k2: how many second-order neighbours to keep per item.

    Returns:
        int64 array (n, k2): most shared neighbours first (largest |N_i & N_j|),
        ties by smaller index; -1 where fewer than k2 items share any.
    """
    n, k1 = neighbours.shape
    # Reverse lists: who has k as a neighbour. Items sharing neighbour k with i are in R_k.
    flat = neighbours.ravel()
    order = np.argsort(flat, kind="stable")
    reverse = np.repeat(np.arange(n), k1)[order]
    starts = np.searchsorted(flat[order], np.arange(n + 1))
    out = np.full((n, k2), -1, np.int64)
    for begin in range(0, n, batch_size):
        rows = np.arange(begin, min(begin + batch_size, n))
        shared = neighbours[rows].ravel()  # the k of each (row, k) pair
        owner = np.repeat(np.arange(len(rows)), k1)
        lengths = starts[shared + 1] - starts[shared]
        # Concatenate R_k for every (row, k) without a Python loop.
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        candidate = reverse[np.repeat(starts[shared], lengths) + offsets]
        row = np.repeat(owner, lengths)
        keep = candidate != rows[row]
        # One count per (row, candidate) pair = |N_i & N_j|.
        pairs, counts = np.unique(row[keep] * n + candidate[keep], return_counts=True)
        row, candidate = pairs // n, pairs % n
        ranked = np.lexsort((candidate, -counts, row))  # by row, most shared, then index
        row, candidate = row[ranked], candidate[ranked]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        top = rank < k2
        out[rows[row[top]], rank[top]] = candidate[top]
    return out


def neighbour_structure(features, k1=20, k2=30, batch_size=4096):
    """Neighbour lists defining S: first-order (k1-NN) and second-order (k2) ones.

    Args:
        features: float array (n, d), a fixed, label-free feature space.
        k1: first-order neighbours (BGAN: 20).
        k2: second-order neighbours (BGAN: 30); 0 to skip the expansion.

    Returns:
        int64 array (n, k1 + k2) of neighbour ids, -1 padded. S_ij = +1 when j
        is in row i (or i in row j), else -1: see `batch_similarity`.
    """
    first = knn(features, k1, batch_size)
    if k2 == 0:
        return first
    return np.concatenate([first, second_order(first, k2, batch_size)], axis=1)


def batch_similarity(ids, neighbours_of_ids, column_ids=None, column_neighbours=None):
    """S in {-1, +1} between a batch's items and a set of column items.

    Works on tensors or arrays (uses `keras.ops`), so a train step can call it
    on the ids and neighbour rows its pipeline carries.

    Args:
        ids: (b,) ids of the rows' items.
        neighbours_of_ids: (b, m) their neighbour lists (-1 padded).
        column_ids: (c,) ids of the columns (default: `ids`).
        column_neighbours: (c, m) their neighbour lists (default: the rows').

    Returns:
        float32 (b, c): +1 where j is a neighbour of i or i of j, else -1.
    """
    from keras import ops

    if column_ids is None:
        column_ids, column_neighbours = ids, neighbours_of_ids
    ids = ops.cast(ids, "int64")
    column_ids = ops.cast(column_ids, "int64")
    # (b, 1, m) == (1, c, 1): is column j in row i's list; and the transpose relation.
    j_in_i = ops.any(
        ops.equal(ops.expand_dims(ops.cast(neighbours_of_ids, "int64"), 1), column_ids[None, :, None]), axis=-1
    )
    i_in_j = ops.any(
        ops.equal(ops.expand_dims(ops.cast(column_neighbours, "int64"), 0), ids[:, None, None]), axis=-1
    )
    return ops.where(ops.logical_or(j_in_i, i_in_j), 1.0, -1.0)


def correlation_graph(image_features, text_features, k=5, batch_size=4096):
    """UGACH's label-free correlation graph over n paired items.

    Item i's related items are itself (its image and text describe one
    thing), its k nearest neighbours by image features and its k nearest by
    text features (Euclidean). The official code (K = 10: 5 image + 5 text
    neighbours, each list led by the item itself at distance 0) does the
    same; a cross-modal query i is related to the other modality's rows of
    this list. Computed in batches with faiss: no n x n matrix.

    Args:
        image_features, text_features: float arrays (n, d_image), (n, d_text)
            of the same n items, in a fixed label-free space (e.g.
            `UGACH.image_features(images)` and the bags of words).
        k: neighbours per modality.

    Returns:
        int64 array (n, 2 k + 1): [i, k image neighbours, k text neighbours],
        nearest first within each modality.
    """
    image_features, text_features = np.asarray(image_features), np.asarray(text_features)
    if len(image_features) != len(text_features):
        raise ValueError(
            "image_features and text_features must describe the same items. "
            f"Received: {len(image_features)} and {len(text_features)} rows"
        )
    n = len(image_features)
    return np.concatenate(
        [np.arange(n)[:, None], knn(image_features, k, batch_size), knn(text_features, k, batch_size)], axis=1
    )
