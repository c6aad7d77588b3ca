"""Where the request log lives: SQLite (WAL) by default, PostgreSQL for several replicas.

``open_store(url)``: ``sqlite:///path/log.db`` or a plain path -> :class:`SqliteStore` (WAL
journal: readers never block the writer; nothing to start); ``postgresql://user@host:port/db``
-> :class:`PostgresStore` (psycopg 3), which many servers can write at once.

Two tables: ``request_log`` (one row per logged request: time, model, version, signature,
request id, latency, inputs and outputs as blobs, see :mod:`tfprod.monitor.records`) and
``feedback`` (labels that arrived later, by request id). :meth:`Store.read` joins them.

Every failure to open or read is a :class:`TfprodError` naming the store, what went wrong and
how to fix it; the URL's password is never printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.monitor.records import LogRecord, decode_concatenated, decode_tensors, encode_many

_COLUMNS = "request_id, time, model, version, signature, latency_ms, inputs, outputs"
_ROWS_PER_INSERT = 128  # 1,024 parameters: under SQLite's 32,766 and PostgreSQL's 65,535


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int, placeholder: str) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO request_log ({_COLUMNS}) VALUES {values}".replace("?", placeholder)


# One request_log row as inserted: request id, time, model, version, signature, latency (ms),
# inputs and outputs encoded by tfprod.monitor.records.encode_tensors.
Row = tuple[str, float, str, int, str, float, bytes, bytes]


def _encoded_rows(records: list[LogRecord]) -> list[Row]:
    inputs = encode_many([r.inputs for r in records])
    outputs = encode_many([r.outputs for r in records])
    return [(r.request_id, r.time, r.model, r.version, r.signature, r.latency_ms, x, y)
            for r, x, y in zip(records, inputs, outputs, strict=True)]


# A logged request and its label, as read and read_labelled select them (see _record).
_RECORD = ("r.request_id, r.time, r.model, r.version, r.signature, r.latency_ms, r.inputs, "
           "r.outputs, f.label")


def _record(rid: str, t: float, model: str, version: int, signature: str, latency_ms: float,
            inputs: bytes, outputs: bytes, label: str | None) -> LogRecord:
    return LogRecord(rid, float(t), model, int(version), signature, decode_tensors(inputs),
                     decode_tensors(outputs), float(latency_ms),
                     None if label is None else json.loads(label))


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Store:
    """The operations the writer, the feedback endpoint and ``tfprod monitor`` need."""

    url: str
    blob: type = bytes
    placeholder = "?"
    _schema: Sequence[str] = ()

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    def write(self, records: Iterable[LogRecord]) -> int:
        """Insert ``records`` in one transaction; returns how many."""
        records = list(records)
        self._insert(self._insert_statements(records, _encoded_rows))
        return len(records)

    def write_rows(self, rows: Sequence[Row]) -> int:
        """Insert rows already encoded (see :data:`Row`) in one transaction; returns how many.
        The request log's writer process receives rows in this form."""
        self._insert(self._insert_statements(list(rows), list))
        return len(rows)

    def _insert_statements(self, items: list, encode: Callable[[list], list[Row]]
                           ) -> Iterator[tuple[str, list[Any]]]:
        """Multi-row INSERTs of at most ``_ROWS_PER_INSERT`` rows, each chunk encoded (by
        ``encode``) just before it runs. The database runs a statement without the GIL, so a
        chunk costs one hand-over of the GIL, not one per row; and a chunk is small enough
        that encoding it holds the GIL for a fraction of a millisecond."""
        blob = self.blob
        for start in range(0, len(items), _ROWS_PER_INSERT):
            params: list[Any] = []
            for rid, t, model, version, signature, latency, x, y in encode(
                    items[start:start + _ROWS_PER_INSERT]):
                params += (rid, t, model, version, signature, latency, blob(x), blob(y))
            yield _insert_sql(len(params) // 8, self.placeholder), params

    def _insert(self, statements: Iterator[tuple[str, list[Any]]]) -> None:
        """Run ``statements`` in one transaction."""
        raise NotImplementedError

    def known_ids(self, model: str, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that ``model`` has logged."""
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            found.update(r[0] for r in self._execute(self._q(
                f"SELECT request_id FROM request_log WHERE model = ? AND request_id IN ({marks})"),
                [model, *chunk]))
        return found

    def add_feedback(self, model: str, items: Sequence[tuple[str, Any]], time: float) -> int:
        """Store ``(request_id, label)`` pairs (a later label for an id replaces the earlier)."""
        rows = [(rid, model, json.dumps(label), time) for rid, label in items]
        self._executemany(self._q(
            "INSERT INTO feedback (request_id, model, label, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET label = excluded.label, time = excluded.time"),
            rows)
        return len(rows)

    def read(self, model: str | None = None, *, since: float | None = None,
             until: float | None = None, limit: int | None = None) -> list[LogRecord]:
        """Logged requests (oldest first) with their feedback labels joined."""
        where, params = [], []
        if model is not None:
            where.append("r.model = ?")
            params.append(model)
        if since is not None:
            where.append("r.time >= ?")
            params.append(since)
        if until is not None:
            where.append("r.time < ?")
            params.append(until)
        sql = (f"SELECT {_RECORD} FROM request_log r LEFT JOIN feedback f "
               f"ON f.request_id = r.request_id AND f.model = r.model"
               f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY r.time, r.id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_record(*row) for row in self._execute(self._q(sql), params)]

    def window(self, model: str, rows: int, *, signature: str | None = None) -> Any:
        """The newest ``rows`` logged instances of ``model`` (of ``signature`` if given) as a
        :class:`~tfprod.monitor.datasets.Dataset`, oldest first, labels joined: what the
        server's drift monitor compares with the reference. Requests of one layout are
        decoded together (:func:`~tfprod.monitor.records.decode_concatenated`)."""
        where, params = ["r.model = ?"], [model]
        if signature is not None:
            where.append("r.signature = ?")
            params.append(signature)
        # Every request holds at least one instance: ``rows`` requests are enough.
        found = self._execute(self._q(
            f"SELECT r.request_id, r.time, r.inputs, r.outputs, f.label FROM request_log r "
            f"LEFT JOIN feedback f ON f.request_id = r.request_id AND f.model = r.model "
            f"WHERE {' AND '.join(where)} ORDER BY r.id DESC LIMIT {max(int(rows), 0)}"),
            params)[::-1]
        return _window_dataset(found, rows, model)

    def read_labelled(self, model: str, *, after: float | None = None,
                      after_row: int | None = None, limit: int | None = None
                      ) -> list[tuple[LogRecord, float, int]]:
        """Logged requests whose label arrived after the cursor ``(after, after_row)`` (feedback
        time in epoch seconds, then the log's row number: labels sent together share a time,
        so a limit may end among them), with that time and row, in the order the labels
        arrived (then the order served): the stream a learner consumes."""
        where, params = ["r.model = ?"], [model]
        if after is not None:
            if after_row is None:
                where.append("f.time > ?")
                params.append(after)
            else:
                where.append("(f.time > ? OR (f.time = ? AND r.id > ?))")
                params.extend([after, after, after_row])
        sql = (f"SELECT {_RECORD}, f.time, r.id FROM request_log r JOIN feedback f "
               f"ON f.request_id = r.request_id AND f.model = r.model "
               f"WHERE {' AND '.join(where)} ORDER BY f.time, r.id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(_record(*row[:9]), float(row[9]), int(row[10]))
                for row in self._execute(self._q(sql), params)]

    def unmatched_feedback(self, model: str, *, after: float | None = None,
                           until: float | None = None) -> list[tuple[str, float]]:
        """``(request_id, time)`` of labels for ``model`` that arrived after ``after`` and
        up to ``until`` (inclusive) whose request the log does not hold, in arrival order."""
        where, params = ["f.model = ?", "r.request_id IS NULL"], [model]
        if after is not None:
            where.append("f.time > ?")
            params.append(after)
        if until is not None:
            where.append("f.time <= ?")
            params.append(until)
        sql = (f"SELECT f.request_id, f.time FROM feedback f LEFT JOIN request_log r "
               f"ON r.request_id = f.request_id AND r.model = f.model "
               f"WHERE {' AND '.join(where)} ORDER BY f.time, f.request_id")
        return [(rid, float(t)) for rid, t in self._execute(self._q(sql), params)]

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._execute("SELECT COUNT(*) FROM request_log")[0][0])
        return int(self._execute(self._q("SELECT COUNT(*) FROM request_log WHERE model = ?"),
                                 [model])[0][0])

    def close(self) -> None:
        raise NotImplementedError


_SQLITE_SCHEMA = (
    # A plain INTEGER PRIMARY KEY (the rowid) grows with every insert as AUTOINCREMENT would,
    # since rows are never deleted, without AUTOINCREMENT's extra write to sqlite_sequence.
    "CREATE TABLE IF NOT EXISTS request_log (id INTEGER PRIMARY KEY, "
    "request_id TEXT NOT NULL, time REAL NOT NULL, model TEXT NOT NULL, version INTEGER, "
    "signature TEXT, latency_ms REAL, inputs BLOB, outputs BLOB)",
    "CREATE INDEX IF NOT EXISTS request_log_model_time ON request_log (model, time)",
    "CREATE INDEX IF NOT EXISTS request_log_request_id ON request_log (request_id)",
    "CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, model TEXT NOT NULL, "
    "label TEXT NOT NULL, time REAL NOT NULL)",
)


class SqliteStore(Store):
    """The log in one SQLite file, in WAL mode (several readers while one writer appends)."""

    def __init__(self, path: str, *, create: bool = True):
        self.url = f"sqlite:///{path}"
        self.path = path
        if not create and not os.path.exists(path):
            raise TfprodError(f"{path}: no request log there; give the --log URL the server "
                              "writes (--request_log or logging_config)")
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                for statement in _SQLITE_SCHEMA:
                    self._db.execute(statement)
        except sqlite3.DatabaseError as e:
            raise TfprodError(f"request log {path}: {e} (is it a corrupt or foreign file?); move "
                              "it aside and a new log starts there; nothing in it is changed")\
                from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, list(params)).fetchall()
            except sqlite3.DatabaseError as e:
                raise TfprodError(f"request log {self.path}: {e}") from None

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lock, self._db:
            self._db.executemany(sql, rows)

    def _insert(self, statements: Iterator[tuple[str, list[Any]]]) -> None:
        with self._lock, self._db:
            for sql, params in statements:
                self._db.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._db.close()


_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS request_log (id BIGSERIAL PRIMARY KEY, "
    "request_id TEXT NOT NULL, time DOUBLE PRECISION NOT NULL, model TEXT NOT NULL, "
    "version BIGINT, signature TEXT, latency_ms DOUBLE PRECISION, inputs BYTEA, outputs BYTEA)",
    "CREATE INDEX IF NOT EXISTS request_log_model_time ON request_log (model, time)",
    "CREATE INDEX IF NOT EXISTS request_log_request_id ON request_log (request_id)",
    "CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, model TEXT NOT NULL, "
    "label TEXT NOT NULL, time DOUBLE PRECISION NOT NULL)",
)


class PostgresStore(Store):
    """The log in PostgreSQL (psycopg 3): one database for every server replica."""

    placeholder = "%s"

    def __init__(self, url: str, *, connect_timeout: float = 5.0):
        import psycopg

        self.url = url
        self._lock = threading.Lock()
        try:
            self._db = psycopg.connect(url, connect_timeout=max(int(connect_timeout), 1),
                                       autocommit=False)
            with self._db.transaction():
                # Replicas may create the tables at the same moment: serialize on a lock.
                self._db.execute("SELECT pg_advisory_xact_lock(7316)")
                for statement in _PG_SCHEMA:
                    self._db.execute(statement)
        except psycopg.Error as e:
            raise TfprodError(f"request log {redact(url)}: cannot connect ({_first_line(e)}); "
                              "check that the PostgreSQL server is running and the URL "
                              "(host, port, database, user)") from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        import psycopg

        with self._lock:
            try:
                with self._db.transaction():
                    return self._db.execute(sql, list(params)).fetchall()
            except psycopg.Error as e:
                raise TfprodError(f"request log {redact(self.url)}: {_first_line(e)}") from None

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.executemany(sql, rows)

    def _insert(self, statements: Iterator[tuple[str, list[Any]]]) -> None:
        with self._lock, self._db.transaction():
            for sql, params in statements:
                self._db.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def open_store(url: str, *, create: bool = True) -> Store:
    """The store at ``url`` (see the module docstring).

    Args:
        url: ``sqlite:///path``, a path, or ``postgresql://...``.
        create: create the SQLite file if missing (readers pass False).

    Raises:
        TfprodError: an unknown scheme, a corrupt SQLite file, an unreachable PostgreSQL.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") - 1:] if url.startswith("sqlite:////")
                           else url[len("sqlite:///"):], create=create)
    if "://" in url:
        raise TfprodError(f"request log {redact(url)}: unknown scheme; expected "
                          "sqlite:///path/log.db, a path, or postgresql://user@host:port/db")
    return SqliteStore(url, create=create)


_CLAIMS: dict[str, list[int]] = {}  # real path -> [lock file descriptor, holders]
_CLAIMS_LOCK = threading.Lock()


def claim_for_server(url: str) -> str | None:
    """Claim a SQLite log for this process's server; returns the key for :func:`release`
    (None for PostgreSQL, which any number of replicas share).

    SQLite serializes writers on one file and cannot be shared across machines, so one server
    process owns a SQLite log: an exclusive ``flock`` on ``<log>.lock`` (which holds the owner's
    PID), taken here and held until :func:`release` or the process ends (a SIGKILL frees it).

    Raises:
        TfprodError: another process already serves with this log.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = url[len("sqlite:///") - 1:] if url.startswith("sqlite:////") else (
        url[len("sqlite:///"):] if url.startswith("sqlite:///") else url)
    key = os.path.realpath(path)
    with _CLAIMS_LOCK:
        held = _CLAIMS.get(key)
        if held is not None:  # servers in one process (tests) share the claim
            held[1] += 1
            return key
        fd = os.open(key + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TfprodError(
                f"request log {path} is already written by another tfprod serve process (pid "
                f"{owner}); a SQLite log takes one server. For several replicas give each the "
                "same PostgreSQL URL: --request_log=postgresql://user@host:port/db") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _CLAIMS[key] = [fd, 1]
        return key


def release(key: str | None) -> None:
    """Give back a claim of :func:`claim_for_server`."""
    if key is None:
        return
    with _CLAIMS_LOCK:
        held = _CLAIMS.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _CLAIMS[key]
            with contextlib.suppress(OSError):
                os.close(held[0])  # closing the descriptor drops the flock


def _window_dataset(found: list[tuple], rows: int, model: str) -> Any:
    """``Store.window``'s rows (id, time, inputs, outputs, label) as a Dataset of the last
    ``rows`` instances."""
    source = f"the last {rows} logged rows of {model}"
    if not found:
        return _instances({}, {}, [], [], [], [], source)
    features, sizes = decode_concatenated([r[2] for r in found])
    predictions, _ = decode_concatenated([r[3] for r in found])
    data = _instances(features, predictions, sizes, [r[0] for r in found],
                      [float(r[1]) for r in found],
                      [None if r[4] is None else json.loads(r[4]) for r in found], source)
    return data if data.rows <= rows else data.take(np.arange(data.rows - rows, data.rows))


def _instances(features: dict[str, np.ndarray], predictions: dict[str, np.ndarray],
               sizes: list[int], request_ids: list[str], times: list[float], labels: list[Any],
               source: str) -> Any:
    """A Dataset of logged requests' instances (``sizes[i]`` rows for request ``i``): one id
    per instance (``id/k`` when a request held several), its request's time and label (NaN
    where none arrived)."""
    from tfprod.monitor.datasets import Dataset

    if not sizes:
        return Dataset({}, source=source)
    ids = [rid if n == 1 else f"{rid}/{i}" for rid, n in zip(request_ids, sizes, strict=True)
           for i in range(n)]
    values = np.full(len(ids), np.nan)
    at = 0
    for label, n in zip(labels, sizes, strict=True):
        if label is not None:
            value = np.asarray(label, dtype=np.float64).reshape(-1)
            values[at:at + n] = value if value.size == n else value[0]
        at += n
    return Dataset(features, predictions, values, times=np.repeat(times, sizes), ids=ids,
                   source=source)


def records_to_dataset(records: Sequence[LogRecord]) -> Any:
    """Concatenate logged requests into a :class:`~tfprod.monitor.datasets.Dataset` (one row
    per instance; labels NaN where none arrived)."""
    features = {k: np.concatenate([r.inputs[k] for r in records]) for k in records[0].inputs
                if all(k in r.inputs for r in records)} if records else {}
    predictions = {k: np.concatenate([r.outputs[k] for r in records]) for k in records[0].outputs
                   if all(k in r.outputs for r in records)} if records else {}
    return _instances(features, predictions, [r.rows for r in records],
                      [r.request_id for r in records], [r.time for r in records],
                      [r.label for r in records], "the request log")
