"""Input checks shared by the models, the baselines, export and serving.

NumPy only (scipy.sparse is imported when a non-array comes in): the
NumPy-side modules (`tfhash.baselines`, `tfhash.index`, `tfhash.metrics`) use
these without importing TensorFlow or Keras.
"""

import numpy as np


def is_int(value):
    """Whether `value` is a Python or NumPy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_bits(bits):
    """Raises ValueError unless `bits` is a positive multiple of 8."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits <= 0 or bits % 8:
        raise ValueError(
            "bits must be a positive multiple of 8 (codes are packed to bytes). "
            f"Received: bits={bits!r}"
        )


def check_images(images, input_shape, name="images"):
    """Validates a batch of raw images; returns it as a NumPy array.

    Raw means pixels on a 0-255 scale, as every tfhash encoder, exported or
    not, takes them: values outside it are refused (the message is the one
    the exported encoders give), and float images that look normalized to
    [0, 1] (all values in it, some fractional) get an error that says so.
    """
    array = np.asarray(images)
    expected = (None, *input_shape)
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} must have shape {expected}. Received: shape={array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(
            f"{name} must be a numeric array (uint8 or float pixels on a 0-255 scale). "
            f"Received: dtype={array.dtype}"
        )
    if len(array) == 0:
        raise ValueError(f"{name} is empty: expected at least one image. Received: shape={array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        raise ValueError(
            f"{name} must be finite. Received NaN or inf in {len(bad)} image(s), "
            f"first at index {bad[:5].tolist()}"
        )
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ValueError(f"{name} must hold pixel values 0-255. Received: dtype={array.dtype}, "
                         f"values in [{low}, {high}]")
    if np.issubdtype(array.dtype, np.floating) and high <= 1 and not np.all(array == np.round(array)):
        raise ValueError(f"{name} look normalized to [0, 1]: expected raw pixels on a 0-255 scale (the encoder "
                         f"preprocesses them itself); multiply by 255. Received: dtype={array.dtype}, "
                         f"values in [{low}, {high}]")
    return array


def check_matrix(x, name, columns=None, row="item", unit="features", why=""):
    """Validates a 2-D array of real numbers, one `row` per row: features for the
    baselines, bags of words for text encoders. Sparse matrices are densified
    and booleans become float32; returns the array.

    Args:
        columns: the required number of columns, or None for any.
        unit: what a column holds, for the messages ("features", "words").
        why: where `columns` comes from, appended to its message.
    """
    if not isinstance(x, np.ndarray):
        import scipy.sparse  # only a non-array can be sparse: arrays skip the import

        if scipy.sparse.issparse(x):
            x = x.toarray()
    x = np.asarray(x)
    expected = f"(n, {columns if columns is not None else 'd'})"
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {expected}, one {row} per row. Received: shape={x.shape}")
    if x.dtype == np.bool_:
        x = x.astype(np.float32)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers. Received: dtype={x.dtype}, shape={x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one row and one column. Received: shape={x.shape}")
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} {unit} per row{why}. Received: shape={x.shape}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{name} must be finite. Received NaN or inf in {len(bad)} row(s), first at index {bad[:5].tolist()}")
    return x


def check_bow(bow, vocabulary_size, name="bow"):
    """Validates a batch of bag-of-words vectors; returns it as float32."""
    array = check_matrix(bow, name, vocabulary_size, row="text", unit="words", why=" (the model's vocabulary)")
    return array.astype(np.float32)
