"""scikit-learn's bundled 8x8 digits (1,797 images): tiny, offline, instant."""

import numpy as np


def load_digits():
    """Returns `(images, labels)`: uint8 (1797, 8, 8, 1) on a 0-255 scale, int labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixels are 0..16 counts; scale to 0..255 so every dataset shares one input range.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.uint8)
