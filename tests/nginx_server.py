"""A real nginx load balancer for the replica tests and benchmarks: a config in a temporary
folder, a free 127.0.0.1 port, run as an unprivileged user, always stopped by PID.

The binary comes from Debian's ``nginx-light`` package (``make test`` installs it when
``nginx`` is missing). Open-source nginx has no active health checks: when a connection to a
replica is refused or closed, ``proxy_next_upstream`` retries the request on the next one.
Predicts are POSTs, which nginx treats as non-idempotent and does not retry unless told:
``non_idempotent`` is set because a predict has no side effect that a retry could repeat
(the request log records only the attempt that answered).

Idle keep-alive connections to a replica are dropped by nginx after 4 s, before uvicorn closes
them (5 s). ``max_fails=0``: a replica never leaves the rotation on its own; a request that
finds it gone is retried on the next one (a refused connection costs ~0.1 ms on loopback).
With ``max_fails`` > 0 nginx marks a replica down for ``fail_timeout``; when the other one is
marked down too at that moment (a restart just before a kill), nginx answers 502 at once
without trying either.

Each answer carries ``X-Upstream`` (the replica that answered) so tests can see the spread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from postgres_server import _free_port, _run_as

CONFIG = """\
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 32m;
    client_header_timeout {client_timeout}s;
    client_body_timeout {client_timeout}s;
    upstream replicas {{
{servers}
        keepalive 64;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 10s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


class NginxServer:
    """``start(ports)`` -> ``url``; ``reload(ports)`` (new upstream list, no dropped
    connections); ``stop()``.

    Args:
        client_timeout: seconds nginx waits for a client's headers or next body chunk (the
            slowloris bound).
    """

    def __init__(self, *, client_timeout: float = 5.0) -> None:
        self.bin = find_nginx()
        if self.bin is None:
            raise RuntimeError("nginx is not installed; apt-get install nginx-light (make test "
                               "does this)")
        self.root = tempfile.mkdtemp(prefix="tfprod-nginx-")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_timeout = client_timeout
        self.prefix, uid = _run_as()
        if uid is not None:
            os.chown(self.root, uid, -1)
        os.chmod(self.root, 0o755)
        self.proc: subprocess.Popen | None = None

    def _write_config(self, ports: list[int]) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;"
                            for p in ports)
        path = os.path.join(self.root, "nginx.conf")
        with open(path, "w") as f:
            f.write(CONFIG.format(root=self.root, port=self.port, servers=servers,
                                  client_timeout=int(self.client_timeout)))
        return path

    def start(self, ports: list[int], timeout: float = 20.0) -> str:
        config = self._write_config(ports)
        # -e: the error log before the config is read (the default one is root's /var/log).
        self.proc = subprocess.Popen(
            [*self.prefix, self.bin, "-c", config, "-p", self.root, "-e",
             os.path.join(self.root, "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen on {self.port} in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)  # graceful: finish requests in flight
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()

    def error_log(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.root, "error.log")) as f:
            return f.read()
        return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
