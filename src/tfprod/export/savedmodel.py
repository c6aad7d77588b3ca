"""Versioned SavedModel export in TF Serving's layout, published atomically.

``export_saved_model(model, "models/digits")`` writes ``models/digits/<version>/``::

    saved_model.pb, variables/, assets/, fingerprint.pb     (tf.saved_model.save)
    assets.extra/tf_serving_warmup_requests                (with reference data)
    assets.extra/tfprod/reference_stats.json               (with reference data)
    assets.extra/tfprod/reference_sample.npz               (with reference data)

The ``serving_default`` signature takes the model's inputs by their names (``image``; a tabular
model's column names) with the batch dimension ``None``, runs the model with ``training=False``
(its preprocessing layers included: raw pixels or raw CSV values in), and returns the outputs
named after the output layers (``probabilities``), not Keras' ``output_0``; a classifier trained
on the user's labels also returns its predicted ``classes`` by name (:mod:`tfprod.export.task`).
Extra signatures are
added through ``keras.export.ExportArchive``. Before the version is published, the written
SavedModel is loaded back and checked against the Keras model on the reference examples.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.data.task import LabelTask
from tfprod.errors import TfprodError
from tfprod.export.embedding import EMBEDDING, penultimate, signature_embedder
from tfprod.export.examples import Examples, collect_examples
from tfprod.export.publish import check_base, fsync_tree, publish, staging_dir, version_exists
from tfprod.export.ragged import (
    RaggedInput,
    RaggedServingInputs,
    ragged_reference,
    verify_ragged,
)
from tfprod.export.reference import (
    reference_stats,
    write_reference_sample,
    write_reference_stats,
)
from tfprod.export.signature import (
    ServingInputs,
    check_batch_dimension,
    describe,
    name_outputs,
    output_names,
    serving_inputs,
)
from tfprod.export.task import CLASSES_OUTPUT, class_values, predicted_classes, write_task
from tfprod.export.warmup import (
    MAX_WARMUP_RECORDS,
    WARMUP_FILE,
    read_warmup_requests,
    write_warmup_requests,
)
from tfprod.models.target import find_task

SERVING_DEFAULT = "serving_default"
CLASSES = "classes"
#: Examples compared between the exported signature and the Keras model before publishing.
VERIFY_EXAMPLES = 64
_PREDICT_BATCH = 256
_ENDPOINT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").fullmatch


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_saved_model` published.

    Attributes:
        path: the version folder, ``base_path/<version>``.
        version: its number.
        base_path: the folder of versions (what TF Serving's ``--model_base_path`` names).
        signature: ``serving_default`` as ``{"inputs": {name: {"dtype", "shape"}},
            "outputs": {...}}``.
        endpoints: every signature key -> the same description.
        warmup_requests: requests in ``assets.extra/tf_serving_warmup_requests`` (0: no file).
        reference_examples: examples behind the reference statistics (0: no file).
        size_bytes: bytes of the version folder.
        seconds: time the export took.
        files: what -> path of each file written beside the SavedModel.
    """

    path: str
    version: int
    base_path: str
    signature: dict[str, Any]
    endpoints: dict[str, Any]
    warmup_requests: int
    reference_examples: int
    size_bytes: int
    seconds: float
    files: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def folder_size(path: str) -> int:
    """Bytes of every file under ``path``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _classifier_task(model: keras.Model, names: list[str]) -> LabelTask | None:
    """The task of a one-output classifier with a Target layer (it gets a ``classes``
    output), else ``None``."""
    task = find_task(model)
    if task is None or not task.classification or len(names) != 1 or CLASSES_OUTPUT in names:
        return None
    return task


def serving_outputs(model: keras.Model, inputs: ServingInputs, tensors: Any,
                    names: list[str]) -> dict[str, Any]:
    """What ``serving_default`` returns: the named outputs, and for a classifier trained on
    the user's labels the predicted ``classes`` (see :mod:`tfprod.export.task`)."""
    out = name_outputs(model(inputs.structure(tensors), training=False), names)
    task = _classifier_task(model, names)
    if task is not None:
        out[CLASSES_OUTPUT] = predicted_classes(task, out[names[0]])
    return out


def _serve(model: keras.Model, inputs: ServingInputs, names: list[str]) -> Callable:
    def serve(*tensors):
        return serving_outputs(model, inputs, tensors, names)

    return serve


def _top_k(model: keras.Model, inputs: ServingInputs, k: int) -> Callable:
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or (outputs[0].shape[-1] or 0) < 2:
        shapes = [tuple(o.shape) for o in outputs]
        raise TfprodError(f"top_k={k} needs one output of shape (batch, classes); the model's "
                          f"outputs are {shapes}")
    if k < 1:
        raise TfprodError(f"top_k={k}; expected a positive number of classes")
    k = min(k, outputs[0].shape[-1])
    task = _classifier_task(model, output_names(model))

    def classes(*tensors):
        scores = model(inputs.structure(tensors), training=False)
        top = tf.math.top_k(scores, k=k)
        if task is not None and task.named:  # the class names (or codes) the labels use
            return {"classes": tf.gather(class_values(task), top.indices), "scores": top.values}
        return {"classes": tf.cast(top.indices, tf.int64), "scores": top.values}

    return classes


def _user_endpoint(model: keras.Model, inputs: ServingInputs, name: str, fn: Any) -> Callable:
    def endpoint(*tensors):
        out = fn(inputs.structure(tensors))
        if isinstance(out, dict):
            return out
        flat = out if isinstance(out, list | tuple) else [out]
        return {name if len(flat) == 1 else f"{name}_{i}": t for i, t in enumerate(flat)}

    return endpoint


def _traced_specs(fn: Any) -> list[tf.TensorSpec]:
    concrete = fn._list_all_concrete_functions()
    if not concrete:
        return []
    return [s for s in tf.nest.flatten(concrete[0].structured_input_signature)
            if isinstance(s, tf.TensorSpec)]


def _add_user_endpoints(archive: Any, model: keras.Model, inputs: ServingInputs,
                        endpoints: Mapping[str, Any]) -> None:
    for name, fn in endpoints.items():
        if not _ENDPOINT_NAME(name) or name in (SERVING_DEFAULT, CLASSES):
            raise TfprodError(f"extra endpoint name {name!r}; expected a Python identifier "
                              f"other than {SERVING_DEFAULT!r} and {CLASSES!r}")
        if not callable(fn):
            raise TfprodError(f"extra endpoint {name!r} is a {type(fn).__name__}; expected a "
                              "tf.function or a callable taking the model's inputs")
        if isinstance(fn, tf.types.experimental.GenericFunction) and (
                fn.input_signature is not None or fn._list_all_concrete_functions()):
            specs = fn.input_signature or _traced_specs(fn)
            for i, spec in enumerate(tf.nest.flatten(specs)):
                check_batch_dimension(spec.name or f"{name} argument {i}", spec.shape)
            archive.add_endpoint(name, fn)  # keeps its own signature
        else:
            archive.add_endpoint(name, _user_endpoint(model, inputs, name, fn),
                                 input_signature=list(inputs.specs))


def build_archive(model: keras.Model, *, top_k: int | None = None,
                  extra_endpoints: Mapping[str, Any] | None = None,
                  input_signature: Any = None,
                  ragged_inputs: Mapping[str, RaggedInput] | None = None) -> Any:
    """A ``keras.export.ExportArchive`` with ``serving_default`` and the asked extras.

    ``write_out(path)`` on it writes the SavedModel. See :func:`export_saved_model`.
    """
    inputs = serving_inputs(model, input_signature)
    names = output_names(model, inputs)
    if ragged_inputs:
        inputs = RaggedServingInputs(inputs, dict(ragged_inputs))
    archive = keras.export.ExportArchive()
    archive.track(model)  # lookup tables (StringLookup, IntegerLookup) need explicit tracking
    archive.add_endpoint(SERVING_DEFAULT, _serve(model, inputs, names),
                         input_signature=list(inputs.specs))
    if top_k is not None:
        archive.add_endpoint(CLASSES, _top_k(model, inputs, top_k),
                             input_signature=list(inputs.specs))
    _add_user_endpoints(archive, model, inputs, extra_endpoints or {})
    return archive


def predict(model: keras.Model, inputs: ServingInputs, batch: Mapping[str, np.ndarray],
            *, batch_size: int = _PREDICT_BATCH) -> dict[str, np.ndarray]:
    """The Keras model's named outputs on examples given by signature input name."""
    names = output_names(model, inputs)
    n = len(next(iter(batch.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        tensors = [tf.constant(batch[k][start:start + batch_size]) for k in inputs.names]
        out = serving_outputs(model, inputs, tensors, names)
        for k, v in out.items():
            parts.setdefault(k, []).append(keras.ops.convert_to_numpy(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _agree(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    if got.dtype.kind in "OSU" or want.dtype.kind in "OSU":
        return bool(np.array_equal(got, want))
    return bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))


def _verify(loaded: Any, examples: Examples, expected: Mapping[str, np.ndarray],
            warmup_path: str | None) -> None:
    """The exported signature must agree with the Keras model and run every warmup request."""
    fn = loaded.signatures[SERVING_DEFAULT]
    n = min(len(examples), VERIFY_EXAMPLES)
    served = fn(**{k: tf.constant(v) for k, v in examples.take(0, n).items()})
    for name, want in expected.items():
        got, want = served[name].numpy(), want[:n]
        if not _agree(got, want):
            diff = (f"shape {got.shape} vs {want.shape}" if got.shape != want.shape
                    else "values differ" if got.dtype.kind in "OSU"
                    else float(np.max(np.abs(got.astype(np.float64) - want))))
            raise TfprodError(
                f"the exported serving signature disagrees with the Keras model on output "
                f"{name!r} (max difference {diff}); a layer behaves differently when traced: "
                "check custom layers' call() for Python-side state")
    if warmup_path:
        for request in read_warmup_requests(warmup_path):
            fn(**{k: tf.constant(v) for k, v in request["inputs"].items()})


def _check_version(version: Any) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 0):
        raise TfprodError(f"version={version!r}; expected a non-negative integer or None "
                          "(the next free number)")


def export_saved_model(
    model: keras.Model,
    base_path: str | os.PathLike,
    *,
    version: int | None = None,
    overwrite: bool = False,
    reference_data: Any = None,
    warmup: int = 4,
    top_k: int | None = None,
    extra_endpoints: Mapping[str, Any] | None = None,
    input_signature: Any = None,
    ragged_inputs: Mapping[str, RaggedInput] | None = None,
    embedding: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Exports ``model`` as ``base_path/<version>/``, a SavedModel TF Serving can load.

    The version is written to a hidden folder in ``base_path``, loaded back and checked,
    fsynced, then renamed to its number: a reader never sees a half-written version and a
    failed export leaves none (see :mod:`tfprod.export.publish`).

    Args:
        model: a built functional or Sequential Keras model whose inputs have a ``None``
            batch dimension.
        base_path: the folder of versions; created if missing. It may hold only numbered
            version folders.
        version: the number to publish as; default: the largest existing version + 1 (or 1).
        overwrite: replace ``version`` if it exists (swapped atomically).
        reference_data: a sample of the training data: an array, a dict of arrays, ``(x, y)``,
            or a batched ``tf.data.Dataset`` of ``x`` or ``(x, y)``, in the raw form the model
            takes. Used for the warmup requests, the reference statistics (first 10,000
            examples; see :mod:`tfprod.export.reference`) and the check before publishing.
        warmup: warmup requests to write from ``reference_data`` (1, 2, 4, ... examples each);
            0 writes none.
        top_k: also add a ``classes`` signature returning the ``top_k`` class indices
            (``classes``, int64) and their ``scores`` (one-output classifiers).
        extra_endpoints: name -> extra signature: a ``tf.function`` with an input signature
            (kept as is), or a callable that takes the model's inputs (a tensor, or a dict for
            a multi-input model) and returns a tensor or a dict of named tensors. An
            ``embedding`` endpoint's outputs on the reference sample are kept with it.
        input_signature: the serving inputs, for a model whose inputs Keras cannot name: a
            ``tf.TensorSpec``, a list, or a dict of name -> ``tf.TensorSpec`` (a subclassed
            model taking a dict). Default: from ``keras.Input``, or for a subclassed model
            the shapes recorded at its first call.
        ragged_inputs: model input name -> :class:`~tfprod.export.ragged.RaggedInput`: the
            signature takes that input as variable-length lists (``NAME.values`` and
            ``NAME.row_lengths``), checks their lengths, pads them and the model masks the
            padding. ``reference_data`` then gives each such input as a list of 1-D arrays;
            it is used for the check before publishing (no warmup requests or statistics).
        embedding: add an ``embedding`` endpoint, the model's penultimate layer
            (:func:`tfprod.export.embedding.penultimate`), unless ``extra_endpoints`` has one.
        progress: called with a short description of each stage.

    Returns:
        An :class:`ExportResult`.

    Raises:
        TfprodError: a model without a ``None`` batch dimension; a base path that is a file or
            holds a non-numeric folder; an existing ``version`` without ``overwrite``;
            reference data that does not fit the model; an export whose signature disagrees
            with the Keras model.

    Example:

    >>> result = export_saved_model(model, "models/digits", reference_data=(x_train, y_train))
    >>> result.path, result.signature["outputs"]
    ('models/digits/1', {'probabilities': {'dtype': 'float32', 'shape': [None, 10]}})
    """
    start = time.perf_counter()
    say = progress or (lambda stage: None)
    if not isinstance(model, keras.Model):
        raise TfprodError(f"got a {type(model).__name__}; expected a keras.Model")
    _check_version(version)
    base = os.fspath(base_path)
    inputs = serving_inputs(model, input_signature)
    if not 0 <= warmup <= MAX_WARMUP_RECORDS:
        raise TfprodError(f"warmup={warmup}; expected 0 to {MAX_WARMUP_RECORDS} requests")
    versions = check_base(base)
    if version is not None and version in versions and not overwrite:
        raise version_exists(base, version)
    extra_endpoints = dict(extra_endpoints or {})
    if embedding and EMBEDDING not in extra_endpoints:
        embedder = penultimate(model)
        if embedder is None:
            raise TfprodError(f"embedding=True but model {model.name!r} has no penultimate "
                              "[batch, d] vector (one output whose head is a layer with "
                              "weights on one vector); pass extra_endpoints={'embedding': ...}")
        extra_endpoints[EMBEDDING] = embedder
    ragged = RaggedServingInputs(inputs, dict(ragged_inputs)) if ragged_inputs else None
    examples, predictions, ragged_examples = None, None, None
    if reference_data is not None and ragged is not None:
        ragged_examples = ragged_reference(reference_data, ragged)
    elif reference_data is not None:
        say("reading reference data")
        examples = collect_examples(reference_data, inputs)
        say(f"predicting {len(examples)} reference examples")
        predictions = predict(model, inputs, examples.inputs)
    with staging_dir(base) as tmp:
        say("writing SavedModel")
        build_archive(model, top_k=top_k, extra_endpoints=extra_endpoints,
                      input_signature=input_signature,
                      ragged_inputs=ragged_inputs).write_out(tmp, verbose=False)
        files, requests = _write_extras(tmp, examples, predictions, os.path.basename(
            os.path.abspath(base)), warmup)
        task = find_task(model)
        if task is not None:
            files["task"] = write_task(tmp, task)
        say("loading it back to check it")
        loaded = tf.saved_model.load(tmp)
        endpoints = {k: describe(f) for k, f in sorted(loaded.signatures.items())}
        if examples is not None:
            _verify(loaded, examples, predictions, files.get("warmup"))
            embed = signature_embedder(loaded)
            if embed is not None:
                say("embedding the reference sample")
            files["reference_sample"] = write_reference_sample(
                tmp, examples.inputs, predictions, examples.labels, embed=embed)
        if ragged_examples is not None:
            verify_ragged(loaded.signatures[SERVING_DEFAULT], model, ragged, ragged_examples,
                          output_names(model, inputs))
        del loaded
        say("publishing")
        fsync_tree(tmp)
        path, version = publish(tmp, base, version, overwrite=overwrite)
    return ExportResult(
        path=path, version=version, base_path=base, signature=endpoints[SERVING_DEFAULT],
        endpoints=endpoints, warmup_requests=requests,
        reference_examples=(len(examples) if examples is not None else
                            ragged_examples[0] if ragged_examples is not None else 0),
        size_bytes=folder_size(path), seconds=time.perf_counter() - start,
        files={k: os.path.join(path, os.path.relpath(v, tmp)) for k, v in files.items()})


def _write_extras(tmp: str, examples: Examples | None, predictions: Any, model_name: str,
                  warmup: int) -> tuple[dict[str, str], int]:
    """Warmup requests and reference statistics into ``tmp/assets.extra``."""
    files: dict[str, str] = {}
    if examples is None:
        return files, 0
    requests = 0
    if warmup:
        path = os.path.join(tmp, WARMUP_FILE)
        requests = write_warmup_requests(path, examples.inputs, model_name=model_name,
                                         signature_name=SERVING_DEFAULT, count=warmup)
        files["warmup"] = path
    stats = reference_stats(examples.inputs, predictions, examples.labels)
    files["reference_stats"] = write_reference_stats(tmp, stats)
    return files, requests  # the reference sample is written once the export loads back
