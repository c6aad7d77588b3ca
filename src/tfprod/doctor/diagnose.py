"""``diagnose(model, dataset)``: why a model is not learning, most likely cause first.

Quick mode (the default, seconds) reads a sample of the data once and runs the static and
few-step checks (and, given validation data, compares it with the training data); full mode adds
the learning-rate range test and a short training watch. The model's variables are snapshotted
first and restored at the end, and training steps use fresh optimizers, so the model and its
optimizer are left exactly as they were. A check that crashes on an unusual model is reported in
``report.failed``, never as a finding about the model.
"""

from __future__ import annotations

import numbers
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from tfprod.doctor.activations import check_activations
from tfprod.doctor.batch_norm import check_batch_norm
from tfprod.doctor.batch_order import check_batch_order
from tfprod.doctor.data import check_data, inspect_probe
from tfprod.doctor.finding import DoctorReport, Finding, rank
from tfprod.doctor.gradients import (
    Gradients,
    check_gradient_cut,
    check_gradient_flow,
    check_trainable,
    compute_gradients,
)
from tfprod.doctor.labels import MIN_EXAMPLES as MIN_SIGNAL_EXAMPLES
from tfprod.doctor.labels import check_label_signal
from tfprod.doctor.leakage import check_leakage
from tfprod.doctor.learning_rate import check_learning_rate, check_lr_schedule
from tfprod.doctor.loss import check_initial_loss, check_pairing
from tfprod.doctor.lr_range import check_lr_range
from tfprod.doctor.overfit import check_overfit
from tfprod.doctor.probe import Probe, build_probe, check_dataset, collect, fit_inputs
from tfprod.doctor.recurrent import check_recurrent
from tfprod.doctor.steps import restore, snapshot
from tfprod.doctor.validation import check_overlap, check_shift
from tfprod.doctor.watch import check_watch
from tfprod.errors import TfprodError

MODES = ("quick", "full")
FULL_MIN_EXAMPLES = 40
GRADIENT_BATCH = 64
VALIDATION_EXAMPLES = 1024


class _Run:
    """Runs the checks in order, timing them and keeping their findings."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.findings: list[Finding] = []
        self.passed: list[str] = []
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.progress = progress

    def check(self, name: str, fn: Callable[[], tuple[list[Finding], bool]], *,
              kinds: tuple[str, ...], not_applicable: str = "not applicable") -> None:
        """``fn() -> (findings, ran)``; an unexpected failure is recorded in ``failed``."""
        if self.progress is not None:
            self.progress(name)
        t0 = time.perf_counter()
        try:
            found, ran = fn()
        except TfprodError:
            raise
        except Exception as e:  # a diagnostic must report, not crash, on a user's odd model
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            for kind in kinds:
                self.failed[kind] = f"{type(e).__name__}: {message}"[:300]
            found, ran = [], None
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
        self.findings.extend(found)
        for kind in kinds:
            if ran is None:
                continue
            if not ran:
                self.skip((kind,), not_applicable)
            elif not any(f.check == kind and f.severity != "info" for f in found):
                self.passed.append(kind)

    def skip(self, kinds: tuple[str, ...], reason: str) -> None:
        for kind in kinds:
            self.skipped.setdefault(kind, reason)

    def has_error(self, *checks: str) -> bool:
        return any(f.severity == "error" and f.check in checks for f in self.findings)


def _loss_error(probe: Probe) -> Finding | None:
    x, y = probe.take(min(32, probe.n_finite))
    try:
        value = probe.loss_value(x, y)
    except Exception as e:  # the loss on the model's output: the user's pairing to fix
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Finding("loss_pairing", "error", "the loss cannot be computed on the output",
                       f"{probe.task.loss_name} on the model's output ({probe.task.units} "
                       f"unit(s)) and labels {np.asarray(y).shape[1:] or 'scalar'} fails: "
                       f"{type(e).__name__}: {message}"[:400],
                       "make the labels' shape match the loss: integer labels with sparse_* "
                       "losses, one-hot labels with categorical_crossentropy")
    del value
    return None


def diagnose(
    model,
    dataset,
    *,
    mode: str = "quick",
    loss: Any = None,
    validation_data=None,
    class_weight: dict | None = None,
    plot: str | os.PathLike | None = None,
    max_examples: int = 2048,
    progress: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Finds why ``model`` is not learning on ``dataset``, most likely cause first.

    Args:
        model: a Keras model, compiled with a loss (or pass ``loss``); it is left unchanged.
        dataset: a ``tf.data.Dataset`` of ``(x, y)`` batches, as given to ``fit``.
        mode: ``"quick"`` (seconds: data, loss, gradients, units, labels, learning rate,
            overfitting one batch) or ``"full"`` (adds the learning-rate range test and a
            short training watch).
        loss: a Keras loss (name, function or ``keras.losses.Loss``) for an uncompiled model,
            or to check another loss than the compiled one.
        validation_data: ``(x, y)`` batches of the validation split, as given to ``fit``:
            checked for examples shared with ``dataset`` and for a different distribution, and
            used by the training watch (default: no comparison; the watch holds out 20%).
        class_weight: the ``class_weight`` given to ``fit`` (``{class: weight}``), so the
            class-balance check knows the loss is weighted; weights in ``(x, y, weight)``
            batches are read from the data.
        plot: where full mode writes the range test's curve (PNG); ``None``: no file.
        max_examples: the sample read from ``dataset`` for all checks.
        progress: called with each check's name as it starts.

    Returns:
        A :class:`DoctorReport`; ``report.findings[0]`` is the most likely cause and
        ``report.has_errors`` says whether an error-severity finding exists.

    Raises:
        TfprodError: a dataset that does not fit the model's inputs, a model without a loss,
            a dataset too small for the requested mode, a bad argument.

    Example:
        >>> report = diagnose(model, train_ds)
        >>> print(report.to_markdown())
    """
    if mode not in MODES:
        raise TfprodError(f"mode={mode!r}; expected one of {list(MODES)}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 8:
        raise TfprodError(f"max_examples={max_examples!r}; expected an int >= 8")
    if class_weight is not None and not (isinstance(class_weight, dict) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0
            for v in class_weight.values())):
        raise TfprodError(f"class_weight={class_weight!r}; expected a dict of class index -> "
                          "weight >= 0, as given to fit (e.g. {0: 1.0, 1: 20.0})")
    start = time.perf_counter()
    run = _Run(progress)
    if progress is not None:
        progress("reading data")
    probe = build_probe(model, dataset, loss=loss, max_examples=max_examples,
                        class_weight=None if class_weight is None else {
                            int(k): float(v) for k, v in class_weight.items()})
    if mode == "full" and probe.n_finite < FULL_MIN_EXAMPLES:
        raise TfprodError(f"full mode needs at least {FULL_MIN_EXAMPLES} clean examples (the "
                          f"training watch holds 20% out); the dataset has "
                          f"{probe.n_finite}: pass more data, or use quick mode")
    validation = None
    if validation_data is not None:
        try:
            check_dataset(model, validation_data)
        except TfprodError as e:
            raise TfprodError(f"validation_data: {e}") from None
        sample = collect(validation_data, VALIDATION_EXAMPLES)
        validation = (fit_inputs(model, sample.x), sample.y)
    run.seconds["read"] = round(time.perf_counter() - start, 3)
    artifacts: dict[str, str] = {}
    saved = snapshot(probe.model)
    try:
        with warnings.catch_warnings():
            # Keras warns about what the findings already say (e.g. from_logits after softmax).
            warnings.simplefilter("ignore", UserWarning)
            _quick(run, probe, validation)
            if mode == "full":
                _full(run, probe, validation, plot, artifacts)
    finally:
        restore(saved)
    run.seconds["total"] = round(time.perf_counter() - start, 3)
    _corroborate(run.findings)
    return DoctorReport(model.name, mode, probe.n, rank(run.findings), run.passed, run.skipped,
                        run.seconds, artifacts, run.failed)


def _corroborate(findings: list[Finding]) -> None:
    """A cause whose predicted effect was measured is an error: the measurement confirms it."""
    by_check = {f.check: f for f in findings if f.severity != "info"}
    scale, init = by_check.get("input_scale"), by_check.get("init_loss")
    if scale is not None and init is not None and init.severity == "error" and (
            scale.title != "inputs scaled twice"):
        scale.severity = "error"
        scale.evidence += (f"; the initial loss confirms it ({init.values['loss']:.3g} vs "
                           f"{init.values['expected']:.3g} for uniform predictions)")


def _full(run: _Run, probe: Probe, validation, plot, artifacts: dict[str, str]) -> None:
    if run.has_error("trainable", "loss_pairing"):
        run.skip(("lr_range", "training_watch"), "the model cannot train: fix the errors first")
        return

    def lr_range():
        found, ran, path = check_lr_range(probe, plot_path=plot)
        if path:
            artifacts["learning-rate curve"] = path
        return found, ran

    run.check("lr range", lr_range, kinds=("lr_range",),
              not_applicable="the sweep diverged at once")
    run.check("watch", lambda: check_watch(probe, validation=validation),
              kinds=("training_watch",))


def _quick(run: _Run, probe: Probe, validation) -> None:
    run.check("data", lambda: (check_data(probe, inspect_probe(probe)), True),
              kinds=("data_values", "labels", "input_scale", "class_balance"))
    run.check("leakage", lambda: check_leakage(probe), kinds=("leakage",),
              not_applicable="needs tabular inputs and one label per example")
    run.check("batch order", lambda: check_batch_order(probe), kinds=("batch_order",),
              not_applicable="needs numeric labels and 4+ batches of 2+ examples")
    if validation is None:
        run.skip(("validation_overlap", "validation_shift"), "no validation data given")
    else:
        run.check("validation overlap", lambda: check_overlap(probe, *validation),
                  kinds=("validation_overlap",))
        run.check("validation shift", lambda: check_shift(probe, *validation),
                  kinds=("validation_shift",),
                  not_applicable="needs 30+ clean numeric examples in each set")
    run.check("trainable", lambda: (check_trainable(probe), True), kinds=("trainable",))
    loss_error = _loss_error(probe)
    pairing = check_pairing(probe.task)
    if loss_error is not None and not any(
            f.severity == "error" for f in pairing) and not run.has_error("labels"):
        pairing.append(loss_error)  # otherwise the pairing or label finding explains it
    run.check("loss pairing", lambda: (pairing, probe.task.loss_kind not in ("other", "multi")),
              kinds=("loss_pairing",), not_applicable=f"a loss the doctor does not know "
              f"({probe.task.loss_name})")
    broken_loss = any(f.severity == "error" for f in pairing)
    if loss_error is not None or broken_loss:
        run.skip(("init_loss",), "the loss does not fit the output")
    else:
        run.check("initial loss", lambda: check_initial_loss(probe), kinds=("init_loss",),
                  not_applicable="not a single-output classifier")
    trainable = bool(probe.model.trainable_variables)
    training_checks = ("gradient_cut", "gradient_flow", "recurrent_gradients", "learning_rate",
                       "overfit_batch", "regularization")
    grads: list[Gradients] = []
    if loss_error is not None or broken_loss or not trainable:
        run.skip(training_checks, "no trainable weights" if not trainable else
                 "the loss cannot be computed" if loss_error is not None else
                 "the loss does not fit the output or labels: fix it first")
    else:
        x, y = probe.take(GRADIENT_BATCH)

        def gradient_cut():
            saved = snapshot(probe.model)
            try:
                grads.append(compute_gradients(probe, x, y))
            finally:
                restore(saved)
            return check_gradient_cut(probe, grads[0], x, y), True

        run.check("gradient cut", gradient_cut, kinds=("gradient_cut",))
        if grads:
            run.check("gradient flow", lambda: (check_gradient_flow(grads[0]), True),
                      kinds=("gradient_flow",))
            run.check("recurrent gradients", lambda: check_recurrent(probe, grads[0]),
                      kinds=("recurrent_gradients",), not_applicable="no recurrent layer")
    run.check("batch norm", lambda: check_batch_norm(probe), kinds=("batch_norm",),
              not_applicable="no trainable BatchNormalization")
    run.check("units", lambda: check_activations(probe), kinds=("dead_units", "saturated_units"),
              not_applicable="a subclassed model")
    # Confirming "no signal" trains the model briefly: only meaningful if it can train.
    confirm = not (loss_error or broken_loss or not trainable or run.has_error("gradient_cut"))
    run.check("label signal", lambda: check_label_signal(probe, confirm=confirm),
              kinds=("label_signal",),
              not_applicable=f"needs one output with class labels and {MIN_SIGNAL_EXAMPLES}+ "
              "examples")
    run.check("lr schedule", lambda: check_lr_schedule(probe), kinds=("lr_schedule",),
              not_applicable="a constant learning rate")
    if grads:
        run.check("learning rate", lambda: check_learning_rate(probe, grads[0]),
                  kinds=("learning_rate",), not_applicable="no layer has a gradient")
        run.check("overfit one batch", lambda: check_overfit(probe),
                  kinds=("overfit_batch", "regularization"))
        if any(f.check == "regularization" for f in run.findings) and (
                "overfit_batch" in run.passed):
            run.passed.remove("overfit_batch")  # it failed; the regularization finding says why
