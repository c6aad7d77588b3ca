"""Prometheus metrics with TF Serving's names, plus the process metrics of prometheus-client.

TF Serving exports its TensorFlow monitoring cells through Prometheus with ``/`` turned into
``:`` (``/tensorflow/serving/request_count`` -> ``:tensorflow:serving:request_count``);
latencies are in microseconds, as there. Counters keep TF Serving's exposition too: no
``_total`` suffix. Each :class:`ServingMetrics` owns its own ``CollectorRegistry`` (never the
global default one), so several servers, or tests, live side by side in one process.

Front ends record each request with :meth:`ServingMetrics.record_request` on
``registry.metrics``, or with the module-level :func:`record_request`, which records into the
process's current instance (:func:`current`, the one the running server uses).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"
WRAPPED_RUN_COUNT = ":tensorflow:serving:batching_session:wrapped_run_count"
INPUT_BATCH_SIZE = ":tensorflow:serving:batching_session:input_batch_size"
PROCESSED_BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
PADDING_SIZE = ":tensorflow:serving:batching_session:padding_size"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
MODEL_VERSION_STATE = ":tfprod:serving:model_version_state"
CONFIG_RELOAD_ERRORS = ":tfprod:model_config:reload_errors"
CONFIG_APPLIED = ":tfprod:model_config:applied"
ROLLOUT_REQUESTS = ":tfprod:rollout:requests"
ROLLOUT_VERSION = ":tfprod:rollout:version"
ROLLOUT_CANARY_PERCENT = ":tfprod:rollout:canary_percent"
ROLLOUT_LATENCY = ":tfprod:rollout:request_latency"
ROLLOUT_ERRORS = ":tfprod:rollout:errors"
ROLLOUT_WEIGHT = ":tfprod:rollout:weight_percent"
ROLLOUT_SHADOW = ":tfprod:rollout:shadow_copies"
STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


def _exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    # tensorflow::monitoring::Buckets::Exponential(scale, growth, count)
    return tuple(scale * growth ** i for i in range(count))


_LATENCY_BUCKETS = _exponential(10, 1.8, 33)          # 10 us .. ~20 minutes, as TF Serving
_QUEUE_BUCKETS = _exponential(100, 1.2, 52)           # 100 us .. ~1 s, as TF Serving
_SIZE_BUCKETS = _exponential(1, 2, 15)                # 1 .. 16384 instances


class _Family:
    """One metric family: values per label tuple, guarded by one lock."""

    def __init__(self, name: str, doc: str, kind: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = ()):
        self.name, self.doc, self.kind, self.labels = name, doc, kind, tuple(labels)
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], list[float]] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            cell = self._values.get(key)
            if cell is None:
                self._values[key] = [amount]
            else:
                cell[0] += amount

    def set(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[key] = [value]

    def remove(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._values.pop(key, None)

    def observe(self, key: tuple[str, ...], value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            cell = self._values.get(key)
            if cell is None:
                cell = self._values[key] = [0.0] * (len(self.buckets) + 3)
            cell[i] += 1          # per-bucket counts; [-2] = sum, [-1] = count
            cell[-2] += value
            cell[-1] += 1

    def observe_many(self, key: tuple[str, ...], values: Iterable[float]) -> None:
        """:meth:`observe` of each value, under one lock."""
        indexed = [(bisect.bisect_left(self.buckets, v), v) for v in values]
        with self._lock:
            cell = self._values.get(key)
            if cell is None:
                cell = self._values[key] = [0.0] * (len(self.buckets) + 3)
            for i, value in indexed:
                cell[i] += 1
                cell[-2] += value
                cell[-1] += 1

    def get(self, key: tuple[str, ...]) -> list[float] | None:
        """A copy of one cell's values (tests and reports)."""
        with self._lock:
            cell = self._values.get(key)
            return list(cell) if cell is not None else None

    def items(self) -> list[tuple[tuple[str, ...], list[float]]]:
        """Copies of every (label values, cell) pair."""
        with self._lock:
            return [(k, list(v)) for k, v in self._values.items()]

    def metric(self) -> Metric:
        with self._lock:
            cells = {k: list(v) for k, v in self._values.items()}
        kind = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}[self.kind]
        m = Metric(self.name, self.doc, kind)
        for key, cell in sorted(cells.items()):
            labels = dict(zip(self.labels, key, strict=True))
            if self.kind != "histogram":
                m.add_sample(self.name, labels, cell[0])
                continue
            running = 0.0
            for bound, n in zip(self.buckets, cell, strict=False):
                running += n
                m.add_sample(self.name + "_bucket", {**labels, "le": _le(bound)}, running)
            m.add_sample(self.name + "_bucket", {**labels, "le": "+Inf"}, cell[-1])
            m.add_sample(self.name + "_sum", labels, cell[-2])
            m.add_sample(self.name + "_count", labels, cell[-1])
        return m


def _le(bound: float) -> str:
    return repr(float(round(bound, 6)))


class ServingMetrics(Collector):
    """The server's metrics, in their own prometheus-client ``CollectorRegistry``.

    Example::

        metrics = ServingMetrics()
        metrics.record_request("digits", "predict", "REST", "OK", 0.004)
        body = metrics.exposition()     # Prometheus text format, CONTENT_TYPE
    """

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.request_count = _Family(REQUEST_COUNT, "The total number of requests.", "counter",
                                     ("model_name", "status"))
        self.request_latency = _Family(
            REQUEST_LATENCY, "Distribution of wall time (in microseconds) for Tensorflow Serving "
            "request.", "histogram", ("model_name", "API", "entrypoint"), _LATENCY_BUCKETS)
        self.runtime_latency = _Family(
            RUNTIME_LATENCY, "Distribution of wall time (in microseconds) for Tensorflow "
            "runtime.", "histogram", ("model_name", "API", "runtime"), _LATENCY_BUCKETS)
        self.queuing_latency = _Family(
            QUEUING_LATENCY, "Distribution of wall time spent (in microseconds) in queuing",
            "histogram", ("thread_pool_name",), _QUEUE_BUCKETS)
        self.wrapped_run_count = _Family(
            WRAPPED_RUN_COUNT, "Total count of run calls on the wrapped session", "counter")
        self.input_batch_size = _Family(
            INPUT_BATCH_SIZE, "Tracks the batch size distribution on the inputs.", "histogram",
            (), _SIZE_BUCKETS)
        self.processed_batch_size = _Family(
            PROCESSED_BATCH_SIZE, "Tracks the batch size distribution on processing.",
            "histogram", (), _SIZE_BUCKETS)
        self.padding_size = _Family(
            PADDING_SIZE, "Tracks the padding size distribution on batches.", "histogram",
            ("execution_batch_size",), _SIZE_BUCKETS)
        self.load_attempt_count = _Family(
            LOAD_ATTEMPT_COUNT, "The number of times a SavedModel was successfully loaded.",
            "counter", ("model_path", "status"))
        self.version_state = _Family(
            MODEL_VERSION_STATE, "1 for the state each model version is in (START, LOADING, "
            "AVAILABLE, UNLOADING, END).", "gauge", ("model_name", "version", "state"))
        self.config_reload_errors = _Family(
            CONFIG_RELOAD_ERRORS, "Times the polled --model_config_file could not be applied "
            "(the previous config kept serving).", "counter")
        self.config_applied = _Family(
            CONFIG_APPLIED, "1 when the --model_config_file on disk is the config being served, "
            "0 while its last change could not be applied.", "gauge")
        self.rollout_requests = _Family(
            ROLLOUT_REQUESTS, "Requests without a version or label, by the version a split "
            "sent them to (arm: stable or canary, or the A/B label).", "counter",
            ("model_name", "version", "arm"))
        self.rollout_latency = _Family(
            ROLLOUT_LATENCY, "Distribution of wall time (in microseconds) of the requests a "
            "split sent to each arm.", "histogram", ("model_name", "version", "arm"),
            _LATENCY_BUCKETS)
        self.rollout_errors = _Family(
            ROLLOUT_ERRORS, "Requests a split sent to each arm that failed, by canonical code.",
            "counter", ("model_name", "version", "arm", "status"))
        self.rollout_weight = _Family(
            ROLLOUT_WEIGHT, "Configured share (percent) of unversioned traffic of each A/B "
            "label (--ab_weights).", "gauge", ("model_name", "label"))
        self.rollout_shadow = _Family(
            ROLLOUT_SHADOW, "Request copies sent to the shadow version, by outcome (answered: "
            "logged; dropped: the shadow failed or its queue was full).", "counter",
            ("model_name", "version", "outcome"))
        self.rollout_version = _Family(
            ROLLOUT_VERSION, "The version each rollout label names (stable, canary, the A/B "
            "labels).", "gauge", ("model_name", "label"))
        self.rollout_canary_percent = _Family(
            ROLLOUT_CANARY_PERCENT, "Share of unversioned traffic sent to the canary, in "
            "percent.", "gauge", ("model_name",))
        self._families = [v for v in vars(self).values() if isinstance(v, _Family)]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ------------------------------------------------------------------------ recording

    def record_request(self, model: str, api: str, entrypoint: str, status: str,
                       latency_s: float) -> None:
        """Count one request and its latency (``api`` e.g. "predict", ``entrypoint`` "REST" or
        "GRPC", ``status`` "OK" or a canonical code name such as "INVALID_ARGUMENT")."""
        self.request_count.inc((model, status))
        self.request_latency.observe((model, api, entrypoint), latency_s * 1e6)

    def record_runtime(self, model: str, api: str, latency_s: float, *,
                       runtime: str = "TF2") -> None:
        """The time one call of the model took (per batch when batching); ``runtime`` "TF2" or
        "LiteRT"."""
        self.runtime_latency.observe((model, api, runtime), latency_s * 1e6)

    def record_batch(self, queue_waits_s: Iterable[float], input_sizes: Iterable[int],
                     batch_size: int, padded_size: int, *, pool: str = "batch_threads") -> None:
        """One batch: each request's wait in the queue and size, the merged and padded sizes."""
        self.queuing_latency.observe_many((pool,), [wait * 1e6 for wait in queue_waits_s])
        self.input_batch_size.observe_many((), input_sizes)
        self.processed_batch_size.observe((), padded_size)
        self.padding_size.observe((str(padded_size),), padded_size - batch_size)
        self.wrapped_run_count.inc(())

    def record_load(self, path: str, ok: bool) -> None:
        """One attempt to load a SavedModel."""
        self.load_attempt_count.inc((path, "success" if ok else "fail"))

    def set_version_state(self, model: str, version: int, state: str | None) -> None:
        """The state a version is in now (None forgets the version)."""
        for s in STATES:
            self.version_state.remove((model, str(version), s))
        if state is not None:
            self.version_state.set((model, str(version), state), 1.0)

    def record_config_reload(self, *, ok: bool) -> None:
        """One attempt to apply a changed --model_config_file."""
        if not ok:
            self.config_reload_errors.inc(())
        self.config_applied.set((), 1.0 if ok else 0.0)

    def set_rollout(self, model: str, labels: dict[str, int], canary_percent: float,
                    weights: Sequence[tuple[str, float]] = ()) -> None:
        """The versions the ``stable`` and ``canary`` labels (and the A/B labels of
        ``weights``) name now, and each A/B label's configured share."""
        total = sum(w for _, w in weights)
        shares = {label: 100.0 * w / total for label, w in weights} if total else {}
        for (name, label), _ in self.rollout_version.items():
            if name == model and label not in ("stable", "canary") and label not in shares:
                self.rollout_version.remove((model, label))
                self.rollout_weight.remove((model, label))
        for label in ("stable", "canary", *shares):
            if label in labels:
                self.rollout_version.set((model, label), float(labels[label]))
            else:
                self.rollout_version.remove((model, label))
        for label, share in shares.items():
            self.rollout_weight.set((model, label), share)
        self.rollout_canary_percent.set((model,), canary_percent if "canary" in labels else 0.0)

    def record_arm(self, model: str, version: int, arm: str, status: str,
                   latency_s: float) -> None:
        """One unversioned request a split sent to ``arm`` (``version``) finished with
        ``status`` ("OK" or a canonical code name): its count, error and latency."""
        key = (model, str(version), arm)
        self.rollout_requests.inc(key)
        self.rollout_latency.observe(key, latency_s * 1e6)
        if status != "OK":
            self.rollout_errors.inc((*key, status))

    def record_shadow(self, model: str, version: int, *, ok: bool) -> None:
        """One request copy the shadow version answered (``ok``) or lost."""
        self.rollout_shadow.inc((model, str(version), "answered" if ok else "dropped"))

    def arm_stats(self, model: str, version: int | None, arm: str) -> dict[str, float]:
        """An arm's requests, errors and mean latency (ms) so far (the rollout report)."""
        key = (model, str(version), arm)
        requests = (self.rollout_requests.get(key) or [0.0])[0]
        latency = self.rollout_latency.get(key)
        errors = sum(v[0] for k, v in self.rollout_errors.items() if k[:3] == key)
        mean = latency[-2] / latency[-1] / 1000.0 if latency and latency[-1] else None
        return {"requests": int(requests), "errors": int(errors), "latency_ms_mean": mean}

    def shadow_stats(self, model: str, version: int) -> dict[str, int]:
        """Copies the shadow ``version`` answered and dropped so far."""
        return {outcome: int((self.rollout_shadow.get((model, str(version), outcome))
                              or [0.0])[0]) for outcome in ("answered", "dropped")}

    # ------------------------------------------------------------------------ exposition

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.metric()

    def exposition(self) -> bytes:
        """All metrics in the Prometheus text format (serve with :data:`CONTENT_TYPE`)."""
        body = generate_latest(self.registry)
        # prometheus-client names a counter family "<name>_total"; TF Serving does not.
        for family in self._families:
            if family.kind == "counter":
                n = family.name.encode()
                body = body.replace(b"# HELP " + n + b"_total ", b"# HELP " + n + b" ")
                body = body.replace(b"# TYPE " + n + b"_total ", b"# TYPE " + n + b" ")
        return body


_current: ServingMetrics | None = None
_current_lock = threading.Lock()


def current() -> ServingMetrics:
    """The process's current metrics (created on first use; the server sets its own)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = ServingMetrics()
        return _current


def set_current(metrics: ServingMetrics) -> None:
    """Make ``metrics`` the target of the module-level functions."""
    global _current
    with _current_lock:
        _current = metrics


def record_request(model: str, api: str, entrypoint: str, status: str, latency_s: float) -> None:
    """:meth:`ServingMetrics.record_request` on :func:`current`."""
    current().record_request(model, api, entrypoint, status, latency_s)


def exposition() -> bytes:
    """:meth:`ServingMetrics.exposition` of :func:`current`."""
    return current().exposition()
