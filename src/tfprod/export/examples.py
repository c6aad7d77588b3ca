"""Reference examples for an export: a sample of the training data shaped for the signature.

The same examples feed the warmup requests, the reference statistics and the check that the
exported signature agrees with the Keras model, so they are checked against the model's inputs
once, here: a feature that does not fit fails with its name and both shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export.signature import ServingInputs

#: Examples kept for the reference statistics (the first ones the data yields).
MAX_EXAMPLES = 10_000
#: ... and at most this many values per feature, so large images keep memory bounded.
MAX_VALUES = 20_000_000


@dataclasses.dataclass(frozen=True)
class Examples:
    """Examples by signature input name, ``[n, ...]`` each, and their labels if known."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}


def _numpy(value: Any) -> Any:
    if isinstance(value, tf.RaggedTensor | tf.SparseTensor):
        raise TfprodError("reference data holds ragged or sparse tensors; a serving signature "
                          "takes dense batches: pad them first")
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):  # tf.data turns a list of inputs into a tuple
        return [_numpy(v) for v in value]
    if tf.is_tensor(value):
        return value.numpy()
    return np.asarray(value)


def _split(element: Any) -> tuple[Any, Any]:
    """``x`` or ``(x,)`` / ``(x, y)`` / ``(x, y, weights)`` -> ``(x, y)``."""
    if isinstance(element, tuple):
        if not 1 <= len(element) <= 3:
            raise TfprodError(f"reference data yields tuples of {len(element)}; expected x, "
                              "(x, y) or (x, y, sample_weight)")
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def _gather(data: Any, limit: int) -> tuple[list, list]:
    if isinstance(data, tf.data.Dataset):
        xs, ys, n = [], [], 0
        for element in data:
            x, y = _split(element)
            xs.append(_numpy(x))
            ys.append(None if y is None else _numpy(y))
            n += len(_first(xs[-1]))
            if n >= limit:
                break
        if not xs:
            raise TfprodError("reference data is empty; expected at least one batch of examples")
        return xs, ys
    x, y = _split(data)
    return [_numpy(x)], [None if y is None else _numpy(y)]


def _first(x: Any) -> np.ndarray:
    if isinstance(x, dict):
        return next(iter(x.values()))
    return x[0] if isinstance(x, list) else x


def _by_name(x: Any, inputs: ServingInputs) -> dict[str, np.ndarray]:
    names = inputs.names
    if isinstance(x, dict):
        if inputs.kind == "tensor" and names[0] not in x and len(x) == 1:
            return {names[0]: next(iter(x.values()))}
        missing = [n for n in names if n not in x]
        if missing:
            raise TfprodError(f"reference data lacks the model input(s) {missing}; it has "
                              f"{sorted(x)[:10]}; pass a dict with every input the model takes")
        return {n: x[n] for n in names}
    if isinstance(x, list) and inputs.kind == "list":
        if len(x) != len(names):
            raise TfprodError(f"reference data has {len(x)} arrays; the model takes "
                              f"{len(names)} inputs {list(names)}")
        return dict(zip(names, x, strict=True))
    if inputs.kind != "tensor":
        raise TfprodError(f"reference data is one array; the model takes {len(names)} inputs "
                          f"{list(names)}: pass a dict of name -> array")
    return {names[0]: x}


def _fit(name: str, values: np.ndarray, spec: tf.TensorSpec) -> np.ndarray:
    """Reshapes (as Keras does: a trailing axis of 1) and casts one feature for the signature."""
    want = tuple(spec.shape)
    if values.ndim == len(want) - 1 and want[-1] == 1:
        values = values[..., None]
    elif values.ndim == len(want) + 1 and values.shape[-1] == 1:
        values = values[..., 0]
    fits = values.ndim == len(want) and all(
        w is None or w == g for w, g in zip(want[1:], values.shape[1:], strict=True))
    if not fits:
        raise TfprodError(
            f"reference data feature {name!r} has shape {tuple(values.shape[1:])} per example; "
            f"the model's input {name!r} takes {want[1:]} (batches of {want}); pass data "
            "shaped for this model (e.g. the same image size and channels as in training)")
    text = values.dtype.kind in "OSU"
    if spec.dtype == tf.string:
        if not text:
            raise TfprodError(f"reference data feature {name!r} holds {values.dtype} values; "
                              "the model's input takes strings")
        return np.array([v.encode() if isinstance(v, str) else v for v in values.ravel()],
                        dtype=object).reshape(values.shape)
    if text:
        raise TfprodError(f"reference data feature {name!r} holds strings; the model's input "
                          f"takes {spec.dtype.name}")
    return values.astype(spec.dtype.as_numpy_dtype, copy=False)


def collect_examples(data: Any, inputs: ServingInputs, *,
                     max_examples: int = MAX_EXAMPLES) -> Examples:
    """Up to ``max_examples`` examples of ``data``, checked and shaped for ``inputs``.

    Args:
        data: a numpy array or tensor, a dict of them, a tuple ``(x, y)``, or a batched
            ``tf.data.Dataset`` of ``x`` or ``(x, y)`` (as tfprod's readers and Keras' ``fit``
            take).
        inputs: the model's serving inputs.
        max_examples: how many examples to keep at most (fewer for large examples, see
            ``MAX_VALUES``).

    Raises:
        TfprodError: data without an input the model takes, a feature whose shape or type does
            not fit the model's input, empty data.
    """
    per_example = max(int(np.prod([d or 1 for d in s.shape[1:]])) for s in inputs.specs)
    limit = max(1, min(max_examples, MAX_VALUES // max(per_example, 1)))
    xs, ys = _gather(data, limit)
    parts = [_by_name(x, inputs) for x in xs]
    columns = {}
    for name in inputs.names:
        values = [_fit(name, np.asarray(p[name]), inputs.spec(name)) for p in parts]
        columns[name] = np.concatenate(values)[:limit]
    n = len(next(iter(columns.values())))
    if n == 0:
        raise TfprodError("reference data is empty; expected at least one example")
    sizes = {k: len(v) for k, v in columns.items()}
    if len(set(sizes.values())) > 1:
        raise TfprodError(f"reference data features have different numbers of examples: {sizes}")
    labels = None
    if all(isinstance(y, np.ndarray) for y in ys):
        labels = np.concatenate(ys)[:n]
    return Examples(columns, labels)
