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
from tfprod.export.batches import check_named
from tfprod.export.litert import check_examples, input_shapes
from tfprod.export.predict import KerasPredictor
from tfprod.optimize import measure
from tfprod.optimize.report import OptimizeReport, VariantResult, plot, recommend
from tfprod.optimize.variants import (
    DEFAULT_VARIANTS,
    Variant,
    VariantBuilder,
    VariantRefused,
    check_names,
)

Progress = Callable[[str, int, int], None]


def optimize(model, train, test, *, out_dir: str | os.PathLike, max_drop: float = 1.0,
             variants: Sequence[str] = DEFAULT_VARIANTS, runs: int = 200,
             prune_epochs: int = 8, png: str | os.PathLike | None = None,
             progress: Progress | None = None) -> OptimizeReport:
    """Builds each variant of ``model``, loads it back and measures it on ``test``.

    Measured per variant: file and gzip size, batch-1 p50/p99 latency over ``runs`` calls,
    batch-64 throughput, and the model's compiled metric on the whole test set (accuracy in
    percentage points), with its change against the model as given.

    A variant that cannot be built for this model (XLA with string inputs, a LiteRT kind
    whose ops LiteRT's builtins lack) is left out with its reason in ``report.refused``; the
    other variants are still built.

    Args:
        model: a trained Keras model (not modified): one input, or several named inputs.
        train: ``(x, y)`` arrays or a dataset of ``(x, y)`` batches (``x`` a dict by input
            name for several inputs): int8 calibration samples and pruning fine-tuning.
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
    if max_drop < 0:
        raise TfprodError(f"max_drop={max_drop}; expected a non-negative number of points")
    if runs < 1:
        raise TfprodError(f"runs={runs}; expected a positive number of timed calls")
    shapes = input_shapes(model)
    train = measure.labelled_arrays("training", train)
    x_test, y_test = measure.labelled_arrays("test", test)
    for x, what in ((train[0], "the training data"), (x_test, "the test data")):
        if len(shapes) == 1 and not isinstance(x, dict):
            check_examples(x, next(iter(shapes.values())), what=what)
        else:
            check_named(x if isinstance(x, dict) else {next(iter(shapes)): x}, shapes,
                        what=what)
    start = time.perf_counter()
    metric = measure.model_metric(model)
    reference = metric(y_test, measure.predict_all(KerasPredictor(model), x_test))
    results, refused = [], []
    with VariantBuilder(model, train, out_dir, prune_epochs=prune_epochs) as builder:
        for i, name in enumerate(names):
            if progress is not None:
                progress(f"building {name}", i, len(names))
            try:
                variant = builder.build(name)
            except VariantRefused as e:  # this variant only: the others are still built
                refused.append((name, str(e)))
                continue
            if progress is not None:
                progress(f"measuring {name}", i, len(names))
            results.append(_measure(variant, x_test, y_test, metric, reference, runs))
        if progress is not None:
            progress("done", len(names), len(names))
    report = OptimizeReport(
        model=model.name, metric=metric.name, reference=reference, max_drop=max_drop,
        results=results, recommendations=recommend(results, max_drop=max_drop,
                                                    metric=metric.name),
        test_examples=len(y_test), seconds=time.perf_counter() - start, refused=refused)
    if png is not None:
        report.plot = plot(report, png)
    return report


def _measure(variant: Variant, x: np.ndarray, y: np.ndarray, metric: measure.Metric,
             reference: float, runs: int) -> VariantResult:
    predict = variant.predict
    value = metric(y, measure.predict_all(predict, x))
    lat = measure.latency(predict, x, runs=runs)
    return VariantResult(
        name=variant.name, format=variant.format, path=variant.path,
        file_bytes=measure.file_size(variant.path), gzip_bytes=measure.gzip_size(variant.path),
        p50_ms=lat.p50_ms, p99_ms=lat.p99_ms, throughput=measure.throughput(predict, x),
        metric=value, change=value - reference, drop=metric.drop(reference, value),
        notes=variant.notes, unquantized_ops=variant.unquantized_ops,
        sparsity=variant.sparsity)
