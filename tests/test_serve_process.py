"""`tfprod serve` as users run it: a process on free loopback ports, ready, then SIGTERM drains."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from serve_models import publish, write_affine
from tfprod.commands.serve import normalize_bool_flags

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``tfprod serve`` subprocess whose log goes to a file; always stopped by PID."""

    def __init__(self, tmp_path, *args):
        self.log_path = tmp_path / "serve.log"
        self.rest, self.grpc = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [TFPROD, "serve", f"--port={self.grpc}", "--rest_api_port", str(self.rest),
             "--rest_api_host=127.0.0.1", "--grpc_host=127.0.0.1", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**env, "COLUMNS": "200"})

    def text(self):
        return self.log_path.read_text()

    def wait_for(self, needle, timeout=90):
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} after {timeout} s:\n{self.text()}"
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def server(tmp_path):
    base = tmp_path / "m"
    write_affine(base / "1", scale=2.0, bias=1.0)
    write_affine(tmp_path / "next", scale=3.0, bias=1.0)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    s = Server(tmp_path, "--model_name=m", f"--model_base_path={base}", "--enable_batching",
               "--file_system_poll_wait_seconds", "0.2", f"--monitoring_config_file={monitoring}")
    s.base, s.next = base, tmp_path / "next"
    yield s
    s.stop()


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.status, r.read().decode()


def _post(port, path, body, timeout=60):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
def test_serve_starts_answers_and_drains_on_sigterm(server):
    server.wait_for("ready")
    text = server.text()
    assert "model m version 1 AVAILABLE" in text and f"127.0.0.1:{server.grpc}" in text
    assert _get(server.rest, "/v1/ready")[0] == 200
    assert _post(server.rest, "/v1/models/m:predict", {"instances": [[1, 2, 3]]}) == (
        200, {"predictions": [[3.0, 5.0, 7.0]]})
    publish(server.next, server.base, 2)          # picked up by the file-system poll
    server.wait_for("model m version 1 unloaded", timeout=60)
    assert "model m version 2 AVAILABLE" in server.text()
    assert _post(server.rest, "/v1/models/m:predict", {"instances": [[1, 2, 3]]}) == (
        200, {"predictions": [[4.0, 7.0, 10.0]]})
    status, metrics = _get(server.rest, "/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 2.0' in metrics
    assert ":tensorflow:serving:batching_session:queuing_latency_bucket" in metrics
    slow = {}

    def long_request():                    # ~3 s of matmuls
        slow["result"] = _post(server.rest, "/v1/models/m:predict",
                               {"signature_name": "spin", "instances": [50000]})
        slow["done"] = time.monotonic()

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.text()
    t.join(10)
    assert slow.get("result") == (200, {"predictions": [50000]}), server.text()
    assert slow["done"] > signalled        # it was in flight when the signal arrived
    text = server.text()
    assert "SIGTERM: draining in-flight requests" in text
    assert "model m version 1 unloaded" in text and "stopped" in text


@pytest.mark.slow
def test_bad_configuration_exits_2_with_a_one_line_error(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 8 }\nmax_batch: 3\n")
    base = tmp_path / "m"
    write_affine(base / "1")
    s = Server(tmp_path, "--model_name=m", f"--model_base_path={base}", "--enable_batching=true",
               f"--batching_parameters_file={bad}")
    try:
        assert s.proc.wait(90) == 2
        lines = [line for line in s.text().splitlines() if "error:" in line]
        assert len(lines) == 1 and f"{bad}:2:" in lines[0] and 'max_batch' in lines[0]
    finally:
        s.stop()


def test_absl_style_boolean_flags():
    assert normalize_bool_flags(["--enable_batching", "--port=1"]) == ["--enable_batching",
                                                                        "--port=1"]
    assert normalize_bool_flags(["--enable_batching=true"]) == ["--enable_batching"]
    assert normalize_bool_flags(["--enable_batching=false"]) == ["--noenable_batching"]
    assert normalize_bool_flags(["--enable_model_warmup", "false", "x"]) == [
        "--noenable_model_warmup", "x"]
    assert normalize_bool_flags(["--enable_batching", "--model_name", "true"]) == [
        "--enable_batching", "--model_name", "true"]


def test_model_config_file_is_polled_and_reloaded(tmp_path):
    from tfprod.serve.server import ModelServer, ServerOptions

    for name in ("a", "b"):
        write_affine(tmp_path / name / "1")
    config = tmp_path / "models.config"
    entry = 'config {{ name: "{0}" base_path: "{0}" }}'
    config.write_text(f"model_config_list {{ {entry.format('a')} }}")
    logs = []
    server = ModelServer(ServerOptions(
        port=free_port(), grpc_host="127.0.0.1", rest_api_port=0,
        model_config_file=str(config), model_config_file_poll_wait_seconds=0.1,
        file_system_poll_wait_seconds=0), log=logs.append)
    server.start()
    try:
        assert server.registry.model_names() == ["a"] and server.registry.ready()
        config.write_text(f"model_config_list {{ {entry.format('a')} {entry.format('b')} }}")
        deadline = time.monotonic() + 30
        while server.registry.model_names() != ["a", "b"] or not server.registry.ready():
            assert time.monotonic() < deadline, logs
            time.sleep(0.05)
        assert server.registry.get("b").version == 1
        config.write_text("model_config_list { config { nam")      # a bad edit is not applied
        while not any("not applied" in line for line in logs):
            assert time.monotonic() < deadline, logs
            time.sleep(0.05)
        assert server.registry.model_names() == ["a", "b"]
        assert any(f"{config}:1: " in line for line in logs)
    finally:
        server.stop()
    assert logs[-1] == "stopped"


def test_a_busy_port_is_a_one_line_error_and_nothing_keeps_running(tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.serve.server import ModelServer, ServerOptions

    write_affine(tmp_path / "m" / "1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ModelServer(ServerOptions(port=port, grpc_host="127.0.0.1", rest_api_port=0,
                                           model_base_path=str(tmp_path / "m")))
        with pytest.raises(TfprodError, match=f"--port={port}: cannot listen on 127.0.0.1:{port}"):
            server.start()
        server.stop()
    assert server.registry.status("default")[0].state == "END"


# ------------------------------------------------------------------------ ServerProcess


def test_server_process_serves_then_drains_and_exits_0(tmp_path):
    import numpy as np

    from tfprod.serve.client import RestClient
    from tfprod.serve.process import ServerProcess

    write_affine(tmp_path / "m" / "1", scale=2.0, bias=1.0)
    server = ServerProcess("affine", tmp_path / "m", log=tmp_path / "serve.log",
                           flags=["--enable_batching"]).start()
    try:
        with RestClient("127.0.0.1", server.rest_port) as client:
            np.testing.assert_array_equal(client.predict("affine", np.ones((2, 3))), 3.0)
        pid = server.proc.pid
    finally:
        status = server.stop()
    assert status == 0, server.log_tail()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "SIGTERM: draining" in (tmp_path / "serve.log").read_text()


def test_server_process_that_exits_or_never_gets_ready_is_one_error(tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.serve.process import ServerProcess

    bad = ServerProcess("x", tmp_path, log=tmp_path / "a.log", flags=["--rest_api_port=99999"])
    with pytest.raises(TfprodError, match=r"exited with status 2: .*rest_api_port=99999"):
        bad.start()
    assert bad.proc is None
    (tmp_path / "empty").mkdir()  # no versions: serving starts, never ready
    waiting = ServerProcess("x", tmp_path / "empty", log=tmp_path / "b.log", ready_timeout=3)
    with pytest.raises(TfprodError, match="was not ready after 3 s"):
        waiting.start()
    assert waiting.proc is None  # stopped, not left running
