"""DSH-GAN on scikit-learn digits: semi-supervised, conditional generator, tiny and fast."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics
from tfhash.callbacks import GeneratedImageGrid
from tfhash.data import draw_labelled, load_protocol, pairwise_batches, semi_supervised_batches
from tfhash.models import DSHGAN, DSHGANEncoder
from tfhash.models.dsh_gan import negative_classes


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _dsh_gan(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = DSHGAN(bits=16, input_shape=(8, 8, 1), num_classes=kwargs.pop("num_classes", 10), **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def _map(encoder, data):
    (xq, yq), (xd, yd) = data.subset("query"), data.subset("database")
    return metrics.mean_average_precision(encoder.encode(xq), encoder.encode(xd), yq, yd)


# Losses and draws


def test_negative_classes_are_drawn_among_the_missing_ones():
    targets = tf.constant([[1, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1]], "float32")
    seen = [set(), set(), set()]
    for seed in range(200):
        uniform = tf.random.stateless_uniform([3, 4], [seed, 0])
        negative, has_negative = negative_classes(targets, uniform)
        assert has_negative.numpy().tolist() == [True, True, False]
        for row in range(2):
            (chosen,) = np.flatnonzero(negative[row].numpy())
            assert targets[row, chosen] == 0
            seen[row].add(int(chosen))
    # Every missing class gets drawn: classes 1-3 for row 0, only class 2 for row 1.
    assert seen[0] == {1, 2, 3} and seen[1] == {2}


# Semi-supervised data


def test_draw_labelled_is_per_class_and_seeded(digits):
    _, labels = digits.subset("train")  # 50 per class
    mask = draw_labelled(labels, 0.1, seed=3)
    # round(0.1 * 50) = 5 of each class.
    assert np.bincount(labels[mask], minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(mask, draw_labelled(labels, 0.1, seed=3))
    assert (mask != draw_labelled(labels, 0.1, seed=4)).any()
    # A tiny fraction still keeps one image of every class.
    assert np.bincount(labels[draw_labelled(labels, 0.001)], minlength=10).tolist() == [1] * 10
    with pytest.raises(ValueError, match=r"labelled_fraction must be in \(0, 1\]. Received: 0"):
        draw_labelled(labels, 0)


def test_semi_supervised_batches_mix_and_hide_labels(digits):
    images, labels = digits.subset("train")
    mask = draw_labelled(labels, 0.2, seed=0)  # 100 labelled, 400 unlabelled
    batches = list(semi_supervised_batches(images, labels, 20, labelled=mask, labelled_per_batch=5))
    # An epoch is one pass over the unlabelled rows: 400 // 15 = 26 batches.
    assert len(batches) == 26
    source = {image.tobytes(): label for image, label in zip(images.astype(np.float32), labels)}
    for x, (y, flag) in batches:
        assert flag.numpy().tolist() == [1.0] * 5 + [0.0] * 15
        for image, label, f in zip(x.numpy(), y.numpy(), flag.numpy()):
            # Labelled rows carry their own label; unlabelled rows carry 0, not theirs.
            assert label == (source[image.tobytes()] if f else 0)
    unlabelled_seen = {img.tobytes() for x, (_, f) in batches for img, g in zip(x.numpy(), f.numpy()) if not g}
    assert len(unlabelled_seen) == 26 * 15  # no repeats within an epoch
    with pytest.raises(ValueError, match=r"labelled must be a boolean mask of shape \(500,\)"):
        semi_supervised_batches(images, labels, 20, labelled=mask[:10])
    with pytest.raises(ValueError, match="labelled marks no row"):
        semi_supervised_batches(images, labels, 20, labelled=np.zeros(500, bool))
    with pytest.raises(ValueError, match="labelled_per_batch must be in"):
        semi_supervised_batches(images, labels, 20, labelled=mask, labelled_per_batch=20)


def _one_batch(images, labels, flags):
    return tf.data.Dataset.from_tensors(
        (tf.constant(images, "float32"), (tf.constant(labels, "int32"), tf.constant(flags, "float32")))
    )


def _ten_labelled_of_forty(digits):
    """40 training images and labels, and flags marking the first 10 labelled."""
    images, labels = digits.subset("train")
    return images[:40], labels[:40].astype(np.int32), np.r_[np.ones(10), np.zeros(30)]


@pytest.mark.slow
@pytest.mark.parametrize("pairwise_weight", [0.0, 1.0])
def test_unlabelled_rows_feed_only_the_adversarial_stream(digits, pairwise_weight):
    images, labels, flags = _ten_labelled_of_forty(digits)
    # With the pairwise term, unlabelled rows are neither its rows nor its columns.
    model = _dsh_gan(seed=1, pairwise_weight=pairwise_weight)
    # One model, its step traced once: every step starts from its initial state, the
    # weights and both optimizers' (Adam's moments, and the step count that keys the draws).
    for optimizer, variables in model.optimizer_variables():
        optimizer.build(variables)
    state = model.variables + model.optimizer.variables + model.g_optimizer.variables
    initial = [v.numpy() for v in state]

    def step(x, y):
        for variable, value in zip(state, initial):
            variable.assign(value)
        logs = model.fit(_one_batch(x, y, flags), epochs=1, verbose=0).history
        return logs, model.get_weights()

    logs, weights = step(images, labels)
    # The same step again repeats it exactly: the state is all put back.
    logs_again, weights_again = step(images, labels)
    assert logs_again == logs and all(np.array_equal(a, b) for a, b in zip(weights, weights_again))
    # Another label on an unlabelled row changes nothing at all...
    relabelled = labels.copy()
    relabelled[10:] = (relabelled[10:] + 3) % 10
    logs_b, weights_b = step(images, relabelled)
    assert logs_b == logs
    for a, b in zip(weights, weights_b):
        np.testing.assert_array_equal(a, b)
    # ...while another unlabelled image changes the discriminator's loss.
    logs_c, _ = step(np.concatenate([images[:10], 255 - images[10:]]), labels)
    assert logs_c["d_loss"] != logs["d_loss"]


@pytest.mark.slow
def test_pairwise_term_enters_the_shared_cnns_objective(digits):
    images, labels, flags = _ten_labelled_of_forty(digits)

    def logs(pairwise_weight):
        model = _dsh_gan(seed=1, pairwise_weight=pairwise_weight)
        history = model.fit(_one_batch(images, labels, flags), epochs=1, verbose=0).history
        return {key: value[0] for key, value in history.items()}

    without, with_pairwise = logs(0.0), logs(2.0)
    assert without["pairwise_loss"] == 0
    # Same initial weights and draws, logged before the update: the objective grows by
    # exactly twice the labelled rows' mean pairwise loss (the logged loss is a mean over
    # all 40 rows, with the labelled terms scaled by 40 / 10 to their mean).
    np.testing.assert_allclose(with_pairwise["loss"] - without["loss"], 2 * with_pairwise["pairwise_loss"], rtol=1e-4)
    # Near-zero codes at initialization: every pair costs about log 2, and balancing
    # weighs the mean up towards 2 log 2: the term is really there.
    assert np.log(2) < with_pairwise["pairwise_loss"] < 2 * np.log(2)
    for key in ("classification_loss", "triplet_loss", "d_loss"):
        assert with_pairwise[key] == without[key]


def _cross_entropy(logits, targets):
    """Softmax cross-entropy by hand: -sum_c t_c log softmax(logits)_c."""
    return -tf.reduce_sum(targets * (logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)), axis=-1)


@pytest.mark.slow
def test_one_steps_losses_are_their_weighted_terms_by_hand(digits, float64):
    images, labels = digits.subset("train")
    n, labelled_rows, bits, classes = 12, 8, 16, 10
    x, y = images[:n], labels[:n].astype(np.int32)
    flags = np.r_[np.ones(labelled_rows), np.zeros(n - labelled_rows)]
    # Weights that no term shares, so a dropped or swapped weight shows.
    cw, tw, aw, pw, alpha = 0.8, 1.7, 0.45, 0.6, 0.25
    model = _dsh_gan(seed=1, classification_weight=cw, triplet_weight=tw, adversarial_weight=aw,
                     pairwise_weight=pw, pairwise_alpha=alpha)
    margin = model.margin
    assert margin == bits / 4
    # The shared CNN takes a plain SGD(1) step; the generator's step (after it) moves nothing.
    model.compile(optimizer=keras.optimizers.SGD(1.0), g_optimizer=keras.optimizers.SGD(0.0))
    encoder = model.encoder
    targets = tf.one_hot(y, classes, dtype=tf.float64)
    labelled = tf.constant(flags)
    # The step's own draws (noise and classes, keyed by seed and step 0) and synthetic images.
    fakes, conditions, has_negative = model._synthesize(targets, labelled, tf.constant(0), training=True)
    fakes = tf.stop_gradient(fakes)
    rows = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    positive_targets, negative_targets = conditions[:n], conditions[n:]
    real = tf.cast(x, tf.float64)

    def heads(fakes):
        features = encoder.representation(tf.concat([real, fakes], 0), training=True)
        return model.classifier(features), tf.sigmoid(encoder.hash_head(features)), model.adversary(features)[:, 0]

    variables = model._cnn_variables()
    with tf.GradientTape() as tape:
        # The shared CNN's objective written out (docs/methods/dsh_gan.md).
        logits, h, adversary = heads(fakes)
        (class_x, class_pos, class_neg), (h_x, h_pos, h_neg) = ([t[r] for r in rows] for t in (logits, h))
        adv_x, adv_pos, adv_neg = (adversary[r] for r in rows)
        classification = (_cross_entropy(class_x, targets) + _cross_entropy(class_pos, positive_targets)
                          + has_negative * _cross_entropy(class_neg, negative_targets))
        far = tf.reduce_sum(tf.square(h_x - h_neg), -1)
        near = tf.reduce_sum(tf.square(h_x - h_pos), -1)
        triplet = has_negative * tf.maximum(0.0, margin - far + near)
        # DHN's balanced pairwise loss on 2 H - 1, against the labelled rows as columns.
        codes = 2 * h_x - 1
        columns = tf.stop_gradient(codes[:labelled_rows])
        s = (y[:, None] == y[None, :labelled_rows]).astype(np.float64)
        similar_columns = (y[:labelled_rows, None] == y[None, :labelled_rows]).sum()
        w = np.where(s > 0, labelled_rows**2 / similar_columns, 1.0)
        t = alpha * tf.matmul(codes, columns, transpose_b=True)
        pairwise = tf.reduce_mean(w * (tf.math.log1p(tf.exp(t)) - s * t), axis=1)
        # Real -> 1, synthetic -> 0: -log D(x) - (log(1 - D(x+)) + log(1 - D(x-))) / 2.
        d_loss = (-tf.math.log(tf.sigmoid(adv_x))
                  - 0.5 * (tf.math.log(1 - tf.sigmoid(adv_pos)) + tf.math.log(1 - tf.sigmoid(adv_neg))))
        supervised = cw * classification + tw * triplet + pw * pairwise
        # Labelled terms over the labelled rows, the adversarial one over every row.
        loss = tf.reduce_sum(labelled * supervised) / labelled_rows + aw * tf.reduce_mean(d_loss)
    gradients = tape.gradient(loss, variables)
    before = method_checks.snapshot(variables)

    def labelled_mean(term):
        return tf.reduce_sum(labelled * term) / labelled_rows

    # Each weighted term is at least 2% of the loss: dropping one moves it far past the tolerance.
    parts = [cw * labelled_mean(classification), tw * labelled_mean(triplet), pw * labelled_mean(pairwise),
             aw * tf.reduce_mean(d_loss)]
    assert min(float(p) for p in parts) > 0.02 * float(loss), [float(p) for p in parts]
    logs = model.fit(_one_batch(x, y, flags), epochs=1, verbose=0).history
    method_checks.assert_logs(logs, {
        "loss": loss, "classification_loss": labelled_mean(classification), "triplet_loss": labelled_mean(triplet),
        "pairwise_loss": labelled_mean(pairwise), "d_loss": tf.reduce_mean(d_loss),
    })
    method_checks.assert_sgd_step(before, variables, gradients, what="shared CNN and heads")
    # The generator's loss, logged from the updated CNN (the generator is unchanged: rate 0):
    # -log D of its images, and their classification under their conditioning labels.
    logits, _, adversary = heads(fakes)
    g_loss = aw * 0.5 * (-tf.math.log(tf.sigmoid(adversary[rows[1]])) - tf.math.log(tf.sigmoid(adversary[rows[2]]))) + cw * (
        _cross_entropy(logits[rows[1]], positive_targets) + has_negative * _cross_entropy(logits[rows[2]], negative_targets))
    method_checks.assert_logs(logs, {"g_loss": tf.reduce_mean(g_loss)})


# Training


@pytest.mark.slow
def test_fit_learns_codes_that_retrieve_with_all_and_few_labels(digits):
    images, labels = digits.subset("train")
    results = {}
    for fraction in (1.0, 0.2):
        model = _dsh_gan()
        untrained = _map(model.encoder, digits)
        model.fit(semi_supervised_batches(images, labels, 50, labelled_fraction=fraction, seed=0),
                  epochs=20, verbose=0)
        results[fraction] = _map(model.encoder, digits)
    # Measured (seed 0, 20 epochs): untrained 0.175; all labels 0.706, 20% labels 0.447.
    # The codes start collapsed (triplet loss = margin, all H alike) and separate
    # after ~10 epochs; which run gets further by epoch 20 varies with the defaults.
    assert results[1.0] > 2.5 * untrained, (untrained, results)
    assert results[0.2] > 2 * untrained, (untrained, results)


@pytest.mark.slow
def test_multi_label_rows_train_with_a_sigmoid_head(digits):
    images, labels = digits.subset("train")
    # Two labels per image: its digit, and "odd" as an eleventh class.
    multi_hot = np.eye(11, dtype=np.float32)[labels]
    multi_hot[:, 10] = labels % 2
    model = _dsh_gan(num_classes=11, multi_label=True)
    history = model.fit(pairwise_batches(images, multi_hot, 50), epochs=3, verbose=0).history
    losses = history["classification_loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    grid = model.generate(np.eye(11)[[0, 10]])
    assert grid.shape == (2, 8, 8, 1) and grid.dtype == np.uint8


@pytest.mark.slow
def test_generated_image_grid_is_written_each_epoch(digits, tmp_path):
    images, labels = digits.subset("train")
    model = _dsh_gan()
    grids = GeneratedImageGrid(str(tmp_path / "grids"), per_class=4, seed=5, label_rows=False)  # the bare pixel grid
    model.fit(pairwise_batches(images, labels, 50), epochs=2, verbose=0, callbacks=[grids])
    assert sorted(os.listdir(tmp_path / "grids")) == ["epoch_001.png", "epoch_002.png"]
    png = tf.io.decode_png(open(grids.paths[-1], "rb").read()).numpy()
    assert png.shape == (10 * 8, 4 * 8, 1)  # a row of 4 images per class
    # Row block 7 is the generator's class-7 images from the callback's fixed noise.
    noise = np.random.default_rng(5).standard_normal((40, model.noise_dim))[28:32]
    expected = model.generate(np.full(4, 7), noise=noise)
    np.testing.assert_array_equal(png[56:64], np.concatenate(list(expected), axis=1))


# Saving and bad input


@pytest.mark.slow
def test_encoder_and_harness_save_and_reload(digits, tmp_path):
    model = _dsh_gan()
    images, labels = digits.subset("train")
    model.fit(pairwise_batches(images, labels, 50), epochs=1, verbose=0)
    model.encoder.save(tmp_path / "encoder.keras")
    reloaded = keras.saving.load_model(tmp_path / "encoder.keras")
    assert isinstance(reloaded, DSHGANEncoder)
    np.testing.assert_array_equal(reloaded.encode(digits.images), model.encoder.encode(digits.images))
    model.save(tmp_path / "harness.keras")
    harness = keras.saving.load_model(tmp_path / "harness.keras", compile=False)
    assert harness.get_config() == model.get_config()
    np.testing.assert_array_equal(harness.generate(np.arange(10)), model.generate(np.arange(10)))


def test_codes_are_the_hash_heads_bits(digits):
    encoder = _dsh_gan().encoder
    x = digits.images[:20]
    probabilities = tf.sigmoid(encoder.hash_head(encoder.representation(x))).numpy()
    np.testing.assert_array_equal(np.unpackbits(encoder.encode(x), axis=1), (probabilities >= 0.5).astype(np.uint8))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes must be at least 2 .*Received: 1"):
        DSHGAN(bits=16, input_shape=(8, 8, 1), num_classes=1)
    with pytest.raises(ValueError, match=r"divisible by 4. Received: \(10, 10, 1\)"):
        DSHGAN(bits=16, input_shape=(10, 10, 1))
    model = DSHGAN(bits=16, input_shape=(8, 8, 1), num_classes=10)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\). Received: 0..10"):
        model.generate(np.arange(11))
    with pytest.raises(ValueError, match=r"labels must have shape \(None,\). Received: shape=\(2, 10\)"):
        model.generate(np.eye(10)[:2])
