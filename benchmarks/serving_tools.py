"""The machinery of ``serving.py``: wrk runs, server processes, CPU accounting, py-spy profiles.

- :class:`Wrk` drives one URL with a pre-written body (a Lua script), one wrk thread, and
  reports throughput, latency percentiles, and its own CPU time (``getrusage`` of the child):
  the load generator's share of the machine is part of every result.
- :class:`Server` is one server process on 127.0.0.1, stopped by PID.
- :func:`cpu_seconds` reads a process's user + system time from ``/proc``: the server CPU per
  request of a run is its difference over the run divided by the requests completed.
- :func:`profile_breakdown` turns py-spy's collapsed stacks into shares by thread and by what the
  server was doing (HTTP, JSON, batching hand-off, model, ...).
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

STOP_GRACE_S = 15.0

# wrk's summary as one JSON line, the end of every wrk script here (a str.format template:
# braces doubled).
WRK_DONE_LUA = """\
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"duration_us": %.0f, "requests": %.0f, "connect": %.0f, "read": %.0f, ' ..
    '"write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, ' ..
    '"p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}}\\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""
# wrk posts one body file.
_LUA = """\
local f = assert(io.open({body}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

""" + WRK_DONE_LUA


@dataclass(frozen=True)
class Load:
    """One request shape at one concurrency."""

    name: str
    instances: int
    connections: int


@dataclass
class Run:
    """One wrk run: completed requests, failures, latency percentiles (ms) and CPU seconds."""

    seconds: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    instances: int
    started: float = 0.0  # time.monotonic() when wrk started
    ended: float = 0.0
    idle_wait_s: float = 0.0  # waited before the run for the servers to go idle
    server_cpu_s: float = 0.0  # the server's user + system CPU during the run
    client_cpu_s: float = 0.0  # wrk's

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def sps(self) -> float:
        return self.rps * self.instances

    @property
    def cpu_us(self) -> float:
        """Server CPU per completed request, in microseconds."""
        return 1e6 * self.server_cpu_s / self.requests if self.requests else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "rps": self.rps, "samples_per_s": self.sps,
                "cpu_us_per_request": self.cpu_us, "client_cores": self.client_cores}


def write_lua(body_path: Path) -> Path:
    """A wrk script POSTing ``body_path`` and printing the summary as one JSON line."""
    script = body_path.with_suffix(".lua")
    script.write_text(_LUA.format(body=json.dumps(str(body_path))))
    return script


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Wrk:
    """Runs wrk (in the background or to the end) and parses its summary."""

    def __init__(self, threads: int, timeout_s: float):
        self.exe = shutil.which("wrk")
        if self.exe is None:
            raise SystemExit("wrk not found: install it (Debian / Ubuntu: apt-get install wrk; "
                             "macOS: brew install wrk)")
        self.threads = threads
        self.timeout_s = timeout_s

    def start(self, url: str, script: Path, connections: int, seconds: int,
              server_pid: int | None = None) -> tuple:
        command = [self.exe, "-t", str(min(self.threads, connections)), "-c", str(connections),
                   "-d", f"{seconds}s", "--timeout", f"{self.timeout_s:g}s", "-s", str(script),
                   url]
        cpu = cpu_seconds([server_pid]) if server_pid else 0.0
        client = _children_cpu()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        return proc, time.monotonic(), server_pid, cpu, client

    def finish(self, started: tuple, seconds: int, instances: int) -> Run:
        proc, t0, server_pid, cpu0, client0 = started
        try:
            out, err = proc.communicate(timeout=seconds + self.timeout_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("wrk did not finish in time") from None
        ended = time.monotonic()
        server_cpu = cpu_seconds([server_pid]) - cpu0 if server_pid else 0.0
        client_cpu = _children_cpu() - client0
        match = re.search(r"^WRKJSON (.*)$", out, re.MULTILINE)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed (exit {proc.returncode}): {err.strip() or out}")
        s = json.loads(match.group(1))
        return Run(seconds=s["duration_us"] / 1e6, requests=int(s["requests"]),
                   non_2xx=int(s["status"]),
                   socket_errors=int(s["connect"] + s["read"] + s["write"] + s["timeout"]),
                   p50_ms=s["p50_us"] / 1e3, p90_ms=s["p90_us"] / 1e3, p99_ms=s["p99_us"] / 1e3,
                   max_ms=s["max_us"] / 1e3, mean_ms=s["mean_us"] / 1e3, instances=instances,
                   started=t0, ended=ended, server_cpu_s=server_cpu, client_cpu_s=client_cpu)

    def run(self, url: str, script: Path, load: Load, seconds: int,
            server_pid: int | None = None) -> Run:
        return self.finish(self.start(url, script, load.connections, seconds, server_pid),
                           seconds, load.instances)


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0
         ) -> tuple[int, bytes]:
    """(status, body) of one request; status 0 when the server does not answer."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Server:
    """One server process on 127.0.0.1, its log in a file, stopped by PID."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:
            # A session of its own: Ctrl-C reaches only the benchmark, which stops it by PID.
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        self.started = time.monotonic()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from start until the readiness path answers 200 (at most ``timeout_s``);
        raises if the process dies first."""
        while time.monotonic() - self.started < timeout_s:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
            if http("GET", self.url + self.ready_path, timeout=2.0)[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to its PID, SIGKILL after a grace period."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def descendants(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children, their children, and so on (Linux ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of ``pid``'s threads by thread name (threads of one name summed), and
    of its descendant processes as ``process <name>``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}

    def add(path: str, prefix: str = "") -> None:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return
        name = prefix + text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick

    for tid in os.listdir(f"/proc/{pid}/task"):
        add(f"/proc/{pid}/task/{tid}/stat")
    for child in descendants(pid):
        add(f"/proc/{child}/stat", "process ")
    return out


def cpu_seconds(pids: list[int | None], *, children: bool = True) -> float:
    """User + system CPU seconds used so far by these processes (all their threads) and, with
    ``children``, their running descendants (a server's request-log writer process)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    if children:
        pids = [*pids, *(c for pid in pids if pid is not None for c in descendants(pid))]
    for pid in pids:
        if pid is None:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def wait_idle(servers: list[Server], *, window_s: float = 0.25, max_cores: float = 0.05,
              timeout_s: float = 30.0, console=None) -> float:
    """Waits until the servers together use under ``max_cores`` over ``window_s``: a server
    slower than the load is still working through requests queued before its wrk run ended,
    and that CPU would be taken from the next server measured. Returns seconds waited."""
    pids = [s.pid for s in servers]
    start = time.monotonic()
    used = cpu_seconds(pids)
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = cpu_seconds(pids)
        if now - used < max_cores * window_s:
            return time.monotonic() - start
        used = now
    if console is not None:
        console.print(f"  [yellow]servers still busy after {timeout_s:.0f} s; measuring "
                      "anyway[/]")
    return time.monotonic() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


# ------------------------------------------------------------------------------ py-spy


def py_spy() -> str | None:
    """The py-spy executable (``pip install py-spy``), or None."""
    import sys

    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if os.path.exists(found) else None


def record(pid: int, seconds: int, out: Path, rate: int = 200) -> bool:
    """py-spy samples of ``pid`` for ``seconds`` into ``out`` (collapsed stacks, with thread
    names; idle threads are not sampled). False when py-spy failed or is missing."""
    exe = py_spy()
    if exe is None:
        return False
    done = subprocess.run([exe, "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate),
                           "-f", "raw", "-o", str(out), "--threads", "--nonblocking"],
                          capture_output=True, text=True, timeout=seconds + 60)
    return done.returncode == 0 and out.exists()


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \(\d+\): ?")

#: What a sample is spent on: the innermost frame that matches a rule decides (file part,
#: function prefix or "", category). Order matters within one frame only.
CATEGORIES = (
    ("tfprod/serve/servable.py", "_Signature.__call__", "model call (TensorFlow / LiteRT)"),
    ("tfprod/serve/servable.py", "_tensorflow", "model call (TensorFlow / LiteRT)"),
    ("tfprod/serve/litert.py", "", "model call (TensorFlow / LiteRT)"),
    ("tfprod/serve/json_codec.py", "encode", "JSON encode"),
    ("tfprod/serve/json_codec.py", "_float_texts", "JSON encode"),
    ("tfprod/serve/json_codec.py", "_small_float_texts", "JSON encode"),
    ("tfprod/serve/json_codec.py", "_leaf_texts", "JSON encode"),
    ("tfprod/serve/json_codec.py", "_group", "JSON encode"),
    ("tfprod/serve/json_codec.py", "", "JSON parse + decode"),
    ("tfprod/serve/servable.py", "_Signature.check", "input checks"),
    ("tfprod/serve/servable.py", "_InputSpec", "input checks"),
    ("tfprod/serve/batching.py", "", "batch queue + thread hand-off"),
    ("concurrent/futures/", "", "batch queue + thread hand-off"),
    ("asyncio/futures.py", "", "batch queue + thread hand-off"),
    ("threading.py", "Condition", "batch queue + thread hand-off"),
    ("tfprod/serve/servable.py", "", "batch queue + thread hand-off"),
    ("tfprod/serve/metrics.py", "", "metrics"),
    ("tfprod/monitor/records.py", "", "request log: encode records"),
    ("tfprod/monitor/store.py", "", "request log: SQLite / PostgreSQL insert"),
    ("tfprod/monitor/writer.py", "", "request log: writer queue"),
    ("tfprod/monitor/writer_process.py", "", "request log: frames and pipe"),
    ("tfprod/monitor/server.py", "", "request log: on_predict"),
    ("tfprod/serve/hooks.py", "", "request log: on_predict"),
    ("starlette/", "", "Starlette router + middleware"),
    ("uvicorn/middleware/", "", "Starlette router + middleware"),
    ("tfprod/serve/registry.py", "", "REST handler (routing, deadline, registry)"),
    ("tfprod/serve/rest.py", "", "REST handler (routing, deadline, registry)"),
    ("contextlib.py", "", "REST handler (routing, deadline, registry)"),
    ("asyncio/tasks.py", "wait_for", "REST handler (routing, deadline, registry)"),
    ("uvicorn/", "", "HTTP (uvicorn + httptools)"),
    ("httptools/", "", "HTTP (uvicorn + httptools)"),
)
EVENT_LOOP = "event loop (uvloop: sockets, scheduling)"
IDLE = "waiting"
#: Leaf frames of a thread that waits (py-spy --nonblocking samples them too).
_WAITS = ("Condition.wait (threading.py", "Event.wait (threading.py", "Thread.join (",
          "Queue.get (queue.py", "_worker (concurrent/futures/thread.py", "select (selectors",
          "poll (selectors")


def _category(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    if any(leaf.startswith(w) for w in _WAITS):
        return IDLE
    if not frames or "asyncio/runners.py" in leaf or "asyncio/base_events.py" in leaf:
        return EVENT_LOOP  # uvloop's C code: socket reads and writes, callbacks, epoll
    for text in reversed(frames):
        match = _FRAME.match(text)
        if match is None:
            continue
        path, fn = match.group("file"), match.group("fn")
        for part, prefix, name in CATEGORIES:
            if part in path and fn.startswith(prefix):
                return name
    return "other"


def profile_breakdown(raw: str) -> dict:
    """Shares of the samples by thread and by :data:`CATEGORIES`, from collapsed stacks;
    samples of waiting threads count in ``idle`` only, not in the shares."""
    threads: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        kind = _category(frames)
        if kind == IDLE:
            idle += n
            continue
        total += n
        threads[_THREAD.sub("", thread).split(" ")[0] or thread] += n
        kinds[kind] += n
    return {"samples": total, "idle_samples": idle,
            "threads": {k: v / total for k, v in threads.most_common()} if total else {},
            "categories": {k: v / total for k, v in kinds.most_common()} if total else {}}
