"""A real PostgreSQL server for the request-log tests: initdb + pg_ctl in a temporary folder,
on a free 127.0.0.1 port, as an unprivileged user (PostgreSQL refuses to run as root), stopped
by PID at the end.

The binaries come from Debian's ``postgresql`` package (``make test`` installs it when
``initdb`` is missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

USER = "tfprod"


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[list[str], int | None]:
    """The command prefix that drops root, and the uid it runs as (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(user)
            return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                    "--clear-groups"], entry.pw_uid
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run "
                       "PostgreSQL as")


class PostgresServer:
    """``start()`` -> ``url``; ``stop()``; ``restart()`` (the same data, the same port)."""

    def __init__(self) -> None:
        initdb = find_bin("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb); apt-get install "
                               "postgresql (make test does this)")
        self.bin = os.path.dirname(initdb)
        self.root = tempfile.mkdtemp(prefix="tfprod-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.prefix, uid = _run_as()
        if uid is not None:
            os.chown(self.root, uid, -1)
        os.chmod(self.root, 0o755)
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        self._initialized = False

    def _pg(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)

    def start(self) -> str:
        if not self._initialized:
            out = self._pg(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", USER,
                           "--auth=trust", "--no-sync", "-E", "UTF8")
            if out.returncode:
                raise RuntimeError(f"initdb failed: {out.stderr[-500:]}")
            self._initialized = True
        out = self._pg(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                       os.path.join(self.root, "log"), "-w", "-t", "60", "-o",
                       f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c shared_buffers=16MB", "start")
        if out.returncode:
            raise RuntimeError(f"pg_ctl start failed: {out.stderr[-500:]} {self.log_tail()}")
        return self.url

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError), \
                open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())
        return None

    def stop(self) -> None:
        pid = self.pid()
        self._pg(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "-w",
                 "-t", "30", "stop")
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.root, "log")) as f:
            return " | ".join(f.read().splitlines()[-5:])
        return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
