"""``optimize``: build every variant of a model, measure them side by side, recommend two.

Example::

    from tfprod.optimize.compare import optimize

    report = optimize(model, (x_train, y_train), (x_test, y_test), out_dir="variants")
    for rec in report.recommendations:
        print(rec.target, rec.variant, rec.reason)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export.litert import check_examples, single_input
from tfprod.export.predict import KerasPredictor
from tfprod.optimize import measure
from tfprod.optimize.report import OptimizeReport, VariantResult, plot, recommend
from tfprod.optimize.variants import DEFAULT_VARIANTS, Variant, VariantBuilder, check_names

Progress = Callable[[str, int, int], None]


def optimize(model, train, test, *, out_dir: str | os.PathLike, max_drop: float = 1.0,
             variants: Sequence[str] = DEFAULT_VARIANTS, runs: int = 200,
             prune_epochs: int = 8, png: str | os.PathLike | None = None,
             progress: Progress | None = None) -> OptimizeReport:
    """Builds each variant of ``model``, loads it back and measures it on ``test``.

    Measured per variant: file and gzip size, batch-1 p50/p99 latency over ``runs`` calls,
    batch-64 throughput, and the model's compiled metric on the whole test set (accuracy in
    percentage points), with its change against the model as given.

    Args:
        model: a trained Keras model with one input, or with named numeric columns (a model
            trained on a CSV file), whose variants then take the columns stacked in one tensor
            (see :func:`one_tensor`); not modified.
        train: ``(x, y)`` arrays or a dataset of ``(x, y)`` batches: int8 calibration samples
            and pruning fine-tuning.
        test: the same for the test set.
        out_dir: where the variants are written (see :mod:`tfprod.optimize.variants`).
        max_drop: the accuracy budget of the recommendations (points of the metric).
        variants: names from :data:`~tfprod.optimize.variants.DEFAULT_VARIANTS` or
            ``prunedNN-<kind>``.
        runs: timed batch-1 calls per variant.
        prune_epochs: fine-tuning epochs of each pruned variant.
        png: also plot size vs latency (coloured by the metric) to this PNG.
        progress: called with ``(description, variants done, total)``.

    Returns:
        An :class:`~tfprod.optimize.report.OptimizeReport`.

    Raises:
        TfprodError: unknown variants, data that does not fit the model, ``max_drop < 0``.
    """
    names = check_names(list(variants))
    model, train, test, layout = one_tensor(model, train, test)
    if max_drop < 0:
        raise TfprodError(f"max_drop={max_drop}; expected a non-negative number of points")
    if runs < 1:
        raise TfprodError(f"runs={runs}; expected a positive number of timed calls")
    shape = tuple(single_input(model).shape[1:])
    train = measure.labelled_arrays("training", train)
    x_test, y_test = measure.labelled_arrays("test", test)
    check_examples(train[0], shape, what="the training data")
    check_examples(x_test, shape, what="the test data")
    start = time.perf_counter()
    metric = measure.model_metric(model)
    reference = metric(y_test, measure.predict_all(KerasPredictor(model), x_test))
    results = []
    with VariantBuilder(model, train, out_dir, prune_epochs=prune_epochs) as builder:
        for i, name in enumerate(names):
            if progress is not None:
                progress(f"building {name}", i, len(names))
            variant = builder.build(name)
            if layout:
                variant.notes.insert(0, layout)
            if progress is not None:
                progress(f"measuring {name}", i, len(names))
            results.append(_measure(variant, x_test, y_test, metric, reference, runs))
        if progress is not None:
            progress("done", len(names), len(names))
    report = OptimizeReport(
        model=model.name, metric=metric.name, reference=reference, max_drop=max_drop,
        results=results, recommendations=recommend(results, max_drop=max_drop,
                                                    metric=metric.name),
        test_examples=len(x_test), seconds=time.perf_counter() - start)
    if png is not None:
        report.plot = plot(report, png)
    return report


def _measure(variant: Variant, x: np.ndarray, y: np.ndarray, metric: measure.Metric,
             reference: float, runs: int) -> VariantResult:
    predict = variant.predict
    value = metric(y, measure.predict_all(predict, x))
    lat = measure.latency(predict, x[:1], runs=runs)
    return VariantResult(
        name=variant.name, format=variant.format, path=variant.path,
        file_bytes=measure.file_size(variant.path), gzip_bytes=measure.gzip_size(variant.path),
        p50_ms=lat.p50_ms, p99_ms=lat.p99_ms, throughput=measure.throughput(predict, x),
        metric=value, change=value - reference, drop=metric.drop(reference, value),
        notes=variant.notes, unquantized_ops=variant.unquantized_ops,
        sparsity=variant.sparsity)


def one_tensor(model, train, test):
    """``(model, train, test, note)`` with one input tensor.

    A model that takes named numeric columns (``tfprod train`` on a CSV file) is wrapped: the
    wrapper takes the columns stacked as ``[batch, columns]`` in the model's input order and
    feeds them to it by name; ``train`` and ``test`` are stacked the same way. LiteRT models
    here take one input tensor, and the timing loops slice one array. ``note`` says so (empty
    for a model with one input already).

    Raises:
        TfprodError: a text column (a ``StringLookup`` has no LiteRT int8 kernels here) or a
            column of several values per example.
    """
    import keras

    from tfprod.export.signature import serving_inputs

    inputs = serving_inputs(model)
    if inputs.kind == "tensor":
        return model, train, test, ""
    odd = [n for n, s in zip(inputs.names, inputs.specs, strict=True)
           if s.dtype.name == "string" or tuple(s.shape[1:]) != (1,)]
    if odd:
        raise TfprodError(f"model {model.name!r} takes text or multi-value column(s) {odd[:5]}; "
                          "optimize builds variants of models whose inputs are one tensor or "
                          "numeric columns: export it with tfprod export and serve it as it is")
    names = list(inputs.names)
    x = keras.Input((len(names),), name="columns")
    columns = {n: keras.ops.cast(x[:, i:i + 1], s.dtype.name)
               for i, (n, s) in enumerate(zip(names, inputs.specs, strict=True))}
    wrapper = keras.Model(x, model(columns), name=model.name)
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if config:
        wrapper.compile_from_config(config)

    def stack(data, what):
        if isinstance(data, tuple | list) and len(data) == 2:
            parts = [data]
        else:
            parts = list(data.as_numpy_iterator())
        xs = [np.stack([np.asarray(p[0][n], np.float32).reshape(-1) for n in names], axis=1)
              for p in parts]
        ys = [np.asarray(p[1]) for p in parts]
        if not xs:
            raise TfprodError(f"the {what} data is empty")
        return np.concatenate(xs), np.concatenate(ys)

    note = (f"takes the {len(names)} columns stacked in one tensor, in the order "
            f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    return wrapper, stack(train, "training"), stack(test, "test"), note
