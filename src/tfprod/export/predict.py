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
from tfprod.export.litert import LiteRTModel, fit_inputs, write_atomic
from tfprod.export.task import CLASSES_OUTPUT, load_task

OUTPUT_FORMATS = (".npy", ".csv", ".jsonl")
_CHANNELS = {1: "grayscale", 3: "rgb", 4: "rgba"}


class Predictor(Protocol):
    """One batch of inputs (numpy; a dict by input name for several) to its outputs (numpy).

    ``example_shape`` is the one input's example shape, or None with several inputs, whose
    shapes are ``input_shapes`` (name -> example shape). A predictor may also have ``task``
    (the :class:`~tfprod.data.task.LabelTask` of a model trained by ``tfprod train``, or
    ``None``).
    """

    example_shape: tuple[int | None, ...] | None

    def __call__(self, x: Any) -> np.ndarray: ...


def _numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(object) if dtype.name == "string" else np.dtype(dtype.as_numpy_dtype)


class KerasPredictor:
    """A Keras model's inference as one traced ``tf.function`` (optionally XLA-compiled).

    Unlike ``model.predict``, a call does no per-call setup: it converts the batch once and runs
    the traced graph, whatever the batch size (the batch dimension is left open). A model with
    several named inputs takes a dict of arrays by name.
    """

    def __init__(self, model, *, jit_compile: bool = False) -> None:
        import tensorflow as tf

        from tfprod.export.signature import serving_inputs
        from tfprod.models.target import find_task

        inputs = serving_inputs(model)
        if len(model.outputs) != 1:
            raise TfprodError(f"model {model.name!r} has {len(model.outputs)} outputs; batched "
                              "prediction writes one output tensor")
        self.model = model
        self.task = find_task(model)
        self._names = inputs.names
        self.input_shapes = {n: tuple(s.shape[1:])
                             for n, s in zip(inputs.names, inputs.specs, strict=True)}
        self._specs = {n: (self.input_shapes[n], _numpy_dtype(s.dtype))
                       for n, s in zip(inputs.names, inputs.specs, strict=True)}
        single = inputs.kind == "tensor"
        self.example_shape = next(iter(self.input_shapes.values())) if single else None
        self.dtype = next(iter(self._specs.values()))[1]
        self.function = tf.function(
            lambda *tensors: model(inputs.structure(tensors), training=False),
            input_signature=list(inputs.specs), jit_compile=jit_compile, reduce_retracing=True)

    def __call__(self, x: Any) -> np.ndarray:
        if self.example_shape is not None and not isinstance(x, dict):
            return self.function(np.asarray(x, self.dtype)).numpy()
        from tfprod.export.batches import check_named

        check_named(x, self.input_shapes, what="the batch")
        fed = fit_inputs(x, self._specs)
        return self.function(*[fed[n] for n in self._names]).numpy()


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
        inputs = {(spec.name or k): spec
                  for k, spec in self.signature.structured_input_signature[1].items()}
        self.input_shapes = {n: tuple(spec.shape[1:]) for n, spec in inputs.items()}
        self._specs = {n: (self.input_shapes[n], _numpy_dtype(spec.dtype))
                       for n, spec in inputs.items()}
        self.input_name = next(iter(inputs))
        self.example_shape = self.input_shapes[self.input_name] if len(inputs) == 1 else None
        self.dtype = self._specs[self.input_name][1]
        self.task = load_task(self.path)
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

        if self.example_shape is not None and not isinstance(x, dict):
            feed = {self.input_name: np.asarray(x, self.dtype)}
        else:
            from tfprod.export.batches import check_named

            check_named(x, self.input_shapes, what="the batch")
            feed = fit_inputs(x, self._specs)
        out = self.signature(**{k: tf.constant(v) for k, v in feed.items()})
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
                batch_size: int = 256, feature: str | None = None) -> Inputs:
    """Batches of a ``.npy`` array, an image folder, a TFRecord folder or a CSV file, in file
    order.

    Image folders are read at the model's image size and channels; a TFRecord folder gives its
    one feature other than ``label`` (or ``feature``). A model with several named inputs reads
    its data with :func:`read_named_inputs`.
    """
    from tfprod.data.schema import SCHEMA_FILE

    path = os.fspath(path)
    if not os.path.exists(path):
        raise TfprodError(f"data {path}: no such file or folder")
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
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


def read_named_inputs(path: str | os.PathLike, shapes: dict[str, Sequence[int | None]], *,
                      batch_size: int = 256) -> Inputs:
    """Batches of ``{input name: array}`` for a model with several named inputs, from a
    ``.npz`` (arrays by name), a TFRecord folder (features by name) or a CSV file (columns by
    name), in file order. Features the model does not take (a label) are left out."""
    from tfprod.data.schema import SCHEMA_FILE

    path = os.fspath(path)
    names = list(shapes)
    if not os.path.exists(path):
        raise TfprodError(f"data {path}: no such file or folder")
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise TfprodError(f"data {path} lacks the model input(s) {missing}; it holds "
                              f"{sorted(arrays)}")
        arrays = {n: arrays[n] for n in names}
        total = len(arrays[names[0]])
        return Inputs(({n: a[i:i + batch_size] for n, a in arrays.items()}
                       for i in range(0, total, batch_size)), total)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, SCHEMA_FILE)):
        from tfprod.data import Schema, read_tfrecords

        schema = Schema.load(path)
        missing = [n for n in names if n not in schema.features]
        if missing:
            raise TfprodError(f"data {path} lacks the model input(s) {missing}; its features "
                              f"are {list(schema.features)}")
        ds = read_tfrecords(path, batch_size=batch_size, features=names, shuffle=False,
                            deterministic=True)
        return Inputs(ds.as_numpy_iterator(), schema.num_examples or None)
    if path.lower().endswith(".csv"):
        from tfprod.data import read_csv

        ds = read_csv(path, columns=names, batch_size=batch_size, shuffle=False,
                      deterministic=True)
        return Inputs(ds.as_numpy_iterator(), None)
    raise TfprodError(f"data {path}: a model with inputs {names} reads a .npz (arrays by "
                      "name), a TFRecord folder or a .csv file with those names")


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


def run_batches(predictor: Predictor, batches: Iterable[np.ndarray], *,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """All outputs of ``predictor`` over ``batches``, and the seconds spent in the model."""
    from tfprod.export.batches import count

    outputs, seconds, done = [], 0.0, 0
    for x in batches:
        start = time.perf_counter()
        outputs.append(np.asarray(predictor(x)))
        seconds += time.perf_counter() - start
        done += count(x)
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
        data: a ``.npy`` array, an image folder or a tfprod TFRecord folder; for a model with
            several named inputs, a ``.npz``, a TFRecord folder or a ``.csv`` with those names.
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
    if predictor.example_shape is None:
        inputs = read_named_inputs(data, predictor.input_shapes, batch_size=batch_size)
    else:
        inputs = read_inputs(data, predictor.example_shape, batch_size=batch_size,
                             feature=feature)
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
