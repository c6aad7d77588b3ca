"""``ServerProcess``: ``tfprod serve`` in a child process on loopback, always stopped by PID.

Example::

    with ServerProcess("digits", "models/digits", log="serve.log") as server:
        client = RestClient("127.0.0.1", server.rest_port)
        client.predict("digits", images)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from tfprod.errors import TfprodError
from tfprod.serve.client import RestClient


class ServerProcess:
    """Starts ``python -m tfprod serve`` for one model on free 127.0.0.1 ports.

    Args:
        model_name: ``--model_name``.
        base_path: ``--model_base_path`` (numbered version folders); None when ``flags``
            give ``--model_config_file``.
        log: file that receives the server's output.
        flags: more ``tensorflow_model_server`` flags, e.g. ``["--enable_batching"]``.
        ready_timeout: seconds to wait for readiness before giving up (and stopping it).
    """

    def __init__(self, model_name: str, base_path: str | os.PathLike | None, *,
                 log: str | os.PathLike, flags: tuple[str, ...] | list[str] = (),
                 ready_timeout: float = 120.0):
        from tfprod.train.cluster import free_ports

        self.rest_port, self.grpc_port = free_ports(2)
        self.log_path = os.fspath(log)
        self.ready_timeout = ready_timeout
        self.command = [
            sys.executable, "-m", "tfprod", "serve", f"--model_name={model_name}",
            *([] if base_path is None else [f"--model_base_path={os.fspath(base_path)}"]),
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}", "--rest_api_host=127.0.0.1",
            "--grpc_host=127.0.0.1", *flags]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        """Starts the process and returns once ``GET /v1/ready`` answers 200.

        Raises:
            TfprodError: the process exited, or was not ready within ``ready_timeout`` (it is
                stopped; the message ends with its last log lines).
        """
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        client = RestClient("127.0.0.1", self.rest_port, timeout=2)
        deadline = time.monotonic() + self.ready_timeout
        try:
            while not client.ready():
                if self.proc.poll() is not None:
                    raise TfprodError(f"tfprod serve exited with status {self.proc.returncode}: "
                                      f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TfprodError(f"tfprod serve was not ready after "
                                      f"{self.ready_timeout:.0f} s: {self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()
        return self

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, on one line."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (the server drains in-flight requests), SIGKILL after ``grace`` seconds.
        Returns the exit status (None if it was never started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
