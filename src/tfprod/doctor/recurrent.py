"""Exploding gradients in recurrent layers: the gradient through time, measured and explained.

Backpropagation through T time steps multiplies by the recurrent Jacobian T times, so a recurrent
kernel whose spectral radius is above 1 (with an unbounded activation such as ReLU, or a large
initialization) grows the gradient like radius^T. The measurement is the gradient norm of each
recurrent layer's weights on one batch (from the gradient check); the explanation is the
recurrent kernel's spectral radius (SimpleRNN) and the sequence length.
"""

from __future__ import annotations

import math

import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.gradients import EXPLODING, Gradients
from tfprod.doctor.probe import Probe

_RNN = ("SimpleRNN", "LSTM", "GRU", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def _recurrent_layers(model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False)
            if type(layer).__name__ in _RNN and layer.trainable_variables]


def _norm(grads: Gradients, layer) -> float:
    prefix = layer.path + "/"
    parts = [n for p, n in grads.norms.items() if p.startswith(prefix) and n is not None]
    if not parts:
        return 0.0
    if not all(math.isfinite(n) for n in parts):
        return math.inf
    return math.sqrt(sum(n * n for n in parts))


def _spectral_radius(layer) -> float | None:
    cell = getattr(layer, "cell", None)
    kernel = getattr(cell, "recurrent_kernel", None)
    if kernel is None or type(layer).__name__ != "SimpleRNN":
        return None  # LSTM/GRU kernels stack their gates: no single recurrent matrix
    w = np.asarray(kernel.numpy(), np.float64)
    return float(np.max(np.abs(np.linalg.eigvals(w))))


def _steps(layer) -> int | None:
    try:
        return layer.input.shape[1]
    except (AttributeError, ValueError, IndexError, TypeError):
        return None


def _clipped(optimizer) -> bool:
    return optimizer is not None and any(
        getattr(optimizer, a, None) for a in ("clipnorm", "global_clipnorm", "clipvalue"))


def check_recurrent(probe: Probe, grads: Gradients) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (the model has a trainable recurrent layer)."""
    layers = _recurrent_layers(probe.model)
    if not layers:
        return [], False
    norms = {layer.name: _norm(grads, layer) for layer in layers}
    exploding = [layer for layer in layers if not norms[layer.name] <= EXPLODING]
    if not exploding:
        return [], True
    clipped = _clipped(probe.optimizer)
    parts = []
    radii = {}
    for layer in exploding[:4]:
        radius = _spectral_radius(layer)
        steps = _steps(layer)
        activation = getattr(getattr(layer, "cell", None), "activation", None)
        act = getattr(activation, "__name__", "") if activation is not None else ""
        text = f"{layer.name!r} ({type(layer).__name__}"
        text += f", {act}" if act else ""
        text += f", {steps} steps" if steps else ""
        text += f"): gradient norm {norms[layer.name]:.2g}"
        if radius is not None:
            radii[layer.name] = radius
            text += f", recurrent kernel spectral radius {radius:.2f}"
            if radius > 1 and steps:
                text += f" (radius^steps = {radius ** steps:.1e})"
        parts.append(text)
    evidence = ("; ".join(parts) + f" (exploding: > {EXPLODING:g}): backpropagation through "
                "time multiplies the gradient by the recurrent weights at every step, so one "
                "step of training rewrites the weights or turns them NaN"
                + ("; the optimizer clips gradients, which keeps the steps bounded"
                   if clipped else "; the optimizer does not clip gradients"))
    return [Finding(
        "recurrent_gradients", "warning" if clipped else "error",
        "exploding gradients in a recurrent layer", evidence,
        "clip gradients (optimizer clipnorm=1.0 or global_clipnorm=1.0); keep the recurrent "
        "activation bounded (tanh) and the recurrent initializer orthogonal (Keras' default); "
        "prefer LSTM/GRU over SimpleRNN; shorten or truncate long sequences",
        {"gradient_norm": norms, "spectral_radius": radii, "clipped": clipped})], True
