"""Distribution strategies by name, for `tfhash train --strategy`."""

import json
import os

STRATEGIES = ("one_device", "mirrored", "multi_worker")


def get_strategy(name="one_device"):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: "one_device" (first GPU, else the CPU), "mirrored" (every local
            GPU, or every logical CPU device when there is no GPU), or
            "multi_worker" (`MultiWorkerMirroredStrategy`, cluster from the
            `TF_CONFIG` environment variable); a strategy is returned as is.
    """
    import tensorflow as tf  # here, so the CLI's parser can list STRATEGIES without it

    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "strategy 'multi_worker' reads the cluster from the TF_CONFIG environment "
            'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}. Received: TF_CONFIG is not set.'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief():
    """True unless TF_CONFIG names this process a non-chief worker: only the
    chief writes checkpoints and results."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
