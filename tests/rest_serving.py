"""Test SavedModels and servers for the REST conformance and fuzz tests.

``served_models(tmp_path_factory, config)`` starts one ``tfprod serve`` process per pytest
session (shared by the test modules that ask for it, stopped by PID at the end) over these
models, in TF Serving's layout ``<base>/<version>/``:

- ``echo``: v1 ``y = x`` (float32 [-1, -1]), v2 ``y = 2x``, v3 a corrupt saved_model.pb;
  signatures ``half`` (float16 in) and ``double`` (float64 ``d / 3``); labels stable -> 1,
  canary -> 2, broken -> 3.
- ``multi``: inputs ``x`` float32 [-1, 3] and ``k`` int32 [-1]; outputs ``scaled = x * k``
  (float32) and ``total = sum(x)`` (float64).
- ``strings``: input ``text`` string [-1]; outputs ``upper_bytes`` (b64 in JSON), ``length``
  (int32) and ``text``.
- ``examples``: ``serve_models.write_classifier`` (classify: classes a/b with scores
  ``[1 - x, x]``; regress: ``2x``; on tf.Examples with a float feature ``x``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from serve_models import write_classifier, write_corrupt

MONITORING_PATH = "/monitoring/prometheus/metrics"
MAX_BODY_BYTES = 1 << 20
TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ models


def _save(module, path, signatures) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, path, signatures=signatures)


def write_echo(base: str, version: int, scale: float) -> None:
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float16, name="h")])
        def half(self, h):
            return {"y": h * 2}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64, name="d")])
        def double(self, d):
            return {"y": d / 3}

    m = Echo()
    _save(m, os.path.join(base, str(version)),
          {"serving_default": m.serve, "half": m.half, "double": m.double})


def write_multi(path: str) -> None:
    import tensorflow as tf

    class Multi(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int32, name="k")])
        def serve(self, x, k):
            return {"scaled": x * tf.cast(k, tf.float32)[:, None],
                    "total": tf.reduce_sum(tf.cast(x, tf.float64), axis=1)}

    m = Multi()
    _save(m, path, {"serving_default": m.serve})


def write_strings(path: str) -> None:
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"upper_bytes": tf.strings.upper(text), "length": tf.strings.length(text),
                    "text": tf.identity(text)}

    m = Strings()
    _save(m, path, {"serving_default": m.serve})


def write_all(root: str) -> str:
    """Every model above under ``root``; returns the text ModelServerConfig serving them."""
    echo = os.path.join(root, "echo")
    write_echo(echo, 1, 1.0)
    write_echo(echo, 2, 2.0)
    write_corrupt(os.path.join(echo, "3"))
    write_multi(os.path.join(root, "multi", "1"))
    write_strings(os.path.join(root, "strings", "1"))
    write_classifier(os.path.join(root, "examples", "1"))
    labels = "".join(f' version_labels {{ key: "{k}" value: {v} }}'
                     for k, v in (("stable", 1), ("canary", 2), ("broken", 3)))
    configs = [f'config {{ name: "echo" base_path: "{echo}" model_platform: "tensorflow" '
               f"model_version_policy {{ all {{}} }}{labels} }}"]
    for name in ("multi", "strings", "examples"):
        configs.append(f'config {{ name: "{name}" base_path: "{os.path.join(root, name)}" '
                       'model_platform: "tensorflow" }')
    return "model_config_list { " + " ".join(configs) + " }"


# ------------------------------------------------------------------------------ servers


class ServeProcess:
    """``tfprod serve`` in a subprocess on free loopback ports; stopped by PID."""

    def __init__(self, root: str, config: str):
        self.root = root
        self.rest_port, self.grpc_port = free_port(), free_port()
        config_file = os.path.join(root, "models.config")
        with open(config_file, "w") as f:
            f.write(config)
        monitoring = os.path.join(root, "monitoring.config")
        with open(monitoring, "w") as f:
            f.write(f'prometheus_config {{ enable: true path: "{MONITORING_PATH}" }}')
        self.log = open(os.path.join(root, "server.log"), "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [TFPROD, "serve", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             f"--model_config_file={config_file}", f"--monitoring_config_file={monitoring}",
             f"--max_body_bytes={MAX_BODY_BYTES}", "--rest_api_host=127.0.0.1",
             "--grpc_host=127.0.0.1", "--file_system_poll_wait_seconds=0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.rest_port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tfprod serve exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v1/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tfprod serve not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


_shared: dict[str, ServeProcess] = {}


def shared_server(request, tmp_path_factory) -> ServeProcess:
    """The session's ``tfprod serve`` over :func:`write_all`'s models (started on first use)."""
    server = _shared.get("server")
    if server is None:
        root = str(tmp_path_factory.mktemp("served"))
        server = ServeProcess(root, write_all(root))
        request.config.add_cleanup(server.stop)
        server.wait_ready()
        _shared["server"] = server
    assert server.proc.poll() is None, server.output()
    return server


class ThreadServer:
    """uvicorn serving an ASGI app in a thread of this process, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, http="httptools",
                                lifespan="off", access_log=False, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)


class RawClient:
    """HTTP/1.1 over one keep-alive loopback socket, sending request targets byte for byte
    (clients such as httpx normalize odd paths before they leave)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.buffer = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def request(self, method: str, target: bytes, body: bytes | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        sock = self._connect()
        head = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        if body is not None:
            head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        data = self._read(length)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

