"""`tfprod serve`: a drop-in for ``tensorflow_model_server``, with the same flag names.

Flags are spelled as TF Serving spells them (``--rest_api_port=8501`` or ``--rest_api_port 8501``);
boolean flags accept ``--enable_batching``, ``--enable_batching=true|false`` and absl's
``--noenable_batching``.
"""

from __future__ import annotations

from datetime import datetime

import typer
from typer.core import TyperCommand

from tfprod.console import err_console, tf

BOOL_FLAGS = ("--enable_batching", "--enable_model_warmup")
_TRUE, _FALSE = ("true", "1", "yes", "t", "y"), ("false", "0", "no", "f", "n")


def normalize_bool_flags(args: list[str]) -> list[str]:
    """Rewrite absl-style booleans (``--flag=false``, ``--flag true``) as ``--flag/--noflag``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in BOOL_FLAGS:
            if not eq and i + 1 < len(args) and args[i + 1].lower() in _TRUE + _FALSE:
                value, eq = args[i + 1], "="
                i += 1
            if eq and value.lower() not in _TRUE + _FALSE:
                raise typer.BadParameter(f"{name}={value}; expected true or false")
            arg = "--no" + name[2:] if eq and value.lower() in _FALSE else name
        out.append(arg)
        i += 1
    return out


class TfServingFlags(TyperCommand):
    """A command whose boolean flags also take absl's ``=true`` / ``=false`` spellings."""

    def parse_args(self, ctx, args):  # noqa: D102  (click's hook)
        return super().parse_args(ctx, normalize_bool_flags(list(args)))


def _log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    err_console.print(f"[dim]{stamp}[/] {message}", highlight=False, soft_wrap=True)


def _monitor(options, request_log: str | None, interval: float, buffer: int):
    """The request log and drift monitor (tfprod.monitor) when any model is logged, else None."""
    logging = {}
    for spec in options.model_specs():
        if spec.logging is not None:
            logging[spec.name] = (spec.logging.url, spec.logging.sampling_rate)
        elif request_log:
            logging[spec.name] = (request_log, 1.0)
    if not logging:
        return None
    from tfprod.monitor.server import ServerMonitor

    if buffer < 1:
        from tfprod.errors import TfprodError

        raise TfprodError(f"--request_log_buffer={buffer}; expected at least 1 record")
    monitor = ServerMonitor(logging, interval_s=interval, capacity=buffer, log=_log)
    for name, (url, rate) in logging.items():
        from tfprod.monitor.store import redact

        _log(f"model {name}: request log {redact(url)}, sampling rate {rate:g}, drift every "
             f"{interval:g} s")
    return monitor


def register(app: typer.Typer) -> None:
    """Add ``tfprod serve`` to the root app."""

    @app.command("serve", cls=TfServingFlags)
    def serve(
        port: int = typer.Option(8500, "--port", help="gRPC port."),
        rest_api_port: int = typer.Option(8501, "--rest_api_port",
                                          help="REST port; 0 turns REST off."),
        model_name: str = typer.Option("default", "--model_name",
                                       help="Model name (with --model_base_path)."),
        model_base_path: str | None = typer.Option(
            None, "--model_base_path", help="Folder of numbered SavedModel versions."),
        model_config_file: str | None = typer.Option(
            None, "--model_config_file", help="Text-protobuf ModelServerConfig (several models, "
            "version policies, labels)."),
        model_config_file_poll_wait_seconds: float = typer.Option(
            0, "--model_config_file_poll_wait_seconds",
            help="Re-read --model_config_file this often; 0: never."),
        file_system_poll_wait_seconds: float = typer.Option(
            1, "--file_system_poll_wait_seconds",
            help="Look for new / deleted versions this often; 0: only at start."),
        enable_batching: bool = typer.Option(
            False, "--enable_batching/--noenable_batching", help="Dynamic batching."),
        batching_parameters_file: str | None = typer.Option(
            None, "--batching_parameters_file", help="Text-protobuf BatchingParameters."),
        monitoring_config_file: str | None = typer.Option(
            None, "--monitoring_config_file",
            help='Text-protobuf MonitoringConfig: prometheus_config { enable: true path: "..." }.'),
        rest_api_timeout_in_ms: int = typer.Option(
            30000, "--rest_api_timeout_in_ms", help="REST request timeout; 0: none."),
        enable_model_warmup: bool = typer.Option(
            True, "--enable_model_warmup/--noenable_model_warmup",
            help="Replay assets.extra/tf_serving_warmup_requests before serving a version."),
        rest_api_host: str = typer.Option("0.0.0.0", "--rest_api_host",
                                          help="Address the REST API listens on."),
        grpc_host: str = typer.Option("0.0.0.0", "--grpc_host",
                                      help="Address the gRPC API listens on."),
        max_body_bytes: int = typer.Option(32 * 1024 * 1024, "--max_body_bytes",
                                           help="Largest REST request body (413 beyond)."),
        grpc_max_threads: int = typer.Option(0, "--grpc_max_threads",
                                             help="gRPC handler threads; 0: 4 per CPU."),
        tensorflow_intra_op_parallelism: int = typer.Option(
            0, "--tensorflow_intra_op_parallelism", help="Threads inside one op; 0: TF's."),
        tensorflow_inter_op_parallelism: int = typer.Option(
            0, "--tensorflow_inter_op_parallelism", help="Ops run in parallel; 0: TF's."),
        runtime: str = typer.Option(
            "tensorflow", "--runtime", help="tensorflow, or litert: run each version's "
            "model.tflite, or its SavedModel converted at load, on the LiteRT interpreter "
            "(TensorFlow for what does not convert). models.config: model_platform."),
        request_log: str | None = typer.Option(
            None, "--request_log", help="Log every request here (SQLite path or postgresql:// "
            "URL), for models without a logging_config."),
        request_log_buffer: int = typer.Option(
            10_000, "--request_log_buffer", help="Log records held while the store catches "
            "up; beyond it records are dropped and counted (:tfprod:request_log:dropped)."),
        drain_seconds: float = typer.Option(
            30, "--drain_seconds", help="On SIGTERM: readiness turns 503, new connections are "
            "refused, in-flight requests get this long to finish; then exit 0."),
        drain_delay_seconds: float = typer.Option(
            0, "--drain_delay_seconds", help="On SIGTERM: answer /v1/ready with 503 and keep "
            "serving this long before refusing connections (for balancers that probe)."),
        monitoring_interval_seconds: float = typer.Option(
            60, "--monitoring_interval_seconds",
            help="Drift of the logged window vs the reference this often; 0: never."),
        canary_percent: float = typer.Option(
            0, "--canary_percent", help="While a model has 'stable' and 'canary' version "
            "labels, this share (0-100) of unversioned requests goes to the canary; the rest "
            "to stable (0: TF Serving's rule, the latest version). Requests with an "
            "X-Request-Id stay on one side."),
        ab_weights: str = typer.Option(
            "", "--ab_weights", help="A/B test: share unversioned requests between version "
            "labels of models.config by fixed weights, e.g. a=50,b=50 (every model with both "
            "labels) or digits:a=90,b=10;other:x=1,y=1. Sticky per X-Request-Id; requests "
            "naming a version or label are not split; per-arm metrics :tfprod:rollout:* and "
            "GET /v1/models/NAME/rollout. A tfprod flag: TF Serving's ModelConfig has no weight "
            "field. Not with a canary on the same model."),
    ) -> None:
        """Serve SavedModels over TF Serving's REST and gRPC APIs (tensorflow_model_server flags).

        Versions live in numbered folders under the base path; new ones are picked up while
        serving and swapped in without failed requests. Readiness for load balancers:
        GET /v1/ready on the REST port (200 once every model has an AVAILABLE version).

        Example: [bold]tfprod serve --model_name=digits --model_base_path=/models/digits
        --rest_api_port=8501 --enable_batching[/]

        Example (A/B test of the versions labelled a and b in models.config): [bold]tfprod
        serve --model_config_file=models.config --ab_weights=a=50,b=50[/]
        """
        tf()
        from tfprod.serve.server import ServerOptions, run

        options = ServerOptions(
            port=port, rest_api_port=rest_api_port, model_name=model_name,
            model_base_path=model_base_path, model_config_file=model_config_file,
            model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
            file_system_poll_wait_seconds=file_system_poll_wait_seconds,
            enable_batching=enable_batching, batching_parameters_file=batching_parameters_file,
            monitoring_config_file=monitoring_config_file,
            rest_api_timeout_in_ms=rest_api_timeout_in_ms,
            enable_model_warmup=enable_model_warmup, rest_api_host=rest_api_host,
            grpc_host=grpc_host, max_body_bytes=max_body_bytes, grpc_max_threads=grpc_max_threads,
            tensorflow_intra_op_parallelism=tensorflow_intra_op_parallelism,
            tensorflow_inter_op_parallelism=tensorflow_inter_op_parallelism, runtime=runtime,
            drain_seconds=drain_seconds, drain_delay_seconds=drain_delay_seconds,
            canary_percent=canary_percent, ab_weights=ab_weights)
        raise typer.Exit(run(options, log=_log,
                             hooks=_monitor(options, request_log, monitoring_interval_seconds,
                                            request_log_buffer)))
