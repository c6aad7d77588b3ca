"""Is training input-bound or compute-bound? Measured per step, with an optional profiler trace.

Each measured step is split into the wall time blocked in ``next(iterator)`` (waiting for the
input pipeline) and the time in the compiled step (the ``tf.function`` call plus a sync on its
loss). Their shares of the loop's wall time give the verdict, from real waits rather than from
a model of the pipeline. The same number of batches is then pulled from the dataset alone, to
show what the pipeline delivers when it has the machine to itself.

With ``logdir``, ``tf.profiler`` records the measured steps (each wrapped in a
``tf.profiler.experimental.Trace("train", step_num=...)`` so the tools see steps) under
``logdir/plugins/profile/<run>/``. View it with TensorBoard's profile plugin
(``pip install tensorboard-plugin-profile``, then ``tensorboard --logdir LOGDIR``, Profile tab:
trace viewer, input-pipeline analyzer, TF op statistics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import statistics
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.train.step_bench import build_for, make_train_step

#: Input wait at or above this share of the loop's time: input-bound.
INPUT_BOUND_SHARE = 0.40
#: Input wait below this share: compute-bound. In between: balanced.
COMPUTE_BOUND_SHARE = 0.10

FIXES = {
    "input-bound": (
        "the step waits for data: in the pipeline use map(..., num_parallel_calls="
        "tf.data.AUTOTUNE), .cache() after decoding, batch before map to vectorize per-example "
        "ops, .prefetch(tf.data.AUTOTUNE) last; store the data as TFRecords "
        "(tfprod.data.write_tfrecords)"),
    "compute-bound": (
        "the step itself is the limit: compile it (tf.function; XLA with "
        "model.compile(jit_compile=True) or Trainer(jit_compile=True), but compare with "
        "`tfprod bench step` first: on a CPU XLA can be slower for conv nets), mixed precision "
        "on a GPU (mixed_float16), a bigger batch to spread per-step overhead, or a smaller "
        "model"),
    "balanced": (
        "both matter: hide the input wait first (.prefetch(tf.data.AUTOTUNE), parallel map "
        "with AUTOTUNE, cache), then speed up the step (XLA if `tfprod bench step` shows it "
        "helps, mixed precision on a GPU, bigger batch)"),
}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclasses.dataclass
class ProfileReport:
    """What :func:`profile_training` measured: per-step seconds and the verdict.

    ``wait_seconds[i]`` is step i's time in ``next(iterator)``, ``compute_seconds[i]`` its time
    in the compiled step; ``seconds`` is the loop's wall time over all ``steps``.
    """

    steps: int
    warmup: int
    batch_size: int
    seconds: float
    wait_seconds: list[float]
    compute_seconds: list[float]
    input_only_seconds: float
    step_mode: str
    logdir: str | None = None
    trace_files: list[str] = dataclasses.field(default_factory=list)

    columns = ["measure", "value"]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def step_seconds(self) -> list[float]:
        """Each step's wait + compute."""
        return [w + c for w, c in zip(self.wait_seconds, self.compute_seconds, strict=True)]

    @property
    def input_wait_share(self) -> float:
        return sum(self.wait_seconds) / self.seconds

    @property
    def compute_share(self) -> float:
        return sum(self.compute_seconds) / self.seconds

    @property
    def input_only_batches_per_second(self) -> float:
        return self.steps / self.input_only_seconds

    @property
    def compute_steps_per_second(self) -> float:
        """The step rate if input cost nothing: 1 / mean compute time."""
        return self.steps / sum(self.compute_seconds)

    @property
    def wait_in_bursts(self) -> bool:
        """Most of the wait sits in a tenth of the steps (epoch starts, buffer refills)."""
        total = sum(self.wait_seconds)
        if total == 0 or len(self.wait_seconds) < 10:
            return False
        top = sorted(self.wait_seconds, reverse=True)[: len(self.wait_seconds) // 10]
        return sum(top) / total > 0.8

    @property
    def verdict(self) -> str:
        share = self.input_wait_share
        if share >= INPUT_BOUND_SHARE:
            return "input-bound"
        if share < COMPUTE_BOUND_SHARE:
            return "compute-bound"
        return "balanced"

    @property
    def fix(self) -> str:
        verdict = self.verdict
        text = FIXES[verdict]
        if verdict != "compute-bound":
            alone, step = self.input_only_batches_per_second, self.compute_steps_per_second
            if alone >= 1.5 * step:
                text = (f"the pipeline alone delivers {alone:,.0f} batches/s, more than the "
                        f"step's {step:,.0f}/s, but does not overlap with it: end it with "
                        f".prefetch(tf.data.AUTOTUNE) and parallelize its map; then {text}")
            else:
                text = (f"the pipeline alone delivers only {alone:,.0f} batches/s (the step "
                        f"could run {step:,.0f}/s): make the pipeline itself faster; {text}")
            if self.wait_in_bursts:
                text += ("; the wait comes in bursts (epoch starts, shuffle-buffer or cache "
                         "fills): a larger prefetch buffer or a smaller shuffle buffer")
        return text

    @property
    def rows(self) -> list[list[str]]:
        ms = [1000 * s for s in self.step_seconds]
        wait_ms = [1000 * s for s in self.wait_seconds]
        compute_ms = [1000 * s for s in self.compute_seconds]
        rate, alone = self.steps_per_second, self.input_only_batches_per_second
        other = max(0.0, 1.0 - self.input_wait_share - self.compute_share)
        trace = (f"{len(self.trace_files)} file(s) in {self.logdir}/plugins/profile; view: pip "
                 f"install tensorboard-plugin-profile; tensorboard --logdir {self.logdir} "
                 "(Profile tab)" if self.logdir else "not captured (pass a logdir)")

        def spread(values: list[float]) -> str:
            return f"mean {statistics.fmean(values):.2f} ms, p90 {_percentile(values, 90):.2f} ms"

        return [
            ["steps/s", f"{rate:,.1f} ({rate * self.batch_size:,.0f} examples/s, batch "
                        f"{self.batch_size}, {self.steps} steps after {self.warmup} warm-up)"],
            ["step time mean / p50 / p90", f"{statistics.fmean(ms):.2f} / "
                                           f"{_percentile(ms, 50):.2f} / "
                                           f"{_percentile(ms, 90):.2f} ms"],
            ["input wait", f"{100 * self.input_wait_share:.1f}% ({spread(wait_ms)} per step)"],
            ["compute", f"{100 * self.compute_share:.1f}% ({spread(compute_ms)}; "
                        f"{self.step_mode} step)"],
            ["other (Python loop)", f"{100 * other:.1f}%"],
            ["input pipeline alone", f"{alone:,.1f} batches/s ({alone / rate:.1f}x the "
                                     "training step rate)"],
            ["verdict", self.verdict],
            ["fix to try", self.fix],
            ["profiler trace", trace],
        ]

    def to_json(self) -> dict[str, Any]:
        ms = [1000 * s for s in self.step_seconds]
        return {
            "verdict": self.verdict,
            "fix": self.fix,
            "steps": self.steps,
            "warmup": self.warmup,
            "batch_size": self.batch_size,
            "step_mode": self.step_mode,
            "steps_per_second": self.steps_per_second,
            "step_ms": {"mean": statistics.fmean(ms), "p50": _percentile(ms, 50),
                        "p90": _percentile(ms, 90)},
            "input_wait_share": self.input_wait_share,
            "compute_share": self.compute_share,
            "input_only_batches_per_second": self.input_only_batches_per_second,
            "compute_steps_per_second": self.compute_steps_per_second,
            "thresholds": {"input_bound_at": INPUT_BOUND_SHARE,
                           "compute_bound_below": COMPUTE_BOUND_SHARE},
            "wait_seconds": self.wait_seconds,
            "compute_seconds": self.compute_seconds,
            "seconds": self.seconds,
            "input_only_seconds": self.input_only_seconds,
            "logdir": self.logdir,
            "trace_files": self.trace_files,
        }


_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def load_for_profile(
    model: str,
    data: str | os.PathLike,
    *,
    batch_size: int = 32,
    image_size: int = 32,
) -> tuple[keras.Model, tf.data.Dataset]:
    """A compiled model and ``image_folder`` batches for it, from ``tfprod profile``'s options.

    Args:
        model: ``"mlp"`` or ``"cnn"`` (built for the folder's grayscale images and classes, as
            ``tfprod train`` builds them), ``"module:function"`` or a ``.keras`` file (their
            input shape sets the image size and color mode).
        data: an image folder (one subfolder per class).
        batch_size: images per batch.
        image_size: side of the square images, for the presets.
    """
    from tfprod.data import image_folder
    from tfprod.models import mlp, small_cnn
    from tfprod.models.loading import load_model_function

    if not os.path.isdir(data):
        raise TfprodError(f"--data {data}: not a folder; expected an image folder (one "
                          "subfolder per class)")
    if model in ("mlp", "cnn"):
        size = (image_size, image_size)
        ds = image_folder(data, size, batch_size=batch_size, color_mode="grayscale")
        build = small_cnn if model == "cnn" else mlp
        return build((*size, 1), max(2, len(ds.class_names))), ds
    if model.endswith(".keras"):
        if not os.path.exists(model):
            raise TfprodError(f"--model {model}: no such file")
        built = keras.saving.load_model(model)
    else:
        built = load_model_function(model)()
    if not isinstance(built, keras.Model):
        raise TfprodError(f"--model {model} returned {type(built).__name__}; expected a "
                          "compiled keras.Model")
    shape = tuple(built.inputs[0].shape[1:]) if len(built.inputs) == 1 else ()
    if len(shape) != 3 or shape[-1] not in _COLOR_MODES:
        raise TfprodError(f"--model {model} takes inputs of shape {shape or 'several'}; an "
                          "image folder feeds one (height, width, 1|3|4) input")
    size = (shape[0] or image_size, shape[1] or image_size)
    ds = image_folder(data, size, batch_size=batch_size, color_mode=_COLOR_MODES[shape[-1]])
    return built, ds


def _check(model: keras.Model, dataset: tf.data.Dataset, steps: int, warmup: int) -> None:
    if not isinstance(model, keras.Model):
        raise TfprodError(f"model is a {type(model).__name__}; expected a compiled keras.Model")
    if not isinstance(dataset, tf.data.Dataset):
        raise TfprodError(f"dataset is a {type(dataset).__name__}; expected a tf.data.Dataset "
                          "of (x, y) batches")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise TfprodError(f"the dataset yields {spec}; expected (x, y) or (x, y, sample_weight) "
                          "batches")
    for name, value, least in (("steps", steps, 1), ("warmup", warmup, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise TfprodError(f"{name}={value!r}; expected an integer >= {least} (the warm-up "
                              "traces the step)")


def _next(iterator):
    try:
        return next(iterator)
    except StopIteration:
        raise TfprodError("the dataset is empty; profile a dataset that yields batches") from None


@contextlib.contextmanager
def _profiler(logdir: str | None):
    if logdir is None:
        yield
        return
    try:
        tf.profiler.experimental.start(logdir)
    except tf.errors.OpError as e:
        raise TfprodError(f"cannot start the profiler in {logdir} ({e.message.splitlines()[0]});"
                          " is another profiling session running (e.g. TensorBoard("
                          "profile_batch=...))? Stop it or profile without a logdir") from None
    try:
        yield
    finally:
        tf.profiler.experimental.stop()


def profile_training(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    steps: int = 50,
    warmup: int = 5,
    logdir: str | os.PathLike | None = None,
) -> ProfileReport:
    """Trains ``steps`` steps and says whether the input pipeline or the step is the limit.

    Runs ``warmup`` untimed steps (tracing), then ``steps`` timed ones, each split into the
    wall time blocked in ``next(iterator)`` and the time in the compiled training step (a
    ``tf.function`` of :func:`tfprod.train.step_bench.make_train_step`, XLA-compiled when the
    model was compiled with ``jit_compile=True``) plus a sync on its loss. Then pulls as many
    batches from a fresh iterator over the dataset alone. The model is trained by these steps.

    Args:
        model: a compiled ``keras.Model``.
        dataset: batches of ``(x, y)`` or ``(x, y, sample_weight)``; repeated when finite.
        steps: timed steps.
        warmup: untimed steps first (at least 1: it traces the step).
        logdir: also record a ``tf.profiler`` trace of the timed steps here (view it with
            TensorBoard's profile plugin).

    Returns:
        A :class:`ProfileReport`: steps/s, step-time percentiles, input wait and compute
        shares, the verdict (``input-bound``, ``compute-bound`` or ``balanced``) and the fix.

    Raises:
        TfprodError: an uncompiled model, a dataset not of ``(x, y)`` batches or empty, bad
            ``steps``/``warmup``, a profiler session already running.

    Example:
        >>> report = profile_training(model, train_ds, steps=100, logdir="runs/profile")
        >>> report.verdict, report.fix
    """
    _check(model, dataset, steps, warmup)
    if int(dataset.cardinality()) == 0:
        raise TfprodError("the dataset is empty; profile a dataset that yields batches")
    if int(dataset.cardinality()) != tf.data.INFINITE_CARDINALITY:
        dataset = dataset.repeat()
    iterator = iter(dataset)
    first = _next(iterator)
    batch_size = int(tf.shape(tf.nest.flatten(first[0])[0])[0])
    build_for(model, first)
    mode = "xla" if getattr(model, "jit_compile", False) is True else "function"
    step = make_train_step(model, mode=mode)
    float(step(first))
    for _ in range(warmup - 1):
        float(step(_next(iterator)))

    logdir = None if logdir is None else os.fspath(logdir)
    before = set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*"))) if logdir \
        else set()
    waits, computes = [], []
    with _profiler(logdir):
        start = time.perf_counter()
        for i in range(steps):
            trace = (tf.profiler.experimental.Trace("train", step_num=i, _r=1) if logdir
                     else contextlib.nullcontext())
            with trace:
                t0 = time.perf_counter()
                batch = _next(iterator)
                t1 = time.perf_counter()
                float(step(batch))
                t2 = time.perf_counter()
            waits.append(t1 - t0)
            computes.append(t2 - t1)
        seconds = time.perf_counter() - start
    del iterator
    files = sorted(set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*")))
                   - before) if logdir else []

    iterator = iter(dataset)
    for _ in range(warmup):
        _next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        _next(iterator)
    input_only = time.perf_counter() - start
    return ProfileReport(steps=steps, warmup=warmup, batch_size=batch_size, seconds=seconds,
                         wait_seconds=waits, compute_seconds=computes,
                         input_only_seconds=input_only, step_mode=mode, logdir=logdir,
                         trace_files=files)
