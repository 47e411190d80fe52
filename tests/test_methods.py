"""The shared checks (`method_checks`) applied to every method of the registry,
each in its published 32-bit configuration shrunk to a few steps on digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import method_checks
from method_checks import float64  # noqa: F401  (a fixture)
from tfhash import recipes, registry, training

# Sizes only (each record's `tiny`): each method keeps its published recipe's other settings.
TINY = {method: registry.get(method).tiny for method in registry.names()}


def _published(method):
    """The method's published 32-bit recipe, if it has one (a method is tested before it is published)."""
    return next((r for r in map(recipes.published, recipes.published_names())
                 if r["method"] == method and r["bits"] == 32), None)


@pytest.fixture(scope="session")
def data_for(digits_data, digits_cross_modal):
    few = {False: method_checks.few_steps(digits_data), True: method_checks.few_steps(digits_cross_modal)}
    return lambda method: few[registry.get(method).cross_modal]


def _inputs(data, modality, n=20):
    return data.images[:n] if modality == "image" else data.texts[:n]


@pytest.mark.parametrize("method", registry.names())
def test_every_method_has_a_tiny_configuration_of_its_own_settings(method):
    record = registry.get(method)
    assert record.tiny and set(record.tiny) <= set(record.defaults())
    record.resolve(record.tiny)  # each value passes the setting's type and rule



@pytest.mark.parametrize("method", registry.names())
def test_a_misspelt_setting_fails_naming_the_known_ones(method):
    known = sorted(registry.get(method).defaults())
    with pytest.raises(ValueError, match=r"Unknown setting \['epochz'\] for method .*Expected one of: ") as error:
        training.resolve(method, epochz=1)
    assert str(known) in str(error.value)
    with pytest.raises(ValueError, match=r"Setting 'epochs' .* must be int .* Received: 'ten'"):
        training.resolve(method, epochs="ten")


@pytest.fixture(scope="module")
def trained(data_for, tmp_path_factory):
    """One tiny run per method through the training path, written as a run directory."""
    runs = {}

    def get(method):
        if method not in runs:
            run_dir = tmp_path_factory.mktemp(method)
            result = method_checks.train_tiny(method, data_for(method), recipe=_published(method),
                                              output_dir=str(run_dir), **TINY[method])
            runs[method] = result, run_dir
        return runs[method]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_run_directory_holds_every_encoder_and_the_recipe(method, trained, data_for):
    result, run_dir = trained(method)
    record = training.read_run(str(run_dir))
    assert record["recipe"]["method"] == method and record["recipe"]["settings"]["epochs"] == TINY[method]["epochs"]
    assert set(result.encoders) == set(registry.get(method).modalities)
    for modality, encoder in result.encoders.items():
        loaded = training.load_model(str(run_dir), modality)
        inputs = _inputs(data_for(method), modality)
        np.testing.assert_array_equal(loaded.encode(inputs), encoder.encode(inputs))


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_save_and_reload_give_identical_codes(method, trained, data_for, tmp_path):
    result, _ = trained(method)
    for modality, encoder in result.encoders.items():
        method_checks.run_saving_test(encoder, _inputs(data_for(method), modality), str(tmp_path / f"{modality}.keras"))


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_config_round_trip(method, trained):
    result, _ = trained(method)
    for model in (result.model, *result.encoders.values()):
        method_checks.run_config_round_trip(model)


@pytest.mark.slow
@pytest.mark.parametrize("method", registry.names())
def test_export_contract(method, trained, data_for, tmp_path):
    result, _ = trained(method)
    for modality, encoder in result.encoders.items():
        method_checks.run_export_test(encoder, _inputs(data_for(method), modality), tmp_path / modality)


# Every method's published configuration, and the options that change how a
# step is distributed (unbalanced pairs; the generator's synchronized batch norm
# and DSH-GAN's pairwise term, whose columns are the global batch's labelled rows).
STRATEGY_CASES = [(method, {}) for method in registry.names()] + [
    ("dhn", {"balanced": False}),
    ("dsh_gan", {"generator_batch_norm": True, "pairwise_weight": 1.0}),  # both in one run: each costs ~10 s
]


@pytest.mark.slow
@pytest.mark.parametrize("method, options", STRATEGY_CASES, ids=lambda case: str(case))
def test_mirrored_strategy_takes_one_devices_steps(method, options, data_for, mirrored, float64):
    # The published optimizers (Adam) and settings, at a few steps' size.
    settings = dict(TINY[method], recipe=_published(method), **options)
    method_checks.run_strategy_invariance(method, data_for(method), tf.distribute.OneDeviceStrategy("/cpu:0"),
                                          mirrored, settings)


IMAGE_TRAINERS = [m for m in registry.names() if "freeze_backbone" in registry.get(m).defaults()]


def test_every_image_method_takes_the_trunk_settings_or_reads_fixed_features():
    # A method without a trunk (UGACH) reads fixed features (PixelPCA or a frozen trunk's), named by `features`.
    assert IMAGE_TRAINERS
    for method in set(registry.names()) - set(IMAGE_TRAINERS):
        assert "features" in registry.get(method).defaults(), method


def trunk_path(method):
    """The classes whose `call`, `build` and `train_step` a method's trainer runs: the code between
    its trunk and its optimizer. Pairwise-family members that keep the family's three differ only in
    their loss terms, which never see the trunk's weights."""
    trainer = registry.get(method).trainer_class()
    return tuple(next(k for k in trainer.__mro__ if name in vars(k)).__qualname__
                 for name in ("call", "build", "train_step"))


# One method per trunk path, the first by name: 8 trainings stand for the 14 image trainers.
TRUNK_CASES = []
for _method in IMAGE_TRAINERS:
    if trunk_path(_method) not in map(trunk_path, TRUNK_CASES):
        TRUNK_CASES.append(_method)


def test_each_trunk_path_is_checked_by_one_of_its_methods():
    # dch stands for dhn, dpsh, dsdh, dsh, dtsh and idhn: the family's call, build and train_step.
    assert {trunk_path(m) for m in TRUNK_CASES} == {trunk_path(m) for m in IMAGE_TRAINERS}
    assert trunk_path("dhn") == trunk_path("dch") == ("PairwiseHashModel",) * 3
    assert trunk_path("hashnet") != trunk_path("dch") and "hashnet" in TRUNK_CASES


@pytest.mark.slow
@pytest.mark.parametrize("method", TRUNK_CASES)
def test_a_frozen_efficientnet_lite_trunk_at_a_stated_size(method, data_for, tmp_path):
    # Random weights keep it fast; "imagenet" takes the same path (tests/test_efficientnet_lite.py).
    settings = dict(TINY[method], backbone="EfficientNetLite0", backbone_weights=None, freeze_backbone=True,
                    backbone_input_size=32)
    result = method_checks.train_tiny(method, data_for(method), output_dir=str(tmp_path), **settings)
    encoder = result.encoders["image"]
    trunk = encoder.backbone.trunk
    assert trunk.input_shape[1:] == (32, 32, 3) and not trunk.trainable
    trained = {id(v) for v in result.model.trainable_variables}
    assert trunk.weights and not any(id(w) in trained for w in trunk.weights)
    reloaded = training.load_model(str(tmp_path))
    assert reloaded.get_config()["freeze_backbone"] and reloaded.get_config()["backbone_input_size"] == 32
    images = data_for(method).images[:8]
    np.testing.assert_array_equal(reloaded.encode(images), encoder.encode(images))


def test_the_readme_methods_table_is_the_registry():
    """README.md holds `registry.markdown_table()` (every registered method, in the
    registry's order, with its record's kind, modalities and paper), each page existing."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines = (root / "README.md").read_text().splitlines()
    table = registry.markdown_table()
    start = lines.index(table[0])
    assert lines[start: start + len(table)] == table and not lines[start + len(table)].startswith("|")
    assert all((root / "docs" / "methods" / f"{name}.md").is_file() for name in registry.names())


@pytest.mark.parametrize("method", registry.names())
def test_every_setting_says_what_it_means(method):
    """`tfhash methods NAME` shows a one-line meaning per setting: the trainer's docstring
    (`Args:`) or the record documents each one."""
    assert [key for key, (_, meaning) in registry.get(method).describe().items() if not meaning] == []

def _tiny_plan(method, data, **settings):
    """The method's `TrainingPlan` (a built, compiled, untrained trainer) at its tiny size, as
    `tfhash.training.train` makes it, without fitting."""
    from tfhash.distribute import get_strategy

    record = registry.get(method)
    model, train = record.split(record.resolve({**TINY[method], **settings}))
    return record.plan_function()(data, bits=16, seed=0, strategy=get_strategy("one_device"), model=model, train=train)


# The methods that train in phases, their tiny phase settings and the shortest run that trains every phase:
# SSAH's round (label + image + text epochs, one network at a time), UGACH's pre-training epochs plus one
# (the generator's first), BGAN's betas (an epoch each at least).
PHASED = {"ssah": ({"label_epochs": 1, "image_epochs": 1, "text_epochs": 1}, 3),
          "ugach": ({"pretrain_epochs": 1}, 2),
          "bgan": ({"betas": [2, 5, 10]}, 3)}


@pytest.mark.parametrize("method", sorted(PHASED))
def test_a_run_shorter_than_a_methods_phases_warns_naming_the_minimum(method, data_for):
    """`tfhash train --method ssah --epochs 1` (issue 29) trained the label network only and said
    nothing: a run that leaves a phase out warns in one line, naming the epochs it needs; a run of
    that many does not. SSAH warns from `fit` (Python users too); UGACH and BGAN from their plans."""
    phases, minimum = PHASED[method]
    data = data_for(method)
    short = dict(phases, epochs=minimum - 1)
    with pytest.warns(UserWarning, match=rf"^{method.upper()}: epochs={minimum - 1} .*Train at least {minimum} epochs"):
        plan = _tiny_plan(method, data, **short)
        if method == "ssah":
            plan.model.fit(plan.batches, epochs=plan.epochs, verbose=0, shuffle=False)
    if method == "ssah":
        # With 1 + 1 + 1 epochs, 2 leave the text encoder untrained, 1 the image one too; 3 is a round.
        assert "the text encoder is never trained" in plan.model.short_run(2)
        assert "the image and text encoders are never trained" in plan.model.short_run(1)
        assert plan.model.short_run(minimum) is None
    else:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _tiny_plan(method, data, **dict(phases, epochs=minimum))
        assert not [w for w in caught if "Train at least" in str(w.message)]


@pytest.mark.parametrize("method", registry.names())
def test_every_trainer_encodes_as_its_image_encoder(method, data_for):
    """`trainer.encode(images)` (issue 29: BGAN's had none) is its image encoder's `encode`, and
    `encode_real` its `encode_real`, for every registered method: a built, untrained trainer."""
    data = data_for(method)
    trainer = _tiny_plan(method, data).model
    encoder, images = trainer.encoders()["image"], data.images[:20]
    codes = trainer.encode(images)
    assert codes.dtype == np.uint8 and codes.shape == (20, 2)
    np.testing.assert_array_equal(codes, encoder.encode(images))
    np.testing.assert_array_equal(trainer.encode_real(images, batch_size=8), encoder.encode_real(images))
