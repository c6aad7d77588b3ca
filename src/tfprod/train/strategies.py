"""Choosing a tf.distribute strategy: from a name, from the devices, or from TF_CONFIG.

On a machine without GPUs, ``mirrored`` splits the CPU into logical devices so the multi-replica
code path runs (and is tested) everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import tensorflow as tf

from tfprod.errors import TfprodError

STRATEGIES = ("auto", "one", "mirrored", "multi-worker", "ps")


def tf_config() -> dict[str, Any] | None:
    """The parsed ``TF_CONFIG``, or None; a clear error when it is not valid."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TfprodError(f"TF_CONFIG is not valid JSON ({e.msg} at column {e.colno}); expected "
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                          '"worker", "index": 0}}') from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise TfprodError('TF_CONFIG has no "cluster" mapping of job name -> ["host:port", ...]')
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a
                                                      for a in addresses):
            raise TfprodError(f'TF_CONFIG cluster["{job}"] = {addresses!r}; expected a list of '
                              '"host:port" strings')
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise TfprodError(f'TF_CONFIG task {task!r} does not name a job of the cluster '
                          f'({sorted(cluster)}); expected {{"type": "worker", "index": 0}}')
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise TfprodError(f'TF_CONFIG task index {index!r} is outside cluster["{task["type"]}"] '
                          f"(size {len(cluster[task['type']])})")
    return config


def split_cpu(num_devices: int) -> list[str]:
    """Splits the physical CPU into ``num_devices`` logical devices (before TF starts using it).

    Returns the device names. Calling it again with the same number is harmless; a different
    number after TensorFlow has initialized its devices is an error TF cannot undo.
    """
    if num_devices < 1:
        raise TfprodError(f"num_devices={num_devices}; expected a positive integer")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have != num_devices:
                raise TfprodError(
                    f"cannot split the CPU into {num_devices} devices: TensorFlow already "
                    f"initialized {have}; choose the strategy before building any model"
                ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def set_memory_growth() -> int:
    """Lets TF grow GPU memory as needed instead of taking all of it; returns the GPU count."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Once TF has initialized a GPU the setting can no longer change; keep what it has.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return len(gpus)


#: Collective keys reserved for each MirroredStrategy (TF's own tests move the base by 1,000).
_COLLECTIVE_KEYS_PER_STRATEGY = 1000


def mirrored_strategy(devices: list[str] | None = None) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy whose collective ops cannot collide with an earlier one's.

    Every MirroredStrategy starts its collective group and instance keys at the same base, so a
    second strategy in one process whose all-reduces have other shapes (another model) aborts
    every collective op for the rest of the process: "Shape mismatch in the collective instance
    ... Restart your program to reset" (tensorflow/tensorflow#62790). Each strategy made here
    gets keys of its own, as TF's test combinations do.
    """
    tf.distribute.MirroredStrategy._collective_key_base += _COLLECTIVE_KEYS_PER_STRATEGY
    return tf.distribute.MirroredStrategy(devices)


def make_strategy(name: str = "auto", *, cpu_replicas: int = 2,
                  cluster_timeout: float = 60.0) -> tf.distribute.Strategy:
    """Returns the strategy called ``name``.

    Args:
        name: ``auto`` (TF_CONFIG -> multi-worker or ps; several GPUs -> mirrored; otherwise the
            default strategy), ``one`` (one device), ``mirrored`` (all GPUs, or the CPU split into
            ``cpu_replicas`` logical devices), ``multi-worker`` (MultiWorkerMirroredStrategy from
            TF_CONFIG) or ``ps`` (ParameterServerStrategy; this process is the coordinator).
        cpu_replicas: logical CPU devices for ``mirrored`` on a machine without GPUs.
        cluster_timeout: seconds to wait for every other task of TF_CONFIG to come up; past
            that, a clear error (never a hang).
    """
    if name not in STRATEGIES:
        raise TfprodError(f"strategy {name!r}; expected one of {list(STRATEGIES)}")
    gpus = set_memory_growth()
    config = tf_config()
    if name == "auto":
        if config and "ps" in config["cluster"]:
            name = "ps"
        elif config and sum(len(v) for k, v in config["cluster"].items()
                            if k in ("worker", "chief")) > 1:
            name = "multi-worker"
        elif gpus > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return mirrored_strategy(None if gpus else split_cpu(cpu_replicas))
    if config is None:
        raise TfprodError(f"strategy {name!r} needs TF_CONFIG describing the cluster; set it, or "
                          "use `tfprod train --workers N` to launch local workers")
    peers = _peers(config)
    if name == "multi-worker":
        # The constructor blocks in C++ until every worker has joined; a watchdog turns a
        # worker that never comes up into a clear error instead of a hang.
        _watchdog(peers, cluster_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if "ps" not in config["cluster"] or "worker" not in config["cluster"]:
        raise TfprodError('strategy "ps" needs TF_CONFIG with "ps" and "worker" jobs')
    from tfprod.train.cluster import wait_for_peers

    wait_for_peers(peers, timeout=cluster_timeout)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(resolver)


def _peers(config: dict[str, Any]) -> list[str]:
    task = config["task"]
    me = config["cluster"][task["type"]][task.get("index", 0)]
    return [a for tasks in config["cluster"].values() for a in tasks if a != me]


def _watchdog(peers: list[str], timeout: float) -> None:
    import subprocess

    subprocess.Popen([sys.executable, "-m", "tfprod.train.watchdog", str(os.getpid()),
                      str(timeout), *peers], start_new_session=True)


def is_parameter_server(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)
