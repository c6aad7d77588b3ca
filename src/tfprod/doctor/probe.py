"""What every check shares: a sample of the data in memory, the loss as a function, the task.

The data set is read once, up to ``max_examples`` examples (a shuffled data set would give other
batches on a second pass), and checked against the model's inputs at the boundary. The batches'
sizes and the labels in the order read are kept for the batch-order check; the sample itself is
then shuffled once (seeded), so a data set sorted by label does not hand the other checks a
batch of one class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfprod.doctor.task import Task, describe_task
from tfprod.errors import TfprodError

MIN_EXAMPLES = 8
_MAX_BYTES = 256 * 2**20


@dataclasses.dataclass
class Probe:
    """A sample of the data plus what is needed to run the model and its loss on it.

    Attributes:
        model: the user's model (checks restore every variable they change), or a plain copy
            of one built under a ``tf.distribute`` strategy (:func:`outside_strategy`).
        x: features, a numpy array or a dict of them, ``[N, ...]``.
        y: labels ``[N, ...]``.
        finite: ``[N]`` bool, the example's features and label are finite.
        batch_size: the data set's batch size.
        loss: ``(x, y, y_pred) -> scalar`` (the compiled loss with regularisation terms).
        loss_spec: the loss as given (name, function or ``keras.losses.Loss``).
        optimizer: the model's optimizer (read for its config, never stepped) or ``None``.
        task: the loss, output activation and label kind.
        seed: for every random choice the checks make.
        sample_weight: ``[N]`` weights from ``(x, y, sample_weight)`` batches, or ``None``.
        class_weight: the ``class_weight`` given to ``fit`` (``{class: weight}``), or ``None``.
        read_y: the labels in the order the data set gave them (before the sample's shuffle).
        batch_sizes: the sizes of the batches read, in order.
        steps_per_epoch: batches in one pass over the data set, if its cardinality is known.
    """

    model: keras.Model
    x: Any
    y: Any
    finite: np.ndarray
    batch_size: int
    loss: Callable
    loss_spec: Any
    optimizer: Any
    task: Task
    seed: int = 0
    sample_weight: np.ndarray | None = None
    class_weight: dict | None = None
    read_y: Any = None
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    steps_per_epoch: int | None = None

    @property
    def n(self) -> int:
        return len(self.finite)

    @property
    def n_finite(self) -> int:
        return int(self.finite.sum())

    def take(self, n: int) -> tuple[Any, Any]:
        """The first ``n`` examples free of NaN/Inf, as ``(x, y)``."""
        index = np.flatnonzero(self.finite)[:n]
        return subset(self.x, index), subset(self.y, index)

    def loss_value(self, x, y, *, training: bool = False) -> float:
        return float(self.loss(x, y, self.model(x, training=training)))


def subset(struct: Any, index) -> Any:
    return tf.nest.map_structure(lambda a: a[index], struct)


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """``model(x, training=False)`` in batches (``model.predict`` would cache a function on it)."""
    n = len(tf.nest.flatten(x)[0])
    parts = [np.asarray(model(subset(x, slice(i, i + batch_size)), training=False))
             for i in range(0, n, batch_size)]
    return np.concatenate(parts)


def describe_spec(spec: Any) -> str:
    if isinstance(spec, tf.TensorSpec):
        return f"{spec.dtype.name}{list(spec.shape)}"
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{k!r}: {describe_spec(v)}" for k, v in spec.items()) + "}"
    if isinstance(spec, tuple | list):
        return "(" + ", ".join(describe_spec(s) for s in spec) + ")"
    return type(spec).__name__


def _expected_inputs(model) -> Any:
    """The model's input KerasTensors (a tensor, list or dict), or ``None`` if unknown."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    try:
        structured = model.input
    except (AttributeError, ValueError):
        structured = None
    if isinstance(structured, dict):
        return structured
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _fits(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(
        g is None or w is None or g == w for g, w in zip(got[1:], want[1:], strict=True))


def _shape_problem(name: str, spec: tf.TensorSpec, expected) -> str | None:
    want = tuple(expected.shape)
    got = tuple(spec.shape)
    # Keras adds or drops a trailing unit axis itself ([batch] for a [batch, 1] input).
    if _fits(got, want) or (want and want[-1] == 1 and _fits(got, want[:-1])) or (
            got and got[-1] == 1 and _fits(got[:-1], want)):
        return None
    if len(got) == len(want) - 1 and all(
            w is None or g is None or g == w for g, w in zip(got, want[1:], strict=False)):
        return (f"{name} is {describe_spec(spec)}, one example per element; the model expects "
                f"batches {list(want)}: call dataset.batch(32)")
    return (f"{name} is {describe_spec(spec)} but the model expects {list(want)}: resize or "
            "reshape the data, or build the model for the data's shape")


def check_dataset(model, dataset) -> None:
    """Raises :class:`TfprodError` unless ``dataset`` gives ``(x, y)`` batches the model takes."""
    if not isinstance(model, keras.Model):
        raise TfprodError(f"model is a {type(model).__name__}; expected a keras.Model")
    if not isinstance(dataset, tf.data.Dataset):
        raise TfprodError(f"dataset is a {type(dataset).__name__}; expected a tf.data.Dataset of "
                          "(x, y) batches (tf.data.Dataset.from_tensor_slices((x, y)).batch(32))")
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        raise TfprodError(f"dataset elements are {describe_spec(spec)}; expected (x, y) batches: "
                          "map them, e.g. dataset.map(lambda d: (d['image'], d['label']))")
    x_spec = spec[0]
    leaves = tf.nest.flatten(spec[:2])
    if any(not isinstance(s, tf.TensorSpec) for s in leaves):
        raise TfprodError(f"dataset elements are {describe_spec(spec)}; the doctor needs dense "
                          "tensors: pad ragged or sparse features to a fixed shape first")
    expected = _expected_inputs(model)
    if expected is None:
        return  # a subclassed model: checked by calling it on the first batch
    if isinstance(expected, dict):
        if not isinstance(x_spec, dict):
            raise TfprodError(f"the model takes named inputs {sorted(expected)} but the dataset's "
                              f"x is {describe_spec(x_spec)}; give x as a dict with those keys")
        missing = sorted(set(expected) - set(x_spec))
        if missing:
            raise TfprodError(f"the model takes inputs {sorted(expected)} but the dataset's x has "
                              f"{sorted(x_spec)} (missing {missing}); rename or add those features")
        for name in expected:
            problem = _shape_problem(f"x[{name!r}]", x_spec[name], expected[name])
            if problem:
                raise TfprodError(problem)
        return
    if isinstance(expected, list):
        return  # several positional inputs: checked by calling the model
    if isinstance(x_spec, dict):
        if len(x_spec) != 1:
            raise TfprodError(f"the dataset's x is a dict of {sorted(x_spec)} but the model takes "
                              "one input tensor; select or stack the features in a map()")
        x_spec = next(iter(x_spec.values()))
    problem = _shape_problem("x", x_spec, expected)
    if problem:
        raise TfprodError(problem)


def fit_inputs(model, x: Any) -> Any:
    """A one-feature dict as the bare array, for a model with one unnamed input."""
    expected = _expected_inputs(model)
    if isinstance(x, dict) and expected is not None and not isinstance(expected, dict):
        return next(iter(x.values()))
    return x


def _numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


class Sample(NamedTuple):
    """What :func:`collect` read: features, labels, sample weights and the batches' sizes."""

    x: Any
    y: Any
    sample_weight: np.ndarray | None
    batch_sizes: list[int]

    @property
    def batch_size(self) -> int:
        return max(self.batch_sizes)


def collect(dataset: tf.data.Dataset, max_examples: int) -> Sample:
    """Reads up to ``max_examples`` examples into memory, in the data set's order."""
    xs, ys, ws, sizes, seen, nbytes = [], [], [], [], 0, 0
    try:
        for element in dataset:
            x = tf.nest.map_structure(_numpy, element[0])
            y = tf.nest.map_structure(_numpy, element[1])
            n = len(tf.nest.flatten(x)[0])
            if len(element) > 2 and element[2] is not None:
                ws.append(np.asarray(_numpy(element[2]), np.float64).reshape(n, -1)[:, 0])
            sizes.append(n)
            xs.append(x)
            ys.append(y)
            seen += n
            nbytes += sum(a.nbytes for a in tf.nest.flatten((x, y)))
            if seen >= max_examples or nbytes >= _MAX_BYTES:
                break
    except tf.errors.OpError as e:
        raise TfprodError(f"reading the dataset failed: {e.message.splitlines()[0]}") from None
    if seen == 0:
        raise TfprodError("the dataset is empty; expected (x, y) batches")
    try:
        x = tf.nest.map_structure(lambda *a: np.concatenate(a)[:max_examples], *xs)
        y = tf.nest.map_structure(lambda *a: np.concatenate(a)[:max_examples], *ys)
    except ValueError:
        raise TfprodError("the dataset's batches have different shapes (padded per batch?); the "
                          "doctor needs one fixed shape: pad to a fixed length") from None
    w = np.concatenate(ws)[:max_examples] if ws and len(ws) == len(xs) else None
    return Sample(x, y, w, sizes)


def _finite(struct: Any, n: int) -> np.ndarray:
    ok = np.ones(n, bool)
    for a in tf.nest.flatten(struct):
        if a.dtype.kind == "f":
            ok &= np.isfinite(a.reshape(n, -1)).all(axis=1)
    return ok


def loss_function(model, loss: Any) -> tuple[Callable, Any]:
    """``(x, y, y_pred) -> scalar`` from ``loss`` or else the model's compiled loss."""
    if loss is not None:
        try:
            fn = keras.losses.get(loss)
        except (ValueError, TypeError):
            fn = None
        if not callable(fn):
            raise TfprodError(f"loss={loss!r} is not a Keras loss; pass a name such as "
                              "'sparse_categorical_crossentropy', a function or a "
                              "keras.losses.Loss")

        def call(x, y, y_pred):
            value = keras.ops.mean(fn(y, y_pred))
            extra = model.losses  # regularisation terms, as compute_loss adds them
            return value + keras.ops.sum(keras.ops.stack(extra)) if extra else value

        return call, loss
    custom = type(model).compute_loss is not keras.Model.compute_loss
    if getattr(model, "compiled", False) and (getattr(model, "loss", None) is not None or custom):
        return (lambda x, y, y_pred: model.compute_loss(x=x, y=y, y_pred=y_pred, training=True),
                model.loss)
    raise TfprodError(f"model {model.name!r} has no compiled loss; compile it with one or pass "
                      "loss= (CLI: --loss sparse_categorical_crossentropy)")


def outside_strategy(model):
    """``model``, or a copy made outside the ``tf.distribute`` strategy it was built under.

    Training steps on mirrored variables need the strategy's replica context; the checks run
    on a plain copy instead (same weights and compile settings), which also leaves the user's
    model untouched by construction.
    """
    if getattr(model, "_distribute_strategy", None) is None:
        return model
    try:
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        if getattr(model, "compiled", False):
            optimizer = model.optimizer
            twin.compile(optimizer=type(optimizer).from_config(optimizer.get_config()),
                         loss=model.loss)
    except Exception as e:  # a subclassed model without get_config, typically
        raise TfprodError(f"model {model.name!r} was built under a tf.distribute strategy and "
                          f"cannot be copied outside it ({type(e).__name__}); build it outside "
                          "strategy.scope() to diagnose it") from None
    return twin


def build_probe(model, dataset, *, loss: Any = None, max_examples: int = 2048,
                seed: int = 0, class_weight: dict | None = None) -> Probe:
    """Checks ``dataset`` against ``model``, reads the sample and describes the task."""
    check_dataset(model, dataset)
    model = outside_strategy(model)
    loss_fn, loss_spec = loss_function(model, loss)
    sample = collect(dataset, max_examples)
    x = fit_inputs(model, sample.x)
    n = len(tf.nest.flatten(x)[0])
    if n < MIN_EXAMPLES:
        raise TfprodError(f"the dataset has {n} example(s); the doctor needs at least "
                          f"{MIN_EXAMPLES} (one small batch to overfit, one to measure)")
    read_y = sample.y
    order = np.random.default_rng(seed).permutation(n)
    x, y = subset(x, order), subset(sample.y, order)
    weights = None if sample.sample_weight is None else sample.sample_weight[order]
    finite = _finite(x, n) & _finite(y, n)
    if finite.sum() < MIN_EXAMPLES:
        raise TfprodError(f"only {int(finite.sum())} of {n} examples are free of NaN/Inf; the "
                          f"doctor needs at least {MIN_EXAMPLES}: clean the data first")
    index = np.flatnonzero(finite)[:64]
    try:
        y_pred = model(subset(x, index), training=False)
    except Exception as e:  # the user's model on the user's data: any error is theirs to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TfprodError(f"model {model.name!r} fails on the dataset's first batch "
                          f"({type(e).__name__}: {first}); check the dataset's element_spec "
                          "against the model's inputs") from None
    y_pred = tf.nest.map_structure(_numpy, y_pred)
    y_sample = y if isinstance(y, np.ndarray) else None
    task = describe_task(model, loss_spec, y_pred, None if y_sample is None else y_sample[finite])
    optimizer = getattr(model, "optimizer", None) if getattr(model, "compiled", False) else None
    cardinality = int(dataset.cardinality())
    return Probe(model, x, y, finite, sample.batch_size, loss_fn, loss_spec, optimizer, task,
                 seed, weights, class_weight, read_y, sample.batch_sizes,
                 cardinality if cardinality > 0 else None)
