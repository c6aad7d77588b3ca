"""Replicas of ``tfprod serve`` behind a real nginx, one PostgreSQL request log, and a bounded
load loop: the pieces of the replica, rolling-update and fault tests (tests/test_replicas.py).

- :class:`Replica`: one ``tfprod serve`` process on fixed 127.0.0.1 ports (a restart comes
  back on the same ports, as a pod behind a Service does), stopped by PID.
- :class:`LoadLoop`: ``concurrency`` threads, each with its own keep-alive connection to the
  balancer, POSTing predicts with an ``X-Request-Id`` of their own until stopped (bounded by
  ``max_seconds``); every answer is counted: ids that succeeded, failures with their reason,
  latencies with the time they ended.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from tfprod.serve.process import ServerProcess

METRICS = "/monitoring/prometheus/metrics"


class Replica(ServerProcess):
    """A ServerProcess whose :meth:`start` may be called again after a stop or a kill."""

    def kill(self, sig: int) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        import os

        proc, self.proc = self.proc, None
        assert proc is not None, "not running"
        os.kill(proc.pid, sig)
        return proc.wait(60)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def get(url: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def metric(body: bytes, name: str) -> float | None:
    """The value of the first sample named exactly ``name`` (any labels)."""
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class LoadLoop:
    """Predicts of ``body`` against ``url`` from ``concurrency`` threads (see the module doc)."""

    url: str
    model: str
    body: bytes
    concurrency: int = 8
    tag: str = "load"
    max_seconds: float = 60.0
    timeout: float = 30.0
    ok_ids: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (end time, seconds)
    upstreams: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(self.concurrency)]
        self.in_flight = 0

    def start(self) -> LoadLoop:
        self._deadline = time.monotonic() + self.max_seconds
        for t in self._threads:
            t.start()
        return self

    def _run(self, worker: int) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        path = f"/v1/models/{self.model}:predict"
        conn = None
        k = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            rid = f"{self.tag}-{worker}-{k}"
            k += 1
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
            t0 = time.monotonic()
            with self._lock:
                self.in_flight += 1
            try:
                conn.request("POST", path, self.body, {"Content-Type": "application/json",
                                                       "X-Request-Id": rid})
                r = conn.getresponse()
                data = r.read()
                upstream = r.getheader("X-Upstream", "")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                outcome = None if r.status == 200 else f"{r.status} {data[:200]!r} via {upstream}"
            except (OSError, http.client.HTTPException) as e:
                outcome, upstream = f"{type(e).__name__}: {e}", ""
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            t1 = time.monotonic()
            with self._lock:
                self.in_flight -= 1
                if outcome is None:
                    self.ok_ids.append(rid)
                    self.latencies.append((t1, t1 - t0))
                    self.upstreams[upstream] = self.upstreams.get(upstream, 0) + 1
                else:
                    self.failures.append(outcome)
        if conn is not None:
            conn.close()

    def stop(self) -> LoadLoop:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self

    def wait_requests(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` more requests have succeeded (bounded by ``timeout``)."""
        target = len(self.ok_ids) + n
        deadline = time.monotonic() + timeout
        while len(self.ok_ids) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load made no progress: {len(self.ok_ids)} ok, "
                                     f"failures {self.failures[-3:]}")
            time.sleep(0.02)

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        values = sorted(s for t, s in self.latencies if since <= t < until)
        assert values, "no requests in the window"
        return values[min(len(values) - 1, int(0.99 * len(values)))]


def predict_body(rows: int = 1) -> bytes:
    return json.dumps({"instances": [[1.0, 2.0, 3.0]] * rows}).encode()
