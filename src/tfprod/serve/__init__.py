"""`tfprod serve`: a TF-Serving-compatible model server (REST + gRPC).

- :class:`ModelServer`, :class:`ServerOptions`, :func:`run`: the server, with the flags of
  ``tensorflow_model_server``.
- :class:`ModelRegistry`: versions loaded per policy, labels, availability-preserving swaps.
- :class:`DynamicBatcher`, :class:`BatchingParameters`: dynamic batching with a bounded queue.
- :class:`ModelSpec`, :func:`load_model_server_config`: models.config (text ModelServerConfig).
- :class:`ServingMetrics`: Prometheus metrics with TF Serving's names.
- :class:`ServingError`: an error with TF Serving's canonical code and HTTP status.
- :class:`RestClient`: a small client of the REST predict API.

Names load on first use: ``from tfprod.serve import RestClient`` does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BatchingParameters": "config",
    "ConfigError": "config",
    "DynamicBatcher": "batching",
    "ModelRegistry": "registry",
    "ModelServer": "server",
    "ModelSpec": "config",
    "RestClient": "client",
    "ServerOptions": "server",
    "ServingError": "errors",
    "ServingMetrics": "metrics",
    "load_model_server_config": "config",
    "run": "server",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tfprod.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfprod.serve.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
