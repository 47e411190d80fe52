import keras
import numpy as np
import pytest

from tfhash.layers import HashLayer, SignPack, check_bits
from tfhash.losses import PairwiseCrossEntropy, QuantizationLoss, balanced_pair_weights, label_similarity


def test_sign_pack_matches_np_packbits():
    rng = np.random.default_rng(0)
    for bits in (8, 16, 24, 64):
        z = rng.normal(size=(50, bits)).astype("float32")
        z[0, :4] = 0.0  # sign(0) counts as +1 (bit set), as np.packbits(z >= 0)
        got = SignPack()(z).numpy()
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.packbits(z >= 0, axis=-1))


def test_sign_pack_golden_msb_first():
    # Bits 1 0 0 0 0 0 0 1 -> 0b10000001 = 129; bit 0 of the code is the MSB.
    z = np.array([[0.3, -1, -1, -1, -1, -1, -1, 0.9, -1, -1, -1, -1, -1, -1, 1, -1]], "float32")
    np.testing.assert_array_equal(SignPack()(z).numpy(), [[129, 2]])


def test_hash_layer_range_and_config_round_trip():
    layer = HashLayer(bits=16, name="h")
    z = layer(np.random.default_rng(0).normal(size=(4, 7)).astype("float32") * 100).numpy()
    assert z.shape == (4, 16) and np.abs(z).max() <= 1.0
    clone = HashLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("bits", [0, 12, -8, 8.0, True, "32"])
def test_bits_must_be_positive_multiple_of_8(bits):
    with pytest.raises(ValueError, match=r"multiple of 8.*Received: bits="):
        check_bits(bits)


def test_label_similarity_single_and_multi_label():
    # Class ids: items 0 and 2 share class 1.
    s = label_similarity(np.array([1, 0, 1]), np.array([1, 0, 1])).numpy()
    np.testing.assert_array_equal(s, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    # Multi-hot: item 0 {a, b}, item 1 {b}, item 2 {c}: 0~1 share b, 2 shares nothing.
    labels = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    s = label_similarity(labels, labels).numpy()
    np.testing.assert_array_equal(s, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_pairwise_cross_entropy_golden():
    # z0 = (1, 0), z1 = (0, 1), different classes. Row 0 pairs:
    #   with itself: t = 1, s = 1 -> log(1 + e) - 1 = 0.313262
    #   with z1:     t = 0, s = 0 -> log 2        = 0.693147
    # mean over the row: 0.503204. Row 1 is the same by symmetry.
    z = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    labels = np.array([0, 1])
    loss = PairwiseCrossEntropy()(z, labels, z, labels).numpy()
    np.testing.assert_allclose(loss, [0.503204, 0.503204], atol=1e-6)
    # Balanced, on z0, z1, z2 = (1, 0), (0, 1), (0, 1) with classes 0, 1, 1: 9 pairs,
    # P = 5 similar, so similar pairs weigh T / P = 9 / 5 = 1.8 and dissimilar ones 1.
    # Row 0 (class 0): (1.8 * 0.313262 + 2 * 0.693147) / 3 = 0.650055
    # Rows 1 and 2 (class 1): t = 0 with z0 (dissimilar), t = 1 with z1, z2 (similar):
    #   (0.693147 + 2 * 1.8 * 0.313262) / 3 = 0.606963
    columns, column_labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], "float32"), np.array([0, 1, 1])
    balanced = PairwiseCrossEntropy(balanced=True)
    loss = balanced(columns, column_labels, columns, column_labels).numpy()
    np.testing.assert_allclose(loss, [0.650055, 0.606963, 0.606963], atol=1e-6)
    # One replica's share (row 0) against the gathered columns: the balance is
    # counted among the columns (weight 1.8), so it is row 0's value above; counted
    # over row 0's own 3 pairs (1 similar: weight 3) it would be 0.775360.
    loss = balanced(columns[:1], column_labels[:1], columns, column_labels).numpy()
    np.testing.assert_allclose(loss, [0.650055], atol=1e-6)
    # alpha = 2 doubles t: with itself log(1 + e^2) - 2 = 0.126928; mean with log 2: 0.410038
    loss = PairwiseCrossEntropy(alpha=2.0)(z, labels, z, labels).numpy()
    np.testing.assert_allclose(loss, [0.410038, 0.410038], atol=1e-6)


def test_pairwise_cross_entropy_is_finite_for_large_products():
    z = np.full((2, 64), 1.0, "float32")
    loss = PairwiseCrossEntropy(alpha=10.0)(z, np.array([0, 1]), z, np.array([0, 1])).numpy()
    # t = 640, s = 0 for the cross pair: softplus(640) = 640 exactly; s = 1 pair: 0.
    np.testing.assert_allclose(loss, [320.0, 320.0], rtol=1e-6)


def test_balanced_pair_weights_with_known_columns_golden():
    # SSAH's use: rows against a memory whose third row is not known yet (known = 0).
    # Counted pairs (2 rows x the 2 known columns): [[1, 0], [1, 1]]: P = 3 of T = 4,
    # so similar pairs weigh 4 / 3, dissimilar ones 1, unknown ones 0.
    s = np.array([[1.0, 0.0, 0.0]], "float32")
    counted = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], "float32")
    known = np.array([[1.0, 1.0, 0.0]], "float32")
    weights = keras.ops.convert_to_numpy(balanced_pair_weights(s, counted, known=known))
    np.testing.assert_allclose(weights, [[4 / 3, 1.0, 0.0]], rtol=1e-6)
    # Without a mask: 6 pairs, P = 3: similar pairs weigh 2. A {-1, +1} matrix
    # (BGAN's S) counts its +1 entries as similar.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(balanced_pair_weights(s, counted)), [[2.0, 1.0, 1.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(balanced_pair_weights(2 * s - 1, 2 * counted - 1)),
                               [[2.0, 1.0, 1.0]])


def test_quantization_losses_golden():
    z = np.array([[1.0, 0.0], [-1.0, -1.0]], "float32")
    # log_cosh: row 0 = log cosh(0) + log cosh(-1) = 0 + 0.433781; row 1 = 0.
    np.testing.assert_allclose(QuantizationLoss("log_cosh")(z).numpy(), [0.433781, 0.0], atol=1e-6)
    # squared: mean((|z| - 1)^2): row 0 = (0 + 1) / 2 = 0.5.
    np.testing.assert_allclose(QuantizationLoss("squared")(z).numpy(), [0.5, 0.0], atol=1e-6)
    # log cosh stays finite far from +-1 (naive cosh overflows at ~89).
    assert np.isfinite(QuantizationLoss()(np.array([[200.0]], "float32")).numpy()).all()


def test_loss_options_are_checked():
    with pytest.raises(ValueError, match="variant must be one of.*Received: variant='l1'"):
        QuantizationLoss("l1")
    with pytest.raises(ValueError, match="alpha must be positive. Received: alpha=0"):
        PairwiseCrossEntropy(alpha=0)
    assert keras.saving.get_registered_object("tfhash>PairwiseCrossEntropy") is PairwiseCrossEntropy


def test_sign_pack_converts_to_tflite_builtins_and_matches_np_packbits():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((24,), batch_size=1)
    model = keras.Model(inputs, SignPack()(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Builtins only: conversion fails if packing needed Flex ops (left_shift would).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    z = np.random.default_rng(1).normal(size=(1, 24)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], z)
    interpreter.invoke()
    packed = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(packed, np.packbits(z >= 0, axis=-1))
