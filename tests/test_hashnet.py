"""HashNet on scikit-learn digits: its weighted loss by hand, its continuation, that it learns.
The shared checks (run directory, config, saving, export, N replicas = one device,
an ImageNet trunk) run for it from the registry (tests/test_methods.py)."""

import keras
import numpy as np
import pytest

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import metrics, training
from tfhash.callbacks import BetaSchedule
from tfhash.data import load_protocol
from tfhash.models.hashnet import HashNet

# log(1 + e^-1): the pair loss log(1 + e^T) - s T at T = 1, s = 1 and at T = -1, s = 0.
LOG1P_EXP_MINUS_1 = 0.31326168751822286


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


def _three_items():
    # K = 8, h1 = h2 = 0.5 * ones, h3 = -h1: <h_i, h_j> = +2 within {1, 2} (and each with itself), -2
    # against h3. With alpha = 0.5 every pair has alpha <h_i, h_j> = +-1.
    half = np.full(8, 0.5)
    return keras.ops.convert_to_tensor(np.stack([half, half, -half]))


def test_three_items_weighted_loss_by_hand(float64):
    # Labels 0, 0, 1: of the 9 pairs (self pairs included) 5 are similar ({1,2} x {1,2} and (3,3)) and
    # 4 dissimilar, so w = 9/5 on similar pairs and 9/4 on dissimilar ones. Every similar pair sits at
    # Theta = 1 and every dissimilar one at Theta = -1: each costs L = log(1 + e^-1).
    # Row 1 (and 2): two similar pairs and one dissimilar: L (9/5 + 9/5 + 9/4) / 3 = 1.95 L.
    # Row 3: two dissimilar and one similar: L (9/4 + 9/4 + 9/5) / 3 = 2.1 L.
    # Their mean is 2 L: each class of pairs weighs as much as all pairs (5 * 9/5 + 4 * 9/4 = 2 * 9).
    model = HashNet(bits=8, input_shape=(8, 8, 1), alpha=0.5)
    codes, labels = _three_items(), keras.ops.convert_to_tensor(np.array([0.0, 0.0, 1.0]))
    terms = model.loss_terms(codes, labels, codes, labels, {})
    np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), np.array([1.95, 1.95, 2.1]) * LOG1P_EXP_MINUS_1,
                               rtol=1e-12)


def test_multi_label_similar_pairs_are_weighed_by_their_label_overlap(float64):
    # y1 = {a, b}, y2 = {a}, y3 = {c}: the same similar pairs as above, so the same 9/5 and 9/4; the
    # pair (1, 2) shares one label of two: c = 1/2. Row 1: L (9/5 * 1 + 9/5 * 1/2 + 9/4) / 3 = 1.65 L,
    # row 2 the same, row 3 (no overlap below 1) 2.1 L. Without the overlap: 1.95, 1.95, 2.1 as above.
    codes = _three_items()
    labels = keras.ops.convert_to_tensor(np.array([[1.0, 1, 0], [1, 0, 0], [0, 0, 1]]))
    paper = HashNet(bits=8, input_shape=(8, 8, 1), alpha=0.5)
    plain = HashNet(bits=8, input_shape=(8, 8, 1), alpha=0.5, label_overlap=False)
    for model, expected in ((paper, [1.65, 1.65, 2.1]), (plain, [1.95, 1.95, 2.1])):
        terms = model.loss_terms(codes, labels, codes, labels, {})
        np.testing.assert_allclose(np.asarray(terms["likelihood_loss"]), np.array(expected) * LOG1P_EXP_MINUS_1,
                                   rtol=1e-12)


def test_alpha_none_is_ten_over_the_bits():
    assert HashNet(bits=16, input_shape=(8, 8, 1)).sigmoid_scale == 10 / 16
    with pytest.raises(ValueError, match=r"alpha must be positive .* Received: alpha=-1"):
        HashNet(bits=16, input_shape=(8, 8, 1), alpha=-1)


def test_the_continuation_raises_beta_inside_the_compiled_step_and_the_codes_follow(digits):
    # every = 2 steps, gamma = 0.5, power 0.5: beta = sqrt(1 + 0.5 * t') with t' = 2 * ((step + 1) // 2).
    # 5 steps of batch 20: the last step (step 4) reads t' = 4, beta = sqrt(3). The authors' schedule
    # at its own settings is 1, then sqrt(2) from its 200th iteration.
    keras.utils.set_random_seed(0)
    model = HashNet(bits=16, input_shape=(8, 8, 1), continuation_gamma=0.5, continuation_every=2)
    assert [model.beta_of(0, s) for s in range(5)] == [1.0, np.sqrt(2), np.sqrt(2), np.sqrt(3), np.sqrt(3)]
    default = HashNet(bits=16, input_shape=(8, 8, 1))
    assert [default.beta_of(0, s) for s in (0, 198, 199)] == [1.0, 1.0, np.sqrt(2)]
    model.compile(optimizer="adam")
    images, labels = digits.subset("train")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(model.continuation.beta.numpy()))

    history = model.fit(images[:100], labels[:100], batch_size=20, epochs=1, verbose=0,
                        callbacks=[model.beta_schedule(), Spy()])
    np.testing.assert_allclose(seen, [1.0, np.sqrt(2), np.sqrt(2), np.sqrt(3), np.sqrt(3)], rtol=1e-6)
    assert history.history["beta"] == [pytest.approx(np.sqrt(3))]
    # The codes are tanh(beta z) of the linear units at the beta reached.
    z = model.hash_layer(model.backbone(images[:10]))
    np.testing.assert_allclose(model(images[:10]), np.tanh(np.sqrt(3) * np.asarray(z)), rtol=1e-5, atol=1e-6)
    # beta is a non-trainable variable, saved with the model.
    assert not model.continuation.beta.trainable


def test_the_plan_adds_the_beta_schedule_and_no_continuation_means_none(digits):
    from tfhash import registry
    from tfhash.distribute import get_strategy

    record = registry.get("hashnet")
    model_settings, train = record.split(record.resolve({"epochs": 1, "batch_size": 64}))
    plan = record.plan_function()(digits, bits=16, seed=0, strategy=get_strategy("one_device"),
                                  model=model_settings, train=train)
    assert [type(c) for c in plan.callbacks] == [BetaSchedule]
    assert HashNet(bits=16, input_shape=(8, 8, 1), activation="sign").beta_schedule() is None


@pytest.mark.slow
def test_training_learns_codes_that_retrieve_by_label(digits, tmp_path):
    keras.utils.set_random_seed(0)
    untrained = HashNet(bits=16, input_shape=(8, 8, 1))
    (xq, yq), (xd, yd) = digits.subset("query"), digits.subset("database")
    before = metrics.mean_average_precision(untrained.encode(xq), untrained.encode(xd), yq, yd)
    # The digits split is a few hundred steps: beta raised every 20 steps (the default's 200 would not move).
    result = training.train("hashnet", data=digits, bits=16, seed=0, epochs=8, batch_size=50, continuation_every=20,
                            output_dir=str(tmp_path), verbose=0)
    after = result.scores["image"]["map"]
    # 10 balanced classes: random codes score about 0.1; training must at least double the
    # untrained encoder's mAP@all on held-out queries.
    assert after > 2 * before and after > 0.4, (before, after)
    # The plan's schedule ran: the last step's beta, sqrt(1 + 0.005 t), t the steps rounded down to 20.
    steps = 8 * -(-len(digits.subset("train")[0]) // 50)
    assert result.history["beta"][-1] == pytest.approx(np.sqrt(1 + 0.005 * (20 * (steps // 20))))
    encoder = training.load_model(str(tmp_path))
    assert abs(method_checks.map_by_hand(encoder.encode(xq), encoder.encode(xd), yq, yd) - after) < 1e-9
