"""Bad input and faults of one ``tfprod serve``: a --model_config_file edited to nonsense while
serving, a full disk under the request log, two servers pointed at one SQLite log."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from cluster import METRICS, metric
from rest_serving import TFPROD, free_port
from serve_models import write_affine
from tfprod.monitor.server import ServerMonitor
from tfprod.monitor.store import claim_for_server, open_store, release
from tfprod.serve.server import ModelServer, ServerOptions
from waiting import wait_until

BODY = {"instances": [[1.0, 2.0, 3.0]]}


@pytest.fixture(scope="module")
def affine_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults") / "affine"
    write_affine(base / "1", scale=2.0, bias=1.0)
    return base


def _server(tmp_path, hooks=None, logs=None, **options):
    (tmp_path / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS}" }}')
    logs = [] if logs is None else logs
    server = ModelServer(ServerOptions(
        port=free_port(), grpc_host="127.0.0.1", rest_api_port=free_port(),
        rest_api_host="127.0.0.1", monitoring_config_file=str(tmp_path / "monitoring.config"),
        **options), log=logs.append, hooks=hooks)
    return server, logs


def test_a_model_config_edited_to_nonsense_keeps_serving_and_is_exported(affine_base, tmp_path):
    config = tmp_path / "models.config"
    good = (f'model_config_list {{ config {{ name: "a" base_path: "{affine_base}" '
            'model_platform: "tensorflow" } }')
    config.write_text(good)
    server, logs = _server(tmp_path, model_config_file=str(config),
                           model_config_file_poll_wait_seconds=0.1,
                           file_system_poll_wait_seconds=0)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}", timeout=10) as c:
            def exported(name):
                return metric(c.get(METRICS).content, name)

            assert exported(":tfprod:model_config:applied") == 1.0
            config.write_text("model_config_list { config { name: 'a' base_path: ")
            wait_until(lambda: exported(":tfprod:model_config:reload_errors") == 1.0,
                       what="the reload error counted")
            assert exported(":tfprod:model_config:applied") == 0.0
            line = next(m for m in logs if "not applied" in m)
            assert str(config) in line and "still serving the previous config" in line
            r = c.post("/v1/models/a:predict", json=BODY)  # the running config stays
            assert r.status_code == 200 and r.json()["predictions"] == [[3.0, 5.0, 7.0]]
            assert server.registry.model_names() == ["a"]
            config.write_text(good.replace('"a"', '"b"'))  # fixed: applied again
            wait_until(lambda: exported(":tfprod:model_config:applied") == 1.0, what="applied")
            assert server.registry.model_names() == ["b"]
            assert exported(":tfprod:model_config:reload_errors") == 1.0
    finally:
        server.stop()


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str):
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_under_the_request_log_is_reported_and_requests_still_succeed(
        affine_base, tmp_path):
    with _small_tmpfs(tmp_path / "disk", "1m") as disk:
        log = disk / "requests.db"
        logs: list[str] = []
        monitor = ServerMonitor({"affine": (str(log), 1.0)}, interval_s=0, capacity=100,
                                log=logs.append)
        server, _ = _server(tmp_path, hooks=monitor, logs=logs, model_name="affine",
                               model_base_path=str(affine_base),
                               file_system_poll_wait_seconds=0)
        server.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}",
                              timeout=10) as c:
                def exported(name):
                    return metric(c.get(METRICS).content, name)

                stat = os.statvfs(disk)
                filler = disk / "filler"
                filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - 16384, 0))
                n = 400
                for i in range(n):
                    r = c.post("/v1/models/affine:predict", json=BODY,
                               headers={"X-Request-Id": f"full-{i}"})
                    assert r.status_code == 200, r.text
                wait_until(lambda: exported(":tfprod:request_log:failing") == 1.0, what="failing")
                dropped = exported(":tfprod:request_log:dropped")
                assert dropped > 0 and exported(":tfprod:request_log:errors") > 0
                line = next(m for m in logs if "write failed" in m)
                assert "full" in line and str(log) in line, line
                # Space comes back: the kept records are written, the drops stay counted.
                filler.unlink()
                wait_until(lambda: exported(":tfprod:request_log:pending") == 0.0, what="pending 0",
                           timeout=30)
                assert exported(":tfprod:request_log:failing") == 0.0
                store = open_store(str(log), create=False)
                try:
                    assert store.count("affine") + dropped == n
                finally:
                    store.close()
        finally:
            server.stop()


def test_two_servers_on_one_sqlite_log_are_refused_with_a_pointer_to_postgres(
        affine_base, tmp_path):
    log = tmp_path / "requests.db"
    key = claim_for_server(str(log))  # what the first server holds while it runs
    try:
        out = subprocess.run([TFPROD, "serve", "--model_name=affine",
                              f"--model_base_path={affine_base}", f"--port={free_port()}",
                              f"--rest_api_port={free_port()}", f"--request_log={log}"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "200"})
        assert out.returncode == 2, out.stderr
        message = " ".join(out.stderr.split())
        assert f"request log {log} is already written by another tfprod serve process (pid " \
            f"{os.getpid()})" in message
        assert "--request_log=postgresql://" in message
    finally:
        release(key)
    # Released (or its process gone): the next server may take it.
    again = subprocess.run(
        [os.path.join(os.path.dirname(TFPROD), "python"), "-c",
         "import sys; from tfprod.monitor.store import claim_for_server as c; "
         "print(c(sys.argv[1]))", str(log)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == os.path.realpath(log), again.stderr
