"""Is the learning rate in a workable range? The update-to-weight ratio per step says.

``STEPS`` steps of a fresh copy of the model's own optimizer (same class, config and learning
rate) on one batch. Per layer, ``||w_after - w_before|| / ||w_before||`` per step: around 1e-3
is the rule of thumb; above ``HIGH`` the weights are rewritten every step, below ``LOW`` they
hardly move. The loss on the batch before and after the steps confirms it (too high: it does not
fall, or turns NaN; too low: it does not move). Layers without gradient flow are left out, so
dead units do not read as a low learning rate.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.gradients import VANISHING, Gradients, layer_of
from tfprod.doctor.probe import Probe
from tfprod.doctor.steps import Stepper, current_learning_rate, restore, snapshot

STEPS = 10
HIGH, VERY_HIGH, LOW, VERY_LOW = 1e-1, 1.0, 1e-5, 1e-6
TARGET = 1e-3


def _layer_ratios(before: dict[str, np.ndarray], variables) -> dict[str, float]:
    moved: dict[str, float] = {}
    size: dict[str, float] = {}
    for v in variables:
        layer = layer_of(v.path)
        old = before[v.path].astype(np.float64)
        moved[layer] = moved.get(layer, 0.0) + float(np.sum((v.numpy() - old) ** 2))
        size[layer] = size.get(layer, 0.0) + float(np.sum(old ** 2))
    return {k: math.sqrt(moved[k] / size[k]) for k in moved if size[k] > 0}


def _suggest(lr: float, ratio: float) -> float:
    value = lr * TARGET / ratio
    return float(f"{value:.0e}")


def check_learning_rate(probe: Probe, grads: Gradients) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran."""
    model = probe.model
    live = {k for k, n in grads.layer_norms.items() if n >= VANISHING}
    if not model.trainable_variables or not live:
        return [], False
    lr = current_learning_rate(probe.optimizer)
    name = (type(probe.optimizer).__name__ if probe.optimizer is not None else
            "Adam (the model has no optimizer; Keras' default)")
    x, y = probe.take(max(16, min(probe.batch_size, 128)))
    saved = snapshot(model)
    history: dict[str, list[float]] = {}
    nan_at = None
    try:
        stepper = Stepper(model, probe.loss, probe.optimizer, compiled=False)
        variables = stepper.variables
        start = probe.loss_value(x, y)
        for step in range(1, STEPS + 1):
            before = {v.path: np.array(v.numpy()) for v in variables}
            loss = stepper(x, y)
            if not math.isfinite(loss) or not all(np.isfinite(v.numpy()).all()
                                                  for v in variables):
                nan_at = step
                break
            for layer, r in _layer_ratios(before, variables).items():
                if layer in live and r > 0:
                    history.setdefault(layer, []).append(r)
        end = probe.loss_value(x, y) if nan_at is None else float("nan")
    finally:
        restore(saved)
    per_layer = {k: float(np.exp(np.mean(np.log(v)))) for k, v in history.items()}
    ratio = float(np.median(list(per_layer.values()))) if per_layer else 0.0
    change = (start - end) / abs(start) if start and math.isfinite(end) else float("nan")
    values = {"learning_rate": lr, "optimizer": name, "median_update_ratio": ratio,
              "update_ratio": per_layer, "loss_before": start, "loss_after": end,
              "steps": STEPS}
    where = (f"{name} at learning rate {lr:.3g}: median update/weight ratio {ratio:.2g} per step "
             f"(healthy ~{TARGET:g})")
    if nan_at is not None or ratio > VERY_HIGH or (ratio > HIGH and not change > 0.1):
        if nan_at is not None:
            happened = f"the loss or weights became NaN/Inf after {nan_at} step(s)"
        else:
            happened = f"the loss on one batch went {start:.3g} -> {end:.3g} in {STEPS} steps"
        fix = (f"lower it to about {_suggest(lr, ratio):g}" if ratio > 0 and nan_at is None else
               f"lower it 10-100x (to {lr / 30:.1g} or less)")
        return [Finding(
            "learning_rate", "error", "learning rate too high", f"{where}; {happened}",
            f"{fix}; or clip gradients (clipnorm=1.0). `tfprod doctor --full` runs a "
            "learning-rate range test", values)], True
    if ratio < LOW and not abs(change) > 0.01:
        return [Finding(
            "learning_rate", "error" if ratio < VERY_LOW else "warning", "learning rate too low",
            f"{where}; the loss on one batch went {start:.4g} -> {end:.4g} in {STEPS} steps "
            f"({change:+.2%}): the weights hardly move",
            f"raise it to about {_suggest(lr, ratio):g}. `tfprod doctor --full` runs a "
            "learning-rate range test", values)], True
    if ratio > HIGH:
        return [Finding(
            "learning_rate", "info", "learning rate on the high side",
            f"{where}; the loss still fell {start:.3g} -> {end:.3g} in {STEPS} steps",
            "if training turns unstable, lower it or add a warm-up", values)], True
    return [], True


#: a schedule that falls below this fraction of its peak...
SCHEDULE_FLOOR = 0.01
#: ...within this many epochs (or ``SCHEDULE_STEPS`` steps when the epoch length is unknown)
#: stops training early.
SCHEDULE_EPOCHS = 5
SCHEDULE_STEPS = 1000
_HORIZON = 10**7


def _schedule(optimizer):
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return schedule
    return None


def _schedule_at(schedule, steps: np.ndarray) -> np.ndarray:
    try:  # Keras' schedules are element-wise in the step
        out = np.asarray(keras.ops.convert_to_numpy(schedule(steps.astype(np.float32))),
                         np.float64)
        if out.shape == steps.shape:
            return out
    except Exception:  # a custom schedule written for a scalar step
        pass
    return np.array([float(keras.ops.convert_to_numpy(schedule(int(s)))) for s in steps])


def check_lr_schedule(probe: Probe) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (the optimizer has a ``LearningRateSchedule``)."""
    schedule = _schedule(probe.optimizer)
    if schedule is None:
        return [], False
    grid = np.unique(np.concatenate([np.arange(0, 100), np.geomspace(100, _HORIZON, 400)])
                     .astype(np.int64))
    rates = _schedule_at(schedule, grid)
    peak_at = int(np.argmax(rates))
    peak = float(rates[peak_at])
    epoch = probe.steps_per_epoch
    early = SCHEDULE_EPOCHS * epoch if epoch else SCHEDULE_STEPS
    values = {"schedule": type(schedule).__name__, "peak": peak, "peak_step": int(grid[peak_at]),
              "steps_per_epoch": epoch}
    if peak <= 0:
        return [], True
    low = np.flatnonzero((rates <= SCHEDULE_FLOOR * peak) & (np.arange(len(grid)) > peak_at))
    if not len(low):
        return [], True
    # The grid is coarse past step 100: find the first step below the floor exactly.
    lo, hi = int(grid[low[0] - 1]), int(grid[low[0]])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _schedule_at(schedule, np.array([mid]))[0] <= SCHEDULE_FLOOR * peak:
            hi = mid
        else:
            lo = mid
    values.update({"floor_step": hi, "early_step": early})
    if hi > early:
        return [], True
    config = {k: v for k, v in schedule.get_config().items() if isinstance(v, int | float)}
    shown = ", ".join(f"{k}={v:g}" for k, v in config.items())
    when = f"step {hi}" + (f" ({hi / epoch:.1f} epochs of {epoch} batches)" if epoch else "")
    per_epoch = (f"; decay steps count optimizer steps, not epochs: with {epoch} batches per "
                 f"epoch, multiply an epoch count by {epoch}" if epoch else "")
    return [Finding(
        "lr_schedule", "error", "learning-rate schedule decays to ~0 early",
        f"{type(schedule).__name__}({shown}) falls from its peak {peak:.3g} to "
        f"{SCHEDULE_FLOOR:.0%} of it by {when}: after that the weights hardly move and the "
        "loss plateaus wherever it is",
        f"stretch the schedule over the whole training run (decay_steps ~ epochs x steps per "
        f"epoch){per_epoch}; or use CosineDecay(initial_learning_rate, decay_steps=total "
        "steps, alpha=0.01)", values)], True
