"""Keras callbacks: training-time schedules, checkpoint selection, generator previews."""

import bisect
import os

import keras
import numpy as np
import tensorflow as tf

from tfhash.io import write_bytes


class TrainingDiverged(ArithmeticError):
    """A loss became NaN or infinite: the run is stopped and nothing is saved."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises `TrainingDiverged` at the first batch whose logged losses are not
    finite, naming the loss, epoch and step. Unlike Keras's `TerminateOnNaN`,
    which ends `fit` normally, this stops the caller too, so a diverged model
    is never saved, exported or scored."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                raise TrainingDiverged(
                    f"Training diverged: {name} = {float(np.asarray(value).mean())} at epoch {self.epoch + 1}, "
                    f"step {batch + 1}. Expected finite losses; try a lower learning rate. Nothing was saved."
                )


class BetaSchedule(keras.callbacks.Callback):
    """Drives the beta of `AnnealedSign` layers on a schedule, and logs it.

    Beta is set before every training batch from `schedule(epoch, step)`, so it
    really changes inside the compiled train step (the BGAN reference code
    defines betas 2, 5, 10, 15, 20 but never advances its index, so it trains
    with plain tanh). The value in use is logged as "beta" each epoch.

    Args:
        schedule: a callable `(epoch, step) -> beta`, where `step` counts
            training batches from 0 across epochs; or use the constructors
            `BetaSchedule.steps` and `BetaSchedule.continuous`.
        layers: the `AnnealedSign` layers to drive; default: every one in the model.

    Examples:
    >>> model.fit(data, epochs=25, callbacks=[BetaSchedule.steps([2, 5, 10, 15, 20], every=5)])
    >>> BetaSchedule.continuous(start=1.0, rate=1.1)  # beta = 1.0 * 1.1 ** epoch
    """

    def __init__(self, schedule, layers=None):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"schedule must be callable (epoch, step) -> beta. Received: {schedule!r}")
        self.schedule = schedule
        self.layers = layers
        self.step = 0
        self.epoch = 0

    @classmethod
    def steps(cls, values, every=1, layers=None):
        """Piecewise constant: `values[i]` from epoch `i * every` on (the paper's list)."""
        values = [float(v) for v in values]
        if not values or min(values) <= 0 or not isinstance(every, int) or every < 1:
            raise ValueError(
                "steps needs positive betas and a positive int `every`. "
                f"Received: values={values}, every={every!r}"
            )
        boundaries = [every * i for i in range(1, len(values))]
        return cls(lambda epoch, step: values[bisect.bisect_right(boundaries, epoch)], layers)

    @classmethod
    def continuous(cls, start=1.0, rate=1.05, per="epoch", maximum=None, layers=None):
        """Geometric growth: beta = start * rate ** t, t the epoch or the step, capped at `maximum`."""
        if start <= 0 or rate < 1 or per not in ("epoch", "step"):
            raise ValueError(
                "continuous needs start > 0, rate >= 1 and per in ('epoch', 'step'). "
                f"Received: start={start}, rate={rate}, per={per!r}"
            )

        def schedule(epoch, step):
            beta = start * rate ** (epoch if per == "epoch" else step)
            return min(beta, maximum) if maximum else beta

        return cls(schedule, layers)

    def _layers(self):
        if self.layers is None:
            from tfhash.layers import AnnealedSign

            self.layers = [l for l in self.model._flatten_layers() if isinstance(l, AnnealedSign)]
            if not self.layers:
                raise ValueError("BetaSchedule found no AnnealedSign layer in the model.")
        return self.layers

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        beta = float(self.schedule(self.epoch, self.step))
        for layer in self._layers():
            layer.beta.assign(beta)
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self._layers()[0].beta.numpy())


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights with the best validation score and restores them when training ends.

    The score is whatever `score(model)` returns (higher is better), e.g.
    cross-modal mAP on validation rows drawn outside the query set
    (`tfhash.evaluation.validation_rows`). It is logged as `name`.

    Args:
        score: a callable `model -> float`.
        name: the log key of the score.
        every: "epoch", or "round" to score only epochs that end a round of an
            alternating model (whose logs carry "round", as `SSAHRounds` writes).

    Attributes:
        best, best_epoch: the best score and its epoch (0-based).
    """

    def __init__(self, score, name="val_score", every="epoch"):
        super().__init__()
        if every not in ("epoch", "round"):
            raise ValueError(f"every must be 'epoch' or 'round'. Received: every={every!r}")
        self.score, self.name, self.every = score, name, every
        self.best, self.best_epoch, self._weights = None, None, None

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self._weights = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.every == "round" and "round" not in (logs or {}):
            return
        value = float(self.score(self.model))
        if logs is not None:
            logs[self.name] = value
        if self.best is None or value > self.best:
            self.best, self.best_epoch, self._weights = value, epoch, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self._weights is not None:
            self.model.set_weights(self._weights)


class GeneratedImageGrid(keras.callbacks.Callback):
    """Saves a PNG grid of a conditional generator's images after each epoch.

    Row c holds `per_class` images generated for class c, from the same noise
    every epoch, so successive files show the generator learning. Each row is
    labelled with its class and the title names the model, its code length and
    the epoch. Works with any model that has `num_classes`, `noise_dim`,
    `multi_label` and `generate(labels, noise)` (`tfhash.models.DSHGAN`).

    Args:
        directory: where `epoch_001.png`, `epoch_002.png`, ... are written
            (created if missing; each file is written whole or not at all).
        per_class: images per class (grid columns).
        every: write every this many epochs.
        seed: seeds the fixed noise.
        class_names: the row labels, one per class (e.g.
            `tfhash.data.fashion_mnist.CLASS_NAMES`); default "class 0", "class 1", ...
        label_rows: draw the grid with its row labels and title (matplotlib);
            False writes the bare pixel grid of `grid()`, one pixel per pixel.
        title: the title's first words; default "<model name>: generated images".

    Attributes:
        paths: the files written so far.

    Example:
        >>> dsh.fit(batches, epochs=20, callbacks=[GeneratedImageGrid("runs/dsh_gan/grids", class_names=CLASS_NAMES)])
    """

    def __init__(self, directory, per_class=8, every=1, seed=0, class_names=None, label_rows=True, title=None):
        super().__init__()
        if int(per_class) < 1 or int(every) < 1:
            raise ValueError(f"per_class and every must be >= 1. Received: per_class={per_class}, every={every}")
        self.directory, self.per_class, self.every, self.seed = directory, int(per_class), int(every), seed
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.label_rows, self.title = bool(label_rows), title
        self.paths = []

    def grid(self):
        """The current grid: uint8 (classes * height, per_class * width, channels)."""
        model = self.model
        classes = np.repeat(np.arange(model.num_classes), self.per_class)
        labels = np.eye(model.num_classes, dtype=np.float32)[classes] if model.multi_label else classes
        noise = np.random.default_rng(self.seed).standard_normal((len(classes), model.noise_dim))
        images = model.generate(labels, noise=noise)
        height, width, channels = images.shape[1:]
        tiles = images.reshape(model.num_classes, self.per_class, height, width, channels)
        return tiles.transpose(0, 2, 1, 3, 4).reshape(model.num_classes * height, self.per_class * width, channels)

    def row_labels(self):
        """The label of each row: its class name, or "class c"."""
        num_classes = self.model.num_classes
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(f"class_names must name the model's {num_classes} classes. "
                             f"Received: {len(self.class_names)} names")
        return list(self.class_names) if self.class_names is not None else [f"class {c}" for c in range(num_classes)]

    def figure(self, epoch=None):
        """The grid as a matplotlib `Figure`: a class label per row (the y tick
        labels), and a title naming the model, its bits and the epoch (1-based)."""
        from matplotlib.figure import Figure

        model, grid, labels = self.model, self.grid(), self.row_labels()
        rows, height = len(labels), grid.shape[0] // len(labels)
        figure = Figure(figsize=(0.45 * self.per_class + 1.8, 0.45 * rows + 1.1), dpi=120, layout="constrained")
        ax = figure.subplots()
        if grid.shape[-1] == 1:
            ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_yticks([(c + 0.5) * height - 0.5 for c in range(rows)], labels, fontsize=8)
        ax.tick_params(axis="y", length=0)
        ax.set_xticks([])
        for c in range(1, rows):
            ax.axhline(c * height - 0.5, color="#888888", linewidth=0.6)
        ax.set_ylabel("class (one row each)")
        ax.set_xlabel(f"{self.per_class} images per class, the same noise every epoch (seed {self.seed})", fontsize=8)
        bits = getattr(model, "bits", None) or getattr(getattr(model, "encoder", None), "bits", None)
        heading = self.title or f"{model.name}: generated images"
        details = ", ".join(part for part in (
            f"{bits} bits" if bits else "", f"epoch {epoch}" if epoch is not None else "") if part)
        ax.set_title(heading + (f"\n{details}" if details else ""), fontsize=10)
        return figure

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"epoch_{epoch + 1:03d}.png")
        if self.label_rows:
            from tfhash.evaluation import save_figure

            save_figure(self.figure(epoch + 1), path)  # atomically, through tfhash.io.write_atomically
        else:
            write_bytes(path, tf.io.encode_png(self.grid()).numpy())
        self.paths.append(path)
