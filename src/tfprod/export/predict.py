"""Batched inference over a dataset with any exported variant: the fix for per-sample predict.

A model is a ``.keras`` file, a SavedModel (a version folder, or a TF Serving base folder
``BASE/<version>/``, whose newest version is used) or a ``.tflite`` file. Every kind becomes a
:class:`Predictor`: a callable from one batch (numpy; a dict of columns for a model with named
inputs) to its outputs (numpy). Data is a ``.npy`` array, an image folder, a tfprod TFRecord
folder or a CSV file (models with named inputs), read in order; predictions go to ``.npy``,
``.csv`` or ``.jsonl`` by the output's extension. A model trained by ``tfprod train`` knows its
classes: the ``class`` of each prediction is then the class as the labels wrote it.

Example::

    from tfprod.export.predict import predict

    result = predict("models/digits/1", "digits/test", "predictions.jsonl", batch_size=256)
    print(f"{result.examples_per_second:.0f} examples/s")
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from tfprod.data.task import LabelTask
from tfprod.errors import TfprodError
from tfprod.export.litert import LiteRTModel, single_input, write_atomic
from tfprod.export.task import CLASSES_OUTPUT, load_task

OUTPUT_FORMATS = (".npy", ".csv", ".jsonl")
_CHANNELS = {1: "grayscale", 3: "rgb", 4: "rgba"}


class Predictor(Protocol):
    """One batch of inputs (numpy) to its outputs (numpy).

    A predictor may also have ``input_names`` (the named inputs it takes as a dict of columns;
    ``None`` for one tensor) and ``task`` (the :class:`~tfprod.data.task.LabelTask` of a model
    trained by ``tfprod train``, or ``None``).
    """

    example_shape: tuple[int | None, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def column(values: Any, spec: Any) -> np.ndarray:
    """One named input's batch for a signature spec: ``[batch]`` -> ``[batch, 1]``, its dtype."""
    values = np.asarray(values)
    if values.ndim == len(spec.shape) - 1:
        values = values[..., None]
    if spec.dtype.name == "string":
        return values.astype(object)
    return values.astype(spec.dtype.as_numpy_dtype, copy=False)


class KerasPredictor:
    """A Keras model's inference as one traced ``tf.function`` (optionally XLA-compiled).

    Unlike ``model.predict``, a call does no per-call setup: it converts the batch once and runs
    the traced graph, whatever the batch size (the batch dimension is left open). A model with
    named inputs (a CSV model's columns) takes a dict of columns.
    """

    def __init__(self, model, *, jit_compile: bool = False) -> None:
        import tensorflow as tf

        from tfprod.export.signature import serving_inputs
        from tfprod.models.target import find_task

        if len(model.outputs) != 1:
            raise TfprodError(f"model {model.name!r} has {len(model.outputs)} outputs; batched "
                              "prediction writes one output tensor")
        self.model = model
        self.task = find_task(model)
        inputs = serving_inputs(model)
        if inputs.kind == "tensor":
            inp = single_input(model)
            self.input_names = None
            self.example_shape = tuple(inp.shape[1:])
            self.dtype = np.dtype(inp.dtype)
            spec = tf.TensorSpec((None, *self.example_shape), inp.dtype)
            self.function = tf.function(lambda x: model(x, training=False),
                                        input_signature=[spec], jit_compile=jit_compile,
                                        reduce_retracing=True)
            return
        self.input_names, self.specs = inputs.names, inputs.specs
        self.example_shape = ()

        def call(*tensors):
            return model(inputs.structure(tensors), training=False)

        self.function = tf.function(call, input_signature=list(inputs.specs),
                                    jit_compile=jit_compile)

    def __call__(self, x: Any) -> np.ndarray:
        if self.input_names is None:
            return self.function(np.asarray(x, self.dtype)).numpy()
        return self.function(*[column(x[n], s) for n, s in zip(
            self.input_names, self.specs, strict=True)]).numpy()


class SavedModelPredictor:
    """The ``serving_default`` signature of a SavedModel (``keras.models.load_model`` cannot
    open SavedModels; ``tf.saved_model.load`` can)."""

    def __init__(self, path: str | os.PathLike, *, output: str | None = None) -> None:
        import tensorflow as tf

        self.path = resolve_saved_model(path)
        loaded = tf.saved_model.load(self.path)
        if "serving_default" not in loaded.signatures:
            raise TfprodError(f"{self.path} has no serving_default signature (it has "
                              f"{sorted(loaded.signatures)}); export it with tfprod export or "
                              "model.export(path)")
        self._loaded = loaded  # keeps the signature's variables alive
        self.signature = loaded.signatures["serving_default"]
        inputs = self.signature.structured_input_signature[1]
        self.task = load_task(self.path)
        if len(inputs) == 1:
            (self.input_name, spec), = inputs.items()
            self.input_names = None
            self.example_shape = tuple(spec.shape[1:])
            self.dtype = np.dtype(spec.dtype.as_numpy_dtype)
        else:
            self.input_names = tuple(sorted(inputs))
            self.specs = [inputs[n] for n in self.input_names]
            self.example_shape = ()
        outputs = sorted(self.signature.structured_outputs)
        if output is None and self.task is not None and CLASSES_OUTPUT in outputs \
                and len(outputs) == 2:
            output = next(o for o in outputs if o != CLASSES_OUTPUT)  # classes come from task
        if output is None and len(outputs) != 1:
            raise TfprodError(f"{self.path}: serving_default has outputs {outputs}; choose one "
                              "with output=NAME")
        if output is not None and output not in outputs:
            raise TfprodError(f"{self.path}: no output {output!r}; it has {outputs}")
        self.output_name = output or outputs[0]

    def __call__(self, x: Any) -> np.ndarray:
        import tensorflow as tf

        if self.input_names is None:
            out = self.signature(**{self.input_name: tf.constant(np.asarray(x, self.dtype))})
        else:
            out = self.signature(**{n: tf.constant(column(x[n], s)) for n, s in zip(
                self.input_names, self.specs, strict=True)})
        return out[self.output_name].numpy()


def resolve_saved_model(path: str | os.PathLike) -> str:
    """A SavedModel folder: ``path`` itself, or the newest numeric version inside it."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise TfprodError(f"{path}: no such SavedModel folder")
    versions = [int(d) for d in os.listdir(path)
                if d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
    if not versions:
        raise TfprodError(f"{path} holds no saved_model.pb and no version folder "
                          "(BASE/<version>/saved_model.pb); pass a SavedModel folder")
    return os.path.join(path, str(max(versions)))


def load_predictor(path: str | os.PathLike) -> Predictor:
    """A :class:`Predictor` for a ``.keras`` file, a SavedModel folder or a ``.tflite`` file."""
    from tfprod.export.keras_files import load_keras

    path = os.fspath(path)
    if path.endswith(".tflite"):
        return LiteRTModel.load(path)
    if path.endswith((".keras", ".h5")):
        return KerasPredictor(load_keras(path, compile=False))
    if os.path.isdir(path):
        return SavedModelPredictor(path)
    raise TfprodError(f"model {path}: expected a .keras file, a SavedModel folder or a .tflite "
                      "file")


@dataclasses.dataclass
class Inputs:
    """Batches of one dataset, in a fixed order, with what is known about it up front."""

    batches: Iterable[np.ndarray]
    total: int | None = None
    files: list[str] | None = None


def read_inputs(path: str | os.PathLike, example_shape: Sequence[int | None], *,
                batch_size: int = 256, feature: str | None = None,
                input_names: Sequence[str] | None = None) -> Inputs:
    """Batches of a ``.npy`` array, an image folder, a TFRecord folder or a CSV file, in file
    order.

    Image folders are read at the model's image size and channels; a TFRecord folder gives its
    one feature other than ``label`` (or ``feature``). A model with named inputs
    (``input_names``) gets dicts of those columns from a CSV file or a TFRecord folder; other
    columns (the label) are left out.
    """
    from tfprod.data.schema import SCHEMA_FILE

    path = os.fspath(path)
    if not os.path.exists(path):
        raise TfprodError(f"data {path}: no such file or folder")
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    if input_names is not None:
        return _column_inputs(path, list(input_names), batch_size)
    if path.lower().endswith(".csv"):
        raise TfprodError(f"data {path} is a CSV file; the model takes one input tensor of "
                          f"shape {tuple(example_shape)}: predict from a .npy array, or with a "
                          "model trained on named CSV columns")
    if path.endswith(".npy"):
        x = np.load(path, mmap_mode="r")
        _check_data(x.shape[1:], example_shape, path)
        return Inputs((x[i:i + batch_size] for i in range(0, len(x), batch_size)), len(x))
    if os.path.isdir(path) and os.path.exists(os.path.join(path, SCHEMA_FILE)):
        return _tfrecord_inputs(path, example_shape, batch_size, feature)
    if os.path.isdir(path):
        return _image_inputs(path, example_shape, batch_size)
    raise TfprodError(f"data {path}: expected a .npy array, an image folder or a TFRecord "
                      "folder (with schema.json)")


def _check_data(shape: Sequence[int | None], expected: Sequence[int | None], path: str) -> None:
    fits = len(shape) == len(expected) and all(
        e is None or s is None or int(e) == int(s) for s, e in zip(shape, expected, strict=True))
    if not fits:
        raise TfprodError(f"data {path} has examples of shape {tuple(shape)}; the model takes "
                          f"{tuple(expected)}")


def _image_inputs(path: str, example_shape: Sequence[int | None], batch_size: int) -> Inputs:
    from tfprod.data import image_folder

    shape = tuple(example_shape)
    if len(shape) != 3 or shape[2] not in _CHANNELS or None in shape[:2]:
        raise TfprodError(f"data {path} is an image folder but the model takes {shape}; "
                          "expected (height, width, 1|3|4)")
    ds = image_folder(path, shape[:2], batch_size=batch_size, color_mode=_CHANNELS[shape[2]],
                      label_mode=None, shuffle=False, cache=None, deterministic=True)
    return Inputs(ds.as_numpy_iterator(), len(ds.file_paths), list(ds.file_paths))


def _tfrecord_inputs(path: str, example_shape: Sequence[int | None], batch_size: int,
                     feature: str | None) -> Inputs:
    from tfprod.data import Schema, read_tfrecords

    schema = Schema.load(path)
    if feature is None:
        candidates = [n for n in schema.features if n != "label"]
        if len(candidates) != 1:
            raise TfprodError(f"data {path} has features {list(schema.features)}; choose the "
                              "model's input with --feature NAME")
        feature = candidates[0]
    if feature not in schema.features:
        raise TfprodError(f"data {path}: no feature {feature!r}; it has "
                          f"{list(schema.features)}")
    _check_data(schema.features[feature].shape, example_shape, path)
    ds = read_tfrecords(path, batch_size=batch_size, features=[feature], shuffle=False,
                        deterministic=True)
    batches = (b[feature] for b in ds.as_numpy_iterator())
    return Inputs(batches, schema.num_examples or None)


def _column_inputs(path: str, names: list[str], batch_size: int) -> Inputs:
    from tfprod.data import Schema, read_csv, read_tfrecords
    from tfprod.data.schema import SCHEMA_FILE

    if path.lower().endswith(".csv"):
        ds = read_csv(path, columns=names, batch_size=batch_size, shuffle=False,
                      deterministic=True)
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, SCHEMA_FILE)):
        missing = [n for n in names if n not in Schema.load(path).features]
        if missing:
            raise TfprodError(f"data {path} lacks the model's input(s) {missing}")
        ds = read_tfrecords(path, features=names, batch_size=batch_size, shuffle=False,
                            deterministic=True)
    else:
        raise TfprodError(f"data {path}: the model takes named inputs {names[:8]}; expected a "
                          "CSV file or a TFRecord folder with those columns")
    return Inputs(ds.as_numpy_iterator())


def _rows(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def run_batches(predictor: Predictor, batches: Iterable[np.ndarray], *,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """All outputs of ``predictor`` over ``batches``, and the seconds spent in the model."""
    outputs, seconds, done = [], 0.0, 0
    for x in batches:
        start = time.perf_counter()
        outputs.append(np.asarray(predictor(x)))
        seconds += time.perf_counter() - start
        done += _rows(x)
        if progress is not None:
            progress(done)
    if not outputs:
        raise TfprodError("the data holds no examples")
    return np.concatenate(outputs), seconds


@dataclasses.dataclass
class PredictResult:
    """What :func:`predict` wrote and how fast it ran."""

    path: str
    examples: int
    output_shape: tuple[int, ...]
    seconds: float
    model_seconds: float

    @property
    def examples_per_second(self) -> float:
        """Throughput of reading the data and running the model (loading it not counted)."""
        return self.examples / self.seconds if self.seconds else float("inf")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**dataclasses.asdict(self), "examples_per_second": self.examples_per_second}


def predict(model: str | os.PathLike | Predictor, data: str | os.PathLike,
            out: str | os.PathLike, *, batch_size: int = 256, feature: str | None = None,
            progress: Callable[[int, int | None], None] | None = None) -> PredictResult:
    """Predicts every example of ``data`` in batches and writes the outputs to ``out``.

    Args:
        model: a ``.keras`` file, a SavedModel folder (or TF Serving base folder), a
            ``.tflite`` file, or a :class:`Predictor`.
        data: a ``.npy`` array, an image folder, a tfprod TFRecord folder, or a CSV file (a
            model with named inputs).
        out: ``.npy`` (the output array), ``.csv`` or ``.jsonl`` (one example per row, with its
            file for image folders and its class for classifiers: the argmax, or the class as
            the labels named it for a model trained by ``tfprod train``).
        batch_size: examples per model call.
        feature: the input feature of a TFRecord folder with several.
        progress: called with ``(examples done, total or None)`` after each batch.

    Returns:
        A :class:`PredictResult` (throughput in ``examples_per_second``).

    Raises:
        TfprodError: an unknown output format, an unreadable model, data that does not fit it.
    """
    out = os.fspath(out)
    if not out.endswith(OUTPUT_FORMATS):
        raise TfprodError(f"--out {out}: expected a file ending in {' / '.join(OUTPUT_FORMATS)}")
    predictor = model if callable(model) else load_predictor(model)
    start = time.perf_counter()
    inputs = read_inputs(data, predictor.example_shape, batch_size=batch_size, feature=feature,
                         input_names=getattr(predictor, "input_names", None))
    report = None if progress is None else (lambda n: progress(n, inputs.total))
    outputs, model_seconds = run_batches(predictor, inputs.batches, progress=report)
    seconds = time.perf_counter() - start
    write_predictions(out, outputs, files=inputs.files, task=getattr(predictor, "task", None))
    return PredictResult(out, len(outputs), tuple(outputs.shape), seconds, model_seconds)


def write_predictions(path: str | os.PathLike, outputs: np.ndarray, *,
                      files: Sequence[str] | None = None, task: LabelTask | None = None) -> str:
    """Writes ``outputs`` (one row per example) as ``.npy``, ``.csv`` or ``.jsonl``, atomically.

    The ``class`` column is the argmax of several outputs, or with ``task`` (a model trained by
    ``tfprod train``) the predicted class as its labels name it; a regression has none.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        buffer = io.BytesIO()
        np.save(buffer, outputs)
        return write_atomic(path, buffer.getvalue())
    rows = outputs.reshape(len(outputs), -1)
    if task is not None:
        classes = task.decode(rows) if task.classification else None
    else:
        classes = rows.argmax(axis=1) if rows.shape[1] > 1 else None
    if path.endswith(".csv"):
        text = "".join(_csv_lines(rows, classes, files))
    elif path.endswith(".jsonl"):
        text = "".join(_jsonl_lines(rows, classes, files))
    else:
        raise TfprodError(f"{path}: expected a file ending in {' / '.join(OUTPUT_FORMATS)}")
    return write_atomic(path, text.encode())


def _csv_lines(rows: np.ndarray, classes: np.ndarray | None,
               files: Sequence[str] | None) -> Iterator[str]:
    header = ["index"] + (["file"] if files else []) + (["class"] if classes is not None else [])
    yield ",".join(header + [f"output_{j}" for j in range(rows.shape[1])]) + "\n"
    for i, row in enumerate(rows):
        cells = [str(i)] + ([_csv_cell(files[i])] if files else [])
        cells += [_csv_cell(str(classes[i]))] if classes is not None else []
        yield ",".join(cells + [f"{v:.7g}" for v in row.tolist()]) + "\n"


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _jsonl_lines(rows: np.ndarray, classes: np.ndarray | None,
                 files: Sequence[str] | None) -> Iterator[str]:
    for i, row in enumerate(rows):
        record: dict[str, Any] = {"index": i}
        if files:
            record["file"] = files[i]
        if classes is not None:
            value = classes[i]
            record["class"] = value if isinstance(value, str) else int(value)
        record["output"] = [float(v) for v in row.tolist()]
        yield json.dumps(record) + "\n"
