"""Training steps/s of one model and batch, run six ways: eager, tf.function, XLA, mixed
precision, Keras ``model.fit`` and tfprod's ``Trainer``.

Every variant gets a fresh compiled model from ``model_fn()`` and the same data: one fixed
batch, repeated by ``tf.data.Dataset.from_tensors(batch).repeat()`` and pulled with
``next(iterator)`` each step, so input costs (almost) nothing and the step is what is measured.
Tracing and XLA compilation happen in an untimed warm-up (their time is ``setup_seconds``).
Repeats run round-robin over the variants, so a change in machine load hits all of them alike.

The eager / function / XLA / mixed variants run the bare step of :func:`make_train_step`
(forward, compiled loss, gradients, ``optimizer.apply``); ``fit`` and the ``Trainer`` also
update the compiled metrics. ``fit`` and the ``Trainer`` are timed by the same callback, from
the first step's ``on_train_batch_begin`` to ``on_epoch_end``, in a second ``fit`` call: their
per-call setup (iterator creation, building) is excluded, as it is for the other variants.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError

#: variant id -> label, in table order.
VARIANTS = {
    "eager": "eager (GradientTape + optimizer.apply in Python)",
    "function": "tf.function step",
    "xla": "tf.function(jit_compile=True) step (XLA)",
    "function_loop": "tf.function step, plain loop over in-memory tensors",
    "xla_loop": "XLA step, plain loop over in-memory tensors",
    "mixed": "tf.function step, mixed precision",
    "fit": "keras model.fit",
    "trainer": "tfprod Trainer.fit",
}
COLUMNS = ["variant", "steps/s", "min–max", "ms/step", "x eager", "x fit", "setup s"]
ModelFn = Callable[[], keras.Model]
Batch = tuple[Any, ...]


# -------------------------------------------------------------------------------- the step


def make_train_step(model: keras.Model, *, mode: str = "function") -> Callable[[Batch], tf.Tensor]:
    """The bare training step of a compiled model: ``step((x, y[, sample_weight])) -> loss``.

    Args:
        model: a compiled ``keras.Model``, built (see :func:`build_for`).
        mode: ``"eager"`` (plain Python), ``"function"`` (``tf.function``) or ``"xla"``
            (``tf.function(jit_compile=True)``).
    """
    if mode not in ("eager", "function", "xla"):
        raise TfprodError(f"mode={mode!r}; expected 'eager', 'function' or 'xla'")
    optimizer = model.optimizer

    def step(batch):
        x, y = batch[0], batch[1]
        sample_weight = batch[2] if len(batch) > 2 else None
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
            # Multiplies by the loss scale under mixed_float16; a no-op otherwise.
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return loss

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=mode == "xla")


def build_for(model: keras.Model, batch: Batch) -> None:
    """Creates the model's, optimizer's and compiled loss's variables from one batch, eagerly,
    so that no variable is created inside a ``tf.function``."""
    if getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None:
        raise TfprodError(f"model {model.name!r} is not compiled with a loss and an optimizer; "
                          "call model.compile(optimizer=..., loss=...) in the model function")
    x, y = batch[0], batch[1]
    y_pred = model(x, training=False)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.compute_loss(x=x, y=y, y_pred=y_pred)


# -------------------------------------------------------------------------------- defaults


def mnist_mlp() -> keras.Model:
    """The MNIST-size MLP of the reference figures: 784 -> 128 relu -> 10 softmax, Adam."""
    from tfprod.models import mlp

    return mlp((784,), 10, hidden=(128,), dropout=0.0)


def cnn_32() -> keras.Model:
    """The ``small_cnn`` preset on 32x32x1 images."""
    from tfprod.models import small_cnn

    return small_cnn((32, 32, 1), 10)


#: name -> (model function, input shape, input scale) of the default benchmark models.
DEFAULT_MODELS: dict[str, tuple[ModelFn, tuple[int, ...], float]] = {
    "mlp": (mnist_mlp, (784,), 1.0),
    "cnn": (cnn_32, (32, 32, 1), 255.0),
}


def random_batch(
    input_shape: Sequence[int],
    batch_size: int = 32,
    num_classes: int = 10,
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of uniform float32 inputs in ``[0, scale)`` and integer labels (no download)."""
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    rng = np.random.default_rng(seed)
    x = (rng.random((batch_size, *input_shape)) * scale).astype(np.float32)
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    return x, y


def default_benchmark(name: str, batch_size: int = 32) -> tuple[ModelFn, tuple[np.ndarray, ...]]:
    """``(model_fn, batch)`` of a default model: ``"mlp"`` (MNIST-size) or ``"cnn"``."""
    if name not in DEFAULT_MODELS:
        raise TfprodError(f"model {name!r}; expected one of {list(DEFAULT_MODELS)} or a model "
                          "function")
    model_fn, shape, scale = DEFAULT_MODELS[name]
    return model_fn, random_batch(shape, batch_size, scale=scale)


def benchmark_inputs(model: str, batch_size: int = 32) -> tuple[ModelFn, tuple[np.ndarray, ...]]:
    """``(model_fn, batch)`` from ``"mlp"``, ``"cnn"``, ``"module:function"`` or a ``.keras``
    file: random data of the model's input shape, labels to suit its loss.

    Raises:
        TfprodError: an unknown preset, a function that cannot be imported, a missing file, a
            model with several inputs.
    """
    if model in DEFAULT_MODELS:
        return default_benchmark(model, batch_size)
    if model.endswith(".keras"):
        if not os.path.exists(model):
            raise TfprodError(f"--model {model}: no such file")

        def model_fn() -> keras.Model:
            return keras.saving.load_model(model)
    else:
        from tfprod.models.loading import load_model_function

        model_fn = load_model_function(model)
    probe = model_fn()
    if not isinstance(probe, keras.Model):
        raise TfprodError(f"--model {model} returned {type(probe).__name__}; expected a "
                          "compiled keras.Model")
    if len(probe.inputs) != 1 or len(probe.outputs) != 1:
        raise TfprodError(f"--model {model} has {len(probe.inputs)} inputs and "
                          f"{len(probe.outputs)} outputs; the benchmark makes random data for "
                          "one input and one output")
    shape = tuple(d or 1 for d in probe.inputs[0].shape[1:])
    out = tuple(d or 1 for d in probe.outputs[0].shape[1:])
    x, _ = random_batch(shape, batch_size)
    rng = np.random.default_rng(1)
    if "sparse" in str(probe.loss):  # class ids; else targets of the output's shape
        y = rng.integers(0, out[-1], (batch_size, *out[:-1])).astype(np.int32)
    else:
        y = rng.random((batch_size, *out)).astype(np.float32)
    return model_fn, (x, y)


# ----------------------------------------------------------------------------------- report


@dataclasses.dataclass
class VariantResult:
    """One variant over every repeat: seconds for ``steps`` steps, and its one-off setup."""

    variant: str
    label: str
    steps: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    setup_seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rates(self) -> list[float]:
        return [self.steps / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def min(self) -> float:
        return min(self.rates)

    @property
    def max(self) -> float:
        return max(self.rates)


@dataclasses.dataclass
class StepBenchReport:
    """What :func:`bench_step` measured: rows for a table and the raw numbers behind them."""

    model: str
    batch_size: int
    steps: int
    warmup: int
    repeats: int
    mixed_policy: str
    results: dict[str, VariantResult]
    notes: list[str]

    columns = COLUMNS

    @property
    def title(self) -> str:
        return (f"training step: {self.model}, batch {self.batch_size}, {self.steps} steps x "
                f"{self.repeats} repeats (median, min–max)")

    def rate(self, variant: str) -> float:
        """Median steps/s of one variant."""
        return self.results[variant].median

    def ratio(self, variant: str, baseline: str) -> float | None:
        """Median steps/s over the baseline's, or None when the baseline was not run."""
        if baseline not in self.results:
            return None
        return self.rate(variant) / self.rate(baseline)

    @property
    def rows(self) -> list[list[str]]:
        out = []
        for name, r in self.results.items():
            label = r.label + (f" ({self.mixed_policy})" if name == "mixed" else "")
            ratios = [self.ratio(name, b) for b in ("eager", "fit")]
            out.append([label, f"{r.median:,.0f}", f"{r.min:,.0f}–{r.max:,.0f}",
                        f"{1000 / r.median:.2f}",
                        *("-" if v is None else f"{v:.2f}x" for v in ratios),
                        f"{r.setup_seconds:.1f}"])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model": self.model,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "mixed_policy": self.mixed_policy,
            "notes": self.notes,
            "results": [{
                "variant": name,
                "label": r.label,
                "steps_per_s": {"median": r.median, "min": r.min, "max": r.max},
                "seconds": r.seconds,
                "setup_seconds": r.setup_seconds,
                "x_eager": self.ratio(name, "eager"),
                "x_fit": self.ratio(name, "fit"),
                **r.details,
            } for name, r in self.results.items()],
        }


# ---------------------------------------------------------------------------------- timing


class _StepTimer(keras.callbacks.Callback):
    """Seconds from the first step's start to the end of the epoch, in one ``fit`` call.

    ``async_safe`` and no ``on_train_batch_end``: adding it leaves ``fit``'s asynchronous
    callback dispatch as it is for users. ``on_epoch_end`` runs after every step's result.
    """

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.start: float | None = None
        self.seconds: float | None = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def _repeated(batch: Batch) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensors(batch).repeat()


def _step_runner(step, batch: Batch, *, iterate: bool = True) -> Callable[[int], float]:
    """Times ``step`` on batches pulled from a dataset iterator, or (``iterate=False``) on the
    same tensors every call: a plain loop, which leaves out the ~0.5 ms the iterator costs."""
    iterator = iter(_repeated(batch))

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = step(next(iterator) if iterate else batch)
        float(loss)  # the last step's result is ready: every step has run
        return time.perf_counter() - start

    return run


def _fit_runner(model: keras.Model, batch: Batch) -> Callable[[int], float]:
    data = _repeated(batch)

    def run(n: int) -> float:
        timer = _StepTimer()
        model.fit(data, epochs=1, steps_per_epoch=n, verbose=0, shuffle=False,
                  callbacks=[timer])
        return timer.seconds

    return run


def _trainer_runner(model: keras.Model, batch: Batch, details: dict) -> Callable[[int], float]:
    from tfprod.train.trainer import Trainer

    trainer = Trainer(model)
    data = _repeated(batch)

    def run(n: int) -> float:
        timer = _StepTimer()
        trainer.fit(data, epochs=1, steps_per_epoch=n, callbacks=[timer])
        # The Trainer's own figure, for comparison: it also counts the epoch-end work.
        details.setdefault("trainer_steps_per_second", []).append(trainer.steps_per_second)
        return timer.seconds

    return run


def _mixed_policy() -> str:
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def _prepare(name: str, model_fn: ModelFn, batch: Batch, warmup: int, policy: str, details):
    """(runner, setup seconds, model name) of one variant: a fresh model, warmed up."""
    start = time.perf_counter()
    previous = keras.mixed_precision.global_policy()
    if name == "mixed":
        keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = model_fn()
        if not isinstance(model, keras.Model):
            raise TfprodError(f"the model function returned {type(model).__name__}; expected a "
                              "compiled keras.Model")
        if name == "fit":
            run = _fit_runner(model, batch)
        elif name == "trainer":
            run = _trainer_runner(model, batch, details)
        else:
            build_for(model, batch)
            mode = {"mixed": "function", "function_loop": "function",
                    "xla_loop": "xla"}.get(name, name)
            run = _step_runner(make_train_step(model, mode=mode), batch,
                               iterate=not name.endswith("_loop"))
        # Traces (and XLA-compiles) the step while the variant's dtype policy is in force.
        run(warmup)
        details.clear()
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return run, time.perf_counter() - start, model.name


def bench_step(
    model_fn: ModelFn,
    batch: Batch,
    *,
    steps: int = 200,
    repeats: int = 3,
    warmup: int = 10,
    variants: Sequence[str] = tuple(VARIANTS),
    progress: Callable[[str, int, int], None] | None = None,
) -> StepBenchReport:
    """Training steps/s of the same model and batch as eager, tf.function, XLA, mixed
    precision, ``model.fit`` and tfprod's ``Trainer``.

    Args:
        model_fn: returns a fresh compiled ``keras.Model``; called once per variant.
        batch: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, used for every step.
        steps: timed steps per repeat.
        repeats: timed runs per variant (round-robin over the variants); the median is
            reported with the min–max.
        warmup: untimed steps first (tracing, XLA compilation, ``fit``'s first call).
        variants: which of ``eager``, ``function``, ``xla``, ``function_loop``, ``xla_loop``
            (the same steps called on in-memory tensors, no iterator), ``mixed``, ``fit``,
            ``trainer``.
        progress: called as ``progress(variant, i, n)`` before each timed run.

    Returns:
        A :class:`StepBenchReport` (``rows``/``columns`` for a table, ``to_json()``).

    Example:
        >>> from tfprod.train.step_bench import bench_step, default_benchmark
        >>> report = bench_step(*default_benchmark("mlp"), steps=100)
        >>> report.rate("trainer") >= report.rate("fit")
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise TfprodError(f"variants={list(variants)}; expected some of {list(VARIANTS)}")
    for name, value, least in (("steps", steps, 1), ("repeats", repeats, 1),
                               ("warmup", warmup, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise TfprodError(f"{name}={value!r}; expected an integer >= {least}")
    if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
        raise TfprodError(f"batch is a {type(batch).__name__}; expected a tuple (x, y) or "
                          "(x, y, sample_weight) of arrays")
    batch = tuple(tf.convert_to_tensor(t) for t in batch)
    batch_size = int(batch[0].shape[0])
    policy = _mixed_policy()
    results: dict[str, VariantResult] = {}
    runners = {}
    for name in dict.fromkeys(variants):
        result = VariantResult(name, VARIANTS[name], steps)
        runners[name], result.setup_seconds, model_name = _prepare(
            name, model_fn, batch, warmup, policy, result.details)
        results[name] = result
    total, i = repeats * len(runners), 0
    for _ in range(repeats):
        for name, run in runners.items():
            if progress is not None:
                progress(name, i, total)
            results[name].seconds.append(run(steps))
            i += 1
    notes = [f"data: one batch of {batch_size}, repeated (input costs ~nothing); function "
             "variants run the bare step, fit and Trainer also update the compiled metrics"]
    if "mixed" in results:
        notes.append(f"mixed precision uses {policy}" + (
            "; on a CPU without native bfloat16 (AVX512-BF16/AMX) it is emulated and may be "
            "slower than float32; on a GPU tfprod would use mixed_float16"
            if policy == "mixed_bfloat16" else ""))
    return StepBenchReport(model_name, batch_size, steps, warmup, repeats, policy, results,
                           notes)
