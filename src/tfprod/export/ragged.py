"""Variable-length inputs in a serving signature: ``NAME.values`` + ``NAME.row_lengths``.

A SavedModel signature takes dense tensors only, so an input of variable-length lists (token
ids, a user's seen items) is exported as two 1-D tensors: ``NAME.values``, every list
concatenated, and ``NAME.row_lengths``, the length of each list (one per batch row), the two
parts of a ``tf.RaggedTensor``. Any TF Serving client can send them as they are (gRPC
``TensorProto``s, or REST columnar ``{"inputs": {"tokens.values": [...],
"tokens.row_lengths": [...]}}``); ``tfprod serve`` also takes the lists themselves in one
request (``{"instances": [{"tokens": [3, 9, 4]}, {"tokens": [7]}]}``, or columnar) and
splits them. Inside the signature the lists are checked against the input's limits, padded
to the longest list of the request and handed to the model, which masks the padding.

Example::

    export_saved_model(model, "models/seq", ragged_inputs={"tokens": RaggedInput(max_length=512)})
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tfprod.errors import TfprodError

VALUES = ".values"
ROW_LENGTHS = ".row_lengths"


class _SanitizedNames(logging.Filter):
    """TensorFlow warns that ``NAME.values`` "is not a valid tf.function parameter name" and
    renames the Python parameter; the signature keeps the name, which is what matters here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not a valid tf.function parameter name" not in record.getMessage()


logging.getLogger("absl").addFilter(_SanitizedNames())


def component_names(name: str) -> tuple[str, str]:
    """``(NAME.values, NAME.row_lengths)``: the signature inputs of ragged input ``name``."""
    return name + VALUES, name + ROW_LENGTHS


def ragged_pairs(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """The ragged inputs among signature input ``names``: ``{NAME: (values, row_lengths)}``
    for every NAME whose two components are both present."""
    names = set(names)
    return {n[:-len(VALUES)]: component_names(n[:-len(VALUES)]) for n in sorted(names)
            if n.endswith(VALUES) and n[:-len(VALUES)] + ROW_LENGTHS in names}


@dataclasses.dataclass(frozen=True)
class RaggedInput:
    """How a signature takes one model input as variable-length lists.

    Attributes:
        dtype: dtype of ``NAME.values``; None: the model input's own (so a server refuses
            values the model cannot hold, instead of wrapping them).
        pad_value: written after each list's end before the model sees the batch.
        min_length: shorter lists are refused (1: an empty list is an error).
        max_length: longer lists are refused (None: no limit).
    """

    dtype: str | None = None
    pad_value: int | float = 0
    min_length: int = 1
    max_length: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or \
                self.min_length < 0:
            raise TfprodError(f"RaggedInput min_length={self.min_length!r}; expected an integer "
                              ">= 0")
        if self.max_length is not None and (not isinstance(self.max_length, int)
                                            or self.max_length < max(self.min_length, 1)):
            raise TfprodError(f"RaggedInput max_length={self.max_length!r}; expected None or an "
                              f"integer >= {max(self.min_length, 1)}")

    def specs(self, name: str, model_dtype: Any = "int64") -> list:
        """The two ``tf.TensorSpec`` of the signature (batch dimension None)."""
        import tensorflow as tf

        values, lengths = component_names(name)
        return [tf.TensorSpec([None], tf.as_dtype(self.dtype or model_dtype), name=values),
                tf.TensorSpec([None], tf.int64, name=lengths)]

    def dense(self, name: str, values, row_lengths, model_dtype):
        """The padded ``(batch, longest)`` tensor of ``values`` / ``row_lengths``, after
        checking the lengths (an ``InvalidArgumentError`` with one clear message)."""
        import tensorflow as tf

        row_lengths = tf.cast(row_lengths, tf.int64)
        checks = [_check(tf.reduce_all(row_lengths >= 0), name,
                         "{} has a negative row length at row {}",
                         [component_names(name)[1], tf.argmin(row_lengths)])]
        checks.append(_check(
            tf.equal(tf.reduce_sum(row_lengths), tf.size(values, out_type=tf.int64)), name,
            "the row lengths sum to {} but there are {} values; send one length per list",
            [tf.reduce_sum(row_lengths), tf.size(values)]))
        if self.min_length:
            row = tf.argmin(row_lengths)
            what = "is empty (length 0)" if self.min_length == 1 else \
                f"is shorter than {self.min_length}"
            checks.append(_check(
                tf.reduce_all(row_lengths >= self.min_length), name,
                f"list {{}} {what}; send at least {self.min_length} value(s) per list",
                [row]))
        if self.max_length is not None:
            row = tf.argmax(row_lengths)
            checks.append(_check(
                tf.reduce_all(row_lengths <= self.max_length), name,
                f"list {{}} has {{}} values, more than the longest this model takes "
                f"({self.max_length}); truncate or split it",
                [row, tf.reduce_max(row_lengths)]))
        with tf.control_dependencies(checks):
            ragged = tf.RaggedTensor.from_row_lengths(tf.identity(values), row_lengths,
                                                      validate=False)
        dense = ragged.to_tensor(default_value=tf.cast(self.pad_value, ragged.dtype))
        return tf.cast(dense, model_dtype)


def _check(condition, name: str, template: str, args: Sequence[Any]):
    """``tf.debugging.Assert`` with one formatted message: ``NAME: ...``."""
    import tensorflow as tf

    message = tf.strings.format(f"{name}: {template}", args)
    return tf.debugging.Assert(condition, [message])


def to_components(lists: Sequence[Sequence[Any]], dtype: Any = np.int64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(values, row_lengths)`` of Python or numpy lists."""
    lengths = np.fromiter((len(x) for x in lists), np.int64, count=len(lists))
    parts = [np.asarray(x, dtype).reshape(-1) for x in lists if len(x)]
    values = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return values, lengths


@dataclasses.dataclass(frozen=True)
class RaggedServingInputs:
    """Serving inputs where some model inputs arrive as ``NAME.values`` / ``NAME.row_lengths``.

    Behaves like :class:`~tfprod.export.signature.ServingInputs` for the signature builders:
    ``specs`` are the signature's tensors; ``structure`` turns them back into the model's
    inputs (the ragged ones padded).
    """

    base: Any  # ServingInputs of the model itself
    ragged: Mapping[str, RaggedInput]

    def __post_init__(self) -> None:
        for name in self.ragged:
            if name not in self.base.names:
                raise TfprodError(f"ragged input {name!r} is not an input of the model; its "
                                  f"inputs are {list(self.base.names)}")
            shape = tuple(self.base.spec(name).shape)
            if len(shape) != 2:
                raise TfprodError(f"ragged input {name!r} has shape {shape}; variable-length "
                                  "lists feed a (batch, steps) input: keras.Input((None,))")

    @property
    def names(self) -> tuple[str, ...]:
        out: list[str] = []
        for name in self.base.names:
            out.extend(component_names(name) if name in self.ragged else (name,))
        return tuple(out)

    @property
    def specs(self) -> tuple:
        out: list = []
        for name, spec in zip(self.base.names, self.base.specs, strict=True):
            out.extend(self.ragged[name].specs(name, spec.dtype) if name in self.ragged
                       else [spec])
        return tuple(out)

    @property
    def kind(self) -> str:
        return self.base.kind

    def structure(self, tensors: Sequence[Any]) -> Any:
        dense, i = [], 0
        for name, spec in zip(self.base.names, self.base.specs, strict=True):
            if name in self.ragged:
                dense.append(self.ragged[name].dense(name, tensors[i], tensors[i + 1],
                                                     spec.dtype))
                i += 2
            else:
                dense.append(tensors[i])
                i += 1
        return self.base.structure(dense)


#: Reference sequences compared between the signature and the Keras model before publishing.
VERIFY_SEQUENCES = 64


def ragged_reference(data: Any, inputs: RaggedServingInputs) -> tuple[int, dict[str, Any]]:
    """Up to :data:`VERIFY_SEQUENCES` reference examples by model input name: a list of 1-D
    arrays for each ragged input, an array for each other input.

    ``data`` is ``{name: values}``, ``(x, y)``, or (for a one-input model) the list of
    sequences itself.
    """
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = data[0]
    names = inputs.base.names
    if not isinstance(data, Mapping):
        if len(names) != 1:
            raise TfprodError(f"reference data for a model with inputs {list(names)} must be a "
                              "dict of input name -> values")
        data = {names[0]: data}
    missing = [n for n in names if n not in data]
    if missing:
        raise TfprodError(f"reference data lacks the model input(s) {missing}; it has "
                          f"{sorted(data)}")
    sizes = {n: len(data[n]) for n in names}
    if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
        raise TfprodError(f"reference data inputs have {sizes} examples; expected the same "
                          "positive number for every input")
    n = min(next(iter(sizes.values())), VERIFY_SEQUENCES)
    out: dict[str, Any] = {}
    for name in names:
        if name in inputs.ragged:
            lists = [np.asarray(s).reshape(-1) for s in list(data[name])[:n]]
            limit = inputs.ragged[name]
            lengths = [len(s) for s in lists]
            if min(lengths) < limit.min_length or (limit.max_length is not None
                                                   and max(lengths) > limit.max_length):
                raise TfprodError(f"reference sequences of {name!r} have lengths "
                                  f"{min(lengths)} to {max(lengths)}; the export takes "
                                  f"{limit.min_length} to {limit.max_length or 'any'}")
            out[name] = lists
        else:
            out[name] = np.asarray(data[name])[:n]
    return n, out


def verify_ragged(fn: Any, model: Any, inputs: RaggedServingInputs,
                  reference: tuple[int, dict[str, Any]], names: Sequence[str]) -> None:
    """The signature ``fn`` must answer the reference lists as the Keras model answers them
    padded (the padding masked)."""
    import tensorflow as tf

    from tfprod.export.signature import name_outputs

    _, data = reference
    dense, feed = [], {}
    for name, spec in zip(inputs.base.names, inputs.base.specs, strict=True):
        if name in inputs.ragged:
            limit = inputs.ragged[name]
            lists = data[name]
            longest = max(len(s) for s in lists)
            padded = np.full((len(lists), longest), limit.pad_value,
                             spec.dtype.as_numpy_dtype)
            for row, s in enumerate(lists):
                padded[row, :len(s)] = s
            dense.append(tf.constant(padded))
            values, lengths = to_components(lists, np.dtype(limit.dtype or
                                                            spec.dtype.as_numpy_dtype))
            v_name, n_name = component_names(name)
            feed[v_name], feed[n_name] = tf.constant(values), tf.constant(lengths)
        else:
            array = np.asarray(data[name], spec.dtype.as_numpy_dtype)
            dense.append(tf.constant(array))
            feed[name] = tf.constant(array)
    want = name_outputs(model(inputs.base.structure(dense), training=False), names)
    got = fn(**feed)
    for key in names:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise TfprodError(
                f"the exported signature disagrees with the Keras model on output {key!r} for "
                "variable-length inputs; the model must mask the padding (Embedding("
                "mask_zero=True) or RaggedToDense before the RNN)")
