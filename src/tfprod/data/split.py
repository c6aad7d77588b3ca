"""Hashed train/validation splits: an example's side is decided by a hash of its own bytes.

The key is the example as stored (a CSV line, a serialized ``tf.train.Example``), so the split
depends on nothing else: not on file order, shuffling, a seed, the process or the worker. Every
run and every worker of a cluster draws the same split, and exact duplicates always land on the
same side, so no copy of a training example is scored as held out.

Example::

    train = read_csv("wine.csv", label="label", validation_split=0.2, subset="training")
    val = read_csv("wine.csv", label="label", validation_split=0.2, subset="validation")
    val.split.rows, val.split.fingerprint    # the same in every run
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError

SUBSETS = ("training", "validation")
#: Hash buckets; ``validation_split * BUCKETS`` of them are the validation side.
BUCKETS = 10_000


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One side of a hashed split, as read.

    Attributes:
        subset: ``"training"`` or ``"validation"``.
        validation_split: the share of buckets on the validation side.
        rows: examples on this side.
        fingerprint: an order-independent digest of this side's examples (the sum of their
            64-bit fingerprints, as 16 hex digits): equal digests, equal sets of examples.
    """

    subset: str
    validation_split: float
    rows: int
    fingerprint: str


def check_split(validation_split: float | None, subset: str | None) -> None:
    """Refuses a share outside (0, 1), or a subset that is not ``training``/``validation``."""
    if validation_split is not None:
        if isinstance(validation_split, bool) or not 0 < validation_split < 1:
            raise TfprodError(f"validation_split={validation_split}; expected a value in (0, 1) "
                              "(0.2 holds out a fifth of the examples)")
        if subset not in SUBSETS:
            raise TfprodError(f"subset={subset!r}; expected 'training' or 'validation' with "
                              "validation_split")
    elif subset is not None:
        raise TfprodError("subset needs validation_split (e.g. validation_split=0.2)")


def in_subset(key: tf.Tensor, validation_split: float, subset: str) -> tf.Tensor:
    """True where ``key`` (string tensor: one example's bytes each) belongs to ``subset``."""
    bucket = tf.strings.to_hash_bucket_fast(key, BUCKETS)
    held_out = bucket < int(round(validation_split * BUCKETS))
    return held_out if subset == "validation" else tf.logical_not(held_out)


def take_subset(ds: tf.data.Dataset, validation_split: float, subset: str, *,
                key: Callable[..., tf.Tensor] | None = None, batch: int = 1024
                ) -> tf.data.Dataset:
    """The elements of ``ds`` on one side of the split, in their order.

    Hashed a batch at a time: a per-element ``filter`` costs a function call per example
    (~10 µs here, a tenth of the read speed); a mask over 1024 keys costs almost nothing.

    Args:
        ds: unbatched examples: a string (the key itself) or a tuple of fields.
        key: batched fields -> ``[batch]`` string keys (default: the element itself).
    """
    def keep(*fields):
        mask = in_subset(key(*fields) if key else fields[0], validation_split, subset)
        kept = tuple(tf.boolean_mask(f, mask) for f in fields)
        return kept if len(kept) > 1 else kept[0]

    return ds.batch(batch).map(keep).unbatch()


def summarize(ds: tf.data.Dataset, *, key: Callable[..., tf.Tensor] | None = None,
              batch: int = 4096) -> tuple[int, str]:
    """``(count, fingerprint)`` of a dataset of examples (see :class:`SplitInfo`)."""
    def add(state, element):
        n, total = state
        fields = element if isinstance(element, tuple) else (element,)
        k = key(*fields) if key else fields[0]
        prints = tf.bitcast(tf.fingerprint(tf.reshape(k, [-1, 1]), "farmhash64"), tf.int64)
        return n + tf.cast(tf.shape(k)[0], tf.int64), total + tf.reduce_sum(prints)

    n, total = ds.batch(batch).reduce((np.int64(0), np.int64(0)), add)
    return int(n), f"{int(total.numpy()) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
