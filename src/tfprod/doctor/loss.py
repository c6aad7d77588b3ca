"""The loss against the output: activation/loss/label pairing, and the loss at initialization.

A fresh classifier that predicts every class equally has a cross-entropy of ``ln C`` (``ln 2``
per unit for binary cross-entropy); a much higher initial loss means the network starts out
confidently wrong (too large an initialization scale, unnormalized inputs, a biased output).
"""

from __future__ import annotations

import math

import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe
from tfprod.doctor.task import Task

_CE = ("sparse_ce", "ce", "bce")


def _f(severity: str, title: str, evidence: str, fix: str, **values) -> Finding:
    return Finding("loss_pairing", severity, title, evidence, fix, values)


def check_pairing(task: Task) -> list[Finding]:
    """Output activation vs loss vs label mismatches, most specific first."""
    out: list[Finding] = []
    loss, act, units, labels = task.loss_kind, task.output, task.units, task.labels
    what = f"output: {act} over {units} unit(s), {task.output_source}; loss: {task.loss_name}"
    single_label = labels in ("sparse", "onehot")
    if act == "softmax" and units == 1:
        out.append(_f("error", "softmax on a single output unit",
                      f"{what}: a softmax over one unit always outputs 1.0, so the loss has no "
                      "gradient and the model predicts one class",
                      "binary: Dense(1, activation='sigmoid') with binary_crossentropy; or "
                      "Dense(2, activation='softmax') with sparse_categorical_crossentropy"))
    if loss == "regression" and single_label and (act in ("softmax", "sigmoid") or units > 1):
        out.append(_f("error", "MSE-type loss on class labels",
                      f"{what}; labels are {labels} class labels: a regression loss compares "
                      "class indices with probabilities" +
                      (" (and broadcasts [batch] against [batch, classes])"
                       if labels == "sparse" and units > 1 else ""),
                      "use sparse_categorical_crossentropy for integer labels (or "
                      "categorical_crossentropy for one-hot) with a softmax output"))
    if loss == "regression" and units == 1 and task.class_ids:
        low, high = task.label_range
        out.append(_f("error", "regression loss on integer class ids",
                      f"{what}; labels are {task.label_dtype} ids {low:g}..{high:g} "
                      f"({task.label_distinct} values): a regression loss treats class "
                      f"{int(low) + 2} as lying between classes {int(low) + 1} and "
                      f"{int(low) + 3} and predicts averages of ids, not classes",
                      f"classify: Dense({task.label_distinct}, activation='softmax') with "
                      "sparse_categorical_crossentropy; if the ids really are counts or an "
                      "ordinal scale, cast them to float32 (this check then stays quiet)",
                      label_range=list(task.label_range), distinct=task.label_distinct))
    if act == "sigmoid" and units > 1 and single_label:
        out.append(_f("error", f"sigmoid on a {units}-class output",
                      f"{what}; each example has exactly one class ({labels} labels), but "
                      "sigmoid scores each class independently: the outputs do not sum to 1 "
                      "and are not class probabilities",
                      f"use Dense({units}, activation='softmax') with "
                      + ("sparse_categorical_crossentropy" if labels == "sparse"
                         else "categorical_crossentropy")
                      + " (sigmoid + binary_crossentropy is for multi-label data)"))
    if loss == "bce" and act == "softmax" and units > 1:
        out.append(_f("error", "binary cross-entropy on a softmax output",
                      f"{what}: binary cross-entropy treats the {units} classes as independent "
                      "yes/no questions (and its 'accuracy' is inflated by the easy 'no's)",
                      "use categorical_crossentropy (one-hot labels) or "
                      "sparse_categorical_crossentropy (integer labels)"))
    if loss in _CE and task.from_logits and act in ("softmax", "sigmoid"):
        out.append(_f("warning", f"{act} output with from_logits=True",
                      f"{what}, from_logits=True: the loss applies a {act} again to "
                      "probabilities. Keras 3 on TensorFlow quietly reads the logits behind a "
                      f"final {act}, so it trains here, but not on JAX/PyTorch, nor once any "
                      "op follows the activation",
                      f"either drop the {act} (output logits) and keep from_logits=True, or keep "
                      "it and set from_logits=False"))
    if loss in _CE and not task.from_logits and act in ("linear", "other"):
        out.append(_f("error", "logits given to a loss that expects probabilities",
                      f"{what}, from_logits=False: the loss clips the raw outputs into (0, 1) "
                      "and takes their log, so negative scores get no gradient",
                      "pass from_logits=True to the loss (best), or add a "
                      + ("sigmoid" if loss == "bce" else "softmax") + " activation to the output"))
    if loss == "sparse_ce" and labels == "onehot":
        out.append(_f("error", "one-hot labels with a sparse loss",
                      f"{what}; labels are one-hot [batch, {units}] but sparse_categorical_"
                      "crossentropy expects integer class indices [batch]",
                      "use categorical_crossentropy, or give labels as indices "
                      "(argmax them, or label_mode='int')"))
    if loss == "ce" and labels == "sparse" and units > 1:
        out.append(_f("error", "integer labels with categorical_crossentropy",
                      f"{what}; labels are integer class indices but categorical_crossentropy "
                      f"expects one-hot [batch, {units}]",
                      "use sparse_categorical_crossentropy (no one-hot encoding needed)"))
    if loss == "sparse_ce" and units == 1 and act != "softmax":
        out.append(_f("error", "sparse categorical cross-entropy on one output unit",
                      f"{what}: with one unit there is one class, index 0",
                      "binary: binary_crossentropy with Dense(1, activation='sigmoid')"))
    if loss == "bce" and labels == "sparse" and units > 1:
        out.append(_f("error", "binary cross-entropy with integer class labels",
                      f"{what}; labels are class indices [batch] against {units} outputs",
                      "use sparse_categorical_crossentropy with a softmax output"))
    continuous = labels == "continuous" and not (
        loss == "bce" and task.label_range is not None and task.label_range[0] >= 0
        and task.label_range[1] <= 1)  # targets in [0, 1] are soft labels for BCE
    if loss in _CE and continuous:
        span = (f" in [{task.label_range[0]:.3g}, {task.label_range[1]:.3g}]"
                if task.label_range else "")
        effect = {"sparse_ce": "sparse_categorical_crossentropy truncates them to integer "
                               "class ids",
                  "bce": "binary cross-entropy needs targets in [0, 1]",
                  "ce": "categorical_crossentropy needs one-hot or probability targets"}[loss]
        out.append(_f("error", "classification loss on continuous targets",
                      f"{what}; labels are continuous values{span} "
                      f"({task.label_distinct if task.label_distinct <= 1000 else '1000+'} "
                      f"distinct), not classes: {effect}",
                      "use a regression loss (mean_squared_error, huber) with a linear "
                      "Dense(1) output, or bin the targets into classes first"))
    return out


def expected_initial_loss(task: Task) -> tuple[float, str] | None:
    """The loss of uniform predictions, and how it is written; ``None`` if not a classifier."""
    if task.loss_kind in ("sparse_ce", "ce") and task.units > 1 and task.labels in (
            "sparse", "onehot", "soft"):
        return math.log(task.units), f"ln({task.units})"
    if task.loss_kind == "bce" and task.labels in ("sparse", "onehot", "multihot", "soft"):
        return math.log(2), "ln(2)"
    return None


def check_initial_loss(probe: Probe, *, n: int = 512) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran."""
    expected = expected_initial_loss(probe.task)
    if expected is None:
        return [], False
    value, formula = expected
    x, y = probe.take(n)
    y_pred = probe.model(x, training=False)
    total = float(probe.loss(x, y, y_pred))
    extra = probe.model.losses
    reg = float(sum(float(np.sum(t)) for t in extra)) if extra else 0.0
    loss = total - reg
    numbers = {"loss": loss, "expected": value, "regularization": reg}
    if not math.isfinite(loss):
        return [Finding("init_loss", "error", "loss is NaN/Inf at initialization",
                        f"the loss on {len(np.asarray(y))} clean examples is {loss}",
                        "look for log(0) or division by zero in a custom loss or layer, and for "
                        "huge initial weights", numbers)], True
    p = np.asarray(y_pred, np.float64)
    conf = ""
    if probe.task.output == "softmax" and p.ndim == 2:
        conf = f"; it puts on average {np.mean(p.max(axis=1)):.2f} probability on its top class"
        numbers["mean_top_probability"] = float(np.mean(p.max(axis=1)))
    severity = None
    if loss > 3 * value and loss - value > 1.0:
        severity = "error"
    elif loss > 1.5 * value and loss - value > 0.3:
        severity = "warning"
    if severity is None:
        return [], True
    reg_note = f" (plus {reg:.3g} of regularization)" if reg else ""
    return [Finding(
        "init_loss", severity, "loss at initialization far above chance",
        f"initial loss {loss:.3g}{reg_note} vs {formula} = {value:.3g} for uniform predictions: "
        f"the untrained model is confidently wrong{conf}",
        "keep Keras' default initializers (glorot_uniform; he_normal before ReLU) at their scale, "
        "start the output bias at 0, and normalize the inputs", numbers)], True
