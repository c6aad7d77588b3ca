"""Variable-length sequences for Keras 3: padded, bucketed and ragged batches, and their waste.

Three ways to batch sequences of different lengths, from most to least padding:

* :func:`padded_batches` pads each batch to its longest sequence (``padded_batch``);
* :func:`bucketed_batches` first groups sequences of similar length
  (``bucket_by_sequence_length``), so a batch's longest sequence is close to its shortest;
* :func:`ragged_batches` pads nothing: batches are ``tf.RaggedTensor``.

Keras 3 RNN layers do not accept a ``tf.RaggedTensor`` (``LSTM`` raises
"Cannot index into an inner ragged dimension"), so ragged batches are made dense inside the
model by :class:`RaggedToDense`, which also hands the true lengths to the RNN as a mask.
Which layer should make the mask:

* ragged token ids: ``Embedding -> RaggedToDense -> LSTM``. The mask comes from the row
  lengths, so it is exact, and id 0 may be a real token.
* ragged or padded token ids with id 0 reserved for padding: ``Embedding(mask_zero=True)``
  (after ``RaggedToDense`` for ragged input); it masks every 0.
* padded float features: ``RaggedToDense`` masks the steps after the last value that
  differs from ``pad_value``.

Beware ``RaggedToDense -> Embedding(mask_zero=False)``: that ``Embedding`` does not support
masking, so Keras drops the mask with nothing but a ``UserWarning`` ("will therefore destroy
the mask information") and the RNN reads the padding.

:func:`padding_waste` and :func:`compare_strategies` measure the padding of the batches a
pipeline really yields, from each sequence's true length carried beside it
(``return_lengths=True``), so a pad value that is also a real token is never miscounted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfprod.data.options import apply_options
from tfprod.errors import TfprodError

AUTOTUNE = tf.data.AUTOTUNE
_INT32 = np.iinfo(np.int32)

# ------------------------------------------------------------------------------------ checks


def _check_positive(name: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        hint = "a positive integer or None" if optional else "a positive integer"
        raise TfprodError(f"{name}={value!r}; expected {hint}")


def _as_arrays(sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Checks ``sequences`` and returns them as 1-D int32 or float32 arrays."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 1 and sequences.dtype != object:
        raise TfprodError(
            f"sequences is one 1-D array of {len(sequences)} values; expected a list of 1-D "
            "arrays, one per sequence; wrap a single sequence in a list"
        )
    if sequences is None or len(sequences) == 0:
        raise TfprodError("no sequences given; pass a non-empty list of 1-D arrays of token ids")
    arrays = []
    for i, s in enumerate(sequences):
        a = np.asarray(s)
        if a.ndim != 1:
            raise TfprodError(
                f"sequences[{i}] has shape {a.shape}; expected a 1-D array (one value per step); "
                "flatten it, or pass its rows as separate sequences"
            )
        if a.dtype.kind not in "iufb" and a.size:
            raise TfprodError(
                f"sequences[{i}] has dtype {a.dtype}; expected integer token ids or floats"
            )
        arrays.append(a)
    if any(a.dtype.kind == "f" for a in arrays):
        return [a.astype(np.float32) for a in arrays]
    low = min((int(a.min()) for a in arrays if a.size), default=0)
    high = max((int(a.max()) for a in arrays if a.size), default=0)
    if low < _INT32.min or high > _INT32.max:
        raise TfprodError(
            f"token ids range over [{low}, {high}]; expected ids that fit in int32; "
            "remap the vocabulary to consecutive ids"
        )
    return [a.astype(np.int32) for a in arrays]


def _as_labels(labels, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    try:
        y = np.asarray(labels)
    except ValueError:
        y = np.asarray(labels, dtype=object)
    if y.ndim == 0 or y.dtype == object:
        raise TfprodError(
            "labels must be an array with one equally shaped label per sequence; "
            f"got {type(labels).__name__}"
        )
    if len(y) != n:
        raise TfprodError(
            f"labels has {len(y)} entries but there are {n} sequences; pass one label per sequence"
        )
    return y


def _elements(sequences, labels, maxlen: int | None) -> tuple[tf.data.Dataset, bool]:
    """A dataset of ``(sequence, true_length[, label])`` elements, truncated to ``maxlen``."""
    arrays = _as_arrays(sequences)
    y = _as_labels(labels, len(arrays))
    _check_positive("maxlen", maxlen, optional=True)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(arrays), lengths)
    if maxlen is not None:
        ragged = ragged[:, :maxlen]
        lengths = np.minimum(lengths, maxlen)
    parts = (ragged, lengths.astype(np.int32)) + (() if y is None else (y,))
    # Slices of a ragged tensor are ragged specs of rank 0, which padded_batch refuses; going
    # through a map turns them into plain tensors.
    ds = tf.data.Dataset.from_tensor_slices(parts).map(lambda *e: e)
    return ds, y is not None


def _check_longest(sequences: Sequence, limit: int, what: str, fix: str, *,
                   truncate: int | None = None) -> None:
    """Refuses a sequence longer than ``limit`` (after truncation) with its index and length."""
    lengths = np.fromiter((len(s) for s in sequences), np.int64, count=len(sequences))
    if truncate is not None:
        lengths = np.minimum(lengths, truncate)
    if lengths.size and lengths.max() > limit:
        i = int(lengths.argmax())
        raise TfprodError(f"sequence {i} has {int(lengths[i])} steps, more than {what}={limit}; "
                          f"{fix}")


def _shuffle(ds: tf.data.Dataset, shuffle: bool, seed: int | None, n: int) -> tf.data.Dataset:
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds


def _structure(ds: tf.data.Dataset, has_labels: bool, return_lengths: bool) -> tf.data.Dataset:
    """Turns ``(x, lengths[, y])`` batches into the user-facing structure."""
    if return_lengths:
        if has_labels:
            return ds.map(lambda x, n, y: ((x, n), y))
        return ds
    if has_labels:
        return ds.map(lambda x, n, y: (x, y))
    return ds.map(lambda x, n: x)


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    return apply_options(ds.prefetch(AUTOTUNE), deterministic=True)


# ----------------------------------------------------------------------------------- batches


def padded_batches(
    sequences: Sequence[np.ndarray],
    labels: Sequence | np.ndarray | None = None,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int | None = None,
    maxlen: int | None = None,
    pad_value: int | float = 0,
    return_lengths: bool = False,
    padded_length: int | None = None,
) -> tf.data.Dataset:
    """Batches sequences padded at the end to the longest sequence of each batch.

    Args:
        sequences: 1-D arrays, one per sequence; integer ids become int32, floats float32.
        labels: one label per sequence (first axis = sequences), or ``None``.
        batch_size: sequences per batch; the last batch may be smaller.
        shuffle: reshuffle the sequences every epoch.
        seed: shuffle seed.
        maxlen: keep only the first ``maxlen`` steps of longer sequences; ``None`` keeps all.
        pad_value: value written after each sequence's end.
        return_lengths: also yield each sequence's true length (int32, after truncation):
            batches become ``(x, lengths)`` or ``((x, lengths), y)``, as :func:`padding_waste`
            reads them.
        padded_length: pad every batch to this many steps ("pad to max": one fixed shape)
            instead of to its longest sequence.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches, or ``x`` without labels, where ``x`` is
        ``(batch, longest_in_batch)`` (``(batch, padded_length)`` with ``padded_length``).

    Raises:
        TfprodError: no sequences, a sequence that is not 1-D, labels of another length,
            ``batch_size``/``maxlen`` below 1, or a sequence longer than ``padded_length``.
    """
    _check_positive("batch_size", batch_size)
    _check_positive("padded_length", padded_length, optional=True)
    if padded_length is not None:
        _check_longest(sequences, padded_length, "padded_length",
                       "raise padded_length or truncate with maxlen", truncate=maxlen)
    ds, has_labels = _elements(sequences, labels, maxlen)
    ds = _shuffle(ds, shuffle, seed, len(sequences))
    pad = ds.element_spec[0].dtype
    values = (tf.constant(pad_value, pad), None) + ((None,) if has_labels else ())
    if padded_length is None:
        ds = ds.padded_batch(batch_size, padding_values=values)
    else:
        shapes = (tf.TensorShape([padded_length]), tf.TensorShape([])) + (
            (ds.element_spec[2].shape,) if has_labels else ())
        ds = ds.padded_batch(batch_size, padded_shapes=shapes, padding_values=values)
    return _finish(_structure(ds, has_labels, return_lengths))


def ragged_batches(
    sequences: Sequence[np.ndarray],
    labels: Sequence | np.ndarray | None = None,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int | None = None,
    maxlen: int | None = None,
) -> tf.data.Dataset:
    """Batches sequences as ``tf.RaggedTensor``: no padding at all.

    Keras 3 RNN layers cannot read a ``tf.RaggedTensor``; put :class:`RaggedToDense` in the
    model (after the ``Embedding`` for token ids), or call :func:`ragged_to_padded`.

    Args:
        sequences: 1-D arrays, one per sequence; integer ids become int32, floats float32.
        labels: one label per sequence (first axis = sequences), or ``None``.
        batch_size: sequences per batch; the last batch may be smaller.
        shuffle: reshuffle the sequences every epoch.
        seed: shuffle seed.
        maxlen: keep only the first ``maxlen`` steps of longer sequences; ``None`` keeps all.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches, or ``x`` without labels, where ``x`` is a
        ``tf.RaggedTensor`` of shape ``(batch, None)``.

    Raises:
        TfprodError: as :func:`padded_batches`.
    """
    _check_positive("batch_size", batch_size)
    ds, has_labels = _elements(sequences, labels, maxlen)
    ds = _shuffle(ds, shuffle, seed, len(sequences))
    ds = ds.ragged_batch(batch_size)
    return _finish(_structure(ds, has_labels, return_lengths=False))


def bucket_boundaries(lengths: Sequence[int] | np.ndarray, num_buckets: int = 4) -> list[int]:
    """Bucket boundaries that split ``lengths`` into ``num_buckets`` groups of similar size.

    A sequence of length ``n`` goes to the first bucket whose boundary is greater than ``n``
    (``tf.data.Dataset.bucket_by_sequence_length`` semantics). Boundaries come from the
    quantiles of ``lengths``; repeated lengths can merge buckets, so fewer than
    ``num_buckets - 1`` boundaries may come back (none when every length is the same).

    Args:
        lengths: the length of every sequence.
        num_buckets: buckets wanted.

    Returns:
        Strictly increasing boundaries, each above the shortest and at most the longest length.

    Raises:
        TfprodError: no lengths, or ``num_buckets`` below 1.
    """
    _check_positive("num_buckets", num_buckets)
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise TfprodError("no lengths given; pass the length of every sequence")
    qs = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="lower")
    bounds = sorted({int(q) + 1 for q in qs})
    return [b for b in bounds if lengths.min() < b <= lengths.max()]


def bucketed_batches(
    sequences: Sequence[np.ndarray],
    labels: Sequence | np.ndarray | None = None,
    *,
    batch_size: int = 32,
    num_buckets: int = 4,
    boundaries: Sequence[int] | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    pad_value: int | float = 0,
    return_lengths: bool = False,
    max_length: int | None = None,
) -> tf.data.Dataset:
    """Batches sequences of similar length together, each batch padded to its longest.

    Args:
        sequences: 1-D arrays, one per sequence; integer ids become int32, floats float32.
        labels: one label per sequence (first axis = sequences), or ``None``.
        batch_size: sequences per batch in every bucket; a bucket's last batch may be smaller.
        num_buckets: buckets to split the lengths into (see :func:`bucket_boundaries`);
            ignored when ``boundaries`` is given.
        boundaries: strictly increasing length boundaries, instead of ``num_buckets``.
        shuffle: reshuffle the sequences every epoch (before bucketing), and the batches
            (after it).
        seed: shuffle seed.
        pad_value: value written after each sequence's end.
        return_lengths: also yield each sequence's true length, as in :func:`padded_batches`.
        max_length: the longest sequence the last bucket takes (e.g. the model's limit);
            without it the last bucket is open-ended.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches, or ``x`` without labels.

    Raises:
        TfprodError: as :func:`padded_batches`, ``num_buckets`` below 1, ``boundaries`` that
            are not positive and strictly increasing, or a sequence longer than
            ``max_length`` (longer than any bucket).
    """
    _check_positive("batch_size", batch_size)
    _check_positive("num_buckets", num_buckets)
    _check_positive("max_length", max_length, optional=True)
    if max_length is not None:
        _check_longest(sequences, max_length, "max_length (the last bucket's bound)",
                       "truncate it, drop it, or raise max_length")
    ds, has_labels = _elements(sequences, labels, None)
    if boundaries is None:
        boundaries = bucket_boundaries([len(s) for s in sequences], num_buckets)
    boundaries = [int(b) for b in boundaries]
    if any(b < 1 for b in boundaries) or any(np.diff(boundaries) <= 0):
        raise TfprodError(
            f"boundaries={boundaries}; expected positive, strictly increasing lengths, "
            "e.g. bucket_boundaries(lengths)"
        )
    ds = _shuffle(ds, shuffle, seed, len(sequences))
    pad = ds.element_spec[0].dtype
    values = (tf.constant(pad_value, pad), None) + ((None,) if has_labels else ())
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda x, *rest: tf.shape(x)[0],
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=values,
    )
    # Every bucket yields ceil(its sequences / batch_size) batches whatever the shuffle; told
    # so, Keras' fit knows the epoch's length instead of warning that the input "ran out of
    # data" after the first epoch.
    buckets = np.searchsorted(boundaries, [len(s) for s in sequences], side="right")
    counts = np.bincount(buckets, minlength=len(boundaries) + 1)
    total = int(sum(-(-counts // batch_size)))
    ds = ds.apply(tf.data.experimental.assert_cardinality(total))
    if shuffle:
        # Buckets fill at different rates (the busiest first), so an epoch's batches come out
        # grouped by length, and the last ones are each bucket's partial batch; mixing the
        # batches keeps an epoch from ending with all the long sequences.
        ds = ds.shuffle(total, seed=seed, reshuffle_each_iteration=True)
    return _finish(_structure(ds, has_labels, return_lengths))


# ---------------------------------------------------------------------------- ragged -> dense


def ragged_to_padded(x: tf.RaggedTensor, pad_value: int | float = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads a ragged batch at the end and returns it with its mask.

    Use it outside a model; inside one, use :class:`RaggedToDense`.

    Args:
        x: a ``tf.RaggedTensor`` of shape ``(batch, None, ...)``.
        pad_value: value written after each row's end.

    Returns:
        ``(dense, mask)``: ``dense`` of shape ``(batch, longest, ...)``, and a boolean
        ``mask`` of shape ``(batch, longest)``, True on real steps.

    Raises:
        TfprodError: ``x`` is not a ``tf.RaggedTensor``.
    """
    if not isinstance(x, tf.RaggedTensor):
        raise TfprodError(
            f"x is a {type(x).__name__}; expected a tf.RaggedTensor, e.g. a batch from "
            "ragged_batches()"
        )
    dense = x.to_tensor(default_value=tf.cast(pad_value, x.dtype))
    mask = tf.sequence_mask(x.row_lengths(), maxlen=tf.shape(dense, out_type=tf.int64)[1])
    return dense, mask


@keras.saving.register_keras_serializable(package="tfprod")
class _RowLengthMask(keras.Operation):
    """The mask of a ragged batch from its row lengths.

    A Keras op rather than plain TF, so that a functional model records it in its graph.
    """

    def call(self, x):
        return tf.sequence_mask(x.row_lengths(), maxlen=x.bounding_shape(axis=1))

    def compute_output_spec(self, x):
        return keras.KerasTensor(tuple(x.shape[:2]), dtype="bool")


@keras.saving.register_keras_serializable(package="tfprod")
class RaggedToDense(keras.layers.Layer):
    """Makes a ragged (or end-padded) batch dense and masks its padding for RNN layers.

    Keras 3 ``LSTM``/``GRU`` raise on a ``tf.RaggedTensor`` input; this layer pads it and
    attaches a mask so that they skip the padding:

    * ragged input: the mask comes from the row lengths, so it is exact whatever the values;
    * dense input: steps after the last one that differs from ``pad_value`` (in any feature)
      are masked; a ``pad_value`` inside a sequence stays unmasked, but one at its very end
      cannot be told from padding (use ragged batches when that matters). A mask already on
      the input is passed on unchanged.

    For token ids put it after the ``Embedding``: ``Embedding`` drops any incoming mask unless
    ``mask_zero=True``. Example::

        inputs = keras.Input(shape=(None,), dtype="int32", ragged=True)
        x = keras.layers.Embedding(vocab_size, 16)(inputs)
        x = RaggedToDense()(x)
        x = keras.layers.LSTM(32)(x)

    Args:
        pad_value: value written after each sequence's end (and, for dense input, the value
            that marks padding).
        **kwargs: standard ``keras.layers.Layer`` arguments.
    """

    def __init__(self, pad_value: int | float = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pad_value = pad_value

    def call(self, inputs):
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.to_tensor(default_value=tf.cast(self.pad_value, inputs.dtype))
        return inputs

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(inputs.shape), dtype=inputs.dtype)

    def compute_mask(self, inputs, previous_mask=None):
        if isinstance(inputs, tf.RaggedTensor) or getattr(inputs, "ragged", False):
            return _RowLengthMask()(inputs)
        if previous_mask is not None:
            return previous_mask
        real = ops.not_equal(inputs, ops.cast(self.pad_value, inputs.dtype))
        if len(inputs.shape) > 2:
            real = ops.any(real, axis=tuple(range(2, len(inputs.shape))))
        # Real up to the last real step: count the real steps at or after each position.
        after = ops.flip(ops.cumsum(ops.flip(ops.cast(real, "int32"), axis=1), axis=1), axis=1)
        return ops.greater(after, 0)

    def get_config(self) -> dict:
        return {**super().get_config(), "pad_value": self.pad_value}


# ---------------------------------------------------------------------------------- waste


def _counts(batch) -> tuple[int, int]:
    """(real, total) steps of one batch."""
    if isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[0], tuple | list):
        batch = batch[0]  # ((x, lengths), y)
    elif isinstance(batch, tuple | list) and isinstance(batch[0], tf.RaggedTensor):
        batch = batch[0]  # (ragged, y)
    if isinstance(batch, tf.RaggedTensor):
        n = int(tf.reduce_sum(batch.row_lengths()))
        return n, n
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TfprodError(
            f"padding_waste got a batch of type {type(batch).__name__}; expected (x, lengths), "
            "((x, lengths), y) or a tf.RaggedTensor; build the batches with return_lengths=True"
        )
    x, lengths = (np.asarray(v) for v in batch)
    width = x.shape[1] if x.ndim > 1 else 0
    if lengths.shape != x.shape[:1] or lengths.dtype.kind not in "iu" or (
            lengths.size and lengths.max() > width):
        raise TfprodError(
            f"padding_waste got lengths of shape {lengths.shape} and dtype {lengths.dtype} for "
            f"a batch of shape {x.shape}; expected one int length <= {width} per row; build "
            "the batches with return_lengths=True"
        )
    # Counting positions past each true length, not zeros: the pad value may be a real token.
    padding = int((np.arange(width)[None, :] >= lengths[:, None]).sum())
    return x.shape[0] * width - padding, x.shape[0] * width


def _measure(batches: Iterable) -> tuple[int, int, int]:
    real = total = count = 0
    for batch in batches:
        r, t = _counts(batch)
        real, total, count = real + r, total + t, count + 1
    return real, total, count


def padding_waste(batches: tf.data.Dataset | Iterable) -> float:
    """The fraction of the steps in padded batches that are padding (0 to 1).

    Reads the batches a pipeline really yields and counts, in every batch, the positions at
    or after each sequence's true length.

    Args:
        batches: batches of ``(x, lengths)`` or ``((x, lengths), y)``, as yielded with
            ``return_lengths=True``, or ``tf.RaggedTensor`` batches (``(x, y)`` or ``x``),
            which hold no padding.

    Returns:
        Padding steps / all steps, over all batches; 0.0 for no steps.

    Raises:
        TfprodError: a batch without its lengths.
    """
    real, total, _ = _measure(batches)
    return (total - real) / total if total else 0.0


def compare_strategies(
    sequences: Sequence[np.ndarray], batch_size: int = 32, num_buckets: int = 4
) -> list[dict]:
    """Measures the padding of four ways to batch ``sequences``.

    Strategies: ``pad_to_max`` (every batch padded to the longest sequence overall),
    ``pad_per_batch`` (:func:`padded_batches`), ``bucketed`` (:func:`bucketed_batches`) and
    ``ragged`` (:func:`ragged_batches`), all without shuffling.

    Args:
        sequences: 1-D arrays, one per sequence.
        batch_size: sequences per batch.
        num_buckets: buckets for ``bucketed``.

    Returns:
        One dict per strategy: ``strategy``, ``batches``, ``real_tokens`` (sequence steps),
        ``padded_tokens`` (padding steps), ``waste_pct`` (padding / all steps, in percent).

    Raises:
        TfprodError: as :func:`bucketed_batches`.
    """
    _check_positive("batch_size", batch_size)
    ds, _ = _elements(sequences, None, None)
    longest = max(len(s) for s in sequences)
    pad_to_max = ds.padded_batch(batch_size, padded_shapes=([longest], []))
    pipelines = {
        "pad_to_max": pad_to_max,
        "pad_per_batch": padded_batches(sequences, batch_size=batch_size, return_lengths=True),
        "bucketed": bucketed_batches(sequences, batch_size=batch_size, num_buckets=num_buckets,
                                     return_lengths=True),
        "ragged": ragged_batches(sequences, batch_size=batch_size),
    }
    rows = []
    for name, pipeline in pipelines.items():
        real, total, count = _measure(pipeline)
        rows.append({
            "strategy": name,
            "batches": count,
            "real_tokens": real,
            "padded_tokens": total - real,
            "waste_pct": round(100 * (total - real) / total, 2) if total else 0.0,
        })
    return rows
