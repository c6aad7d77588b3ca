"""``ServerMonitor``: the request log and drift monitoring inside ``tfprod serve``.

Attached to the server as its :class:`~tfprod.serve.hooks.ServingHooks`:

- every finished predict of a logged model is sampled (``sampling_rate``) and queued to that
  model's :class:`~tfprod.monitor.writer_process.ProcessLogWriter` (SQLite or PostgreSQL,
  written by a process of its own): the request path only encodes and appends bytes;
- a background thread reads the log's newest ``window_rows`` rows of the model (with every
  replica's requests, when they share a PostgreSQL log), compares them with the served
  version's reference sample every ``interval_s`` seconds
  (:func:`~tfprod.monitor.detect_drift`, with the model's ``embedding`` signature when it has
  one) and publishes it as Prometheus gauges next to TF Serving's metrics
  (``:tfprod:drift:score{model,feature}``, ``:tfprod:drift:dataset{model}``) and at
  ``GET /v1/models/NAME/monitor``;
- ``POST /v1/models/NAME:feedback`` stores labels that arrive later, by request id;
- the request log's own health: ``:tfprod:request_log:dropped{url}`` (records dropped because
  the store could not keep up), ``...:written``, ``...:pending``, ``...:errors`` (failed
  writes) and ``...:failing`` (1 while the store refuses writes: down, disk full); all gauges
  (their names are exact; ``dropped``, ``written`` and ``errors`` only grow);
- a SQLite log belongs to one server process (:func:`~tfprod.monitor.store.claim_for_server`);
  replicas share a PostgreSQL log.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from tfprod.errors import TfprodError
from tfprod.monitor.store import Store, claim_for_server, open_store, release
from tfprod.monitor.writer_process import ProcessLogWriter

Log = Callable[[str], None]
MIN_ROWS = 50
_LABEL_TYPES = (int, float, str, bool)


@dataclass
class _Model:
    name: str
    writer: ProcessLogWriter
    url: str
    sampling_rate: float
    window_rows: int = 0  # rows of the last window read
    report: dict[str, Any] | None = None
    computed_at: float | None = None
    error: str | None = None
    drift: dict[str, float] = field(default_factory=dict)
    dataset_drift: float | None = None


class ServerMonitor:
    """Request log + background drift for the models of one server.

    Args:
        logging: model name -> ``(url, sampling_rate)`` for each logged model.
        interval_s: seconds between drift computations; 0 turns them off.
        window_rows: rows of recent requests the drift is computed on.
        capacity: records a writer may hold before it drops (per store URL).
        log: where one-line events go.
    """

    def __init__(self, logging: dict[str, tuple[str, float]], *, interval_s: float = 60.0,
                 window_rows: int = 5000, capacity: int = 10_000, log: Log | None = None):
        self.log: Log = log or (lambda _m: None)
        self.interval_s, self.window_rows = interval_s, window_rows
        self._writers: dict[str, ProcessLogWriter] = {}
        self._stores: dict[str, Store] = {}
        self.models: dict[str, _Model] = {}
        self._claims: list[str | None] = []
        for name, (url, rate) in logging.items():
            if url not in self._writers:
                self._claims.append(claim_for_server(url))  # one server per SQLite log
            open_store(url).close()  # fail at start, in one line, when the store is unusable
            writer = self._writers.get(url)
            if writer is None:
                writer = self._writers[url] = ProcessLogWriter(url, capacity=capacity,
                                                               log=self.log)
            self.models[name] = _Model(name, writer, url, rate)
        self.registry: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._references: dict[str, Any] = {}

    # ------------------------------------------------------------------------ hooks

    def attach(self, registry: Any, metrics: Any) -> None:
        self.registry = registry
        if metrics is not None:
            metrics.registry.register(_Gauges(self))
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="drift_monitor",
                                            daemon=True)
            self._thread.start()

    def on_predict(self, model: str, version: int, signature: str, inputs: dict[str, Any],
                   outputs: dict[str, Any], latency_s: float, request_id: str) -> None:
        m = self.models.get(model)
        if m is None or (m.sampling_rate < 1.0 and random.random() >= m.sampling_rate):
            return
        m.writer.add(request_id, time.time(), model, int(version), signature,
                     latency_s * 1000.0, inputs, outputs)

    def feedback(self, model: str, body: bytes) -> bytes:
        from tfprod.serve.errors import invalid_argument, not_found

        m = self.models.get(model)
        if m is None:
            raise not_found(f"model {model!r} has no request log; feedback joins logged requests "
                            "(start tfprod serve with --request_log or a logging_config)")
        items = _parse_feedback(body)
        classes = self._label_classes(model)
        for rid, label in items:
            if classes is not None and (not isinstance(label, int) or isinstance(label, bool)
                                        or not 0 <= label < classes):
                raise invalid_argument(
                    f"label {label!r} of request {rid!r} is not a class index; model {model!r} "
                    f"was trained on integer labels 0..{classes - 1}; nothing was stored")
        ids = [rid for rid, _ in items]
        store = self._store(m.url)
        unknown = set(ids) - store.known_ids(model, ids)
        if unknown and m.writer.pending:  # logged but not yet committed?
            m.writer.flush(10)
            unknown -= store.known_ids(model, sorted(unknown))
        unknown = sorted(unknown)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
            raise not_found(f"unknown request id(s) {shown} for model {model!r}: ids come from "
                            "the X-Request-Id header of :predict responses, and requests left "
                            "out by sampling_rate are not logged; nothing was stored")
        store.add_feedback(model, items, time.time())
        return orjson.dumps({"accepted": len(items)})

    def monitor(self, model: str) -> bytes:
        from tfprod.serve.errors import not_found

        m = self.models.get(model)
        if m is None:
            raise not_found(f"model {model!r} has no request log; start tfprod serve with "
                            "--request_log or a logging_config")
        rows = m.window_rows
        status = "ok" if m.report is not None else (
            "error" if m.error else f"waiting for {MIN_ROWS} logged rows" if rows < MIN_ROWS
            else "waiting for the next computation")
        return orjson.dumps({"model": model, "status": status, "window_rows": rows,
                             "interval_seconds": self.interval_s, "computed_at": m.computed_at,
                             "error": m.error, "request_log": m.writer.stats(),
                             "report": m.report}, option=orjson.OPT_SERIALIZE_NUMPY)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for writer in self._writers.values():
            if not writer.close(30):
                self.log(f"request log {writer.url}: {writer.pending} records not written "
                         f"at shutdown ({writer.dropped} dropped before)")
        for store in self._stores.values():
            store.close()
        for key in self._claims:
            release(key)
        self._claims = []

    # ------------------------------------------------------------------------ drift

    def _store(self, url: str) -> Store:
        with self._lock:
            store = self._stores.get(url)
            if store is None:
                store = self._stores[url] = open_store(url)
            return store

    def _label_classes(self, model: str) -> int | None:
        ref = self._reference_for(model, quiet=True)
        labels = None if ref is None else ref[0].labels
        if labels is None or np.asarray(labels).dtype.kind not in "iu" or not len(labels):
            return None
        return int(np.max(labels)) + 1

    def _reference_for(self, model: str, *, quiet: bool = False) -> tuple[Any, Any] | None:
        """(reference Dataset with model outputs, servable) for the model's newest version."""
        from tfprod.monitor.datasets import load_dataset

        try:
            with self.registry.acquire(model, None, None) as servable:
                key = servable.path
                if key not in self._references:
                    ref = load_dataset(servable.path)
                    if ref.embeddings is None and "embedding" in servable.signatures:
                        ref.embeddings = _embed(servable, ref.features)  # an older export
                    self._references = {key: ref}  # only the newest version's
                return self._references[key], servable
        except TfprodError:
            if quiet:
                return None
            raise

    def compute(self, model: str) -> dict[str, Any] | None:
        """Drift of the model's recent window now (what the background thread runs)."""
        from tfprod.monitor.drift import detect_drift

        m = self.models[model]
        cur = self._store(m.url).window(model, self.window_rows, signature="serving_default")
        m.window_rows = cur.rows
        if cur.rows < MIN_ROWS:
            return None
        ref, servable = self._reference_for(model)
        cur.labels = None  # the window's report is on inputs and outputs
        if ref.embeddings is not None:
            cur.embeddings = _embed(servable, cur.features)
        report = detect_drift(ref, cur, workers=1).to_json()
        m.report, m.computed_at, m.error = report, time.time(), None
        m.drift = {f["name"]: f["score"] for f in report["features"] if f["score"] is not None}
        m.dataset_drift = float(report["dataset_drift"])
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name in list(self.models):
                try:
                    self.compute(name)
                except Exception as e:  # keep serving; the endpoint reports it
                    m = self.models[name]
                    message = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    if message != m.error:
                        self.log(f"[yellow]drift of model {name} not computed[/]: {message}")
                    m.error = message


def _embed(servable: Any, features: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    n = len(next(iter(features.values())))
    parts = []
    for start in range(0, n, batch):
        out = servable.run_direct("embedding", {k: v[start:start + batch]
                                                for k, v in features.items()})
        value = next(iter(out.values()))
        parts.append(value.reshape(len(value), -1))
    return np.concatenate(parts)


def _parse_feedback(body: bytes) -> list[tuple[str, Any]]:
    from tfprod.serve.errors import invalid_argument

    example = '{"feedback": [{"request_id": "...", "label": 3}]}'
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid_argument(f"feedback body is not JSON ({e}); expected {example}") from None
    items = doc.get("feedback") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise invalid_argument(f"feedback body has no \"feedback\" list; expected {example}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str) \
                or "label" not in item:
            raise invalid_argument(f"feedback[{i}] is {str(item)[:80]!r}; expected an object "
                                   f"with a string request_id and a label, as in {example}")
        label = item["label"]
        ok = isinstance(label, _LABEL_TYPES) or (
            isinstance(label, list) and label and all(isinstance(v, (int, float)) and
                                                      not isinstance(v, bool) for v in label))
        if not ok:
            raise invalid_argument(f"feedback[{i}] label {str(label)[:80]!r} has type "
                                   f"{type(label).__name__}; expected a number, a string, a "
                                   "boolean or a list of numbers")
        out.append((item["request_id"], label))
    return out


class _Gauges:
    """The monitor's Prometheus gauges, collected with the server's metrics."""

    def __init__(self, monitor: ServerMonitor):
        self.monitor = monitor

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        writers = self.monitor._writers
        for name, doc, attr in (
                (":tfprod:request_log:dropped", "Log records dropped because the store could "
                 "not keep up (only grows).", "dropped"),
                (":tfprod:request_log:written", "Log records committed (only grows).", "written"),
                (":tfprod:request_log:pending", "Log records accepted, not yet committed.",
                 "pending"),
                (":tfprod:request_log:errors", "Failed writes to the store, each retried (only "
                 "grows).", "errors"),
                (":tfprod:request_log:failing", "1 while the last write to the store failed "
                 "(down, full disk), else 0.", "failing")):
            g = GaugeMetricFamily(name, doc, labels=["url"])
            for w in writers.values():
                g.add_metric([w.url], float(getattr(w, attr)))
            yield g
        score = GaugeMetricFamily(":tfprod:drift:score", "Drift score of each tested column of "
                                  "the recent window (see its test in /v1/models/NAME/monitor).",
                                  labels=["model", "feature"])
        dataset = GaugeMetricFamily(":tfprod:drift:dataset", "1 when the recent window drifted "
                                    "from the reference, else 0.", labels=["model"])
        for m in self.monitor.models.values():
            for feature, value in m.drift.items():
                score.add_metric([m.name, feature], float(value))
            if m.dataset_drift is not None:
                dataset.add_metric([m.name], m.dataset_drift)
        yield score
        yield dataset
