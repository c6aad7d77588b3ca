"""The request log: exact round trips in SQLite and a real PostgreSQL, the writer's bounded
queue (drops counted, never silent), reconnection when PostgreSQL goes away, feedback joins."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from tfprod.errors import TfprodError
from tfprod.monitor.records import (
    LogRecord,
    decode_tensors,
    encode_tensors,
    to_prediction_log,
)
from tfprod.monitor.store import open_store, records_to_dataset
from tfprod.monitor.writer import LogWriter
from tfprod.monitor.writer_process import ProcessLogWriter
from waiting import wait_until


def _record(i, rows=2):
    rng = np.random.default_rng(i)
    return LogRecord(
        f"req-{i}", 1_700_000_000.0 + i, "digits", 1 + i % 2, "serving_default",
        {"image": rng.integers(0, 255, (rows, 4, 4, 1)).astype(np.uint8),
         "x": rng.standard_normal((rows, 3)).astype(np.float32),
         "text": np.array([f"é{i}", "b"][:rows] + ["c"] * (rows - 2), dtype=object),
         "k": np.arange(rows, dtype=np.int64) - 3},
        {"probabilities": rng.random((rows, 10)), "flag": np.array([True, False][:rows])},
        0.25 * i)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, k
        if x.dtype.kind == "O":
            assert [v if isinstance(v, bytes) else v.encode() for v in x.ravel()] == list(
                y.ravel()), k
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y), k


def test_tensor_encoding_round_trips_exactly():
    r = _record(3)
    _same(r.inputs, decode_tensors(encode_tensors(r.inputs)))
    _same(r.outputs, decode_tensors(encode_tensors(r.outputs)))
    empty = {"z": np.zeros((0, 3), np.float16)}
    assert decode_tensors(encode_tensors(empty))["z"].shape == (0, 3)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    server = request.getfixturevalue("postgres")
    _empty(server.url)
    return server.url


def _empty(url):
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS request_log")
        db.execute("DROP TABLE IF EXISTS feedback")


def test_store_round_trips_records_and_joins_feedback(store_url):
    store = open_store(store_url)
    records = [_record(i) for i in range(20)]
    assert store.write(records) == 20
    store.add_feedback("digits", [("req-3", [1, 2]), ("req-5", 7)], time=1.0)
    store.add_feedback("digits", [("req-5", 8)], time=2.0)  # a later label replaces
    back = store.read("digits")
    assert [r.request_id for r in back] == [r.request_id for r in records]
    for a, b in zip(records, back, strict=True):
        assert (a.time, a.model, a.version, a.signature, a.latency_ms) == \
            (b.time, b.model, b.version, b.signature, b.latency_ms)
        _same(a.inputs, b.inputs)
        _same(a.outputs, b.outputs)
    assert back[3].label == [1, 2] and back[5].label == 8 and back[4].label is None
    assert len(store.read("digits", since=1_700_000_010.0)) == 10
    assert store.known_ids("digits", ["req-1", "nope", "req-19"]) == {"req-1", "req-19"}
    assert store.count() == 20 and store.count("other") == 0
    data = records_to_dataset(back)
    assert data.rows == 40 and data.features["image"].shape == (40, 4, 4, 1)
    assert data.labels[6:8].tolist() == [1, 2] and np.isnan(data.labels[0])
    store.close()


def _numeric_record(i, rows):
    rng = np.random.default_rng(i)
    return LogRecord(f"w-{i}", 1_700_000_000.0 + i, "digits", 1,
                     "serving_default" if i % 7 else "embedding",
                     {"image": rng.random((rows, 4, 4, 1), dtype=np.float32),
                      "k": np.arange(rows, dtype=np.int64) + i},
                     {"probabilities": rng.random((rows, 3))}, 1.0)


@pytest.mark.parametrize("sizes", ["one layout", "mixed sizes"])
def test_the_drift_window_is_the_newest_rows_decoded_together(store_url, sizes):
    """``Store.window``: the last N instances of one signature, oldest first, labels joined,
    equal to decoding each record (the one-layout path and the mixed fallback)."""
    store = open_store(store_url)
    records = [_numeric_record(i, 1 if sizes == "one layout" else 1 + i % 3) for i in range(60)]
    store.write(records)
    store.add_feedback("digits", [("w-57", 2)], time=1.0)
    window = store.window("digits", 25, signature="serving_default")
    kept = [r for r in records if r.signature == "serving_default"]
    want = records_to_dataset(kept)
    assert window.rows == 25
    for k in ("image", "k"):
        assert np.array_equal(window.features[k], want.features[k][-25:]), k
    assert np.array_equal(window.predictions["probabilities"],
                          want.predictions["probabilities"][-25:])
    assert window.ids == want.ids[-25:] and np.array_equal(window.times, want.times[-25:])
    at = [i for i, rid in enumerate(window.ids) if rid.split("/")[0] == "w-57"]
    assert at and all(window.labels[i] == 2 for i in at)
    assert np.isnan(np.delete(window.labels, at)).all()
    assert store.window("other", 25).rows == 0
    store.close()


def test_records_read_as_tf_serving_prediction_logs(tmp_path):
    import tensorflow as tf

    store = open_store(str(tmp_path / "log.db"))
    store.write([_record(1)])
    log = to_prediction_log(store.read()[0], sampling_rate=0.5)
    assert log.WhichOneof("log_type") == "predict_log"
    assert log.log_metadata.model_spec.name == "digits"
    assert log.log_metadata.model_spec.version.value == 2
    assert log.log_metadata.sampling_config.sampling_rate == 0.5
    request = log.predict_log.request
    assert np.array_equal(tf.make_ndarray(request.inputs["image"]), _record(1).inputs["image"])
    assert np.allclose(tf.make_ndarray(log.predict_log.response.outputs["probabilities"]),
                       _record(1).outputs["probabilities"])


def test_writer_batches_everything_it_accepted(tmp_path):
    url = str(tmp_path / "log.db")
    writer = LogWriter(lambda: open_store(url), capacity=1000, batch_size=64)
    for i in range(300):
        assert writer.submit(_record(i, rows=1))
    assert writer.flush(30)
    writer.close()
    assert writer.written == 300 and writer.dropped == 0
    assert open_store(url).count() == 300


class _BlockedStore:
    """A store whose writes wait for a gate (a slow database), then go to SQLite."""

    def __init__(self, url, gate):
        self.inner, self.gate = open_store(url), gate

    def write(self, records):
        self.gate.wait(30)
        return self.inner.write(records)

    def close(self):
        self.inner.close()


def test_a_slow_store_drops_beyond_capacity_and_counts_them(tmp_path):
    url = str(tmp_path / "log.db")
    gate = threading.Event()
    writer = LogWriter(lambda: _BlockedStore(url, gate), capacity=10, batch_size=4,
                       flush_interval=0.01)
    start = time.perf_counter()
    accepted = sum(writer.submit(_record(i, rows=1)) for i in range(50))
    assert time.perf_counter() - start < 0.5  # the request path never waits for the store
    assert accepted == 10 and writer.dropped == 40 and writer.pending == 10
    gate.set()
    assert writer.flush(30)
    writer.close()
    assert open_store(url).count() == 10 and writer.written == 10


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_writer_survives_postgres_going_away_and_loses_nothing(postgres, kind):
    _empty(postgres.url)
    events = []
    if kind == "thread":
        writer = LogWriter(lambda: open_store(postgres.url), capacity=1000, batch_size=16,
                           flush_interval=0.02, log=events.append, url=postgres.url)
    else:
        writer = ProcessLogWriter(postgres.url, capacity=1000, batch_size=16,
                                  flush_interval=0.02, log=events.append)
    for i in range(100):
        writer.submit(_record(i, rows=1))
    assert writer.flush(30)
    postgres.stop()
    try:
        for i in range(100, 150):
            assert writer.submit(_record(i, rows=1))
        wait_until(lambda: writer.errors and writer.failing, timeout=20, what="a failed write")
        assert writer.pending == 50
    finally:
        postgres.start()
    assert writer.flush(60)
    assert writer.close()
    assert open_store(postgres.url).count() == 150
    assert any("write failed" in e for e in events) and any("reconnected" in e for e in events)
    assert all("\n" not in e for e in events) and all("secret" not in e for e in events)


def test_writer_process_round_trips_exactly_and_ends_with_close(tmp_path):
    url = str(tmp_path / "log.db")
    events = []
    writer = ProcessLogWriter(url, capacity=1000, batch_size=64, log=events.append)
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    records = [_record(i, rows=1 + i % 3) for i in range(300)]
    try:
        assert all(writer.submit(r) for r in records)
        assert writer.flush(30)
        assert (writer.written, writer.pending, writer.dropped) == (300, 0, 0)
    finally:
        assert writer.close(30)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the writer process ended and was reaped
    got = open_store(url, create=False).read()
    assert [r.request_id for r in got] == [r.request_id for r in records]
    for want, have in zip(records, got, strict=True):
        assert (have.time, have.version, have.latency_ms) == (want.time, want.version,
                                                              want.latency_ms)
        _same(want.inputs, have.inputs)
        _same(want.outputs, have.outputs)
    assert events == []


def test_a_writer_process_that_dies_is_replaced_and_what_it_held_is_counted(tmp_path):
    url = str(tmp_path / "log.db")
    events = []
    # Batches wait up to a minute: records stay in the writer process until a flush.
    writer = ProcessLogWriter(url, capacity=1000, batch_size=10_000, flush_interval=60,
                              log=events.append)
    try:
        for i in range(100):
            writer.submit(_record(i, rows=1))
        assert writer.flush(30) and writer.written == 100
        for i in range(100, 150):
            writer.submit(_record(i, rows=1))
        first = writer.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: writer.dropped == 50 and writer.pid != first, timeout=20,
                   what="the 50 held records counted and a new writer process")
        assert writer.pending == 0
        for i in range(150, 180):
            assert writer.submit(_record(i, rows=1))
        assert writer.flush(30)
        assert (writer.written, writer.dropped, writer.pending) == (130, 50, 0)
    finally:
        writer.close(30)
    store = open_store(url, create=False)
    ids = [r.request_id for r in store.read()]
    assert ids == [f"req-{i}" for i in [*range(100), *range(150, 180)]]
    [line] = events
    assert f"writer process {first} exited" in line and "50 records" in line, line


def test_bad_stores_get_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TfprodError, match="corrupt or foreign file"):
        open_store(str(corrupt))
    assert corrupt.read_bytes().startswith(b"this is not")  # left as it was
    with pytest.raises(TfprodError, match=r"cannot connect .*check that the PostgreSQL server"):
        open_store("postgresql://user:secret@127.0.0.1:1/db")
    try:
        open_store("postgresql://user:secret@127.0.0.1:1/db")
    except TfprodError as e:
        assert "secret" not in str(e)
    with pytest.raises(TfprodError, match="unknown scheme"):
        open_store("mysql://x/y")
    with pytest.raises(TfprodError, match="no request log there"):
        open_store(str(tmp_path / "missing.db"), create=False)


def test_encode_many_equals_encoding_each_record():
    """The batch encoder of the log writer gives the same bytes as one record at a time, for a
    shared layout (the fast path) and for mixed ones (the fallback)."""
    from tfprod.monitor.records import decode_tensors, encode_many, encode_tensors

    rng = np.random.default_rng(0)
    same = [{"image": rng.random((1, 8, 8, 1), dtype=np.float32),
             "ids": np.arange(3, dtype=">i8")[None]} for _ in range(20)]
    mixed = same[:9] + [{"image": rng.random((2, 8, 8, 1), dtype=np.float32),
                         "ids": np.arange(3)[None]}]
    text = [{"text": np.array([b"a", "b\u00e9"], dtype=object)} for _ in range(10)]
    for records in (same, mixed, text, same[:3], []):
        blobs = encode_many(records)
        assert blobs == [encode_tensors(r) for r in records]
    for blob, r in zip(encode_many(same), same, strict=True):
        back = decode_tensors(blob)
        np.testing.assert_array_equal(back["image"], r["image"])
        np.testing.assert_array_equal(back["ids"], r["ids"])
