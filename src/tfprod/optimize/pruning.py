"""Magnitude pruning for Keras 3 models: a sparsity schedule, masks that hold, a strip for export.

tensorflow-model-optimization prunes only tf_keras (Keras 2) models, and importing it switches the
process to Keras 2; Keras 3 has no pruning. This module prunes a Keras 3 model natively.

How the zeros are held. Each pruned weight gets a non-trainable 0/1 mask variable and a
``keras.constraints.Constraint`` set on the weight variable itself. A Keras 3 optimizer applies
``variable.constraint`` to every trainable variable right after its update, inside the compiled
step (``BaseOptimizer.apply``: update, then ``variable.assign(variable.constraint(variable))``,
then ``iterations += 1``). The constraint

1. on a pruning step of the schedule (read from the optimizer's ``iterations``), ranks the
   *masked* weights by magnitude and zeroes exactly ``round(sparsity * size)`` of the smallest
   (already-pruned weights are zero, so they stay pruned: the mask only ever loses ones while
   the sparsity grows);
2. multiplies the weight by the mask.

So after every optimizer step the pruned weights are exactly zero, whatever the optimizer did to
them: Adam's momentum moves a zeroed weight on the next step, and a callback that re-zeroes once
per batch would only hide that between batches. Because it is part of ``optimizer.apply``, it
works unchanged in ``model.fit``, in :class:`tfprod.train.Trainer` (which calls
``optimizer.apply_gradients``) and under XLA, with no Python per batch. Masks are not model
weights: the pruned model keeps its architecture and weight list, and :func:`strip_pruning`
returns a plain model (no masks, no constraints, no custom objects) for export.

Under a tf.distribute strategy, call :func:`prune_low_magnitude` inside ``strategy.scope()`` so
that the masks are mirrored like the weights; every replica then computes the same mask from the
same (all-reduced) weights.

Example:
    >>> result = prune(model, (x_train, y_train), target_sparsity=0.8)
    >>> result.model.save("pruned.keras")       # zeros in place, loads with plain Keras
    >>> [r.sparsity for r in result.report]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export import batches

#: Layers whose kernels are pruned by default.
PRUNABLE_LAYERS: tuple[type, ...] = (
    keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
)

#: By default a kernel is pruned only if it holds at least this share of the default layers'
#: kernel weights. Small kernels (a first convolution over few input channels, a small classifier
#: head) hold little of the model's size but much of its accuracy: on the digits CNN, pruning
#: all four kernels to 80% cost 6 to 15 accuracy points (by fine-tuning rate); sparing the two
#: below 1% (0.7% of the weights) cost under 1 point.
MIN_SHARE = 0.01

#: The fine-tuning learning rate of :func:`prune`, as a fraction of the model's own.
FINE_TUNE_LR_FACTOR = 0.3

#: The share of :func:`prune`'s fine-tuning steps over which the sparsity ramps up; the rest
#: recovers accuracy with the final masks fixed.
RAMP_FRACTION = 0.6

LayerSelection = Sequence[str] | Callable[[keras.layers.Layer], bool] | None


class PolynomialDecay:
    """The sparsity at a training step: ``s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**power``.

    Sparsity rises from ``initial_sparsity`` at ``begin_step`` to ``final_sparsity`` at
    ``end_step`` and stays there. Masks are updated every ``frequency`` steps from
    ``begin_step`` on, and at ``end_step`` itself, so the final sparsity is always reached.

    Args:
        initial_sparsity: fraction of zeros at ``begin_step``, in [0, 1).
        final_sparsity: fraction of zeros from ``end_step`` on, in [initial_sparsity, 1).
        begin_step: first optimizer step (``optimizer.iterations``, 0-based) that prunes.
        end_step: step at which ``final_sparsity`` is reached; greater than ``begin_step``.
        power: exponent of the decay (3: prune fast while there is much to prune).
        frequency: steps between mask updates, at least 1.

    Raises:
        TfprodError: for values outside these ranges.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, power: float = 3, frequency: int = 100) -> None:
        if not 0.0 <= initial_sparsity < 1.0:
            raise TfprodError(f"initial_sparsity={initial_sparsity!r}; expected a fraction in "
                              "[0, 1)")
        if not initial_sparsity <= final_sparsity < 1.0:
            raise TfprodError(f"final_sparsity={final_sparsity!r}; expected a fraction in "
                              f"[initial_sparsity={initial_sparsity}, 1)")
        if int(begin_step) != begin_step or begin_step < 0:
            raise TfprodError(f"begin_step={begin_step!r}; expected an integer >= 0")
        if int(end_step) != end_step or end_step <= begin_step:
            raise TfprodError(f"begin_step={begin_step}, end_step={end_step}; expected "
                              "begin_step < end_step (the steps over which sparsity rises)")
        if not power > 0:
            raise TfprodError(f"power={power!r}; expected a positive number (3 is usual)")
        if int(frequency) != frequency or frequency < 1:
            raise TfprodError(f"frequency={frequency!r}; expected an integer >= 1 (steps "
                              "between mask updates)")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = float(power)
        self.frequency = int(frequency)

    def __call__(self, step: Any) -> tf.Tensor:
        """The target sparsity (float32 scalar tensor) at ``step``."""
        t = tf.cast(step, tf.float32)
        progress = (t - self.begin_step) / float(self.end_step - self.begin_step)
        remaining = 1.0 - tf.clip_by_value(progress, 0.0, 1.0)
        decay = (self.initial_sparsity - self.final_sparsity) * remaining ** self.power
        return tf.constant(self.final_sparsity, tf.float32) + decay

    def should_prune(self, step: Any) -> tf.Tensor:
        """Whether masks are updated at ``step`` (boolean scalar tensor)."""
        t = tf.cast(step, tf.int64)
        in_range = tf.logical_and(t >= self.begin_step, t <= self.end_step)
        on_turn = tf.logical_or((t - self.begin_step) % self.frequency == 0,
                                t == self.end_step)
        return tf.logical_and(in_range, on_turn)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


def magnitude_mask(weights: Any, sparsity: Any) -> tf.Tensor:
    """A 0/1 mask shaped like ``weights`` that zeroes exactly ``round(sparsity * size)`` of the
    smallest magnitudes (ties broken by position, so the count is exact)."""
    flat = tf.reshape(tf.abs(weights), [-1])
    size = tf.size(flat)
    n_prune = tf.cast(tf.round(tf.cast(sparsity, tf.float32) * tf.cast(size, tf.float32)),
                      tf.int32)
    rank = tf.math.invert_permutation(tf.argsort(flat, stable=True))
    return tf.reshape(tf.cast(rank >= n_prune, weights.dtype), tf.shape(weights))


class MagnitudeMask(keras.constraints.Constraint):
    """The constraint that prunes one weight: updates its mask on schedule, then applies it.

    Set by :func:`prune_low_magnitude` as ``variable.constraint``; not meant to be saved (it is
    removed by :func:`strip_pruning`). A constraint the variable already had runs first.
    """

    def __init__(self, mask: keras.Variable, schedule: PolynomialDecay,
                 optimizer: keras.optimizers.Optimizer, inner: Any = None) -> None:
        self.mask = mask
        self.schedule = schedule
        self.optimizer = optimizer
        self.inner = inner

    def __call__(self, w: Any) -> tf.Tensor:
        if self.inner is not None:
            w = self.inner(w)
        w = tf.convert_to_tensor(w)
        mask = tf.convert_to_tensor(self.mask)
        step = tf.convert_to_tensor(self.optimizer.iterations)
        new_mask = tf.cond(self.schedule.should_prune(step),
                           lambda: magnitude_mask(w * mask, self.schedule(step)),
                           lambda: mask)
        self.mask.assign(new_mask)
        return w * new_mask

    def get_config(self) -> dict[str, Any]:
        return {"schedule": self.schedule.get_config()}


@dataclass(frozen=True)
class PrunedWeight:
    """One weight under pruning: its layer's name, the weight variable and its 0/1 mask."""

    layer: str
    variable: keras.Variable
    mask: keras.Variable


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros in one prunable weight."""

    layer: str
    weight: str
    total: int
    zeros: int
    sparsity: float


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` returns: the stripped, compiled model, its sparsity per weight, and
    the fine-tuning history (``keras.callbacks.History.history``)."""

    model: keras.Model
    report: list[LayerSparsity]
    history: dict[str, list[float]]


# ----------------------------------------------------------------------------- selection

def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    return list(model._flatten_layers(include_self=False, recursive=True))


def _selector(model: keras.Model, layers: LayerSelection) -> Callable[[keras.layers.Layer], bool]:
    if layers is None:
        return lambda layer: isinstance(layer, PRUNABLE_LAYERS)
    if callable(layers):
        return layers
    if isinstance(layers, str):
        layers = [layers]
    names = {layer.name for layer in _layers(model)}
    unknown = sorted(set(layers) - names)
    if unknown:
        raise TfprodError(f"layers {unknown} are not in model {model.name!r}; its layers are "
                          f"{sorted(names)}")
    chosen = set(layers)
    return lambda layer: layer.name in chosen


def prunable_weights(model: keras.Model, layers: LayerSelection = None,
                     ) -> list[tuple[keras.layers.Layer, keras.Variable]]:
    """The weights that pruning would zero: every trainable weight of rank >= 2 (kernels,
    embeddings; never biases or normalization scales) of the selected layers.

    Args:
        model: a built Keras model.
        layers: ``None`` for the kernels of Dense, EinsumDense and convolution layers
            (:data:`PRUNABLE_LAYERS`) that hold at least :data:`MIN_SHARE` of those layers'
            kernel weights; a list of layer names; or a predicate on a layer (e.g.
            ``lambda layer: isinstance(layer, PRUNABLE_LAYERS)`` for every kernel).
    """
    select = _selector(model, layers)
    trainable = {id(v) for v in model.trainable_weights}  # excludes frozen layers' weights
    found = [(layer, v) for layer in _layers(model) if select(layer)
             for v in layer._trainable_variables if id(v) in trainable and len(v.shape) >= 2]
    if layers is None:
        total = sum(int(np.prod(v.shape)) for _, v in found)
        found = [(layer, v) for layer, v in found if np.prod(v.shape) >= MIN_SHARE * total]
    return found


# --------------------------------------------------------------------------- pruning API

def prune_low_magnitude(model: keras.Model, schedule: PolynomialDecay, *,
                        optimizer: keras.optimizers.Optimizer | None = None,
                        layers: LayerSelection = None) -> list[PrunedWeight]:
    """Prunes ``model`` in place while it trains: sets a :class:`MagnitudeMask` on each weight.

    Train as usual (``model.fit`` or :class:`tfprod.train.Trainer`) with ``optimizer``; the
    schedule's steps are that optimizer's ``iterations`` (0 for a fresh one). Then call
    :func:`strip_pruning` for a plain model. Create a ``Trainer`` after this call: it traces
    its step once, with the constraints the variables have then.

    Args:
        model: a built Keras model; it is changed in place (prune a copy to keep the original).
        schedule: when to prune and to what sparsity, e.g. :class:`PolynomialDecay`.
        optimizer: the optimizer that will train it (default: ``model.optimizer``).
        layers: which layers to prune (see :func:`prunable_weights`).

    Returns:
        The pruned weights with their masks.

    Raises:
        TfprodError: no optimizer, no prunable weight, or a weight that is already pruned.
    """
    optimizer = optimizer or getattr(model, "optimizer", None)
    if optimizer is None:
        raise TfprodError(f"model {model.name!r} has no optimizer; compile it first or pass "
                          "optimizer=")
    selected = prunable_weights(model, layers)
    if not selected:
        raise TfprodError(f"model {model.name!r} has no prunable layers (Dense or convolution "
                          "kernels); pass layers= to choose layers by name")
    pruned = []
    for layer, variable in selected:
        if isinstance(variable.constraint, MagnitudeMask):
            raise TfprodError(f"weight {variable.path!r} is already pruned; prune a model once, "
                              "or strip_pruning() it first")
        mask = keras.Variable(np.ones(variable.shape, variable.dtype), trainable=False,
                              dtype=variable.dtype, name=f"{variable.name}_mask")
        variable.constraint = MagnitudeMask(mask, schedule, optimizer, variable.constraint)
        pruned.append(PrunedWeight(layer.name, variable, mask))
    # A train function traced before holds the old constraints; fit() traces a new one.
    if getattr(model, "train_function", None) is not None:
        model.train_function = None
    return pruned


def _masked_values(model: keras.Model) -> list[np.ndarray]:
    values = []
    for v in model.weights:
        value = keras.ops.convert_to_numpy(v)
        if isinstance(v.constraint, MagnitudeMask):
            value = value * keras.ops.convert_to_numpy(v.constraint.mask)
        values.append(value)
    return values


def _clone(model: keras.Model, values: list[np.ndarray],
           sample: Callable[[], Any] | None = None) -> keras.Model:
    """A new model with ``model``'s architecture (constraints from the layer configs only);
    ``sample()`` gives inputs to build a subclassed model's weights with."""
    clone = keras.models.clone_model(model)
    if len(clone.weights) != len(values) and sample is not None:
        clone(sample())
    if len(clone.weights) != len(values):
        raise TfprodError(f"model {model.name!r} cannot be cloned with its weights (a subclassed "
                          "model needs get_config/from_config and a build())")
    clone.set_weights(values)
    return clone


def strip_pruning(model: keras.Model) -> keras.Model:
    """A plain copy of a pruned model for export: the zeros in place, no masks or constraints.

    The copy needs no custom objects beyond the model's own: it saves to ``.keras`` and loads
    with ``keras.saving.load_model``, and converts with ``tf.lite.TFLiteConverter``. It is
    compiled like ``model`` when ``model`` is compiled (with a fresh optimizer).
    """
    stripped = _clone(model, _masked_values(model))
    config = model.get_compile_config() if getattr(model, "compiled", False) else {}
    if config:
        stripped.compile_from_config(config)
    return stripped


def sparsity_report(model: keras.Model, layers: LayerSelection = None) -> list[LayerSparsity]:
    """Zeros per prunable weight (see :func:`prunable_weights` for ``layers``)."""
    rows = []
    for layer, v in prunable_weights(model, layers):
        value = keras.ops.convert_to_numpy(v)
        zeros = int(np.count_nonzero(value == 0))
        rows.append(LayerSparsity(layer.name, v.name, int(value.size), zeros,
                                  zeros / max(int(value.size), 1)))
    return rows


# ------------------------------------------------------------------------ the entry point

def _as_dataset(data: Any, batch_size: int, *, shuffle: bool, name: str) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise TfprodError(f"{name} yields {spec}; expected batches of (x, y)")
        return data
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TfprodError(f"{name} is a {type(data).__name__}; expected a tf.data.Dataset of "
                          "(x, y) batches or a tuple (x, y) of arrays")
    x, y = data
    n = batches.count(x)  # x: an array, or a dict by input name
    if n != len(y) or n == 0:
        raise TfprodError(f"{name} has {n} inputs and {len(y)} labels; expected the same, "
                          "non-zero number")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(n, seed=0, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _count_batches(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n == int(tf.data.INFINITE_CARDINALITY):
        raise TfprodError("train_data repeats forever; pass a finite dataset (one epoch of "
                          "batches, without .repeat())")
    return n if n >= 0 else int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _fine_tune_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """A fresh optimizer of the same class and settings at a smaller learning rate."""
    lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate)) * FINE_TUNE_LR_FACTOR
    config = optimizer.get_config()
    inner = config.get("inner_optimizer")  # LossScaleOptimizer wraps the real one
    target = inner["config"] if isinstance(inner, dict) and "config" in inner else config
    target["learning_rate"] = lr
    return type(optimizer).from_config(config)


def _check_prune_args(model: Any, target_sparsity: float, initial_sparsity: float, epochs: int,
                      batch_size: int) -> None:
    if not isinstance(model, keras.Model):
        raise TfprodError(f"model is a {type(model).__name__}; expected a keras.Model")
    if not 0.0 <= target_sparsity < 1.0:
        raise TfprodError(f"target_sparsity={target_sparsity!r}; expected a fraction in [0, 1), "
                          "e.g. 0.5 to zero half of each pruned weight")
    if not 0.0 <= initial_sparsity <= target_sparsity:
        raise TfprodError(f"initial_sparsity={initial_sparsity!r}; expected a fraction in "
                          f"[0, target_sparsity={target_sparsity}]")
    if int(epochs) != epochs or epochs < 1:
        raise TfprodError(f"epochs={epochs!r}; expected an integer >= 1")
    if int(batch_size) != batch_size or batch_size < 1:
        raise TfprodError(f"batch_size={batch_size!r}; expected an integer >= 1")
    if getattr(model, "optimizer", None) is None or not model.get_compile_config():
        raise TfprodError(f"model {model.name!r} is not compiled; compile it with the loss and "
                          "metrics to fine-tune with (model.compile(optimizer, loss, metrics))")
    if not prunable_weights(model):
        raise TfprodError(f"model {model.name!r} has no prunable layers (Dense or convolution "
                          "kernels); nothing to prune")


def prune(
    model: keras.Model,
    train_data: Any,
    *,
    target_sparsity: float,
    epochs: int = 2,
    batch_size: int = 64,
    initial_sparsity: float = 0.0,
    validation_data: Any = None,
    progress: bool = False,
) -> PruneResult:
    """Fine-tunes a copy of ``model`` with magnitude pruning and returns it stripped.

    The copy is compiled with the model's loss and metrics and a fresh optimizer of the same
    class at ``FINE_TUNE_LR_FACTOR`` times its learning rate. The sparsity of the Dense and
    convolution kernels (all but the smallest, see :data:`MIN_SHARE`) rises along a cubic
    :class:`PolynomialDecay` over the first ``RAMP_FRACTION`` of the steps, then the remaining
    steps recover accuracy with the masks fixed. ``model`` itself is not changed.

    Args:
        model: a compiled Keras model.
        train_data: a ``tf.data.Dataset`` of ``(x, y)`` batches, or a tuple ``(x, y)`` of arrays
            (shuffled and batched by ``batch_size``).
        target_sparsity: fraction of zeros in each pruned weight at the end, in [0, 1).
        epochs: fine-tuning epochs.
        batch_size: batch size for array data.
        initial_sparsity: sparsity at the first step, in [0, target_sparsity].
        validation_data: like ``train_data``; evaluated after each epoch (``val_*`` history).
        progress: show a progress bar.

    Returns:
        :class:`PruneResult` with the stripped compiled model, its sparsity report, and the
        fine-tuning history.

    Raises:
        TfprodError: for a sparsity outside [0, 1), an uncompiled model, a model without
            prunable layers, or data that yields fewer than 2 batches.
    """
    _check_prune_args(model, target_sparsity, initial_sparsity, epochs, batch_size)
    data = _as_dataset(train_data, batch_size, shuffle=True, name="train_data")
    steps = _count_batches(data)
    total = steps * epochs
    if total < 2:
        raise TfprodError(f"train_data gives {total} training step(s) over {epochs} epoch(s); "
                          "pruning needs at least 2: use more data, more epochs or a smaller "
                          "batch_size")
    val = (None if validation_data is None else
           _as_dataset(validation_data, batch_size, shuffle=False, name="validation_data"))

    copy = _clone(model, model.get_weights(), lambda: next(iter(data.take(1)))[0])
    compile_args = keras.saving.deserialize_keras_object(model.get_compile_config())
    compile_args["optimizer"] = _fine_tune_optimizer(model.optimizer)
    copy.compile(**compile_args)

    end_step = min(total - 1, max(1, round(total * RAMP_FRACTION)))
    schedule = PolynomialDecay(initial_sparsity, target_sparsity, 0, end_step,
                               frequency=max(1, end_step // 10))
    prune_low_magnitude(copy, schedule)
    callbacks = []
    if progress:
        from tfprod.train.progress import RichProgress

        callbacks.append(RichProgress(steps))
    history = copy.fit(data, epochs=epochs, validation_data=val, callbacks=callbacks,
                       shuffle=False, verbose=0)  # arrays are shuffled by _as_dataset
    stripped = strip_pruning(copy)
    logs = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return PruneResult(stripped, sparsity_report(stripped), logs)
