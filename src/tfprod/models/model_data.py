"""Data shaped for a model: ``(x, y)`` batches from an image folder, a TFRecord folder or a CSV
file, read at the model's input size and with its labels encoded as its loss takes them
(``tfprod doctor``, ``export``, ``optimize``)."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.models.target import find_task

_CHANNELS = {1: "grayscale", 3: "rgb", 4: "rgba"}


def _single_input(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return inputs[0] if inputs and len(inputs) == 1 else None


def load_data(path: str | os.PathLike, *, model: keras.Model, label: str | None = None,
              batch_size: int = 32, seed: int = 0, validation_split: float | None = None,
              subset: str | None = None) -> tf.data.Dataset:
    """``(x, y)`` batches from an image folder, a TFRecord folder or a CSV file, for ``model``.

    Image folders are read at the model's input size and channels. A model with one input
    gets the one feature of a TFRecord folder, or a CSV's numeric columns stacked in order; a
    model with named inputs gets the features by name. A model trained by ``tfprod train``
    knows its label (the default for ``label``) and how its labels are encoded (class names
    to indices, the shape of its head), so the raw labels of the data come out as its loss
    takes them. ``validation_split`` and ``subset`` read one side of the hashed split (see
    :mod:`tfprod.data.split`), e.g. the rows ``tfprod train`` held out.
    """
    split = {"validation_split": validation_split, "subset": subset}
    from tfprod.data import image_folder, read_csv, read_tfrecords
    from tfprod.data.schema import SCHEMA_FILE

    p = os.fspath(path)
    if not os.path.exists(p):
        raise TfprodError(f"--data {p}: no such file or folder")
    single = _single_input(model)
    task = find_task(model)
    if os.path.isdir(p) and not os.path.exists(os.path.join(p, SCHEMA_FILE)):
        shape = None if single is None else tuple(single.shape[1:])
        if shape is None or len(shape) != 3 or shape[2] not in _CHANNELS or None in shape[:2]:
            raise TfprodError(f"--data {p} is an image folder but the model's input is "
                              f"{shape if shape is not None else 'not one fixed tensor'}; "
                              "expected (height, width, 1|3|4)")
        ds = image_folder(p, shape[:2], batch_size=batch_size, color_mode=_CHANNELS[shape[2]],
                          seed=seed, **split)
        if task is None:
            return ds
        encode = task.encoder(indexed=True)
        return ds.map(lambda x, y: (x, encode(y)))
    label = label or (task.label if task is not None else None)
    if os.path.isdir(p):
        ds = read_tfrecords(p, batch_size=batch_size, label=label or _default_label(p), seed=seed,
                            **split)
    elif p.lower().endswith(".csv"):
        if label is None:
            raise TfprodError(f"--data {p}: which column is the label? pass --label NAME")
        ds = read_csv(p, label=label, batch_size=batch_size, seed=seed, **split)
    else:
        raise TfprodError(f"--data {p}: expected an image folder, a TFRecord folder (with "
                          "schema.json) or a .csv file")
    if task is not None:
        encode = task.encoder()
        ds = ds.map(lambda x, y: (x, encode(y)))
    features = ds.element_spec[0]
    if single is None or not isinstance(features, dict):
        return ds
    if len(features) == 1:
        dtype = single.dtype
        return ds.map(lambda x, y: (tf.cast(next(iter(x.values())), dtype), y))
    numeric = [k for k, s in features.items() if s.dtype.is_floating or s.dtype.is_integer]
    width = single.shape[-1]
    if len(single.shape) == 2 and len(numeric) == width == len(features):
        return ds.map(lambda x, y: (tf.stack([tf.cast(x[k], tf.float32) for k in numeric],
                                             axis=-1), y))
    raise TfprodError(f"--data {p} has features {list(features)[:8]}... but the model takes one "
                      f"input of shape {tuple(single.shape)}; use a model with named inputs "
                      "(tfprod.data.preprocessing) or select the features in a module:function")


def _default_label(path: str) -> str:
    from tfprod.data import Schema

    schema = Schema.load(path)
    if "label" in schema.features:
        return "label"
    raise TfprodError(f"--data {path}: which feature is the label? pass --label NAME "
                      f"(features: {list(schema.features)})")
