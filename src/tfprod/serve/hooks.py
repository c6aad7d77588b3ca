"""``ServingHooks``: what a later stage (request logging, monitoring) attaches to the server.

The serve stage knows nothing of what is attached: ``ModelServer(options, hooks=...)`` sets
``registry.hooks``, and the front ends call it where a predict completes (REST and gRPC), for
``POST /v1/models/NAME:feedback`` and for ``GET /v1/models/NAME/monitor``. Without hooks those
two routes answer that monitoring is off. ``tfprod serve`` attaches
``tfprod.monitor.ServerMonitor`` when a request log is configured.

Request ids: the client's ``X-Request-Id`` (REST header, gRPC metadata) when it sends one, else
:func:`new_request_id`; REST answers with it in the ``X-Request-Id`` response header.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Protocol

_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)
MAX_REQUEST_ID = 128


def new_request_id() -> str:
    """A request id unique across processes and replicas (random prefix + counter)."""
    # Fixed width: ids sort in the order they were made, so the log's request-id index grows
    # at its end instead of splitting pages all over (0x10 sorted before 0x9).
    return f"{_PREFIX}-{next(_COUNTER):012x}"


def request_id(given: bytes | str | None) -> str:
    """The client's id when usable (printable, at most 128 characters), else a new one."""
    if given:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        if len(text) <= MAX_REQUEST_ID and text.isprintable():
            return text
    return new_request_id()


class ServingHooks(Protocol):
    """What the server calls; every method must be fast or run off the request path."""

    def attach(self, registry: Any, metrics: Any) -> None:
        """Called once when the server starts, with its registry and ServingMetrics."""

    def on_predict(self, model: str, version: int, signature: str, inputs: dict[str, Any],
                   outputs: dict[str, Any], latency_s: float, request_id: str) -> None:
        """A predict finished (must not block: queue and return)."""

    def feedback(self, model: str, body: bytes) -> bytes:
        """``POST /v1/models/NAME:feedback``: the JSON answer (may block; run in a thread)."""

    def monitor(self, model: str) -> bytes:
        """``GET /v1/models/NAME/monitor``: the JSON answer."""

    def close(self) -> None:
        """The server is stopping: write what is queued."""
