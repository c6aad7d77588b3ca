"""What the model is asked to do: the loss, the output activation and the kind of labels.

Each is read from the model where Keras records it (the compiled loss, the output layer's
activation) and otherwise measured (a batch of outputs that are non-negative and sum to 1 is a
softmax), so the pairing checks also work on subclassed models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

_LOSS_KINDS = {
    "sparsecategoricalcrossentropy": "sparse_ce",
    "categoricalcrossentropy": "ce",
    "categoricalfocalcrossentropy": "ce",
    "binarycrossentropy": "bce",
    "binaryfocalcrossentropy": "bce",
    "meansquarederror": "regression",
    "scaledmeansquarederror": "regression",
    "mse": "regression",
    "meanabsoluteerror": "regression",
    "mae": "regression",
    "huber": "regression",
    "logcosh": "regression",
    "meansquaredlogarithmicerror": "regression",
    "msle": "regression",
}


@dataclasses.dataclass
class Task:
    """The loss, output and labels of one single-output model.

    Attributes:
        loss_name: as compiled, e.g. ``"sparse_categorical_crossentropy"``.
        loss_kind: ``"sparse_ce"``, ``"ce"``, ``"bce"``, ``"regression"``, ``"other"`` (a loss
            the doctor does not know) or ``"multi"`` (several outputs).
        from_logits: the loss's ``from_logits``.
        output: ``"softmax"``, ``"sigmoid"``, ``"linear"`` or ``"other"``.
        output_source: where ``output`` was read, e.g. ``"layer 'probabilities'"``.
        units: the output's last dimension.
        labels: ``"sparse"`` (class indices), ``"onehot"``, ``"multihot"``, ``"soft"``,
            ``"continuous"`` or ``"none"``.
        label_dtype: the labels' dtype name (``"int64"``, ``"float32"``, ``"object"``...).
        label_range: the smallest and largest finite label value, if numeric.
        label_distinct: distinct label values (counted up to 1001).
    """

    loss_name: str
    loss_kind: str
    from_logits: bool
    output: str
    output_source: str
    units: int
    labels: str
    label_dtype: str = ""
    label_range: tuple[float, float] | None = None
    label_distinct: int = 0

    @property
    def class_ids(self) -> bool:
        """Integer-typed labels 0..K-1 (or 1..K), K >= 3: what class ids look like."""
        if not self.label_dtype.startswith(("int", "uint")) or self.label_range is None:
            return False
        low, high = self.label_range
        return low in (0, 1) and 3 <= self.label_distinct == high - low + 1 <= 1000

    @property
    def classification(self) -> bool:
        return self.loss_kind in ("sparse_ce", "ce", "bce")

    @property
    def num_classes(self) -> int | None:
        """Classes the output can name: its units, or 2 for a single sigmoid/logit unit."""
        if self.loss_kind in ("sparse_ce", "ce") or (self.loss_kind == "bce" and self.units > 1):
            return self.units if self.units > 1 else None
        if self.loss_kind == "bce":
            return 2
        return None


def describe_loss(spec: Any) -> tuple[str, str, bool]:
    """``(name, kind, from_logits)`` of a Keras loss given as a name, function or ``Loss``."""
    if spec is None:
        return "none", "other", False
    if isinstance(spec, list | tuple | dict):
        return "per-output losses", "multi", False
    from_logits = False
    if isinstance(spec, str):
        name = spec
    elif hasattr(spec, "get_config"):
        config = spec.get_config()
        from_logits = bool(config.get("from_logits", False))
        fn = getattr(spec, "fn", None)
        name = type(spec).__name__
        if type(spec).__name__ == "LossFunctionWrapper" and fn is not None:
            name = getattr(fn, "__name__", name)
    else:
        name = getattr(spec, "__name__", type(spec).__name__)
    key = name.lower().replace("_", "")
    return name, _LOSS_KINDS.get(key, "other"), from_logits


def activation_name(layer) -> str | None:
    """The activation a layer applies last (``"relu"``, ``"softmax"``...), if it declares one."""
    fn = getattr(layer, "activation", None)
    if fn is None:
        kind = type(layer).__name__
        return {"Softmax": "softmax", "ReLU": "relu"}.get(kind)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name.lower()


def output_activation(model, y_pred: np.ndarray) -> tuple[str, str]:
    """``(kind, source)``: the final activation, from the output layer or measured."""
    try:
        layer = model.outputs[0]._keras_history.operation
        name = activation_name(layer)
    except (AttributeError, IndexError, TypeError, ValueError):
        layer, name = None, None
    if name is not None:
        kind = {"softmax": "softmax", "sigmoid": "sigmoid", "linear": "linear"}.get(name, "other")
        return kind, f"layer {layer.name!r} (activation {name})"
    y = np.asarray(y_pred, np.float64)
    if y.ndim >= 2 and y.shape[-1] > 1 and y.min() >= 0 and np.allclose(y.sum(-1), 1, atol=1e-3):
        return "softmax", "measured: outputs are non-negative and sum to 1"
    if y.min() >= 0 and y.max() <= 1:
        return "sigmoid", "measured: outputs are in [0, 1]"
    return "linear", "measured: outputs are unbounded"


def label_kind(y: np.ndarray | None) -> str:
    """What the labels are: class indices, one-hot, multi-hot, soft or continuous targets."""
    if y is None or not isinstance(y, np.ndarray) or y.dtype.kind not in "biuf":
        return "none"
    finite = y[np.all(np.isfinite(y.reshape(len(y), -1)), axis=1)] if y.dtype.kind == "f" else y
    if finite.size == 0:
        return "none"
    integral = np.all(finite == np.round(finite))
    if finite.ndim == 1 or (finite.ndim == 2 and finite.shape[1] == 1):
        return "sparse" if integral else "continuous"
    if finite.ndim == 2:
        in_unit = finite.min() >= 0 and finite.max() <= 1
        sums_one = np.allclose(finite.sum(1), 1, atol=1e-3)
        if integral and in_unit:
            return "onehot" if sums_one else "multihot"
        if in_unit and sums_one:
            return "soft"
    return "continuous"


def describe_task(model, loss_spec: Any, y_pred: Any, y: np.ndarray | None) -> Task:
    """Reads the :class:`Task` of ``model`` from its loss, one batch of outputs and labels."""
    name, kind, from_logits = describe_loss(loss_spec)
    if not isinstance(y_pred, np.ndarray):  # several outputs
        return Task(name, "multi", from_logits, "other", "several outputs", 0, "none")
    output, source = output_activation(model, y_pred)
    units = int(y_pred.shape[-1]) if y_pred.ndim >= 2 else 1
    dtype, span, distinct = "", None, 0
    if isinstance(y, np.ndarray):
        dtype = y.dtype.name
        if y.dtype.kind in "biuf" and y.size:
            finite = y[np.isfinite(y)] if y.dtype.kind == "f" else y
            if finite.size:
                span = (float(finite.min()), float(finite.max()))
                distinct = len(np.unique(finite.ravel()[:200_000])[:1001])
    return Task(name, kind, from_logits, output, source, units, label_kind(y), dtype, span,
                distinct)
