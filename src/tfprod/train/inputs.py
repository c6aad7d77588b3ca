"""What ``tfprod train`` reads: training and validation data of any kind, and the task.

For an image folder, a TFRecord folder or a CSV file, :func:`training_inputs` returns functions
that build the training and validation datasets (functions, so that parameter-server workers
build their own copies from the same files), the task read from the labels
(:func:`tfprod.data.task.infer_task`) and what the model's input side needs.

Validation data is ``validation`` (a second path of the same kind and columns) or a hashed
``validation_split`` of the data (:mod:`tfprod.data.split`): the same rows on every run and on
every worker, never a row on both sides.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.data.task import LabelTask, check_same_columns, infer_task, label_values
from tfprod.errors import TfprodError

_LABEL_BATCH = 4096


@dataclasses.dataclass
class TrainingInputs:
    """The data of one training run.

    Attributes:
        kind: ``"images"``, ``"tfrecord"`` or ``"csv"``.
        task: the task read from the labels.
        batches: ``batches(subset, encoder)`` -> a dataset of ``(x, y)`` batches of the
            ``"training"`` or ``"validation"`` data, labels passed through ``encoder()``
            (called inside, so that its lookup tables belong to the dataset function).
        has_validation: whether there is validation data.
        input_shape: the one input's example shape (images, one TFRecord feature); ``None``
            when the model takes named columns.
        feature: the one TFRecord feature the model takes, if so.
        columns: ``columns()`` -> unshuffled ``(dict, label)`` training batches of raw named
            columns (CSV, several TFRecord features), to adapt preprocessing layers on.
        indexed: labels come as class indices already (image folders).
        split: how validation was made, with row counts and fingerprints of both sides.
    """

    kind: str
    task: LabelTask
    batches: Callable[[str, Callable], tf.data.Dataset]
    has_validation: bool
    input_shape: tuple[int | None, ...] | None = None
    feature: str | None = None
    columns: Callable[[], tf.data.Dataset] | None = None
    indexed: bool = False
    split: dict[str, Any] = dataclasses.field(default_factory=dict)

    def train_fn(self, encoder: Callable) -> Callable[[], tf.data.Dataset]:
        return lambda: self.batches("training", encoder)

    def val_fn(self, encoder: Callable) -> Callable[[], tf.data.Dataset] | None:
        return (lambda: self.batches("validation", encoder)) if self.has_validation else None


def training_inputs(
    data: str,
    *,
    label: str | None = None,
    validation: str | None = None,
    validation_split: float = 0.2,
    batch_size: int = 32,
    image_size: int = 32,
    seed: int = 0,
    task: str | None = None,
    num_classes: int | None = None,
) -> TrainingInputs:
    """Reads what a training run needs from ``data`` (and ``validation``).

    Args:
        data: an image folder, a TFRecord folder (with ``schema.json``) or a ``.csv`` file.
        label: the label column / feature (default: ``label`` when there is one).
        validation: validation data of the same kind and columns; else ``validation_split``.
        validation_split: share of a hashed split held out for validation; 0 for none.
        batch_size, image_size, seed: as ``tfprod train`` takes them.
        task, num_classes: override the task read from the labels.

    Raises:
        TfprodError: a missing path, an unknown kind, validation data that differs from the
            training data, labels that cannot be learned (see :func:`infer_task`).
    """
    if not os.path.exists(data):
        raise TfprodError(f"--data {data}: no such file or folder")
    if validation is not None and not os.path.exists(validation):
        raise TfprodError(f"--validation {validation}: no such file or folder")
    if not 0 <= validation_split < 1:
        raise TfprodError(f"--validation-split {validation_split}; expected a share in [0, 1) "
                          "(0.2 holds out a fifth of the data; 0 trains on all of it)")
    split = validation_split if (validation is None and validation_split > 0) else None
    common = dict(label=label, validation=validation, split=split, batch_size=batch_size,
                  seed=seed, task=task, num_classes=num_classes)
    from tfprod.data.schema import SCHEMA_FILE

    if os.path.isdir(data) and not os.path.exists(os.path.join(data, SCHEMA_FILE)):
        return _images(data, image_size=image_size, **common)
    if os.path.isdir(data):
        return _tfrecords(data, **common)
    if data.lower().endswith(".csv"):
        return _csv(data, **common)
    raise TfprodError(f"--data {data}: expected an image folder, a TFRecord folder or a .csv "
                      "file")


def _describe_split(train, val, validation: str | None, split: float | None) -> dict[str, Any]:
    def side(ds, rows=None):
        info = getattr(ds, "split", None)
        return {"rows": info.rows if info else rows,
                "fingerprint": info.fingerprint if info else None}

    how = (f"--validation {validation}" if validation else
           f"hashed split {split}" if split else "none")
    return {"validation": how, "training": side(train[0], train[1]),
            "held_out": side(val[0], val[1]) if val is not None else None}


def _labels_of(read: Callable[..., tf.data.Dataset], subset: str | None) -> tuple[Any, np.ndarray]:
    ds = read(subset)
    return ds, label_values(ds)


# ------------------------------------------------------------------------------ image folders


def _images(path, *, label, validation, split, batch_size, seed, task, num_classes,
            image_size) -> TrainingInputs:
    from tfprod.data import image_folder, list_image_folder

    del label  # the class folders are the labels
    folder = list_image_folder(path)
    names = list(folder.class_names)
    if validation is not None:
        other = list(list_image_folder(validation).class_names)
        if other != names:
            raise TfprodError(f"--validation {validation} has the class folders {other[:8]}; "
                              f"--data {path} has {names[:8]}; give both the same classes")
    if task == "regression":
        raise TfprodError(f"--data {path} is an image folder (one subfolder per class): a "
                          "classification; drop --task regression")
    if len(names) < 2:
        raise TfprodError(f"--data {path} has a single class folder ({names[0]!r}); a "
                          "classifier needs at least two classes (subfolders)")
    if num_classes is not None and num_classes != len(names):
        raise TfprodError(f"--num-classes {num_classes}, but {path} has {len(names)} class "
                          f"folders; drop --num-classes or fix the folders")
    kind = "binary" if len(names) == 2 else "multiclass"
    label_task = LabelTask(kind, None, tuple(names),
                           reason=f"{len(names)} class folders ({', '.join(names[:5])}"
                                  f"{', ...' if len(names) > 5 else ''})")
    size = (image_size, image_size)

    def batches(subset: str, encoder: Callable) -> tf.data.Dataset:
        encode = encoder()
        if validation is not None:
            ds = image_folder(path if subset == "training" else validation, size,
                              batch_size=batch_size, color_mode="grayscale", seed=seed,
                              shuffle=subset == "training")
        else:
            ds = image_folder(path, size, batch_size=batch_size, color_mode="grayscale",
                              seed=seed, validation_split=split, subset=subset if split else None,
                              shuffle=subset == "training")
        return ds.map(lambda x, y: (x, encode(y)))

    def listing(p, subset):
        f = list_image_folder(p, validation_split=split if p == path else None,
                              subset=subset if (split and p == path) else None)
        digest = hashlib.sha256("\n".join(sorted(os.path.relpath(x, p) for x in f.files))
                                .encode()).hexdigest()[:16]
        return {"rows": len(f.files), "fingerprint": digest}

    described = {"validation": (f"--validation {validation}" if validation else
                                f"hashed split {split}" if split else "none"),
                 "training": listing(path, "training"),
                 "held_out": (listing(validation, None) if validation else
                              listing(path, "validation") if split else None)}
    return TrainingInputs("images", label_task, batches, bool(validation or split),
                          input_shape=(*size, 1), indexed=True, split=described)


# ---------------------------------------------------------------------------------- TFRecords


def _tfrecords(path, *, label, validation, split, batch_size, seed, task, num_classes
               ) -> TrainingInputs:
    from tfprod.data import Schema, read_tfrecords

    schema = Schema.load(path)
    label = label or ("label" if "label" in schema.features else None)
    if label is None:
        raise TfprodError(f"--data {path}: which feature is the label? pass --label NAME "
                          f"(features: {list(schema.features)})")
    if label not in schema.features:
        raise TfprodError(f"--label {label}: no such feature in {path} (features: "
                          f"{list(schema.features)})")
    if validation is not None:
        other = Schema.load(validation)
        check_same_columns(list(schema.features), list(other.features), train_path=path,
                           validation_path=validation)
        differ = [n for n in schema.features if other.features[n] != schema.features[n]]
        if differ:
            n = differ[0]
            raise TfprodError(f"--validation {validation}: feature {n!r} is "
                              f"{other.features[n]}, in --data {path} {schema.features[n]}; "
                              "write both with the same dtypes and shapes")
    spec = schema.features[label]
    if tuple(spec.shape) not in ((), (1,)):
        raise TfprodError(f"--label {label}: the feature holds {tuple(spec.shape)} values per "
                          "example; expected one label per example")
    inputs = [n for n in schema.features if n != label]
    shapes = {n: tuple(schema.features[n].shape) for n in inputs}
    tabular = len(inputs) > 1
    if tabular and any(s not in ((), (1,)) for s in shapes.values()):
        raise TfprodError(f"--data {path}: presets take one input feature or several scalar "
                          f"ones; the schema has {shapes}; use a module:function model")

    def source(subset):
        return validation if (validation and subset == "validation") else path

    def read_labels(subset):
        on_split = subset if split else None
        return read_tfrecords(source(subset), features=[], label=label, shuffle=False,
                              batch_size=_LABEL_BATCH,
                              validation_split=split if on_split else None, subset=on_split)

    train_labels = _labels_of(read_labels, "training")
    val_labels = _labels_of(read_labels, "validation") if (validation or split) else None
    label_task = infer_task(train_labels[1], None if val_labels is None else val_labels[1],
                            label=label, task=task, num_classes=num_classes)

    def read(subset, *, shuffle=True, batch=batch_size):
        on_split = subset if split else None
        return read_tfrecords(source(subset), batch_size=batch, label=label, seed=seed,
                              shuffle=shuffle and subset == "training",
                              validation_split=split if on_split else None, subset=on_split)

    feature, shape = (None, None) if tabular else (inputs[0], shapes[inputs[0]] or (1,))

    def batches(subset, encoder):
        encode = encoder()
        if tabular:
            return read(subset).map(lambda x, y: (x, encode(y)))
        def one_input(x, y):
            value = tf.cast(x[feature], tf.float32)
            if shape == (1,):  # a scalar feature is a column of one
                value = tf.reshape(value, [-1, 1])
            return value, encode(y)

        return read(subset).map(one_input)

    def columns():
        return read("training", shuffle=False, batch=_LABEL_BATCH)

    described = _describe_split((train_labels[0], len(train_labels[1])),
                                None if val_labels is None else
                                (val_labels[0], len(val_labels[1])), validation, split)
    return TrainingInputs("tfrecord", label_task, batches, val_labels is not None,
                          input_shape=shape, feature=feature, columns=columns, split=described)


# ----------------------------------------------------------------------------------------- CSV


def _header(path: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                if row:
                    return row
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # read_csv names the problem
    return []


def _csv(path, *, label, validation, split, batch_size, seed, task, num_classes
         ) -> TrainingInputs:
    from tfprod.data.tabular import read_csv

    header = _header(path)
    label = label or ("label" if "label" in header else None)
    if label is None:
        raise TfprodError(f"--data {path}: which column is the label? pass --label NAME "
                          f"(columns: {header[:12]})")
    if header and label not in header:
        raise TfprodError(f"--label {label}: no such column in {path} (columns: {header[:12]})")
    if validation is not None:
        if not validation.lower().endswith(".csv"):
            raise TfprodError(f"--validation {validation}: expected a .csv file like --data")
        check_same_columns(header, _header(validation), train_path=path,
                           validation_path=validation)

    def source(subset):
        return validation if (validation and subset == "validation") else path

    def read(subset, *, shuffle=True, batch=batch_size, columns=None):
        on_split = subset if split else None
        return read_csv(source(subset), label=label, batch_size=batch, seed=seed,
                        columns=columns, shuffle=shuffle and subset == "training",
                        validation_split=split if on_split else None, subset=on_split)

    train_labels = _labels_of(lambda s: read(s, shuffle=False, batch=_LABEL_BATCH, columns=[]),
                              "training")
    val_labels = (_labels_of(lambda s: read(s, shuffle=False, batch=_LABEL_BATCH, columns=[]),
                             "validation") if (validation or split) else None)
    label_task = infer_task(train_labels[1], None if val_labels is None else val_labels[1],
                            label=label, task=task, num_classes=num_classes)
    if validation is not None:
        _check_column_kinds(read_csv(path, label=label, batch_size=1, shuffle=False),
                            read_csv(validation, label=label, batch_size=1, shuffle=False),
                            path, validation)

    def batches(subset, encoder):
        encode = encoder()
        return read(subset).map(lambda x, y: (x, encode(y)))

    described = _describe_split((train_labels[0], len(train_labels[1])),
                                None if val_labels is None else
                                (val_labels[0], len(val_labels[1])), validation, split)
    return TrainingInputs("csv", label_task, batches, val_labels is not None,
                          columns=lambda: read("training", shuffle=False, batch=_LABEL_BATCH),
                          split=described)


def _check_column_kinds(train: tf.data.Dataset, val: tf.data.Dataset, train_path: str,
                        val_path: str) -> None:
    """Same names are not enough: a column of numbers in one file and text in the other."""
    a, b = train.element_spec[0], val.element_spec[0]
    for name, spec in a.items():
        if (spec.dtype == tf.string) != (b[name].dtype == tf.string):
            kinds = {True: "text", False: "numbers"}
            raise TfprodError(f"--validation {val_path}: column {name!r} holds "
                              f"{kinds[b[name].dtype == tf.string]}, in --data {train_path} "
                              f"{kinds[spec.dtype == tf.string]}; fix the column in one of them")
