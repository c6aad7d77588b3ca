"""``tfprod serve``: the model registry behind TF Serving's gRPC and REST front ends.

One process: the registry (loading, polling, batching), a ``grpc.server`` on ``--port`` and
uvicorn (uvloop + httptools) on ``--rest_api_port`` (0 turns REST off), started once the initial
versions are loaded, as ``tensorflow_model_server`` does.

Health for load balancers: the REST app answers readiness from ``ModelRegistry.ready()``: true
once every configured model has an AVAILABLE version, false again while the server drains.

Shutdown on SIGTERM / SIGINT (a rolling update): readiness turns false first (503, so a
balancer that probes ``/v1/ready`` moves away; ``drain_delay_seconds`` keeps serving that long
before the listeners close), then both front ends stop accepting new connections, close idle
keep-alive connections and finish their in-flight requests (up to ``drain_seconds``); every
version is unloaded; exit status 0. A balancer that retries a refused or closed
connection on another replica (nginx: ``proxy_next_upstream error``) loses no request.

A ``--model_config_file`` that stops parsing while the server polls it leaves the running
config in place: the error is logged once per change of the file and exported as
``:tfprod:model_config:reload_errors`` (only grows) and ``:tfprod:model_config:applied``
(0 while the file on disk is not the config being served).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from tfprod.errors import TfprodError
from tfprod.serve import config as cfg
from tfprod.serve.metrics import ServingMetrics, set_current
from tfprod.serve.split import ab_weights_for, check_ab_weights, format_ab_weights, parse_ab_weights

Log = Callable[[str], None]  # one line of rich markup


@dataclass
class ServerOptions:
    """The flags of ``tensorflow_model_server`` that tfprod serve understands (same names)."""

    port: int = 8500
    rest_api_port: int = 8501
    model_name: str = "default"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    file_system_poll_wait_seconds: float = 1.0
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    rest_api_timeout_in_ms: int = 30000
    enable_model_warmup: bool = True
    rest_api_host: str = "0.0.0.0"
    grpc_host: str = "0.0.0.0"
    max_body_bytes: int = 32 * 1024 * 1024
    grpc_max_threads: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    drain_seconds: float = 30.0
    drain_delay_seconds: float = 0.0
    runtime: str = "tensorflow"
    canary_percent: float = 0.0
    ab_weights: str = ""

    def model_specs(self) -> list[cfg.ModelSpec]:
        """The models to serve, from ``--model_config_file`` or ``--model_name``/``base_path``.

        Raises:
            ConfigError: neither or both given, or a bad config file.
        """
        if self.model_config_file and self.model_base_path:
            raise cfg.ConfigError("give either --model_config_file or --model_base_path (with "
                                  "--model_name), not both")
        if self.model_config_file:
            return cfg.load_model_server_config(self.model_config_file)
        if not self.model_base_path:
            raise cfg.ConfigError("no model to serve; give --model_base_path=/models/NAME (and "
                                  "--model_name=NAME) or --model_config_file=models.config")
        path = self.model_base_path
        if "://" not in path:
            path = os.path.abspath(path)
        return [cfg.ModelSpec(self.model_name, path)]

    def check(self) -> None:
        """Raise ConfigError for ports or limits out of range."""
        for flag in ("port", "rest_api_port"):
            value = getattr(self, flag)
            if not 0 <= value <= 65535:
                raise cfg.ConfigError(f"--{flag}={value}; expected a port in 0..65535")
        if self.max_body_bytes < 1:
            raise cfg.ConfigError(f"--max_body_bytes={self.max_body_bytes}; expected >= 1")
        if self.runtime not in cfg.RUNTIMES:
            raise cfg.ConfigError(f"--runtime={self.runtime}; expected one of "
                                  f"{', '.join(cfg.RUNTIMES)}")
        for flag in ("drain_seconds", "drain_delay_seconds"):
            if getattr(self, flag) < 0:
                raise cfg.ConfigError(f"--{flag}={getattr(self, flag)}; expected >= 0")
        if not 0.0 <= self.canary_percent <= 100.0:
            raise cfg.ConfigError(f"--canary_percent={self.canary_percent}; expected a share "
                                  "of traffic from 0 to 100")
        parse_ab_weights(self.ab_weights)
        if self.rest_api_timeout_in_ms < 0:
            raise cfg.ConfigError(f"--rest_api_timeout_in_ms={self.rest_api_timeout_in_ms}; "
                                  "expected >= 0 (0: no timeout)")


class ModelServer:
    """The registry plus the gRPC and REST servers, started and stopped together.

    Example::

        server = ModelServer(ServerOptions(model_name="digits", model_base_path="/m/digits"))
        server.start()          # loads versions, then listens
        ...
        server.stop()           # drains, unloads

    Args:
        options: the server flags.
        log: where one-line events go (default: nowhere).
    """

    def __init__(self, options: ServerOptions, *, log: Log | None = None,
                 hooks: Any = None):
        options.check()
        self.hooks = hooks  # tfprod.serve.hooks.ServingHooks (request log, monitoring)
        self.options = options
        self.log: Log = log or (lambda _message: None)
        self.specs = options.model_specs()
        self.ab_weights = parse_ab_weights(options.ab_weights)
        check_ab_weights(self.ab_weights, self.specs, options.canary_percent)
        self.batching = self._batching()
        self.monitoring = (cfg.load_monitoring_config(options.monitoring_config_file)
                           if options.monitoring_config_file else cfg.MonitoringConfig())
        self.metrics = ServingMetrics()
        set_current(self.metrics)
        self.registry: Any = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: Any = None
        self._uvicorn: Any = None
        self._rest_thread: threading.Thread | None = None
        self._config_text: str | None = None
        self._stop = threading.Event()
        self._config_poller: threading.Thread | None = None

    def _batching(self) -> cfg.BatchingParameters | None:
        o = self.options
        if not o.enable_batching:
            if o.batching_parameters_file:
                self.log("[yellow]--batching_parameters_file is ignored without "
                         "--enable_batching[/]")
            return None
        if o.batching_parameters_file:
            return cfg.load_batching_parameters(o.batching_parameters_file)
        return cfg.BatchingParameters()

    # ------------------------------------------------------------------------ start

    def start(self) -> None:
        """Load the initial versions, then start gRPC and REST; returns once both listen."""
        self._configure_threads()
        import grpc  # noqa: F401
        import uvicorn  # noqa: F401

        from tfprod.serve.registry import ModelRegistry

        # Everything imported so far lives as long as the process: moved out of the collector's
        # reach, a full collection (after each unload, or when Python decides) takes
        # milliseconds instead of the ~0.4 s it takes to scan TensorFlow's objects, a pause
        # every request in flight would wait for.
        gc.collect()
        gc.freeze()

        self.registry = ModelRegistry(
            self.specs, batching=self.batching, enable_warmup=self.options.enable_model_warmup,
            poll_wait_seconds=self.options.file_system_poll_wait_seconds, metrics=self.metrics,
            on_event=self._on_event, runtime=self.options.runtime,
            canary_percent=self.options.canary_percent, ab_weights=self.ab_weights)
        for spec in self.specs:
            arms = ab_weights_for(self.ab_weights, spec)
            if arms:
                self.log(f"model {spec.name}: A/B split {format_ab_weights(arms, spec.labels)}")
        if self.batching is not None:
            b = self.batching
            self.log(f"batching on: max_batch_size {b.max_batch_size}, batch_timeout_micros "
                     f"{b.batch_timeout_micros}, num_batch_threads {b.num_batch_threads}, "
                     f"max_enqueued_batches {b.max_enqueued_batches}")
        if self.hooks is not None:
            self.registry.hooks = self.hooks
            self.hooks.attach(self.registry, self.metrics)
        self.registry.start()
        if self.options.model_config_file:
            with open(self.options.model_config_file, encoding="utf-8") as f:
                self._config_text = f.read()
            self.metrics.config_applied.set((), 1.0)
        self._start_grpc()
        if self.options.rest_api_port:
            self._start_rest()
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, daemon=True,
                                                   name="model_config_poller")
            self._config_poller.start()

    def _configure_threads(self) -> None:
        import tensorflow as tf

        o = self.options
        try:
            if o.tensorflow_intra_op_parallelism:
                tf.config.threading.set_intra_op_parallelism_threads(
                    o.tensorflow_intra_op_parallelism)
            if o.tensorflow_inter_op_parallelism:
                tf.config.threading.set_inter_op_parallelism_threads(
                    o.tensorflow_inter_op_parallelism)
        except RuntimeError as e:  # TensorFlow already initialized (e.g. in-process tests)
            self.log(f"[yellow]thread settings not applied[/]: {escape(str(e))}")

    def _start_grpc(self) -> None:
        import grpc

        o = self.options
        workers = o.grpc_max_threads or 4 * (os.cpu_count() or 1)
        server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                             options=[("grpc.max_send_message_length", -1),
                                      ("grpc.max_receive_message_length", -1),
                                      ("grpc.so_reuseport", 0)])
        try:
            from tfprod.serve.grpc_service import add_grpc_services
        except ImportError as e:
            self.log(f"[yellow]gRPC services not available[/] ({escape(str(e))}); the gRPC "
                     "port serves nothing")
        else:
            add_grpc_services(server, self.registry, reload_config=self.reload_config)
        try:
            self.grpc_port = server.add_insecure_port(f"{o.grpc_host}:{o.port}")
        except RuntimeError as e:
            raise TfprodError(f"--port={o.port}: cannot listen on {o.grpc_host}:{o.port} ({e}); "
                              "choose a free port") from None
        server.start()
        self._grpc = server
        self.log(f"gRPC API on {o.grpc_host}:{self.grpc_port}")

    def _start_rest(self) -> None:
        import uvicorn

        o = self.options
        try:
            from tfprod.serve.rest import make_rest_app
        except ImportError as e:
            self.log(f"[yellow]REST API not available[/] ({escape(str(e))}); serving gRPC only")
            return
        app = make_rest_app(self.registry, max_body_bytes=o.max_body_bytes,
                            timeout_ms=o.rest_api_timeout_in_ms or None,
                            monitoring_path=self.monitoring.path)
        # No proxy-header rewriting (nothing reads the client address) and no Server header
        # (TF Serving sends none): less work per request.
        config = uvicorn.Config(app, host=o.rest_api_host, port=o.rest_api_port, loop="uvloop",
                                http="httptools", lifespan="off", access_log=False,
                                log_level="error", backlog=4096, proxy_headers=False,
                                server_header=False,
                                timeout_graceful_shutdown=max(int(o.drain_seconds), 1))
        self._uvicorn = uvicorn.Server(config)
        self._rest_thread = threading.Thread(target=self._uvicorn.run, name="rest", daemon=True)
        self._rest_thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._rest_thread.is_alive() or time.monotonic() > deadline:
                raise TfprodError(f"--rest_api_port={o.rest_api_port}: cannot listen on "
                                  f"{o.rest_api_host}:{o.rest_api_port}; choose a free port")
            time.sleep(0.01)
        self.rest_port = o.rest_api_port
        where = f", metrics at {self.monitoring.path}" if self.monitoring.path else ""
        self.log(f"REST API on {o.rest_api_host}:{o.rest_api_port}{where}")

    # ------------------------------------------------------------------------ running

    @property
    def healthy(self) -> bool:
        """False when a front end died on its own."""
        return self._rest_thread is None or self._rest_thread.is_alive()

    def reload_config(self, specs: list[cfg.ModelSpec]) -> None:
        """Serve exactly ``specs`` (gRPC HandleReloadConfigRequest and the config-file poll)."""
        self.registry.reload_config(specs)
        self.log(f"model config reloaded: {', '.join(s.name for s in specs) or 'no models'}")

    def _poll_config(self) -> None:
        path = self.options.model_config_file
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                if text == self._config_text:
                    continue
                self._config_text = text
                self.reload_config(cfg.load_model_server_config(path))
                self.metrics.record_config_reload(ok=True)
            except Exception as e:  # keep serving the last good config
                self.metrics.record_config_reload(ok=False)
                self.log(f"[red]model config {escape(path)} not applied[/]: {escape(str(e))}; "
                         "still serving the previous config")

    def _on_event(self, event: Any) -> None:
        where = f"model {event.model} version {event.version}"
        took = f" ({event.seconds:.1f} s)" if event.seconds else ""
        if event.state == "AVAILABLE":
            self.log(f"[green]{where} AVAILABLE[/] {escape(event.message)}{took}")
        elif event.state == "END" and event.message != "unloaded":
            self.log(f"[red]{where} failed to load[/]: {escape(event.message)}")
        elif event.state == "END":
            self.log(f"{where} unloaded{took}")
        elif event.state == "LITERT_FALLBACK":
            self.log(f"[yellow]{where}: LiteRT runtime not used for[/] {escape(event.message)}; "
                     "[yellow]these signatures run on TensorFlow[/]")
        elif event.state in ("NO_VERSIONS", "POLL_ERROR"):
            self.log(f"[yellow]model {event.model}[/]: {escape(event.message)}")

    # ------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests, unload every version."""
        self._stop.set()
        grace = self.options.drain_seconds
        if self.registry is not None:
            self.registry.draining = True
        grpc_done = self._grpc.stop(grace) if self._grpc is not None else None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._rest_thread is not None:
            self._rest_thread.join(grace + 5)
        if grpc_done is not None:
            grpc_done.wait(grace + 5)
        if self.hooks is not None:
            self.hooks.close()
        if self.registry is not None:
            self.registry.close(timeout=grace)
        gc.unfreeze()
        self.log("stopped")


def run(options: ServerOptions, *, log: Log | None = None, hooks: Any = None) -> int:
    """Run the server until SIGTERM / SIGINT; returns the exit status (0 after a clean drain).

    ``hooks``: a :class:`~tfprod.serve.hooks.ServingHooks` (``tfprod serve`` attaches the
    request log and monitoring of ``tfprod.monitor`` when configured)."""
    server = ModelServer(options, log=log, hooks=hooks)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) > 1 and server._uvicorn is not None:
            server._uvicorn.force_exit = True  # a second signal: stop waiting for clients
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        server.log("[bold]ready[/]")
        while not stop.wait(0.5):
            if not server.healthy:
                server.log("[red]the REST server stopped unexpectedly[/]")
                server.stop()
                return 1
        if options.drain_delay_seconds > 0:
            # Readiness first: a balancer that probes /v1/ready moves away while this replica
            # still answers what reaches it; a second signal cuts the wait short.
            server.registry.draining = True
            server.log(f"{signal.Signals(received[0]).name}: readiness 503, still serving for "
                       f"{options.drain_delay_seconds:g} s")
            deadline = time.monotonic() + options.drain_delay_seconds
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        server.log(f"{signal.Signals(received[0]).name}: draining in-flight requests (up to "
                   f"{options.drain_seconds:g} s)")
        server.stop()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
