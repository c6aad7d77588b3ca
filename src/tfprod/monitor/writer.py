"""``LogWriter``: request-log records off the request path, in batches, never silently lost.

``tfprod serve`` runs it inside a writer process of its own
(:mod:`tfprod.monitor.writer_process`); in a process that does not serve, it runs on a thread.

The request path calls :meth:`LogWriter.submit`, which appends to a bounded buffer under a lock
and returns (about a microsecond). One writer thread takes up to ``batch_size`` records at a
time and inserts them in one transaction. ``capacity`` bounds every record accepted but not yet
committed (queued or in the batch being written): when the store is slow or down and the buffer
is full, new records are dropped and counted (:attr:`dropped`, exported as
``:tfprod:request_log:dropped``), and requests still succeed. A failed write keeps its batch,
reports once, reconnects with backoff and retries, so nothing already accepted is lost while the
process lives; a SIGKILL loses at most ``capacity`` records, the ones not yet committed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tfprod.monitor.store import Store, redact

Log = Callable[[str], None]


class LogWriter:
    """Batches records into a :class:`Store` on its own thread.

    Args:
        connect: opens the store (called again to reconnect after a failure).
        capacity: records accepted but not yet committed, at most.
        batch_size: records per insert transaction.
        flush_interval: seconds a partial batch may wait.
        log: where one-line events go (write failures, reconnects).
        url: the store's URL, for messages.
        write: how a batch goes into the store (default :meth:`Store.write`, for
            :class:`LogRecord` items; the writer process passes :meth:`Store.write_rows`).
    """

    def __init__(self, connect: Callable[[], Store], *, capacity: int = 10_000,
                 batch_size: int = 512, flush_interval: float = 0.2, log: Log | None = None,
                 url: str = "request log",
                 write: Callable[[Store, list], Any] | None = None):
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self._connect = connect
        self._write = write or (lambda store, batch: store.write(batch))
        self.capacity, self.batch_size, self.flush_interval = capacity, batch_size, flush_interval
        self.url = redact(url)
        # Wake the writer at a full batch, or sooner when the buffer is small, so that a small
        # buffer does not fill while the writer sleeps out flush_interval.
        self._wake = max(min(batch_size, capacity // 4), 1)
        self.log: Log = log or (lambda _message: None)
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.pending = 0      # accepted, not yet committed
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.failing = False  # the last write failed (the store is down or its disk is full)
        self.last_error: str | None = None
        self._closing = False
        self._flushing = 0  # callers waiting in flush(): write what is queued now
        self._store: Store | None = None
        self._thread = threading.Thread(target=self._run, name="request_log_writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------ request path

    def submit(self, record: Any) -> bool:
        """Queue ``record``; False (and counted in :attr:`dropped`) when the buffer is full."""
        return self.submit_many([record]) == 1

    def submit_many(self, records: list[Any]) -> int:
        """:meth:`submit` each of ``records`` under one lock; returns how many were accepted."""
        with self._cond:
            room = 0 if self._closing else max(self.capacity - self.pending, 0)
            accepted = records[:room]
            self.dropped += len(records) - len(accepted)
            self.pending += len(accepted)
            self._queue.extend(accepted)
            if len(self._queue) >= self._wake:
                self._cond.notify()
        return len(accepted)

    # ------------------------------------------------------------------------ writer thread

    def _take(self) -> list[Any]:
        """The next batch: once ``batch_size`` records wait, or the oldest has waited
        ``flush_interval``, or someone flushes. Taking whatever arrived during the last write
        instead kept the writer busy with a small transaction after each write, each holding
        the GIL the event loop needs."""
        with self._cond:
            if not self._queue and not self._closing:
                self._cond.wait(self.flush_interval)
            oldest = time.monotonic()
            while (self._queue and len(self._queue) < self._wake and not self._closing
                   and not self._flushing):
                left = oldest + self.flush_interval - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(len(self._queue), self.batch_size)
            return [self._queue.popleft() for _ in range(n)]

    def _commit(self, batch: list[Any]) -> None:
        backoff = 0.2
        while True:
            try:
                if self._store is None:
                    self._store = self._connect()
                    if self.errors:
                        self.log(f"request log {self.url}: reconnected; writing "
                                 f"{self.pending} waiting records")
                self._write(self._store, batch)
                self.failing = False
                return
            except Exception as e:  # the store is down or slow: keep the batch, retry
                self.errors += 1
                self.failing = True
                message = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if message != self.last_error:
                    self.log(f"request log {self.url}: write failed ({message}); retrying, "
                             f"{self.pending} records waiting, {self.dropped} dropped so far")
                self.last_error = message
                self._drop_store()
                if self._closing and self._close_deadline < time.monotonic():
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closing:
                    return
                continue
            try:
                self._commit(batch)
            except Exception:
                return  # closing and the store never came back: the counts say what is lost
            with self._cond:
                self.pending -= len(batch)
                self.written += len(batch)
                self._cond.notify_all()

    def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):  # it is broken already
                store.close()

    # ------------------------------------------------------------------------ control

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every accepted record is committed; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            try:
                self._cond.notify_all()
                while self.pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.05))
                    self._cond.notify_all()
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued (up to ``timeout``), stop the thread, close the store."""
        self._close_deadline = time.monotonic() + timeout
        done = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(self._close_deadline - time.monotonic(), 0.1) + 1)
        self._drop_store()
        return done

    _close_deadline = float("inf")

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "written": self.written, "pending": self.pending,
                "dropped": self.dropped, "errors": self.errors, "failing": self.failing,
                "last_error": self.last_error}
