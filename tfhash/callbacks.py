"""Keras callbacks that drive training-time schedules."""

import bisect

import keras


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
