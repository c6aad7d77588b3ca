"""tf.data options and caching shared by every tfprod pipeline."""

from __future__ import annotations

import os

import tensorflow as tf

from tfprod.errors import TfprodError


def apply_options(ds: tf.data.Dataset, *, deterministic: bool = False) -> tf.data.Dataset:
    """Sets the options every tfprod pipeline runs with."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # The autotuner's model thread makes deleting an iterator wait for its next wake-up: measured
    # here, an epoch over a cached dataset then took up to 15x the median, once in a few epochs.
    # With it off, AUTOTUNE parallelism is the number of cores, which is what it converges to on
    # small machines anyway, and epochs stay within 1.4x of the median (docs/benchmarks.md).
    options.autotune.enabled = False
    return ds.with_options(options)


def naive_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Turns off TF's automatic rewrites, so that a sequential pipeline really is sequential.

    TF 2.21 parallelizes plain ``map`` calls and injects ``prefetch`` by itself; a "naive"
    baseline measured with those on is not naive.
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.experimental_optimization.map_parallelization = False
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.parallel_batch = False
    options.autotune.enabled = False
    return ds.with_options(options)


def cache_dataset(ds: tf.data.Dataset, cache: str | os.PathLike | None) -> tf.data.Dataset:
    """``cache=None``: no cache; ``"memory"``: in RAM; otherwise a file path prefix on disk.

    A file cache serves data larger than memory: TF writes it during the first complete epoch
    and reads it afterwards.
    """
    if cache is None:
        return ds
    if cache == "memory":
        return ds.cache()
    path = os.fspath(cache)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise TfprodError(f"cache={path!r}: folder {parent} does not exist; create it first")
    # A run stopped mid-epoch leaves a lock file behind, and TF then refuses to reuse the prefix
    # ("the cache is already being written"); a finished cache has an .index file and no lock.
    lock = path + "_0.lockfile"
    if os.path.exists(lock):
        os.remove(lock)
        for name in os.listdir(parent):
            if name.startswith(os.path.basename(path) + ".") or name.startswith(
                    os.path.basename(path) + "_"):
                os.remove(os.path.join(parent, name))
    return ds.cache(path)
