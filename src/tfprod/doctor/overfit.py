"""Can the model memorize one small batch? If not, the model or the loss is broken.

Any network with enough capacity drives the loss on a handful of examples to near zero within
a few hundred steps. The check uses a known-good optimizer (Adam at 1e-3, then at 1e-2) rather than
the model's own, so it tests the model and loss, not the learning rate (which has its own check).
When the model cannot, and it has dropout, noise layers or weight/activity penalties, it tries
again with all of them switched off: if the batch is memorized then, the regularization is the
cause, and the finding names the layers and penalties.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe
from tfprod.doctor.steps import Stepper, restore, snapshot

BATCH = 16
CHECK_EVERY = 25
#: tried in turn: the usual default, then a bolder rate for small, slow-to-fit models.
LEARNING_RATES = (1e-3, 1e-2)
#: success: the loss falls below this fraction of its start.
TARGET = 0.2


#: layer attribute that sets how much noise a regularizing layer adds in training.
_NOISE_ATTRS = {"Dropout": "rate", "SpatialDropout1D": "rate", "SpatialDropout2D": "rate",
                "SpatialDropout3D": "rate", "GaussianDropout": "rate", "AlphaDropout": "rate",
                "GaussianNoise": "stddev"}


def regularizers(model) -> list[tuple[object, str, str, object]]:
    """What regularizes ``model`` in training: ``(owner, attribute, description, value)``."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        attr = _NOISE_ATTRS.get(type(layer).__name__)
        value = getattr(layer, attr, 0) if attr else 0
        if attr and value and float(value) > 0:
            found.append((layer, attr, f"{type(layer).__name__}({attr}={float(value):g}) "
                                       f"{layer.name!r}", value))
        if getattr(layer, "activity_regularizer", None) is not None:
            found.append((layer, "activity_regularizer",
                          f"activity penalty {_describe(layer.activity_regularizer)} on "
                          f"{layer.name!r}", layer.activity_regularizer))
    for v in model.trainable_variables:
        if getattr(v, "regularizer", None) is not None:
            found.append((v, "regularizer", f"{_describe(v.regularizer)} on {v.path}",
                          v.regularizer))
    return found


def _describe(regularizer) -> str:
    try:
        config = regularizer.get_config()
    except (AttributeError, NotImplementedError):
        return type(regularizer).__name__
    shown = ", ".join(f"{k}={v:g}" for k, v in config.items() if isinstance(v, float) and v)
    return f"{type(regularizer).__name__}({shown})"


@contextlib.contextmanager
def regularization_off(found):
    """Sets every dropout/noise rate to 0 and removes every penalty, then puts them back."""
    try:
        for owner, attr, _, _ in found:
            setattr(owner, attr, 0.0 if attr in ("rate", "stddev") else None)
        yield
    finally:
        for owner, attr, _, value in found:
            setattr(owner, attr, value)


def _accuracy(probe: Probe, y_pred, y) -> float | None:
    task = probe.task
    if not task.classification or task.labels not in ("sparse", "onehot"):
        return None
    p = np.asarray(y_pred)
    truth = np.asarray(y).reshape(len(p), -1)
    truth = truth[:, 0] if truth.shape[1] == 1 else np.argmax(truth, axis=1)
    if p.ndim == 1 or p.shape[-1] == 1:
        guess = (p.reshape(len(p)) > (0.5 if task.output == "sigmoid" else 0.0)).astype(int)
    else:
        guess = np.argmax(p, axis=-1)
    return float(np.mean(guess == truth))


def data_loss(probe: Probe, x, y, y_pred=None) -> float:
    """The loss without its regularization terms (a penalty can fall while the fit does not)."""
    y_pred = probe.model(x, training=False) if y_pred is None else y_pred
    total = float(probe.loss(x, y, y_pred))
    extra = probe.model.losses
    return total - (float(sum(float(np.sum(t)) for t in extra)) if extra else 0.0)


def _done(start: float, loss: float, acc: float | None) -> bool:
    return math.isfinite(loss) and (loss <= TARGET * start or acc == 1.0)


def _memorize(probe: Probe, x, y, lr: float, start: float, max_steps: int):
    """``(steps, loss, accuracy)`` after training on ``(x, y)`` until done or ``max_steps``."""
    model = probe.model
    stepper = Stepper(model, probe.loss, learning_rate=lr)
    steps, loss, acc = 0, float("nan"), None
    while steps < max_steps:
        for _ in range(CHECK_EVERY):
            stepper(x, y)
        steps += CHECK_EVERY
        y_pred = model(x, training=False)
        loss = data_loss(probe, x, y, y_pred)
        acc = _accuracy(probe, y_pred, y)
        if not math.isfinite(loss) or _done(start, loss, acc):
            break
    return steps, loss, acc


def check_overfit(probe: Probe, *, max_steps: int = 300) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran."""
    model = probe.model
    if not model.trainable_variables:
        return [], False
    x, y = probe.take(BATCH)
    saved = snapshot(model)
    tries = []
    try:
        start = data_loss(probe, x, y)
        for lr in LEARNING_RATES:
            tries.append((lr, *_memorize(probe, x, y, lr, start, max_steps)))
            restore(saved)
            if _done(start, *tries[-1][2:]):
                return [], True
    finally:
        restore(saved)
    lr, steps, loss, acc = min(tries, key=lambda t: t[2] if math.isfinite(t[2]) else math.inf)
    values = {"examples": len(np.asarray(y)), "steps": steps, "learning_rate": lr,
              "loss_before": start, "loss_after": loss, "accuracy": acc}
    acc_note = "" if acc is None else f", accuracy {acc:.0%}"
    rates = " and ".join(f"{r:g}" for r in LEARNING_RATES)
    found = regularizers(model)
    retry = _without_regularization(probe, x, y, found, max_steps) if found else None
    if retry is not None and retry[0]:
        _, lr_off, steps_off, start_off, loss_off, acc_off = retry
        shown = "; ".join(d for _, _, d, _ in found[:6]) + (
            f" (and {len(found) - 6} more)" if len(found) > 6 else "")
        off_note = "" if acc_off is None else f", accuracy {acc_off:.0%}"
        values.update({"regularizers": [d for _, _, d, _ in found],
                       "without": {"learning_rate": lr_off, "steps": steps_off,
                                   "loss_before": start_off, "loss_after": loss_off,
                                   "accuracy": acc_off}})
        return [Finding(
            "regularization", "error", "too much regularization: cannot fit even one batch",
            f"{len(np.asarray(y))} examples, {steps} steps of Adam at {rates}: at best loss "
            f"{start:.3g} -> {loss:.3g}{acc_note}; with {shown} switched off the same batch "
            f"is memorized ({start_off:.3g} -> {loss_off:.3g}{off_note} in {steps_off} steps "
            f"at {lr_off:g})",
            "lower the dropout rates (0.1-0.3 is typical; 0.5 at most, not after every layer) and "
            "the weight penalties (L2 ~1e-4..1e-5); add them back one at a time once the model "
            "fits", values)], True
    tried = (f"; with the regularization ({len(found)} item(s)) switched off it still cannot"
             if retry is not None else "")
    return [Finding(
        "overfit_batch", "error", "cannot overfit one small batch",
        f"{len(np.asarray(y))} examples, {steps} steps of Adam at {rates}: at best loss "
        f"{start:.3g} -> {loss:.3g}{acc_note} (target: below {TARGET:.0%} of the start){tried}; "
        "a working model and loss memorize this easily",
        "the model or loss is broken: fix the causes above first; otherwise check the "
        "output layer and loss pairing, that every layer is connected, and the model's capacity",
        values)], True


def _without_regularization(probe: Probe, x, y, found, max_steps: int):
    """``(memorized, lr, steps, start, loss, accuracy)`` with ``found`` switched off."""
    saved = snapshot(probe.model)
    best = None
    with regularization_off(found):
        try:
            start = data_loss(probe, x, y)
            for lr in LEARNING_RATES:
                steps, loss, acc = _memorize(probe, x, y, lr, start, max_steps)
                restore(saved)
                if _done(start, loss, acc):
                    return True, lr, steps, start, loss, acc
                if best is None or (math.isfinite(loss) and loss < best[4]):
                    best = (False, lr, steps, start, loss, acc)
        finally:
            restore(saved)
    return best
