"""Replicas of ``tfprod serve`` behind a real nginx, one PostgreSQL request log: the merged log,
a rolling update under load with a new version published during it, and faults (SIGKILL of a
replica, PostgreSQL stopped and restarted, a version folder deleted, a slowloris client).

One cluster (two replicas, nginx, the session's PostgreSQL) serves every test of the module, in
order; each test leaves it with both replicas up. Load loops are bounded in time and target
127.0.0.1 (tests/cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster import METRICS, LoadLoop, Replica, get, metric
from rest_serving import TFPROD
from tfprod.monitor.store import open_store
from waiting import wait_until

MODEL = "replica"
X = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
BODY = json.dumps({"instances": X.tolist()}).encode()


def _export(keras_model, base, version, x, y):
    from tfprod.export import export_saved_model

    export_saved_model(keras_model, base, version=version, reference_data=(x, y), warmup=1)


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    import keras

    from nginx_server import NginxServer

    root = tmp_path_factory.mktemp("replicas")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax",
                                                   name="probabilities")(inputs))
    base = root / MODEL
    _export(model, base, 1, x, y)
    v1 = model.predict(X, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([-kernel, bias])
    _export(model, root / "staged", 2, x, y)
    v2 = model.predict(X, verbose=0)
    (root / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS}" }}')
    flags = [f"--request_log={postgres.url}", "--monitoring_interval_seconds=0",
             f"--monitoring_config_file={root / 'monitoring.config'}",
             "--file_system_poll_wait_seconds=0.5", "--drain_seconds=10",
             "--drain_delay_seconds=1"]
    replicas = [Replica(MODEL, base, log=root / f"serve-{i}.log", flags=flags)
                for i in range(2)]
    nginx = NginxServer(client_timeout=3)
    try:
        starts = [threading.Thread(target=r.start) for r in replicas]
        for t in starts:
            t.start()
        for t in starts:
            t.join(180)
        for r in replicas:
            assert r.proc is not None and r.proc.poll() is None, r.log_tail()
        nginx.start([r.rest_port for r in replicas])
        yield {"replicas": replicas, "nginx": nginx, "postgres": postgres, "base": base,
               "staged": root / "staged" / "2", "v1": v1, "v2": v2, "root": root}
    finally:
        nginx.cleanup()
        stops = [threading.Thread(target=r.stop) for r in replicas]
        for t in stops:
            t.start()
        for t in stops:
            t.join(60)


def _load(cluster, tag, concurrency=8, max_seconds=90.0):
    return LoadLoop(cluster["nginx"].url, MODEL, BODY, concurrency=concurrency, tag=tag,
                    max_seconds=max_seconds).start()


def _replica_metric(replica, name):
    status, body = get(f"http://127.0.0.1:{replica.rest_port}", METRICS)
    assert status == 200
    return metric(body, name) or 0.0


def _requests(replica):
    return _replica_metric(replica, ':tensorflow:serving:request_count{model_name="replica",'
                                    'status="OK"}')


def _logged_ids(store, tag):
    return {r.request_id for r in store.read(MODEL) if r.request_id.startswith(tag + "-")}


def _answer(cluster):
    status, body = _post(cluster["nginx"].url)
    assert status == 200, body
    return np.array(json.loads(body)["predictions"], np.float32)


def _post(url, timeout=10.0):
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", f"/v1/models/{MODEL}:predict", BODY,
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _restart(replica):
    replica.start()  # same ports; returns once /v1/ready answers 200


# ------------------------------------------------------------------------------ 1: replicas


def test_replicas_share_one_postgres_log_and_the_report_sees_the_union(cluster, tmp_path):
    replicas, pg = cluster["replicas"], cluster["postgres"]
    before = [_requests(r) for r in replicas]
    load = _load(cluster, "union")
    load.wait_requests(300)
    load.stop()
    assert load.failures == []
    ok = set(load.ok_ids)
    # Both replicas answered; each one's own count is what nginx sent it.
    assert len(load.upstreams) == 2, load.upstreams
    served = [_requests(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == len(ok) and min(served) > 0.2 * len(ok), served
    store = open_store(pg.url, create=False)
    try:
        wait_until(lambda: _logged_ids(store, "union") == ok, what="every request in the log")
        assert store.count(MODEL) == len(ok)  # nothing twice, nothing from elsewhere
    finally:
        store.close()
    out = subprocess.run([TFPROD, "monitor", "report", f"--model_base_path={cluster['base']}",
                          f"--log={pg.url}", "--since=1h", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["current_rows"] == len(ok)


# ------------------------------------------------------------------------------ 2: rolling


@pytest.mark.slow
def test_rolling_update_under_load_with_a_new_version_loses_nothing(cluster):
    replicas, base = cluster["replicas"], cluster["base"]
    load = _load(cluster, "roll", concurrency=32, max_seconds=150)
    try:
        load.wait_requests(200)
        time.sleep(2)
        steady_end = time.monotonic()
        for i, replica in enumerate(replicas):
            url = f"http://127.0.0.1:{replica.rest_port}"
            os.kill(replica.pid, signal.SIGTERM)
            # Readiness turns 503 first, while the replica still answers predicts.
            status, body = wait_until(lambda url=url: (lambda a: a if a[0] == 503 else None)(
                get(url, "/v1/ready", timeout=2)), timeout=5, what="readiness 503")
            assert b"shutting down" in body
            assert _post(url)[0] == 200
            assert replica.proc.wait(30) == 0, replica.log_tail()
            replica.proc = None
            if i == 0:  # a new version, published as an exporter does, mid-roll
                shutil.copytree(cluster["staged"], base / ".tmp-2")
                os.rename(base / ".tmp-2", base / "2")
            _restart(replica)
            load.wait_requests(200)
        roll_end = time.monotonic()
        wait_until(lambda: all(np.allclose(_answer(cluster), cluster["v2"], atol=1e-5)
                               for _ in range(6)), what="version 2 on both replicas")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    steady, rolling = load.p99(until=steady_end), load.p99(since=steady_end, until=roll_end)
    print(f"rolling update: {len(load.ok_ids)} ok, 0 failed; p99 steady {steady * 1e3:.1f} ms, "
          f"during the roll {rolling * 1e3:.1f} ms ({rolling / steady:.1f}x)")


# ------------------------------------------------------------------------------ 3: faults


@pytest.mark.slow
def test_sigkill_of_a_replica_under_load_fails_at_most_the_in_flight(cluster):
    victim = cluster["replicas"][0]
    load = _load(cluster, "kill", concurrency=16)
    try:
        load.wait_requests(200)
        in_flight = load.in_flight
        assert victim.kill(signal.SIGKILL) == -signal.SIGKILL
        load.wait_requests(300)
    finally:
        load.stop()
    # nginx retries a predict whose replica vanished on the survivor (proxy_next_upstream
    # ... non_idempotent): at most the requests in flight at the kill may fail.
    assert len(load.failures) <= in_flight, (load.failures[:2],
                                             sorted(set(load.failures))[:3],
                                             cluster["nginx"].error_log()[-1500:],
                                             [r.log_tail(8) for r in cluster["replicas"]])
    _restart(victim)


def test_postgres_stopped_and_restarted_mid_run_loses_no_log_record(cluster):
    replicas, pg = cluster["replicas"], cluster["postgres"]
    errors_before = sum(_replica_metric(r, ":tfprod:request_log:errors") for r in replicas)
    load = _load(cluster, "pgdown")
    try:
        load.wait_requests(100)
        pg.stop()
        down = len(load.ok_ids)
        load.wait_requests(300)  # requests keep succeeding while the log cannot be written
        assert sum(_replica_metric(r, ":tfprod:request_log:failing") for r in replicas) >= 1
        pg.start()
        load.wait_requests(100)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert len(load.ok_ids) - down >= 300
    ok = set(load.ok_ids)
    store = open_store(pg.url, create=False)
    try:
        # Records queued while PostgreSQL was down are written once it is back; none dropped.
        wait_until(lambda: _logged_ids(store, "pgdown") == ok, timeout=40,
                   what="the queued records in PostgreSQL")
    finally:
        store.close()
    assert sum(_replica_metric(r, ":tfprod:request_log:dropped") for r in replicas) == 0
    assert sum(_replica_metric(r, ":tfprod:request_log:errors") for r in replicas) > \
        errors_before
    assert sum(_replica_metric(r, ":tfprod:request_log:failing") for r in replicas) == 0
    logs = "".join(Path(r.log_path).read_text() for r in replicas)
    assert "write failed" in logs and "reconnected; writing" in logs


def test_a_version_folder_deleted_while_serving(cluster):
    base = cluster["base"]
    if not (base / "2").exists():  # the rolling test did not run (-k): publish 2 now
        shutil.copytree(cluster["staged"], base / "2")
        wait_until(lambda: all(np.allclose(_answer(cluster), cluster["v2"], atol=1e-5)
                               for _ in range(6)), what="version 2")
    load = _load(cluster, "rmdir")
    try:
        load.wait_requests(100)
        shutil.rmtree(base / "2")  # the served version vanishes from disk
        # The previous version on disk takes over; no request fails meanwhile.
        wait_until(lambda: all(np.allclose(_answer(cluster), cluster["v1"], atol=1e-5)
                               for _ in range(6)), what="version 1 back")
        load.wait_requests(100)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    def states(r):
        _, body = get(f"http://127.0.0.1:{r.rest_port}", f"/v1/models/{MODEL}")
        return {s["version"]: s["state"] for s in json.loads(body)["model_version_status"]}

    for r in cluster["replicas"]:  # the status API reports it: 1 AVAILABLE, 2 unloaded
        wait_until(lambda r=r: states(r).get("1") == "AVAILABLE" and
                   states(r).get("2") in (None, "END"), timeout=20, what="version 2 unloaded")


def test_a_slowloris_client_is_cut_off_and_others_are_unaffected(cluster):
    nginx = cluster["nginx"]
    slow = socket.create_connection(("127.0.0.1", nginx.port), timeout=15)
    head = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n".encode()
    load = _load(cluster, "slowloris", concurrency=4)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in head + b"X-Padding: " + b"a" * 30:
            try:
                slow.send(bytes([byte]))
            except OSError:  # reset: nginx closed it
                closed_after = time.monotonic() - started
                break
            slow.settimeout(1.0)
            try:
                data = slow.recv(1024)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    finally:
        load.stop()
        slow.close()
    # client_header_timeout 3 s in tests/nginx_server.py: the connection is closed within it.
    assert closed_after is not None and closed_after < 10, closed_after
    assert load.failures == [] and len(load.ok_ids) > 50
    assert load.p99() < 2.0
