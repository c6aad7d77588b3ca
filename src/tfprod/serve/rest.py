"""TF Serving's REST API as a plain ASGI app (run by uvicorn in ``tfprod serve``).

Routes, matched on the raw (still percent-encoded) path and case-insensitively, as TF Serving's
``http_rest_api_handler`` matches them; names and labels are then percent-decoded:

- ``GET  /v1/models/{name}[/versions/{v} | /labels/{label}]``            model status
- ``GET  /v1/models/{name}[/versions/{v} | /labels/{label}]/metadata``   signature defs
- ``POST /v1/models/{name}[/versions/{v} | /labels/{label}]:predict``    also ``:classify``,
  ``:regress``
- ``GET  /v1/ready``: 200 once every configured model has an AVAILABLE version, else 503 (for
  load balancers; not part of TF Serving)
- the monitoring path (``prometheus_config { path }``): Prometheus text.

Errors are ``{"error": "..."}`` with the HTTP status TF Serving gives the canonical code
(:attr:`ServingError.http_status`). Any other path under ``/v1/`` is TF Serving's 400 "Malformed
request"; paths outside it are 404. A body over ``max_body_bytes`` is refused with 413 without
being read further.

The predict path parses once (orjson), converts once (:mod:`json_codec`), awaits the servable's
future on the event loop (no thread hop), and encodes once.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.routing import Mount

from tfprod.serve import examples as ex
from tfprod.serve import json_codec, metrics, ragged
from tfprod.serve.errors import ServingError, deadline_exceeded, invalid_argument, not_found

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("tfprod.serve")

# TF Serving's patterns (http_rest_api_util.cc), applied with fullmatch to the raw path.
_NAME = r"([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT = re.compile(r"/v1/models/" + _NAME + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/" + _NAME + r")?(?:/(metadata))?", re.IGNORECASE)
_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
READY_PATH = "/v1/ready"
_INT64_MAX = 2 ** 63 - 1

_JSON = b"application/json"


class _Reply(Exception):
    """A finished response raised from deep inside a handler (413 before the body is read)."""

    def __init__(self, status: int, body: bytes, *, close: bool = False):
        super().__init__(status)
        self.status, self.body, self.close = status, body, close


class RestApi:
    """The ASGI app answering TF Serving's REST routes from a :class:`ModelRegistry`.

    Args:
        registry: the models (``tfprod.serve.registry.ModelRegistry``).
        max_body_bytes: larger request bodies get 413 without being read further.
        timeout_ms: each request's deadline (``--rest_api_timeout_in_ms``); None for none.
        monitoring_path: where Prometheus metrics are served; None for nowhere.
    """

    def __init__(self, registry: Any, *, max_body_bytes: int, timeout_ms: int | None,
                 monitoring_path: str | None):
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={max_body_bytes}; expected >= 1")
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_ms / 1000 if timeout_ms and timeout_ms > 0 else None
        self.timeout_ms = timeout_ms
        self.monitoring_path = monitoring_path or None
        self._metrics = getattr(registry, "metrics", None)

    # ------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body, content_type = await self._route(scope, receive)
            close = False
        except _Reply as r:
            status, body, content_type, close = r.status, r.body, _JSON, r.close
        except ServingError as e:
            status, body, content_type, close = e.http_status, json_codec.error_body(e.message), \
                _JSON, False
        except Exception as e:  # a bug: answer it, log it, keep serving
            log.exception("REST %s %s failed", scope.get("method"), scope.get("path"))
            status, body, content_type, close = 500, json_codec.error_body(
                f"Internal error: {type(e).__name__}: {e}"), _JSON, False
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw.split(b"?", 1)[0].decode("latin-1")
        if self.monitoring_path is not None and scope["path"] == self.monitoring_path:
            return self._prometheus()
        if not _V1.fullmatch(path):
            raise not_found(f"Not found: {method} {path}. The REST API is under "
                            "/v1/models/<name>")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if match:
                name, version, label = _model_spec(match)
                body = await self._read_body(scope, receive)
                return await self._infer(match.group(4).lower(), name, version, label, body)
        elif method in ("GET", "HEAD") and path.lower() == READY_PATH:
            return self._ready()
        if method == "GET":
            match = _STATUS.fullmatch(path)
            if match:
                if match.group(1) is None:
                    raise invalid_argument("Missing model name in request.")
                name, version, label = _model_spec(match)
                if match.group(4):
                    return 200, self._metadata(name, version, label), _JSON
                return 200, self._status(name, version, label), _JSON
        raise invalid_argument(f"Malformed request: {method} {path}")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise self._too_large(f"{int(value)} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Reply(499, b"", close=True)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large(f"more than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, size: str) -> _Reply:
        message = (f"Request body of {size} exceeds the server's limit of {self.max_body_bytes} "
                   "bytes (--max_body_bytes); send fewer instances per request")
        return _Reply(413, json_codec.error_body(message), close=True)

    # ------------------------------------------------------------------------ inference

    async def _infer(self, api: str, name: str, version: int | None, label: str | None,
                     body: bytes) -> tuple[int, bytes, bytes]:
        start = time.perf_counter()
        status = "OK"
        try:
            # TF Serving's order: the body is checked before the model is looked up.
            with _gc_paused():
                request = json_codec.parse_request(body)
                signature = json_codec.signature_name(request)
                examples = None if api == "predict" else ex.examples_from_json(request.doc, api)
            with self.registry.acquire(name, version, label) as servable:
                if examples is None:
                    with _gc_paused():
                        info = servable.signature(signature or None)
                        inputs, fmt = ragged.decode_predict(request, info.inputs)
                    del request  # the parsed lists are not needed while the model runs
                    result = await self._predict(servable, signature, inputs, fmt)
                else:
                    result = await self._classify_or_regress(api, servable, signature, examples)
            return 200, result, _JSON
        except ServingError as e:
            status = e.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if name in self.registry.model_names():  # unknown names would grow the metrics
                self._record(name, api, status, time.perf_counter() - start)

    def _deadline(self) -> float | None:
        return None if self.timeout_s is None else time.monotonic() + self.timeout_s

    async def _predict(self, servable: Any, signature: str, inputs: dict[str, Any], fmt: str
                       ) -> bytes:
        deadline = self._deadline()
        future = servable.submit(signature or None, inputs, deadline=deadline)
        outputs = await self._wait(asyncio.wrap_future(future), deadline)
        with _gc_paused():
            return json_codec.encode_predict(outputs, fmt)

    async def _classify_or_regress(self, api: str, servable: Any, signature: str,
                                   serialized: list[bytes]) -> bytes:
        deadline = self._deadline()
        # classify_or_regress blocks until its result: run it off the event loop.
        call = functools.partial(servable.classify_or_regress, signature or None, serialized,
                                 api, deadline=deadline)
        outputs = await self._wait(asyncio.get_running_loop().run_in_executor(None, call),
                                   deadline)
        if api == "classify":
            return json_codec.encode_classification(
                ex.classification_result(outputs, len(serialized)))
        return json_codec.encode_regression(ex.regression_result(outputs, len(serialized)))

    async def _wait(self, future: asyncio.Future, deadline: float | None) -> Any:
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise deadline_exceeded(f"Request did not finish within its deadline of "
                                    f"{self.timeout_ms} ms (--rest_api_timeout_in_ms)") from None

    def _record(self, name: str, api: str, status: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.record_request(name, api, "REST", status, seconds)
        else:
            metrics.record_request(name, api, "REST", status, seconds)

    # ------------------------------------------------------------------------ model info

    def _status(self, name: str, version: int | None, label: str | None) -> bytes:
        statuses = self.registry.status(name, version, label)
        return orjson.dumps({"model_version_status": [
            {"version": str(s.version), "state": s.state,
             "status": {"error_code": s.error_code, "error_message": s.error_message}}
            for s in statuses]})

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        servable = self.registry.get(name, version, label)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sigdef in servable.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(sigdef)
        # TF Serving prints the map itself (not the Any that wraps it in gRPC), with proto field
        # names and default values (http_rest_api_util.cc, ToJsonString).
        sigs = json_format.MessageToDict(signature_defs, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        return orjson.dumps({
            "model_spec": {"name": servable.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": sigs}})

    def _ready(self) -> tuple[int, bytes, bytes]:
        if self.registry.ready():
            return 200, b'{"ready":true}', _JSON
        if getattr(self.registry, "draining", False):
            reason = "the server is shutting down"
        else:
            waiting = [n for n in self.registry.model_names() if not _available(self.registry, n)]
            reason = ("no AVAILABLE version yet for model(s): " + ", ".join(waiting)) if waiting \
                else "models are loading"
        return 503, json_codec.error_body(f"Not ready: {reason}"), _JSON

    def _prometheus(self) -> tuple[int, bytes, bytes]:
        source = self._metrics if self._metrics is not None else metrics.current()
        return 200, source.exposition(), metrics.CONTENT_TYPE.encode()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Defer Python's cyclic garbage collection while a body turns into objects and back.

    A JSON body parses into one object per number and list; tens of thousands of new objects
    trigger collections, and with TensorFlow loaded a full one scans hundreds of thousands of
    tracked objects: parsing a 64-image body took 10-25x longer than with collection deferred
    (measured on this project's 2-core machine). These objects form no cycles (reference
    counting frees them), so nothing is lost by collecting after the request's synchronous part.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _available(registry: Any, name: str) -> bool:
    try:
        return any(s.state == "AVAILABLE" for s in registry.status(name))
    except ServingError:
        return False


def _model_spec(match: re.Match) -> tuple[str, int | None, str | None]:
    """(name, version, label) from a route match, decoded as TF Serving decodes them."""
    name = _decode(match.group(1), "model name")
    version = None
    if match.group(2) is not None:
        version = int(match.group(2)) if len(match.group(2)) <= 19 else _INT64_MAX + 1
        if version > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {match.group(2)} to numeric.")
    label = _decode(match.group(3), "model version label") if match.group(3) else None
    return name, version, label


def _decode(text: str, what: str) -> str:
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise invalid_argument(f"Failed to decode {what}:{text}") from None


def make_rest_app(registry: Any, *, max_body_bytes: int, timeout_ms: int | None,
                  monitoring_path: str | None) -> Starlette:
    """TF Serving's REST API over ``registry``, as a Starlette app for uvicorn.

    Example::

        app = make_rest_app(registry, max_body_bytes=32 << 20, timeout_ms=30_000,
                            monitoring_path="/monitoring/prometheus/metrics")
        uvicorn.run(app, port=8501)

    Args:
        registry: a started ``ModelRegistry``.
        max_body_bytes: request bodies above this get 413 (read no further).
        timeout_ms: the deadline of each request (``--rest_api_timeout_in_ms``); None or 0 for
            none. Requests past it get 504.
        monitoring_path: the path serving Prometheus metrics; None to serve none.
    """
    api = RestApi(registry, max_body_bytes=max_body_bytes, timeout_ms=timeout_ms,
                  monitoring_path=monitoring_path)
    return Starlette(routes=[Mount("/", app=api)])
