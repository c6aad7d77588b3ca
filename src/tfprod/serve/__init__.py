"""`tfprod serve`: a TF-Serving-compatible model server (REST + gRPC).

- :class:`ModelServer`, :class:`ServerOptions`, :func:`run`: the server, with the flags of
  ``tensorflow_model_server``.
- :class:`ModelRegistry`: versions loaded per policy, labels, availability-preserving swaps.
- :class:`DynamicBatcher`, :class:`BatchingParameters`: dynamic batching with a bounded queue.
- :class:`ModelSpec`, :func:`load_model_server_config`: models.config (text ModelServerConfig).
- :class:`ServingMetrics`: Prometheus metrics with TF Serving's names.
- :class:`ServingError`: an error with TF Serving's canonical code and HTTP status.
- :class:`RestClient`: a small client of the REST predict API; :class:`ServerProcess`: `tfprod
  serve` as a child process on loopback.

Names load on first use: ``from tfprod.serve import RestClient`` does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "BatchingParameters": "config",
    "ConfigError": "config",
    "DynamicBatcher": "batching",
    "ModelRegistry": "registry",
    "ModelServer": "server",
    "ModelSpec": "config",
    "RestClient": "client",
    "ServerOptions": "server",
    "ServerProcess": "process",
    "ServingError": "errors",
    "ServingMetrics": "metrics",
    "load_model_server_config": "config",
    "run": "server",
})
