"""The server's configuration files, read the way ``tensorflow_model_server`` reads them.

- ``--model_config_file``: a text-protobuf ``ModelServerConfig`` (the proto ships with
  tensorflow-serving-api) -> :func:`parse_model_server_config` -> a list of :class:`ModelSpec`.
- ``--batching_parameters_file``: a text-protobuf ``BatchingParameters`` ->
  :func:`parse_batching_parameters` -> :class:`BatchingParameters`.
- ``--monitoring_config_file``: a text-protobuf ``MonitoringConfig`` ->
  :func:`parse_monitoring_config` -> :class:`MonitoringConfig`.

tensorflow-serving-api does not ship the last two protos, so their schemas are declared here (the
field names and wrapper types of TF Serving's ``session_bundle_config.proto`` and
``monitoring_config.proto``) and parsed with protobuf's own text format: a file that TF Serving
accepts is accepted here, and a bad one fails with ``file:line: what was expected``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2 as _wrappers  # noqa: F401  (registers wrappers.proto)

from tfprod.errors import TfprodError
from tfprod.serve.errors import ServingError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")
#: How a version runs: TensorFlow (the SavedModel), or LiteRT (``model.tflite`` in the version
#: folder, else the SavedModel converted when it loads; TensorFlow where that is not possible).
RUNTIMES = ("tensorflow", "litert")
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(TfprodError, ServingError):
    """A configuration that cannot be used: a one-line TfprodError that is also INVALID_ARGUMENT.

    The CLI reports it like any TfprodError (exit status 2); the gRPC ModelService answers a bad
    ``HandleReloadConfigRequest`` with it as INVALID_ARGUMENT.
    """

    def __init__(self, message: str) -> None:
        # TfprodError.__init__ would forward to ServingError.__init__ through the MRO.
        text = " ".join(message.split())
        Exception.__init__(self, text)
        self.code = grpc.StatusCode.INVALID_ARGUMENT
        self.message = text


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe model name or label (``[A-Za-z0-9_.-]+``, not ``.``/``..``).

    Raises:
        ConfigError: for anything else (empty, path separators, traversal, other characters).
    """
    if not NAME_PATTERN.fullmatch(value or "") or value in (".", ".."):
        raise ConfigError(f"{kind} {value!r} is not valid; expected letters, digits, '_', '.' "
                          "or '-' (and not '.' or '..')")
    return value


# ------------------------------------------------------------------------------ model configs


@dataclass(frozen=True)
class RequestLogConfig:
    """Where a model's requests are logged, and which share (TF Serving's ``logging_config``).

    ``log_collector_config { type: "sqlite"|"postgresql" filename_prefix: PATH_OR_URL }``
    (type may be empty: the prefix decides), ``sampling_config { sampling_rate: 0.1 }``.
    """

    url: str
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("logging_config has no log_collector_config.filename_prefix; "
                              "expected a SQLite path or a postgresql:// URL")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ConfigError(f"logging_config sampling_rate {self.sampling_rate}; expected a "
                              "share in (0, 1]")


def _logging_from_proto(name: str, c: Any) -> RequestLogConfig | None:
    if not c.HasField("logging_config"):
        return None
    collector = c.logging_config.log_collector_config
    kind = collector.type.lower()
    if kind not in ("", "sqlite", "postgresql", "postgres"):
        raise ConfigError(f"model {name!r}: log_collector_config type {collector.type!r}; "
                          "expected \"sqlite\" or \"postgresql\"")
    rate = c.logging_config.sampling_config.sampling_rate if \
        c.logging_config.HasField("sampling_config") else 1.0
    return RequestLogConfig(collector.filename_prefix, rate)


@dataclass(frozen=True)
class ModelSpec:
    """One served model: where its versions live, which of them to serve, and their labels.

    Args:
        name: the model name clients use (``/v1/models/<name>``).
        base_path: the folder holding ``<version>/saved_model.pb`` sub-folders (any
            ``tf.io.gfile`` path).
        policy: ``("latest", n)``, ``("all",)`` or ``("specific", (v1, v2, ...))``.
        labels: label -> version, e.g. ``{"stable": 1, "canary": 2}``.
        platform: ``"litert"`` (models.config ``model_platform``; see :data:`RUNTIMES`), or ""
            for the server's ``--runtime``. ``model_platform: "tensorflow"``, TF Serving's only
            platform and written in most configs, reads as "".
        logging: where its requests are logged (``logging_config``), or None.
    """

    name: str
    base_path: str
    policy: tuple = ("latest", 1)
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = ""
    logging: RequestLogConfig | None = None

    def __post_init__(self) -> None:
        check_name("model name", self.name)
        for label in self.labels:
            check_name(f"version label of model {self.name!r}", label)
        if not self.base_path:
            raise ConfigError(f"model {self.name!r} has no base_path; expected the folder that "
                              "holds its numbered version folders")
        if self.platform and self.platform not in RUNTIMES:
            raise ConfigError(f"model {self.name!r} has model_platform {self.platform!r}; only "
                              "'tensorflow' (SavedModels) and 'litert' (LiteRT, with TensorFlow "
                              "where a model does not convert) can be served")
        kind = self.policy[0] if self.policy else None
        if kind == "latest" and not (len(self.policy) == 2 and int(self.policy[1]) >= 1):
            raise ConfigError(f"model {self.name!r}: latest policy needs num_versions >= 1, got "
                              f"{self.policy[1:]}")
        if kind == "specific" and not (len(self.policy) == 2 and self.policy[1]):
            raise ConfigError(f"model {self.name!r}: specific policy needs at least one version")
        if kind not in ("latest", "all", "specific"):
            raise ConfigError(f"model {self.name!r}: policy {self.policy!r}; expected ('latest', "
                              "n), ('all',) or ('specific', (versions...))")

    def __hash__(self) -> int:
        return hash((self.name, self.base_path, self.policy, tuple(sorted(self.labels.items())),
                     self.platform, self.logging))


def _policy_from_proto(name: str, policy: Any) -> tuple:
    choice = policy.WhichOneof("policy_choice")
    if choice is None:
        return ("latest", 1)
    if choice == "latest":
        return ("latest", policy.latest.num_versions or 1)
    if choice == "all":
        return ("all",)
    versions = tuple(sorted(set(int(v) for v in policy.specific.versions)))
    if not versions:
        raise ConfigError(f"model {name!r}: model_version_policy specific {{}} lists no versions; "
                          "expected e.g. specific { versions: 1 versions: 2 }")
    return ("specific", versions)


def specs_from_proto(config: Any) -> list[ModelSpec]:
    """The :class:`ModelSpec` list of a ``ModelServerConfig`` proto (its ``model_config_list``).

    Raises:
        ConfigError: custom_model_config, a platform other than tensorflow or litert, a duplicate
            or unsafe name, a missing base_path, a bad version policy.
    """
    which = config.WhichOneof("config")
    if which is None:
        return []
    if which != "model_config_list":
        raise ConfigError(f"ModelServerConfig uses {which}; only model_config_list is supported")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for c in config.model_config_list.config:
        if c.name in seen:
            raise ConfigError(f"model name {c.name!r} appears twice in model_config_list; names "
                              "must be unique")
        seen.add(c.name)
        policy = _policy_from_proto(c.name, c.model_version_policy)
        labels = {k: int(v) for k, v in sorted(c.version_labels.items())}
        platform = "" if c.model_platform == "tensorflow" else c.model_platform
        specs.append(ModelSpec(c.name, c.base_path, policy, labels, platform,
                               _logging_from_proto(c.name, c)))
    return specs


def _parse_text(text: str, message: Any, source: str, example: str) -> Any:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line = e.GetLine() if hasattr(e, "GetLine") else None
        where = f"{source}:{line}" if line else source
        detail = (str(e).split(" : ", 1)[-1] if " : " in str(e) else str(e)).rstrip(".")
        raise ConfigError(f"{where}: {detail}; expected {example}") from None
    return message


def parse_model_server_config(text: str, source: str = "model config") -> list[ModelSpec]:
    """Parse a text-protobuf ``ModelServerConfig`` (the ``--model_config_file`` format).

    Example::

        model_config_list {
          config {
            name: "digits"
            base_path: "/models/digits"
            model_platform: "tensorflow"
            model_version_policy { latest { num_versions: 2 } }
            version_labels { key: "stable" value: 1 }
          }
        }

    Args:
        text: the file's contents.
        source: the file name, used in error messages.

    Raises:
        ConfigError: ``source:line: <what is wrong>; expected ...``.
    """
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse_text(text, model_server_config_pb2.ModelServerConfig(), source,
                         'model_config_list { config { name: "..." base_path: "..." } }')
    return specs_from_proto(config)


def load_model_server_config(path: str | os.PathLike) -> list[ModelSpec]:
    """Read and parse a ``--model_config_file``; relative base paths resolve against its folder."""
    text = _read(path, "--model_config_file")
    specs = parse_model_server_config(text, source=str(path))
    folder = os.path.dirname(os.path.abspath(path))
    return [s if "://" in s.base_path or os.path.isabs(s.base_path) else
            ModelSpec(s.name, os.path.join(folder, s.base_path), s.policy, s.labels, s.platform,
                      s.logging)
            for s in specs]


def _read(path: str | os.PathLike, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror}); expected a readable "
                          "text-protobuf file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: not UTF-8 text; expected a text-protobuf file") from None


# ---------------------------------------------------------- batching and monitoring parameters


_SCHEMA = {
    # message -> [(field, number, label, type, type_name)]; the names and wrapper types of TF
    # Serving's session_bundle_config.proto BatchingParameters and monitoring_config.proto.
    "BatchingParameters": [
        ("max_batch_size", 1, "optional", "message", ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, "optional", "message", ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, "optional", "message", ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, "optional", "message", ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, "optional", "message", ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, "repeated", "int64", None),
        ("pad_variable_length_inputs", 7, "optional", "bool", None),
        ("enable_large_batch_splitting", 8, "optional", "message", ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, "optional", "message", ".google.protobuf.Int64Value"),
    ],
    "PrometheusConfig": [
        ("enable", 1, "optional", "bool", None),
        ("path", 2, "optional", "string", None),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, "optional", "message", ".tfprod.serving.PrometheusConfig"),
    ],
}
_TYPES = {"message": 11, "int64": 3, "bool": 8, "string": 9}
_LABELS = {"optional": 1, "repeated": 3}


@cache
def _message_class(name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    _wrappers.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(name="tfprod/serving_config.proto",
                                               package="tfprod.serving", syntax="proto3",
                                               dependency=["google/protobuf/wrappers.proto"])
    for message, fields in _SCHEMA.items():
        m = proto.message_type.add(name=message)
        for fname, number, label, ftype, type_name in fields:
            f = m.field.add(name=fname, number=number, label=_LABELS[label], type=_TYPES[ftype])
            if type_name:
                f.type_name = type_name
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tfprod.serving.{name}"))


@dataclass(frozen=True)
class BatchingParameters:
    """Dynamic batching settings, with TF Serving's defaults (``BasicBatchScheduler::Options``).

    Args:
        max_batch_size: most instances (summed dim 0) merged into one call.
        batch_timeout_micros: longest a request waits for others to join its batch; 0 runs
            whatever is queued as soon as a batch thread is free.
        num_batch_threads: batches that run at the same time.
        max_enqueued_batches: the queue holds at most ``max_enqueued_batches * max_batch_size``
            instances; beyond that requests fail at once with RESOURCE_EXHAUSTED.
        allowed_batch_sizes: if set, each batch is padded up to the next of these sizes
            (increasing; the last one equals ``max_batch_size``).
        pad_variable_length_inputs: merge requests whose inputs differ in dims 1+, padding them
            (with each tensor's first element, as TF Serving does) to the largest in the batch.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameter {name} is {getattr(self, name)}; expected "
                                  "an integer >= 1")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"batching parameter batch_timeout_micros is "
                              f"{self.batch_timeout_micros}; expected >= 0")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ConfigError(f"allowed_batch_sizes {list(sizes)} must be positive and "
                                  "strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ConfigError(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                                  f"max_batch_size ({self.max_batch_size}), as in TF Serving")

    @property
    def max_pending(self) -> int:
        """Most instances waiting in the queue before requests are refused."""
        return self.max_enqueued_batches * self.max_batch_size


_BATCHING_EXAMPLE = ("fields such as max_batch_size { value: 128 } batch_timeout_micros { value: "
                     "1000 } num_batch_threads { value: 2 } max_enqueued_batches { value: 100 } "
                     "allowed_batch_sizes: 32 pad_variable_length_inputs: true")


def parse_batching_parameters(text: str, source: str = "batching parameters"
                              ) -> BatchingParameters:
    """Parse TF Serving's ``--batching_parameters_file`` (text-protobuf BatchingParameters).

    Example::

        max_batch_size { value: 128 }
        batch_timeout_micros { value: 1000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 32
        allowed_batch_sizes: 128
        pad_variable_length_inputs: true

    Raises:
        ConfigError: ``source:line: <what is wrong>; expected ...``, or a value out of range.
    """
    proto = _parse_text(text, _message_class("BatchingParameters")(), source, _BATCHING_EXAMPLE)
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                 "max_enqueued_batches"):
        if proto.HasField(name):
            values[name] = int(getattr(proto, name).value)
    values["allowed_batch_sizes"] = tuple(int(v) for v in proto.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = bool(proto.pad_variable_length_inputs)
    try:
        return BatchingParameters(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_batching_parameters(path: str | os.PathLike) -> BatchingParameters:
    """Read and parse a ``--batching_parameters_file``."""
    return parse_batching_parameters(_read(path, "--batching_parameters_file"), source=str(path))


@dataclass(frozen=True)
class MonitoringConfig:
    """Where Prometheus metrics are served (``prometheus_config { enable path }``)."""

    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH

    @property
    def path(self) -> str | None:
        """The metrics path when Prometheus export is on, else None."""
        return self.prometheus_path if self.prometheus_enable else None


def parse_monitoring_config(text: str, source: str = "monitoring config") -> MonitoringConfig:
    """Parse TF Serving's ``--monitoring_config_file``.

    Example: ``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``
    (``path`` defaults to that value).

    Raises:
        ConfigError: ``source:line: <what is wrong>; expected ...``, or a path not starting
            with ``/``.
    """
    proto = _parse_text(text, _message_class("MonitoringConfig")(), source,
                        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    prom = proto.prometheus_config
    path = prom.path or DEFAULT_PROMETHEUS_PATH
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigError(f"{source}: prometheus_config path {path!r}; expected an absolute URL "
                          "path such as /monitoring/prometheus/metrics")
    return MonitoringConfig(prometheus_enable=bool(prom.enable), prometheus_path=path)


def load_monitoring_config(path: str | os.PathLike) -> MonitoringConfig:
    """Read and parse a ``--monitoring_config_file``."""
    return parse_monitoring_config(_read(path, "--monitoring_config_file"), source=str(path))
