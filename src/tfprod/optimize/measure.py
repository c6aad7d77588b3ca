"""What the variant table measures: artifact sizes, latency, throughput and the model's metric."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import tarfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export import batches

Predict = Callable[[Any], np.ndarray]
_ACCURACY = {"accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy",
             "binary_accuracy"}
_HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "f1", "iou")


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of the file gzipped at level 9 (a folder: its tar, gzipped) — the download size."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return len(gzip.compress(f.read(), compresslevel=9, mtime=0))
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip(os.sep)))
    return buffer.tell()


@dataclasses.dataclass
class Latency:
    """Batch-1 latency percentiles in milliseconds, over ``runs`` timed calls."""

    p50_ms: float
    p99_ms: float
    runs: int


def latency(predict: Predict, example: Any, *, runs: int = 200,
            warmup: int = 10) -> Latency:
    """Times ``runs`` calls on one example (a batch of 1) after ``warmup`` untimed ones."""
    batch = batches.take(example, 0, 1) if isinstance(example, dict) else np.asarray(
        example)[:1]
    for _ in range(warmup):
        predict(batch)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        predict(batch)
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return Latency(float(p50), float(p99), runs)


def throughput(predict: Predict, x: Any, *, batch_size: int = 64,
               min_seconds: float = 0.5, min_batches: int = 3) -> float:
    """Examples per second at ``batch_size``: full batches for at least ``min_seconds``."""
    x = x if isinstance(x, dict) else np.asarray(x)
    batch = (batches.resize(x, batch_size) if batches.count(x) < batch_size
             else batches.take(x, 0, batch_size))
    predict(batch)  # the first call at this size traces or reallocates
    done, start = 0, time.perf_counter()
    while done < min_batches or time.perf_counter() - start < min_seconds:
        predict(batch)
        done += 1
    return done * batch_size / (time.perf_counter() - start)


def predict_all(predict: Predict, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """Outputs for every example of ``x`` (an array, or a dict by input name), in batches."""
    return np.concatenate([np.asarray(predict(batches.take(x, i, i + batch_size)))
                           for i in range(0, batches.count(x), batch_size)])


@dataclasses.dataclass(frozen=True)
class Metric:
    """The model's metric: its name, whether higher is better, and a scale for display
    (accuracy is shown in percentage points, so ``--max-drop 1.0`` means one point)."""

    name: str
    higher_is_better: bool = True
    scale: float = 100.0

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The metric of ``y_pred`` against ``y_true``, on the display scale."""
        if self.name in _ACCURACY:
            return self.scale * accuracy(y_true, y_pred)
        import keras

        metric = keras.metrics.get(self.name)
        if isinstance(metric, type):
            metric = metric()
        if hasattr(metric, "update_state"):
            metric.update_state(y_true, y_pred)
            return self.scale * float(metric.result())
        return self.scale * float(np.mean(np.asarray(metric(y_true, y_pred))))

    def drop(self, reference: float, value: float) -> float:
        """How much worse ``value`` is than ``reference`` (positive: worse)."""
        return reference - value if self.higher_is_better else value - reference


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction correct: argmax for several outputs (integer or one-hot labels), 0.5 for one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_pred.ndim >= 2 and y_pred.shape[-1] > 1:
        predicted = y_pred.argmax(axis=-1)
        labels = y_true.argmax(axis=-1) if y_true.shape == y_pred.shape else y_true
    else:
        predicted = (y_pred.reshape(len(y_pred)) > 0.5).astype(np.int64)
        labels = y_true
    labels = np.asarray(labels).reshape(len(predicted))
    return float(np.mean(predicted == labels))


def model_metric(model) -> Metric:
    """The model's first compiled metric (accuracy when it has none)."""
    config = {}
    with contextlib.suppress(AttributeError, ValueError, TypeError):
        config = model.get_compile_config() or {}
    names = []
    for m in _flatten(config.get("metrics")):
        name = m if isinstance(m, str) else (m.get("config", {}).get("name")
                                             if isinstance(m, dict) else None)
        if name:
            names.append(name)
    if not names or names[0] in _ACCURACY:
        return Metric("accuracy")
    name = names[0]
    return Metric(name, higher_is_better=any(k in name for k in _HIGHER_IS_BETTER), scale=1.0)


def _flatten(value) -> list:
    if value is None:
        return []
    if isinstance(value, dict) and "config" not in value:
        return [m for v in value.values() for m in _flatten(v)]
    if isinstance(value, list | tuple):
        return [m for v in value for m in _flatten(v)]
    return [value]


def labelled_arrays(name: str, data) -> tuple[Any, np.ndarray]:
    """``(x, y)`` numpy from a tuple or a dataset of ``(x, y)`` batches; ``x`` is an array, or
    a dict of arrays by input name for a model with several named inputs."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = batches.as_arrays(data[0]), np.asarray(data[1])
    elif hasattr(data, "as_numpy_iterator"):
        pairs = list(data.as_numpy_iterator())
        if not pairs or not isinstance(pairs[0], tuple) or len(pairs[0]) != 2:
            raise TfprodError(f"{name} data must yield (x, y) batches")
        x = batches.concatenate([p[0] for p in pairs])
        y = np.concatenate([p[1] for p in pairs])
    else:
        raise TfprodError(f"{name} data is a {type(data).__name__}; expected (x, y) arrays or a "
                          "tf.data.Dataset of (x, y) batches")
    n = batches.count(x)
    if n != len(y) or n == 0:
        raise TfprodError(f"{name} data has {n} inputs and {len(y)} labels; expected the "
                          "same positive number")
    return x, y
