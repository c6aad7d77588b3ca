"""Examples/s of input pipelines on a user's own data: baselines, Keras' loader and tfprod's.

Each pipeline is timed the way a training loop uses it: one iterator per epoch, batches pulled
from Python. An epoch's time runs from creating its iterator to exhausting it; deleting the
iterator is timed separately (``delete_seconds``): with tf.data autotuning on, deleting an
iterator can wait for the autotune thread's next scheduled wake-up, which can take seconds.
Process CPU time per example is reported too: unlike wall time, other processes on the machine
barely move it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError

AUTOTUNE = tf.data.AUTOTUNE
Progress = Callable[[str, int, int], None]

#: pipeline id -> label, for image folders (in table order).
IMAGE_PIPELINES = {
    "decode_only": "decode limit: read + decode, no resize",
    "decode_limit": "decode limit: read + decode + resize",
    "naive": "naive: sequential map + batch",
    "keras": "keras image_dataset_from_directory",
    "tfprod": "tfprod image_folder, no cache",
    "tfprod_memory": "tfprod image_folder, memory cache",
    "tfprod_file": "tfprod image_folder, file cache",
}
#: pipeline id -> label, for TFRecord folders (in table order).
TFRECORD_PIPELINES = {
    "parse_single": "parse_single_example per record",
    "read_tfrecords": "tfprod read_tfrecords (batched parse, no shuffle)",
    "raw_records": "raw records (read, no parse)",
}


@dataclasses.dataclass
class Measurement:
    """One pipeline and epoch over every repeat: wall and CPU seconds, iterator deletions.

    ``epoch`` is 0 for a single pass counted inside TF (the decode limits).
    """

    pipeline: str
    label: str
    epoch: int
    examples: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    delete_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.examples / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def min(self) -> float:
        return min(self.rates)

    @property
    def max(self) -> float:
        return max(self.rates)

    @property
    def cpu_us_per_example(self) -> float:
        """Median process CPU time (user + system, all threads) per example, in microseconds."""
        return statistics.median(self.cpu_seconds) / self.examples * 1e6


@dataclasses.dataclass
class BenchReport:
    """What :func:`bench_path` measured: a table, and the raw numbers behind it.

    ``measurements`` maps ``(pipeline id, epoch)`` to a :class:`Measurement`; ``baselines`` maps
    a ratio column name to the ``(pipeline id, epoch)`` it divides by.
    """

    title: str
    columns: list[str]
    rows: list[list]
    kind: str
    path: str
    num_examples: int
    batch_size: int
    repeats: int
    measurements: dict[tuple[str, int], Measurement]
    baselines: dict[str, tuple[str, int]]
    build_seconds: dict[str, list[float]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def rate(self, pipeline: str, epoch: int = 1) -> float:
        """Median examples/s of one pipeline and epoch."""
        return self.measurements[(pipeline, epoch)].median

    def ratio(self, pipeline: str, epoch: int, baseline: str) -> float:
        """Median examples/s over that of a baseline column (e.g. ``"x Keras e1"``)."""
        return self.rate(pipeline, epoch) / self.rate(*self.baselines[baseline])

    def to_json(self) -> dict[str, Any]:
        results = []
        for (pipeline, epoch), m in self.measurements.items():
            results.append({
                "pipeline": pipeline,
                "label": m.label,
                "epoch": epoch,
                "examples": m.examples,
                "examples_per_s": {"median": m.median, "min": m.min, "max": m.max},
                "seconds": m.seconds,
                "cpu_seconds": m.cpu_seconds,
                "cpu_us_per_example": m.cpu_us_per_example,
                "iterator_delete_seconds": m.delete_seconds,
                "ratios": {name: self.ratio(pipeline, epoch, name) for name in self.baselines},
            })
        return {
            "title": self.title,
            "kind": self.kind,
            "path": self.path,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__,
            "baselines": {k: list(v) for k, v in self.baselines.items()},
            "build_seconds": self.build_seconds,
            "details": self.details,
            "results": results,
        }


# ------------------------------------------------------------------------------------ timing


def _count(batch) -> int:
    return int(tf.nest.flatten(batch)[0].shape[0])


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def time_epochs(ds: tf.data.Dataset, epochs: int) -> tuple[list[float], list[float],
                                                           list[float], int]:
    """Iterates ``ds`` for ``epochs``, one iterator each, as a training loop does.

    Returns:
        (wall seconds per epoch from iterator creation to exhaustion, process CPU seconds over
        the same span, seconds to delete each epoch's iterator, examples in the last epoch).
    """
    seconds, cpu, deletes, examples = [], [], [], 0
    for _ in range(epochs):
        start, cpu_start = time.perf_counter(), _cpu()
        iterator = iter(ds)
        examples = 0
        for batch in iterator:
            examples += _count(batch)
        seconds.append(time.perf_counter() - start)
        cpu.append(_cpu() - cpu_start)
        start = time.perf_counter()
        del iterator
        deletes.append(time.perf_counter() - start)
    return seconds, cpu, deletes, examples


def _time_count(ds: tf.data.Dataset, block: int = 256) -> tuple[float, float, int]:
    """Wall and CPU seconds to run ``ds`` (elements of one shape) to the end, counting in TF.

    Counted in blocks (``batch`` + ``reduce``): a per-element ``reduce`` runs its function once
    per element on the consuming thread, which on two cores measured ~20-30% below the same
    decode consumed in batches; a limit must not be slower than the pipelines held to it.
    """
    start, cpu_start = time.perf_counter(), _cpu()
    n = int(ds.batch(block).reduce(np.int64(0),
                                   lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]))
    return time.perf_counter() - start, _cpu() - cpu_start, n


class _Runner:
    """Runs named measurements over repeats, reporting progress and collecting results."""

    def __init__(self, labels: dict[str, str], total: int, progress: Progress | None):
        self.labels, self.total, self.progress = labels, total, progress
        self.done = 0
        self.measurements: dict[tuple[str, int], Measurement] = {}
        self.build_seconds: dict[str, list[float]] = {}

    def _start(self, pipeline: str) -> None:
        if self.progress is not None:
            self.progress(self.labels[pipeline], self.done, self.total)
        self.done += 1
        gc.collect()

    def _add(self, pipeline: str, epoch: int, examples: int, seconds: float, cpu: float,
             delete: float | None = None) -> None:
        m = self.measurements.setdefault(
            (pipeline, epoch), Measurement(pipeline, self.labels[pipeline], epoch, examples))
        if examples != m.examples:
            raise TfprodError(f"{pipeline} epoch {epoch} yielded {examples} examples, an earlier "
                              f"run {m.examples}; the data changed during the benchmark")
        m.seconds.append(seconds)
        m.cpu_seconds.append(cpu)
        if delete is not None:
            m.delete_seconds.append(delete)

    def single_pass(self, pipeline: str, make: Callable[[int], tf.data.Dataset]) -> None:
        """A limit: the faster of ``make(AUTOTUNE)`` and ``make(cores)``, each run once.

        Neither setting is the fastest every time on two cores (AUTOTUNE ramps parallelism up
        from 1 and sometimes stays low for a whole pass of a second or two); a limit is the best
        the decode does, so it takes the better of both.
        """
        self._start(pipeline)
        runs = [_time_count(make(parallel)) for parallel in (AUTOTUNE, os.cpu_count() or 1)]
        seconds, cpu, n = min(runs)
        self._add(pipeline, 0, n, seconds, cpu)

    def epochs(self, pipeline: str, make: Callable[[], tf.data.Dataset], epochs: int) -> None:
        self._start(pipeline)
        start = time.perf_counter()
        ds = make()
        self.build_seconds.setdefault(pipeline, []).append(time.perf_counter() - start)
        seconds, cpu, deletes, n = time_epochs(ds, epochs)
        for epoch, (s, c, d) in enumerate(zip(seconds, cpu, deletes, strict=True), start=1):
            self._add(pipeline, epoch, n, s, c, d)


def _rows(measurements: dict[tuple[str, int], Measurement],
          baselines: dict[str, tuple[str, int]]) -> list[list]:
    rows = []
    for (_, epoch), m in measurements.items():
        ratios = [m.median / measurements[b].median for b in baselines.values()]
        rows.append([
            m.label,
            str(epoch) if epoch else "-",
            f"{m.median:,.0f}",
            f"{m.min:,.0f}–{m.max:,.0f}",
            f"{statistics.median(m.seconds):.3f}",
            f"{m.cpu_us_per_example:,.1f}",
            f"{statistics.median(m.delete_seconds):.3f}" if m.delete_seconds else "-",
            *[f"{r:.2f}x" for r in ratios],
        ])
    return rows


def _columns(baselines: dict[str, tuple[str, int]]) -> list[str]:
    return ["pipeline", "epoch", "examples/s", "min–max", "s/epoch", "CPU µs/example",
            "iterator del s", *baselines]


# ------------------------------------------------------------------------------------ images


def _image_shape(path: str) -> str:
    """``"WxH "`` of an image file, or ``""`` if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return f"{im.size[0]}x{im.size[1]} "
    except Exception:
        return ""


def _image_report(path: str, image_size: tuple[int, int], batch_size: int, repeats: int,
                  progress: Progress | None) -> BenchReport:
    import keras

    from tfprod.data.images import (
        _sniff,
        decode_ratio,
        image_folder,
        list_image_folder,
        make_loader,
    )

    files = list(list_image_folder(path).files)
    formats = [_sniff(f) for f in files]
    broken = [f for f, fmt in zip(files, formats, strict=True) if fmt is None]
    if broken:
        raise TfprodError(f"{broken[0]}: empty, truncated or not an image; fix or remove it "
                          "before benchmarking")
    jpeg_only = all(fmt == "jpeg" for fmt in formats)
    ratio = decode_ratio(files, image_size) if jpeg_only else 1
    load = make_loader(image_size, 3, ratio, jpeg_only)

    def decode_only(parallel: int):
        def read(f):
            data = tf.io.read_file(f)
            if jpeg_only:
                img = tf.io.decode_jpeg(data, channels=3, ratio=ratio)
            else:
                img = tf.io.decode_image(data, channels=3, expand_animations=False)
            # The decoded shape (known only after decoding) stands for the image: sizes may
            # differ, so images could not be batched for counting.
            return tf.shape(img)
        return tf.data.Dataset.from_tensor_slices(files).map(
            read, num_parallel_calls=parallel, deterministic=False).prefetch(AUTOTUNE)

    def decode_limit(parallel: int):
        return tf.data.Dataset.from_tensor_slices(files).map(
            load, num_parallel_calls=parallel, deterministic=False).prefetch(AUTOTUNE)

    def naive():
        from tfprod.data.options import naive_options

        ds = tf.data.Dataset.from_tensor_slices(files).map(load).batch(batch_size)
        return naive_options(ds)

    def keras_loader():
        with contextlib.redirect_stdout(io.StringIO()):  # "Found N files belonging to ..."
            return keras.utils.image_dataset_from_directory(
                path, image_size=image_size, batch_size=batch_size, shuffle=True, seed=0)

    with tempfile.TemporaryDirectory(prefix="tfprod-bench-") as tmp:
        def tfprod(cache):
            return lambda: image_folder(path, image_size, batch_size=batch_size, cache=cache)

        plan: list[tuple[str, Callable[..., tf.data.Dataset], int]] = [
            ("decode_only", decode_only, 0),
            ("decode_limit", decode_limit, 0),
            ("naive", naive, 1),
            ("keras", keras_loader, 2),
            ("tfprod", tfprod(None), 2),
            ("tfprod_memory", tfprod("memory"), 2),
        ]
        runner = _Runner(IMAGE_PIPELINES, (len(plan) + 1) * repeats, progress)
        for r in range(repeats):
            for pipeline, make, epochs in plan:
                if epochs:
                    runner.epochs(pipeline, make, epochs)
                else:
                    runner.single_pass(pipeline, make)
            runner.epochs("tfprod_file", tfprod(os.path.join(tmp, f"cache-{r}")), 2)
    baselines = {"x Keras e1": ("keras", 1), "x decode limit": ("decode_limit", 0)}
    title = (f"{path}: {len(files)} {_image_shape(files[0])}images -> "
             f"{image_size[0]}x{image_size[1]}, batch {batch_size}, JPEG decode ratio {ratio}, "
             f"{repeats} repeat(s), {os.cpu_count()} cores")
    return BenchReport(
        title=title, columns=_columns(baselines), rows=_rows(runner.measurements, baselines),
        kind="images", path=path, num_examples=len(files), batch_size=batch_size,
        repeats=repeats, measurements=runner.measurements, baselines=baselines,
        build_seconds=runner.build_seconds,
        details={"image_size": list(image_size), "decode_ratio": ratio,
                 "bytes": sum(os.path.getsize(f) for f in files)},
    )


# --------------------------------------------------------------------------------- TFRecords


def _tfrecord_report(path: str, batch_size: int, repeats: int,
                     progress: Progress | None) -> BenchReport:
    from tfprod.data.schema import Schema
    from tfprod.data.tfrecord import parse_single_pipeline, raw_records, read_tfrecords

    schema = Schema.load(path)
    plan = [
        ("parse_single", lambda: parse_single_pipeline(path, batch_size=batch_size)),
        # Shuffling is off here as in the two baselines: the ratios measure parsing alone.
        ("read_tfrecords", lambda: read_tfrecords(path, batch_size=batch_size, shuffle=False)),
        ("raw_records", lambda: raw_records(path, batch_size=batch_size)),
    ]
    runner = _Runner(TFRECORD_PIPELINES, len(plan) * repeats, progress)
    for _ in range(repeats):
        for pipeline, make in plan:
            runner.epochs(pipeline, make, 2)
    baselines = {"x parse-single e1": ("parse_single", 1), "x raw e1": ("raw_records", 1)}
    features = ", ".join(f"{n} {s.dtype}{list(s.shape)}" for n, s in schema.features.items())
    title = (f"{path}: {schema.num_examples} records ({features}) in {len(schema.shards)} "
             f"shard(s), batch {batch_size}, {repeats} repeat(s), {os.cpu_count()} cores")
    return BenchReport(
        title=title, columns=_columns(baselines), rows=_rows(runner.measurements, baselines),
        kind="tfrecord", path=path, num_examples=schema.num_examples, batch_size=batch_size,
        repeats=repeats, measurements=runner.measurements, baselines=baselines,
        build_seconds=runner.build_seconds,
        details={"shards": len(schema.shards),
                 "bytes": sum(os.path.getsize(os.path.join(path, s)) for s in schema.shards)},
    )


# ---------------------------------------------------------------------------------------- API


def bench_path(
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int] = (64, 64),
    batch_size: int = 64,
    repeats: int = 1,
    progress: Progress | None = None,
) -> BenchReport:
    """Measures examples/s of baseline pipelines and tfprod's on an image or TFRecord folder.

    Image folders (``path/<class>/<image>``): the decode limit (parallel read + decode
    [+ resize] counted inside TF), a naive sequential pipeline, Keras'
    ``image_dataset_from_directory``, and tfprod's :func:`~tfprod.data.image_folder` uncached,
    with a memory cache and with a file cache, for epochs 1 and 2.

    TFRecord folders (with ``schema.json``): per-record ``parse_single_example``, tfprod's
    :func:`~tfprod.data.read_tfrecords` (batched parse) and reading records without parsing.

    Args:
        path: the folder.
        image_size: (height, width) the image pipelines resize to.
        batch_size: examples per batch.
        repeats: runs of every pipeline; the table shows medians and min–max.
        progress: called as ``progress(pipeline label, measurements done, total)`` as each
            measurement starts.

    Returns:
        A :class:`BenchReport`; ``report.rows`` is the table, ``report.to_json()`` the numbers.

    Raises:
        TfprodError: a missing path, or one that is neither an image folder nor a TFRecord
            folder; bad arguments.
    """
    from tfprod.data.schema import SCHEMA_FILE

    p = os.fspath(path)
    if repeats < 1:
        raise TfprodError(f"repeats={repeats}; expected a positive integer")
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    if len(image_size) != 2 or min(image_size) < 1:
        raise TfprodError(f"image_size={image_size}; expected (height, width), both positive")
    image_size = (int(image_size[0]), int(image_size[1]))
    if not os.path.exists(p):
        raise TfprodError(f"{p}: no such file or folder; expected an image folder "
                          "(<class>/<image>) or a TFRecord folder with schema.json")
    if os.path.isdir(p) and os.path.exists(os.path.join(p, SCHEMA_FILE)):
        return _tfrecord_report(p, batch_size, repeats, progress)
    if not os.path.isdir(p):
        raise TfprodError(f"{p} is a file; expected an image folder (<class>/<image>) or a "
                          "TFRecord folder with schema.json")
    from tfprod.data.images import list_image_folder

    try:
        list_image_folder(p)
    except TfprodError as e:
        raise TfprodError(f"{p} is neither a TFRecord folder (no schema.json) nor an image "
                          f"folder: {e}") from None
    return _image_report(p, image_size, batch_size, repeats, progress)
