"""``ProcessLogWriter``: the server's request log, written by a process of its own.

Why a process: ``tfprod serve`` answers small requests on one event-loop thread, so every bit of
Python a writer *thread* runs (encoding records, the database driver) is time that event loop
waits for the GIL. Here the request path only encodes a record into a frame (a header kept per
tensor layout, a ``tobytes`` per tensor) and appends it to a buffer; a pump thread hands the
buffer to a pipe in large writes (without the GIL while it writes); the writer process
(``python -m tfprod.monitor.writer_process``) parses the frames and commits them with a
:class:`~tfprod.monitor.writer.LogWriter` in batches, under a GIL of its own.

The guarantees of :class:`~tfprod.monitor.writer.LogWriter` hold across the two processes:

- ``capacity`` bounds the records accepted but not yet committed (in the buffer, the pipe or
  the writer process); beyond it a record is dropped and counted (``dropped``), and the request
  still succeeds;
- a failed write is retried, the writer process reconnects, its one-line reports reach the
  server's log;
- when the server dies, even by SIGKILL, the writer process reads to the end of the pipe,
  commits what it read and exits: only the records the pump had not yet handed over are lost,
  at most ``pump_interval``'s worth (:attr:`ProcessLogWriter.pid` names the process to wait
  for);
- when the writer process dies, the server logs one line, counts the records it held as
  dropped and starts another.

Frames on the pipe: ``<kind:u8><length:u32><payload>``; ``C`` the configuration (JSON, first),
``R`` a record, ``F`` a flush (sequence number, timeout). The writer process answers on a
second pipe with JSON lines: ``stats``, ``log`` (a one-line event) and ``flushed``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from tfprod.monitor.records import LogRecord, encode_tensors
from tfprod.monitor.store import redact

Log = Callable[[str], None]

_FRAME = struct.Struct("<BI")  # kind, payload length
# a record: time, latency (ms), version; lengths of request id, model, signature, inputs, outputs
_RECORD = struct.Struct("<ddqIIIII")
_RECORD_FRAME = struct.Struct("<BI" + _RECORD.format[1:])
_FLUSH = struct.Struct("<Qd")  # sequence number, timeout (s)
_PIPE_BYTES = 1 << 20  # asked of the kernel for each pipe (Linux caps it at pipe-max-size)


def encode_record(request_id: str, when: float, model: str, version: int, signature: str,
                  latency_ms: float, inputs: dict[str, Any], outputs: dict[str, Any]) -> bytes:
    """One logged request as an ``R`` frame."""
    rid = request_id.encode()
    name, sig = _NAMES.get(model) or _name(model), _NAMES.get(signature) or _name(signature)
    x, y = encode_tensors(inputs), encode_tensors(outputs)
    return b"".join((_RECORD_FRAME.pack(
        82, _RECORD.size + len(rid) + len(name) + len(sig) + len(x) + len(y), when, latency_ms,
        version, len(rid), len(name), len(sig), len(x), len(y)), rid, name, sig, x, y))


_NAMES: dict[str, bytes] = {}  # model and signature names, encoded once


def _name(text: str) -> bytes:
    if len(_NAMES) >= 1024:
        _NAMES.clear()
    encoded = _NAMES[text] = text.encode()
    return encoded


def _frame(kind: str, payload: bytes) -> bytes:
    return _FRAME.pack(ord(kind), len(payload)) + payload


def _set_pipe_size(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or above pipe-max-size
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class ProcessLogWriter:
    """Hands request-log records to a writer process (see the module docstring).

    Args:
        url: the store (``sqlite:///...``, a path, ``postgresql://...``).
        capacity: records accepted but not yet committed, at most.
        batch_size: records per insert transaction (in the writer process).
        flush_interval: seconds a partial batch may wait before it is written.
        pump_interval: seconds records may wait in this process before they go to the pipe.
        log: where one-line events go (write failures, reconnects, a writer process that died).
    """

    def __init__(self, url: str, *, capacity: int = 10_000, batch_size: int = 512,
                 flush_interval: float = 0.2, pump_interval: float = 0.05,
                 log: Log | None = None):
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self.url = redact(url)
        self.capacity, self.pump_interval = capacity, pump_interval
        self._config = orjson.dumps({"url": url, "capacity": capacity, "batch_size": batch_size,
                                     "flush_interval": flush_interval})
        self.log: Log = log or (lambda _message: None)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._frames: list[bytes] = []  # waiting for the pump (a list: no copy per append)
        self._wake_frames = 4096
        self._urgent = False       # a flush or close waits: pump now
        self._closing = False
        self._generation = 0       # which writer process the buffer's frames are for
        self._accepted = 0         # records accepted by submit
        self._settled = 0          # of those: committed, or lost with a writer process
        self._gone = 0             # accepted, then lost with a writer process that died
        self._dropped = 0          # refused by submit (the buffer was full)
        self._base = {"written": 0, "errors": 0, "dropped": 0}  # of writer processes gone
        self._child_stats: dict[str, Any] = {"written": 0, "errors": 0, "dropped": 0,
                                             "failing": False, "last_error": None}
        # Flushes are answered in order: the last answer (sequence number, ok) is enough.
        self._flush_seq = 0
        self._answered, self._answered_ok = 0, True
        self._fd_lock = threading.Lock()  # the pipe's write end; taken before _cond, never after
        self._proc: subprocess.Popen | None = None
        self._data_fd = -1
        self._last_start = 0.0
        with self._fd_lock:
            self._start()
        self._pump_thread = threading.Thread(target=self._pump, name="request_log_pump",
                                             daemon=True)
        self._pump_thread.start()

    # ------------------------------------------------------------------------ request path

    def submit(self, record: LogRecord) -> bool:
        """Queue ``record``; False (and counted in :attr:`dropped`) when ``capacity`` records
        already wait."""
        return self.add(record.request_id, record.time, record.model, record.version,
                        record.signature, record.latency_ms, record.inputs, record.outputs)

    def add(self, request_id: str, when: float, model: str, version: int, signature: str,
            latency_ms: float, inputs: dict[str, Any], outputs: dict[str, Any]) -> bool:
        """:meth:`submit` without making a :class:`LogRecord` (the server's request path)."""
        frame = encode_record(request_id, when, model, version, signature, latency_ms, inputs,
                              outputs)
        with self._lock:  # _cond's lock (a plain lock's `with` costs less than a Condition's)
            if self._accepted - self._settled >= self.capacity or self._closing:
                self._dropped += 1
                return False
            self._accepted += 1
            self._frames.append(frame)
            if len(self._frames) == self._wake_frames:
                self._cond.notify_all()
        return True

    # ------------------------------------------------------------------------ counts

    @property
    def written(self) -> int:
        return self._base["written"] + self._child_stats["written"]

    @property
    def dropped(self) -> int:
        return self._dropped + self._base["dropped"] + self._child_stats["dropped"] + self._gone

    @property
    def pending(self) -> int:
        return max(self._accepted - self._settled, 0)

    def _settle(self) -> None:
        """Recount :attr:`_settled` (with ``_cond`` held) after the counts changed."""
        self._settled = (self.written + self._gone + self._base["dropped"]
                         + self._child_stats["dropped"])

    @property
    def errors(self) -> int:
        return self._base["errors"] + self._child_stats["errors"]

    @property
    def failing(self) -> bool:
        return bool(self._child_stats["failing"])

    @property
    def last_error(self) -> str | None:
        return self._child_stats["last_error"]

    @property
    def pid(self) -> int | None:
        """The writer process's PID."""
        return None if self._proc is None else self._proc.pid

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "written": self.written, "pending": self.pending,
                "dropped": self.dropped, "errors": self.errors, "failing": self.failing,
                "last_error": self.last_error, "writer_pid": self.pid}

    # ------------------------------------------------------------------------ control

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record accepted so far is committed; False if ``timeout`` passed
        first (or the writer process died meanwhile: its records are counted as dropped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_seq += 1
            seq = self._flush_seq
            self._frames.append(_frame("F", _FLUSH.pack(seq, timeout)))
            self._urgent = True
            self._cond.notify_all()
            while self._answered < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._answered_ok

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued (up to ``timeout``), then stop the writer process."""
        deadline = time.monotonic() + timeout
        done = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._pump_thread.join(max(deadline - time.monotonic(), 0.1))
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1) + 1)
            except subprocess.TimeoutExpired:
                self.log(f"request log {self.url}: the writer process {proc.pid} did not finish "
                         f"in {timeout:.0f} s; stopped with {self.pending} records unwritten")
                proc.kill()
                proc.wait()
                done = False
        self._pump_thread.join(5)
        return done

    # ------------------------------------------------------------------------ the pipe

    def _start(self) -> None:
        """Start a writer process (with ``_fd_lock`` held) and send it the configuration."""
        data_r, data_w = os.pipe()
        status_r, status_w = os.pipe()
        _set_pipe_size(data_w)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tfprod.monitor.writer_process", str(data_r),
                 str(status_w)], pass_fds=(data_r, status_w), stdin=subprocess.DEVNULL)
        finally:
            os.close(data_r)
            os.close(status_w)
        self._proc, self._data_fd, self._last_start = proc, data_w, time.monotonic()
        self._write_all(data_w, _frame("C", self._config))
        threading.Thread(target=self._read_status, args=(proc, status_r),
                         name="request_log_status", daemon=True).start()

    @staticmethod
    def _write_all(fd: int, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _pump(self) -> None:
        """Hand the buffer to the pipe every ``pump_interval``, or sooner when it is large or
        someone flushes; at close, hand over the rest and end the pipe (the writer process then
        commits and exits)."""
        while True:
            with self._cond:
                # A timed wait, not a wake-up per first record: every wake-up costs the event
                # loop a hand-over of the GIL.
                if not self._urgent and not self._closing and \
                        len(self._frames) < self._wake_frames:
                    self._cond.wait(self.pump_interval)
                data, self._frames, self._urgent = self._frames, [], False
                generation, closing = self._generation, self._closing
            with self._fd_lock:
                if data and generation == self._generation:
                    # OSError: the writer process died; _read_status counts and restarts
                    with contextlib.suppress(OSError):
                        self._write_all(self._data_fd, b"".join(data))
                if closing:
                    with contextlib.suppress(OSError):
                        os.close(self._data_fd)
                    return

    def _read_status(self, proc: subprocess.Popen, fd: int) -> None:
        """Counts, events and flush answers from one writer process; when it dies while the
        server runs, count what it held and start another."""
        with os.fdopen(fd, "rb") as status:
            for line in status:
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if "log" in message:
                    self.log(message["log"])
                    continue
                with self._cond:
                    if "stats" in message:
                        self._child_stats = message["stats"]
                        self._settle()
                    if "flushed" in message:
                        self._answered = message["flushed"]
                        self._answered_ok = bool(message["ok"])
                    self._cond.notify_all()
        code = proc.wait()
        if self._closing:
            return
        with self._fd_lock:
            with self._cond:
                held = self._accepted - self._settled
                self._gone += held
                for key in self._base:
                    self._base[key] += self._child_stats[key]
                self._child_stats = {**self._child_stats, "written": 0, "errors": 0,
                                     "dropped": 0}
                self._settle()
                self._frames = []
                self._generation += 1
                self._answered, self._answered_ok = self._flush_seq, False
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                os.close(self._data_fd)
            wait = 1.0 - (time.monotonic() - self._last_start)
            self.log(f"request log {self.url}: the writer process {proc.pid} exited (code "
                     f"{code}); {held} records it held are counted as dropped; starting another")
            if wait > 0:
                time.sleep(wait)  # a process that dies at once is not restarted in a loop
            try:
                self._start()
            except OSError as e:
                self.log(f"request log {self.url}: cannot start a writer process ({e}); "
                         "requests are served but not logged")


# ---------------------------------------------------------------------------- writer process


def _serve(data_fd: int, status_fd: int) -> int:
    """The writer process: frames from ``data_fd`` into the store, reports to ``status_fd``."""
    from tfprod.monitor.store import open_store
    from tfprod.monitor.writer import LogWriter

    # The server decides when this process ends (by closing the pipe), not a Ctrl-C or a
    # SIGTERM sent to the whole process group: they would lose what is still in the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(19)  # serving comes first
    send_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with send_lock, contextlib.suppress(OSError):
            os.write(status_fd, orjson.dumps(message) + b"\n")

    def frames():
        """(kind, payload) of each whole frame read, the ``R`` frames of one read together as
        a list of rows; ends when the server closes the pipe."""
        left = b""
        names: dict[bytes, str] = {}  # model and signature names, decoded once
        while True:
            chunk = os.read(data_fd, _PIPE_BYTES)
            if not chunk:
                return
            data = left + chunk if left else chunk
            pos, end, rows = 0, len(data), []
            while end - pos >= _FRAME.size:
                kind, size = _FRAME.unpack_from(data, pos)
                start = pos + _FRAME.size
                if end - start < size:
                    break
                pos = start + size
                if kind != 82:  # not R
                    if rows:
                        yield 82, rows
                        rows = []
                    yield kind, data[start:pos]
                    continue
                t, latency, version, n_id, n_model, n_sig, n_x, n_y = _RECORD.unpack_from(
                    data, start)
                o = start + _RECORD.size
                rid = data[o:o + n_id].decode()
                o += n_id
                model = data[o:o + n_model]
                o += n_model
                signature = data[o:o + n_sig]
                o += n_sig
                rows.append((rid, t, names.get(model) or names.setdefault(model, model.decode()),
                             version, names.get(signature) or names.setdefault(
                                 signature, signature.decode()),
                             latency, data[o:o + n_x], data[o + n_x:o + n_x + n_y]))
            if rows:
                yield 82, rows
            left = data[pos:]

    writer: LogWriter | None = None
    last: tuple = ()

    report_lock = threading.Lock()  # counts leave in the order they were read

    def report() -> None:
        nonlocal last
        with report_lock:
            stats = writer.stats()
            key = tuple(stats.values())
            if key != last:
                last = key
                send({"stats": stats})

    stop = threading.Event()

    def reporter() -> None:
        """Counts every 0.1 s when they changed (and with each flush's answer): each message
        costs the server a hand-over of its GIL, so not one per commit."""
        while not stop.wait(0.1):
            report()

    for kind, payload in frames():
        if kind == ord("R"):
            writer.submit_many(payload)
        elif kind == ord("F"):
            seq, timeout = _FLUSH.unpack_from(payload)
            ok = writer.flush(timeout)
            report()
            send({"flushed": seq, "ok": ok})
        elif kind == ord("C"):
            config = orjson.loads(bytes(payload))
            url = config["url"]
            writer = LogWriter(lambda url=url: open_store(url), capacity=config["capacity"],
                               batch_size=config["batch_size"],
                               flush_interval=config["flush_interval"],
                               log=lambda message: send({"log": message}), url=url,
                               write=lambda store, rows: store.write_rows(rows))
            threading.Thread(target=reporter, name="report", daemon=True).start()
    if writer is None:
        return 0
    ok = writer.close(30.0)
    stop.set()
    report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2])))
