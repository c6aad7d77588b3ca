"""What the labels ask for: k-class or binary classification, or regression in the label's units.

:func:`infer_task` reads it from the label values before any model is built:

- strings -> classification over the sorted names (``"red"``, ``"green"`` ...);
- integers (or floats that are all whole numbers) -> classification when they are the class ids
  ``0..k-1`` or at most :data:`MAX_CODED_CLASSES` distinct codes (e.g. ``1..3``, ``-1/1``);
  otherwise (many distinct whole numbers, e.g. a price in dollars) regression;
- fractional floats -> regression, with the training targets' mean and standard deviation.

Two classes make a binary task (one sigmoid unit). ``task=`` and ``num_classes=`` override the
inference; a contradiction (a label outside ``num_classes``, fractional values as classes) and
labels that cannot be learned (missing values, one class, a constant target, an id column) fail
with one line saying what was found and how to fix it.

Example::

    task = infer_task(y_train, y_val, label="label")
    task.summary()   # "3-class classification: label 'label' holds 3 integer values 0..2"
    encode = task.encoder()   # label tensor -> class index (or float target), for tf.data
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfprod.errors import TfprodError

KINDS = ("binary", "multiclass", "regression")
TASKS = ("classification", "regression")
#: Distinct integer codes that still read as classes when they are not 0..k-1.
MAX_CODED_CLASSES = 20
#: From this many rows, a label with a distinct value in every row is refused as an id.
MIN_ROWS_FOR_ID = 10


@dataclasses.dataclass(frozen=True)
class LabelTask:
    """The task a label column asks for.

    Attributes:
        kind: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        label: the label column or feature, if known.
        classes: the class values in output order (strings, or ints); ``None`` for regression.
            Output unit ``i`` (or, for binary, probability >= 0.5 -> ``classes[1]``) is
            ``classes[i]``.
        mean, std: of the training targets (regression), in the label's units.
        reason: what in the labels decided it, in words.
    """

    kind: str
    label: str | None = None
    classes: tuple[Any, ...] | None = None
    mean: float | None = None
    std: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TfprodError(f"task kind {self.kind!r}; expected one of {list(KINDS)}")

    @property
    def classification(self) -> bool:
        return self.kind != "regression"

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def units(self) -> int:
        """Output units: one per class, one for binary (sigmoid) and regression."""
        return len(self.classes) if self.kind == "multiclass" else 1

    @property
    def named(self) -> bool:
        """The labels need a lookup: their values are not the output indices 0..k-1."""
        return self.classes is not None and list(self.classes) != list(range(len(self.classes)))

    @property
    def string_classes(self) -> bool:
        return bool(self.classes) and isinstance(self.classes[0], str)

    def summary(self) -> str:
        """One line: what was inferred and why."""
        what = {"binary": "binary classification",
                "multiclass": f"{self.num_classes}-class classification",
                "regression": "regression"}[self.kind]
        if self.kind == "regression" and self.mean is not None:
            what += f" (target mean {self.mean:.4g}, std {self.std:.4g})"
        return f"{what}: {self.reason}" if self.reason else what

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["classes"] = None if self.classes is None else list(self.classes)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelTask:
        classes = data.get("classes")
        return cls(kind=data["kind"], label=data.get("label"),
                   classes=None if classes is None else tuple(classes),
                   mean=data.get("mean"), std=data.get("std"), reason=data.get("reason", ""))

    # ------------------------------------------------------------------------ label <-> index

    def encoder(self, *, head_shape: bool = True, indexed: bool = False):
        """A function for ``tf.data``: a batch of raw labels -> what the loss takes.

        Classification: class indices (int64, ``[batch]``), or for ``binary`` with
        ``head_shape`` float32 ``[batch, 1]`` for the sigmoid unit. Regression: float32
        ``[batch, 1]`` with ``head_shape``, else ``[batch]``. ``indexed``: the labels are class
        indices already (image folders). Class names need a lookup table, which is created
        here: call this inside a dataset function (not inside ``map``), so that
        parameter-server workers each build their own.
        """
        import tensorflow as tf

        table = None
        if self.named and not indexed:
            keys = tf.constant([str(c) if self.string_classes else int(c) for c in self.classes],
                               tf.string if self.string_classes else tf.int64)
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    keys, tf.range(len(self.classes), dtype=tf.int64)), default_value=-1)

        def index(y):
            y = tf.reshape(y, [-1])
            if table is None:
                return tf.cast(y, tf.int64)
            return table.lookup(y if self.string_classes else tf.cast(y, tf.int64))

        def encode(y):
            if self.kind == "regression":
                y = tf.cast(y, tf.float32)
                return tf.reshape(y, [-1, 1]) if head_shape else tf.reshape(y, [-1])
            i = index(y)
            if self.kind == "binary" and head_shape:
                return tf.cast(tf.reshape(i, [-1, 1]), tf.float32)
            return i

        return encode

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs (numpy) -> the label values they predict, one per example."""
        outputs = np.asarray(outputs)
        if self.kind == "regression":
            return outputs.reshape(len(outputs), -1)[:, 0]
        if self.kind == "binary" and outputs.reshape(len(outputs), -1).shape[1] == 1:
            index = (outputs.reshape(-1) >= 0.5).astype(np.int64)
        else:
            index = outputs.reshape(len(outputs), -1).argmax(axis=1)
        return np.asarray(self.classes, dtype=object if self.string_classes else np.int64)[index]


# ------------------------------------------------------------------------------------ infer


def _as_text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for v in values.ravel().tolist()], dtype=object)


def _labels(values: Any, what: str) -> np.ndarray:
    y = np.asarray(values)
    if y.ndim > 1:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        else:
            raise TfprodError(f"{what} has {y.shape[1:]} values per example; expected one label "
                              "per example (a class or a number)")
    if y.dtype.kind in "OSU":
        return _as_text(y)
    if y.dtype.kind not in "biuf":
        raise TfprodError(f"{what} holds {y.dtype} values; expected numbers or strings")
    return y


def _describe_values(values: np.ndarray) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else f"{v:g}" for v in values[:5])
    return shown + (", ..." if len(values) > 5 else "")


def infer_task(
    train: Any,
    validation: Any = None,
    *,
    label: str | None = None,
    task: str | None = None,
    num_classes: int | None = None,
) -> LabelTask:
    """Reads the task from the labels (see the module docstring for the rules).

    Args:
        train: the training labels (array-like, one per example).
        validation: the validation labels, if any: they take part in the class list (a class
            seen only there is still a class) but not in the regression statistics.
        label: the label's name, for messages and the result.
        task: ``"classification"`` or ``"regression"`` to override the inference.
        num_classes: the number of classes, for integer class ids ``0..num_classes-1``.

    Returns:
        A :class:`LabelTask`.

    Raises:
        TfprodError: missing labels, a single class, a constant target, an id-like label, or a
            contradiction between the labels and ``task`` / ``num_classes``.
    """
    what = f"label {label!r}" if label else "the label"
    if task is not None and task not in TASKS:
        raise TfprodError(f"--task {task}; expected classification or regression")
    if num_classes is not None:
        if num_classes < 2:
            raise TfprodError(f"--num-classes {num_classes}; expected at least 2 classes")
        if task == "regression":
            raise TfprodError(f"--num-classes {num_classes} with --task regression; a "
                              "regression has no classes: drop one of them")
        task = "classification"
    y_train = _labels(train, what)
    y_all = y_train
    if validation is not None:
        y_val = _labels(validation, f"{what} (validation)")
        if (y_val.dtype.kind == "O") != (y_train.dtype.kind == "O"):
            raise TfprodError(f"{what} holds strings in one of the training and validation data "
                              "and numbers in the other; use the same kind of labels in both")
        y_all = np.concatenate([y_train, y_val])
    n = len(y_all)
    if n == 0:
        raise TfprodError(f"{what}: no examples; expected at least two labelled examples")
    text = y_all.dtype.kind == "O"
    missing = int(np.sum(y_all == "")) if text else int(np.sum(~np.isfinite(
        y_all.astype(np.float64))))
    if missing:
        raise TfprodError(f"{what} is missing in {missing} of {n} examples (empty or NaN); fill "
                          "in those labels or drop those rows before training")
    values = np.unique(y_all)
    k = len(values)
    whole = text or bool(np.all(values == np.round(values.astype(np.float64))))
    if k == 1:
        one = repr(values[0]) if text else f"{values[0]:g}"
        if task == "regression" or not whole:
            raise TfprodError(f"{what} is constant ({one} in all {n} examples): there is nothing "
                              "to learn; check the column, or that the data is not filtered to "
                              "one value")
        raise TfprodError(f"{what} has a single class ({one} in all {n} examples); a "
                          "classifier needs examples of at least two classes")
    # An id: text or integer-typed, a different value in every row. Float-typed whole numbers
    # (prices written as 151.0) are measurements, however distinct.
    if k == n and n >= MIN_ROWS_FOR_ID and (text or y_all.dtype.kind in "iu") \
            and task != "regression":
        raise TfprodError(f"{what} has a different value in every one of its {n} examples "
                          f"({_describe_values(values)}): it looks like an id, not a target; "
                          "pass the real target with --label NAME" +
                          ("" if text else ", or --task regression if it is a measured value"))
    if text:
        if task == "regression":
            raise TfprodError(f"{what} holds strings ({_describe_values(values)}); a regression "
                              "needs numbers: drop --task regression or choose a numeric label")
        names = tuple(str(v) for v in values)
        if num_classes is not None and num_classes != k:
            raise TfprodError(f"--num-classes {num_classes}, but {what} names {k} classes "
                              f"({_describe_values(values)}); drop --num-classes or fix the labels")
        return LabelTask("binary" if k == 2 else "multiclass", label, names,
                         reason=f"{what} holds {k} names ({_describe_values(values)})")
    if task == "classification" and not whole:
        frac = next(v for v in values if v != round(float(v)))
        raise TfprodError(f"{what} holds fractional values (e.g. {frac:g}); classes are integers "
                          "or names: use --task regression, or a label of class ids")
    if task == "regression" or not whole:
        y = y_train.astype(np.float64)
        mean, std = float(y.mean()), float(y.std())
        if std == 0:
            raise TfprodError(f"{what} is constant ({y[0]:g}) in the training data: there is "
                              "nothing to learn; check the column or the split")
        why = (f"{what} holds {k} distinct numbers ({values[0]:g}..{values[-1]:g})"
               + ("" if task == "regression" else ", fractional"))
        return LabelTask("regression", label, mean=mean, std=std, reason=why)
    ints = values.astype(np.int64)
    ids = list(ints) == list(range(k))
    if num_classes is not None:
        outside = ints[(ints < 0) | (ints >= num_classes)]
        if outside.size:
            raise TfprodError(f"{what} has the value {outside[0]} outside --num-classes "
                              f"{num_classes} (class ids 0..{num_classes - 1}); raise "
                              "--num-classes, or drop it to take the labels' own classes")
        classes = tuple(range(num_classes))
        why = f"--num-classes {num_classes}; {what} holds {k} of them"
    elif ids or k <= MAX_CODED_CLASSES or task == "classification":
        classes = tuple(int(v) for v in ints)
        span = f"{ints[0]}..{ints[-1]}"
        why = (f"{what} holds {k} integer values {span}" + ("" if ids else
               " (class codes; the model answers with them)"))
    else:
        y = y_train.astype(np.float64)
        return LabelTask("regression", label, mean=float(y.mean()), std=float(y.std()),
                         reason=f"{what} holds {k} distinct whole numbers ({ints[0]}..{ints[-1]}),"
                                " too many to be classes; --task classification to classify")
    return LabelTask("binary" if len(classes) == 2 else "multiclass", label, classes,
                     reason=why)


def label_values(dataset: Any, *, limit: int | None = None) -> np.ndarray:
    """The labels of a dataset of ``(x, y)`` batches, in order, as one numpy array."""
    parts: list[np.ndarray] = []
    n = 0
    for element in dataset:
        y = np.asarray(element[1])
        parts.append(y.reshape(len(y), -1)[:, 0] if y.ndim > 1 else y.reshape(-1))
        n += len(parts[-1])
        if limit is not None and n >= limit:
            break
    if not parts:
        return np.zeros([0])
    return np.concatenate(parts)


def check_same_columns(train: Sequence[str], validation: Sequence[str], *, train_path: str,
                       validation_path: str) -> None:
    """Refuses validation data whose columns (features) differ from the training data's."""
    if list(train) == list(validation):
        return
    missing = [c for c in train if c not in validation]
    extra = [c for c in validation if c not in train]
    if not missing and not extra:
        return  # the same columns in another order: read by name
    parts = ([f"lacks {missing}"] if missing else []) + ([f"adds {extra}"] if extra else [])
    raise TfprodError(f"--validation {validation_path} has other columns than --data "
                      f"{train_path}: it {' and '.join(parts)}; give both the same columns")
