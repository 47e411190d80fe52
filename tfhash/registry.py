"""The methods tfhash trains: one record each, the only table that knows their names.

A record says what a method is (kind, modalities, paper), which trainer it
builds and what batches that trainer eats, its settings and their defaults,
and what it exports and how it is scored. Everything else (the training path,
the CLI, the zoo) asks the registry; nothing else switches on a method's name.

The records are plain data, so `tfhash methods` and `import tfhash.registry`
load no TensorFlow; the trainer's module is imported when a method is used.

    >>> from tfhash import registry
    >>> "dhn" in registry.names()
    True
    >>> registry.get("dhn").resolve({"alpha": 0.25})["alpha"]
    0.25

Settings are flat: the trainer's constructor arguments (their defaults are
the constructor's own) and the training settings the record lists
(epochs, batch size, learning rates, ...). `Method.resolve` merges layers
(flags over a recipe over the defaults), refuses an unknown key naming the
known ones, and checks each value's type against its default.
"""

import dataclasses
import importlib
import json
import math

from tfhash import signatures

KINDS = ("supervised", "semi-supervised", "unsupervised")


@dataclasses.dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
        name: the registry key, e.g. "dhn".
        title: as the paper writes it, e.g. "DHN".
        kind: one of `KINDS`.
        modalities: ("image",) or ("image", "text"): the encoders it exports
            and the data it needs (image-text methods need a cross-modal protocol).
        paper: citation.
        trainer: "module:Class" of the model `fit` trains.
        plan: "module:function" that builds, compiles and feeds the trainer:
            `plan(data, *, bits, seed, strategy, model, train)` returns a
            `tfhash.models.base.TrainingPlan`.
        batches: what the trainer's `fit` takes, in words.
        train: training settings and their defaults.
        derived: constructor arguments taken from the data, not settable.
        scoring: how the exported encoders are scored.
        protocol: the protocol trained on when none is named.
        types: the type of each of its settings whose default is None
            (`margin`: float); the shared ones' are `SHARED_TYPES`.
        limits: a rule per setting beyond the shared ones (`LIMITS`):
            "positive", "non-negative", "[0, 1)" or "(0, 1]".
        tiny: the settings that shrink it to a few steps on `digits`, for
            the shared tests (tests/test_methods.py).
        meanings: one line per training setting (the trainer's own settings
            are documented in its docstring's `Args:`).
    """

    name: str
    title: str
    kind: str
    modalities: tuple
    paper: str
    trainer: str
    plan: str
    batches: str
    train: dict
    derived: tuple = ()
    scoring: str = "mAP@all, image queries against the image database"
    protocol: str = "fashion_mnist"
    types: dict = dataclasses.field(default_factory=dict)
    limits: dict = dataclasses.field(default_factory=dict)
    tiny: dict = dataclasses.field(default_factory=dict)
    meanings: dict = dataclasses.field(default_factory=dict)

    @property
    def cross_modal(self):
        return "text" in self.modalities

    def trainer_class(self):
        return _resolve(self.trainer)

    def plan_function(self):
        return _resolve(self.plan)

    def _model_settings(self):
        """{argument: (default, meaning)} of the trainer's constructor along its
        class hierarchy, read from source (`tfhash.signatures`: no TensorFlow),
        less bits, seed and `derived`."""
        skip = {"bits", "seed", *self.derived}
        return {k: v for k, v in signatures.settings(self.trainer).items() if k not in skip}

    def model_defaults(self):
        """The trainer's constructor arguments and defaults, less bits, seed and `derived`."""
        return {name: default for name, (default, _) in self._model_settings().items()}

    def defaults(self):
        """Every setting and its default: the trainer's, then the training settings."""
        return {**self.model_defaults(), **self.train}

    def describe(self):
        """{setting: (default, one-line meaning)}: the trainer's from its
        docstring, the training settings' from `meanings` and `TRAINING_MEANINGS`."""
        return {**self._model_settings(),
                **{key: (value, self.meanings.get(key) or TRAINING_MEANINGS.get(key, "")) for key, value in
                   self.train.items()}}

    def type_of(self, key):
        """The type a setting whose default is None takes (None when it has no such rule)."""
        return self.types.get(key) or SHARED_TYPES.get(key)

    def limit_of(self, key):
        """The rule a numeric setting's value must meet (`LIMITS`)."""
        if key in self.limits:
            return self.limits[key]
        if key in LIMITS:
            return LIMITS[key]
        return "positive" if key.endswith(POSITIVE_SUFFIXES) else "non-negative"

    def resolve(self, *layers):
        """Merges settings, first layer first (flags, then a recipe's), over the
        defaults; returns the full flat dict.

        Raises:
            ValueError: a key the method does not have (naming the known ones),
                or a value of the wrong type.
        """
        defaults = self.defaults()
        settings = dict(defaults)
        for layer in reversed([layer or {} for layer in layers]):
            unknown = sorted(set(layer) - set(defaults))
            if unknown:
                raise ValueError(
                    f"Unknown setting{'s' if len(unknown) > 1 else ''} {unknown} for method {self.name!r}. "
                    f"Expected one of: {sorted(defaults)}"
                )
            settings.update({key: _checked(self, key, value, defaults[key]) for key, value in layer.items()})
        return settings

    def split(self, settings):
        """(constructor arguments, training settings) of a resolved settings dict."""
        return (
            {key: value for key, value in settings.items() if key not in self.train},
            {key: value for key, value in settings.items() if key in self.train},
        )


def _resolve(path):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


# What every method shares: the trunk's settings whose default is None, the
# rules of shared settings, and the meanings of the training settings. A
# method's own rules live in its record.
SHARED_TYPES = {"backbone_weights": str, "backbone_input_size": int, "epochs": int}
# Counts, sizes, rates and epochs must be above zero; loss weights may be zero;
# nothing may be negative. Dropout 1 drops every unit (no gradient reaches the trunk).
POSITIVE_SUFFIXES = ("learning_rate", "epochs", "_units", "_dims", "batch_size", "input_size")
LIMITS = {"dropout": "[0, 1)"}
_RULES = {
    "positive": lambda v: v > 0,
    "non-negative": lambda v: v >= 0,
    "[0, 1)": lambda v: 0 <= v < 1,
    "(0, 1]": lambda v: 0 < v <= 1,
}
TRAINING_MEANINGS = {
    "epochs": "passes over the training split",
    "batch_size": "global batch size (all replicas together)",
    "learning_rate": "Adam's learning rate of the hashing network",
}


def _checked(method, key, value, default):
    """`value` if its type fits `default`'s (ints pass for floats) and it meets the setting's rule."""
    if value is None and default is None:
        return value
    like = f"like its default {default!r}" if default is not None else "or None"
    if default is None:
        default = (method.type_of(key) or type(value))()
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        expected = list
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(
            f"Setting {key!r} of method {method.name!r} must be {expected.__name__} {like}. "
            f"Received: {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Setting {key!r} of method {method.name!r} must be finite. Received: {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rule = method.limit_of(key)
        if not _RULES[rule](value):
            meets = rule if rule in ("positive", "non-negative") else f"in {rule}"
            raise ValueError(f"Setting {key!r} of method {method.name!r} must be {meets}. Received: {value!r}")
    return value


def parse_value(text):
    """A setting from the command line: JSON if it parses (0.25, true, [2, 5]), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False}.get(text, text)


METHODS = {
    method.name: method
    for method in (
        Method(
            name="dhn",
            title="DHN",
            kind="supervised",
            modalities=("image",),
            paper="Zhu, Long, Wang, Cao. Deep Hashing Network for Efficient Similarity Retrieval. AAAI 2016",
            trainer="tfhash.models.dhn:DHN",
            plan="tfhash.models.dhn:training_plan",
            batches="pairwise_batches: (images, class ids or multi-hot labels)",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape",),
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="dpsh",
            title="DPSH",
            kind="supervised",
            modalities=("image",),
            paper="Li, Wang, Kang. Feature Learning based Deep Supervised Hashing with Pairwise Labels. IJCAI 2016",
            trainer="tfhash.models.dpsh:DPSH",
            plan="tfhash.models.dpsh:training_plan",
            batches="batches of images, labels and index (the row, for the code memory)",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_train", "label_shape"),
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="dsh",
            title="DSH",
            kind="supervised",
            modalities=("image",),
            paper="Liu, Wang, Shan, Chen. Deep Supervised Hashing for Fast Image Retrieval. CVPR 2016",
            trainer="tfhash.models.dsh:DSH",
            plan="tfhash.models.dsh:training_plan",
            batches="batches of images, labels and index (the row, for the code memory)",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_train", "label_shape"),
            types={"margin": float},
            limits={"margin": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="dch",
            title="DCH",
            kind="supervised",
            modalities=("image",),
            paper="Cao, Long, Liu, Wang. Deep Cauchy Hashing for Hamming Space Retrieval. CVPR 2018",
            trainer="tfhash.models.dch:DCH",
            plan="tfhash.models.dch:training_plan",
            batches="batches of images and labels (class ids or multi-hot)",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape",),
            types={"max_cosine": float},
            limits={"gamma": "positive", "max_cosine": "(0, 1]"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="idhn",
            title="IDHN",
            kind="supervised",
            modalities=("image",),
            paper="Zhang, Zou, Lin, Chen, Wang. Improved Deep Hashing With Soft Pairwise Similarity for Multi-Label "
            "Image Retrieval. IEEE TMM 2019",
            trainer="tfhash.models.idhn:IDHN",
            plan="tfhash.models.idhn:training_plan",
            batches="batches of images, labels (class ids or multi-hot) and index (the row, for the code memory)",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_train", "label_shape"),
            limits={"beta": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="hashnet",
            title="HashNet",
            kind="supervised",
            modalities=("image",),
            paper="Cao, Long, Wang, Yu. HashNet: Deep Learning to Hash by Continuation. ICCV 2017",
            trainer="tfhash.models.hashnet:HashNet",
            plan="tfhash.models.hashnet:training_plan",
            batches="batches of images and labels (class ids or multi-hot); beta raised by a BetaSchedule callback",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape",),
            types={"alpha": float},
            limits={"alpha": "positive", "beta": "positive", "continuation_every": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="dtsh",
            title="DTSH",
            kind="supervised",
            modalities=("image",),
            paper="Wang, Shi, Kitani. Deep Supervised Hashing with Triplet Labels. ACCV 2016",
            trainer="tfhash.models.dtsh:DTSH",
            plan="tfhash.models.dtsh:training_plan",
            batches="batches of images and labels (class ids or multi-hot): the batch's triplets by shared labels",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape",),
            types={"margin": float},
            limits={"theta_scale": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="csq",
            title="CSQ",
            kind="supervised",
            modalities=("image",),
            paper="Yuan, Wang, Zhang, Tay, Jie, Liu, Feng. Central Similarity Quantization for Efficient "
            "Image and Video Retrieval. CVPR 2020",
            trainer="tfhash.models.csq:CSQ",
            plan="tfhash.models.csq:training_plan",
            batches="batches of images and labels (class ids or multi-hot): each item against its hash center",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_classes"),
            limits={"center_tries": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="greedyhash",
            title="GreedyHash",
            kind="supervised",
            modalities=("image",),
            paper="Su, Zhang, Han, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
            "NeurIPS 2018",
            trainer="tfhash.models.greedyhash:GreedyHash",
            plan="tfhash.models.greedyhash:training_plan",
            batches="batches of images and labels (class ids or multi-hot rows)",
            # The authors' SGD (momentum 0.9, weight decay 5e-4) is not the default: the project's common schedule.
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_classes"),
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="orthohash",
            title="OrthoHash",
            kind="supervised",
            modalities=("image",),
            paper="Hoe, Ng, Zhang, Chan, Song, Xiang. One Loss for All: Deep Hashing with a Single Cosine "
            "Similarity based Learning Objective. NeurIPS 2021",
            trainer="tfhash.models.orthohash:OrthoHash",
            plan="tfhash.models.orthohash:training_plan",
            batches="batches of images and labels (class ids or multi-hot rows)",
            # Adam as the authors' (their 1e-4 is for a pretrained AlexNet): the project's common schedule.
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_classes"),
            types={"scale": float},
            limits={"scale": "positive"},
            tiny={"epochs": 1, "batch_size": 64},
        ),
        Method(
            name="dsdh",
            title="DSDH",
            kind="supervised",
            modalities=("image",),
            paper="Li, Sun, He, Tan. Deep Supervised Discrete Hashing. NeurIPS 2017",
            trainer="tfhash.models.dsdh:DSDH",
            plan="tfhash.models.dsdh:training_plan",
            batches="batches of images, labels and index (the row, for U and the discrete codes B); B and W "
            "updated at each epoch's end",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3},
            derived=("input_shape", "num_train", "label_shape", "num_classes"),
            limits={"mu": "positive", "dcc_iterations": "positive"},
            # Two epochs: the second trains against the B and W the first epoch's end solved.
            tiny={"epochs": 2, "batch_size": 64},
        ),
        Method(
            name="dsh_gan",
            title="DSH-GAN",
            kind="semi-supervised",
            modalities=("image",),
            paper="Qiu, Pan, Yao, Mei. Deep Semantic Hashing with Generative Adversarial Networks. SIGIR 2017",
            trainer="tfhash.models.dsh_gan:DSHGAN",
            plan="tfhash.models.dsh_gan:training_plan",
            batches="semi_supervised_batches: (images, (labels, labelled flags))",
            train={"epochs": 30, "batch_size": 128, "learning_rate": 1e-3, "g_learning_rate": 2e-4,
                   "labelled_fraction": 1.0},
            derived=("input_shape", "num_classes", "multi_label"),
            types={"margin": float},
            limits={"noise_dim": "positive", "labelled_fraction": "(0, 1]"},
            meanings={"g_learning_rate": "Adam's learning rate of the generator",
                      "labelled_fraction": "share of each class's training images that keep their label"},
            # Half the labels: the semi-supervised path (unlabelled rows) runs too.
            tiny={"epochs": 1, "batch_size": 64, "labelled_fraction": 0.5},
        ),
        Method(
            name="bgan",
            title="BGAN",
            kind="unsupervised",
            modalities=("image",),
            paper="Song, He, Gao, Xu, Hanjalic, Shen. Binary Generative Adversarial Networks for Image Retrieval. "
            "AAAI 2018",
            trainer="tfhash.models.bgan:BGAN",
            plan="tfhash.models.bgan:training_plan",
            batches="neighbour_batches: (images, (ids, neighbour lists)); no labels",
            train={"epochs": 10, "batch_size": 128, "learning_rate": 1e-3, "d_learning_rate": 1e-4,
                   "betas": [2, 5, 10, 15, 20], "k1": 20, "k2": 30,
                   # The space S is built in: "pixels" (PCA) or an ImageNet trunk's name.
                   "features": "pixels", "feature_input_size": None},
            derived=("input_shape",),
            types={"feature_input_size": int},
            limits={"k1": "positive", "k2": "positive"},
            meanings={"d_learning_rate": "Adam's learning rate of the discriminator",
                      "betas": "the annealed sign's beta, raised through these values over training",
                      "k1": "neighbours that define each image's neighbourhood in the space S",
                      "k2": "neighbours compared to decide that two images are neighbours",
                      "features": "the space S: \"pixels\" (PCA) or an ImageNet trunk's name",
                      "feature_input_size": "the side S's ImageNet trunk sees"},
            tiny={"epochs": 1, "batch_size": 64, "k1": 5, "k2": 5, "betas": [2]},
        ),
        Method(
            name="ssah",
            title="SSAH",
            kind="supervised",
            modalities=("image", "text"),
            paper="Li, Deng, Li, Liu, Gao, Tao. Self-Supervised Adversarial Hashing Networks for Cross-Modal "
            "Retrieval. CVPR 2018",
            trainer="tfhash.models.ssah:SSAH",
            plan="tfhash.models.ssah:training_plan",
            batches="cross_modal_batches: {images, texts, labels, index}",
            # epochs None: three rounds of label_epochs + image_epochs + text_epochs.
            train={"epochs": None, "batch_size": 64, "image_learning_rate": 10**-4.5,
                   "text_learning_rate": 10**-3.5},
            derived=("input_shape", "num_labels", "vocabulary_size", "num_train"),
            scoring="mAP@all image->text and text->image (query one modality, database the other)",
            protocol="open_clip_art",
            limits={"decay": "positive"},
            meanings={"epochs": "epochs in all (default: three rounds of label, image and text epochs)",
                      "image_learning_rate": "learning rate of the image network",
                      "text_learning_rate": "learning rate of the text network"},
            tiny={"epochs": 3, "label_epochs": 1, "image_epochs": 1, "text_epochs": 1, "batch_size": 64,
                  "hidden_units": 64, "feature_units": 32, "discriminator_units": 16},
        ),
        Method(
            name="ugach",
            title="UGACH",
            kind="unsupervised",
            modalities=("image", "text"),
            paper="Zhang, Peng, Yuan. Unsupervised Generative Adversarial Cross-Modal Hashing. AAAI 2018",
            trainer="tfhash.models.ugach:UGACH",
            plan="tfhash.models.ugach:training_plan",
            batches="graph_batches: {images, texts, ids, neighbours, positive_images, positive_texts}; no labels",
            train={"epochs": 30, "pretrain_epochs": 10, "batch_size": 256, "learning_rate": 1e-3,
                   "g_learning_rate": 1e-4, "k": 5},
            derived=("input_shape", "vocabulary_size", "pretrain_steps"),
            scoring="mAP@all image->text and text->image (query one modality, database the other)",
            protocol="open_clip_art",
            types={"margin": float, "feature_input_size": int},
            limits={"k": "positive", "pretrain_epochs": "non-negative"},
            meanings={"pretrain_epochs": "epochs on the correlation graph alone, before the generator picks",
                      "g_learning_rate": "Adam's learning rate of the generator",
                      "k": "nearest neighbours per modality in the correlation graph"},
            # Two epochs, one of pre-training: the generator's picks run in the second.
            tiny={"epochs": 2, "pretrain_epochs": 1, "batch_size": 64, "feature_dims": 16, "hidden_units": 32,
                  "k": 3},
        ),
    )
}


def names():
    """The registered method names, sorted."""
    return sorted(METHODS)


def get(name):
    """The record of method `name`."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Expected one of: {names()}")
    return METHODS[name]


def markdown_table():
    """The README's methods table, one row per method in the registry's order
    (`bench/tables.py` writes it into README.md; a test checks it is there)."""
    rows = ["| method | kind | modalities | paper | details |", "|---|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.kind} | {' + '.join(m.modalities)} | {m.paper} | "
             f"[docs/methods/{m.name}.md](docs/methods/{m.name}.md) |" for m in METHODS.values()]
    return rows


def table():
    """One row per method, for `tfhash methods`."""
    return [
        {"method": m.name, "title": m.title, "kind": m.kind, "modalities": "+".join(m.modalities), "paper": m.paper}
        for m in (METHODS[name] for name in names())
    ]
