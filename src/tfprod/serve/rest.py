"""TF Serving's REST API as a plain ASGI app (run by uvicorn in ``tfprod serve``).

Routes, matched on the raw (still percent-encoded) path and case-insensitively, as TF Serving's
``http_rest_api_handler`` matches them; names and labels are then percent-decoded:

- ``GET  /v1/models/{name}[/versions/{v} | /labels/{label}]``            model status
- ``GET  /v1/models/{name}[/versions/{v} | /labels/{label}]/metadata``   signature defs
- ``POST /v1/models/{name}[/versions/{v} | /labels/{label}]:predict``    also ``:classify``,
  ``:regress``
- ``POST /v1/models/{name}:feedback``, ``GET /v1/models/{name}/monitor``: labels joined to
  logged requests, and the drift of the recent window (answered by the attached
  :mod:`~tfprod.serve.hooks`; not part of TF Serving)
- ``GET  /v1/models/{name}/rollout``: the model's canary or A/B split, each arm's share,
  requests, errors and mean latency, and its shadow (not part of TF Serving)
- ``GET  /v1/ready``: 200 once every configured model has an AVAILABLE version, else 503 (for
  load balancers; not part of TF Serving)
- ``GET  /v1/openapi.json``: this API as an OpenAPI 3 document (:mod:`~tfprod.serve.openapi`)
- the monitoring path (``prometheus_config { path }``): Prometheus text.

Errors are ``{"error": "..."}`` with the HTTP status TF Serving gives the canonical code
(:attr:`ServingError.http_status`). Any other path under ``/v1/`` is TF Serving's 400 "Malformed
request"; paths outside it are 404. A body over ``max_body_bytes`` is refused with 413 without
being read further.

The predict path parses once (orjson), converts once (:mod:`json_codec`), queues the request
with the batcher (``submit_async``: the answer comes back as an asyncio future, resolved by one
loop callback per batch) and encodes once. The app is plain ASGI with no framework around it:
routing a request is one cached dictionary lookup.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import orjson

from tfprod.serve import examples as ex
from tfprod.serve import hooks as hk
from tfprod.serve import json_codec, metrics, openapi, ragged
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
_FEEDBACK = re.compile(r"/v1/models/([^/:]+):feedback", re.IGNORECASE)
_MONITOR = re.compile(r"/v1/models/([^/:]+)/monitor", re.IGNORECASE)
_ROLLOUT = re.compile(r"/v1/models/([^/:]+)/rollout", re.IGNORECASE)
_REQUEST_ID = "tfprod.request_id"
READY_PATH = "/v1/ready"
_INT64_MAX = 2 ** 63 - 1
_ROUTE_CACHE = 1024  # predict paths remembered (clients use a handful; the bound stops growth)

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
        self._predict_routes: dict[bytes, tuple[str, str, int | None, str | None]] = {}

    # ------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
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
        if _REQUEST_ID in scope:
            headers.append((b"x-request-id", scope[_REQUEST_ID].encode("latin-1")))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        if method == "POST":
            route = self._predict_routes.get(raw)
            if route is not None:
                return await self._infer(*route, scope, receive)
        path = raw.split(b"?", 1)[0].decode("latin-1")
        if self.monitoring_path is not None and scope["path"] == self.monitoring_path:
            return self._prometheus()
        if not _V1.fullmatch(path):
            raise not_found(f"Not found: {method} {path}. The REST API is under "
                            "/v1/models/<name>")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if match:
                route = (match.group(4).lower(), *_model_spec(match))
                if len(self._predict_routes) >= _ROUTE_CACHE:
                    self._predict_routes.clear()
                self._predict_routes[raw] = route
                return await self._infer(*route, scope, receive)
            match = _FEEDBACK.fullmatch(path)
            if match:
                body = await self._read_body(scope, receive)
                call = functools.partial(self._hooks("feedback").feedback,
                                         _decode(match.group(1), "model name"), body)
                return 200, await asyncio.get_running_loop().run_in_executor(None, call), _JSON
        elif method in ("GET", "HEAD") and path.lower() == READY_PATH:
            return self._ready()
        elif method == "GET" and path.lower() == openapi.OPENAPI_PATH:
            return 200, openapi.document_bytes(), _JSON
        if method == "GET":
            match = _MONITOR.fullmatch(path)
            if match:
                return 200, self._hooks("monitor").monitor(_decode(match.group(1),
                                                                   "model name")), _JSON
            match = _ROLLOUT.fullmatch(path)
            if match:
                return 200, orjson.dumps(self.registry.rollout(
                    _decode(match.group(1), "model name"))), _JSON
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

    def _hooks(self, route: str) -> Any:
        hooks = getattr(self.registry, "hooks", None)
        if hooks is None:
            raise not_found(f"The {route} route needs request logging; start tfprod serve with "
                            "--request_log=URL or a logging_config in models.config")
        return hooks

    async def _infer(self, api: str, name: str, version: int | None, label: str | None,
                     scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        start = time.perf_counter()
        status = "OK"
        batcher = self.registry.batcher
        batcher.expect()  # a batch waiting for more requests waits for this one
        expected = True
        split = None  # the servable, when a canary or A/B split chose it
        try:
            body = await self._read_body(scope, receive)
            # TF Serving's order: the body is checked before the model is looked up.
            with _NO_GC:
                request = json_codec.parse_request(body)
                signature = json_codec.signature_name(request) or None
                examples = None if api == "predict" else ex.examples_from_json(request.doc, api)
            key = _header(scope, b"x-request-id")  # a client's own id: a sticky split side
            key = key.decode("latin-1") if key else None
            if examples is not None:
                expected = False
                batcher.unexpect()
                with self.registry.acquire(name, version, label, key) as servable:
                    if servable.arm is not None and version is None and label is None:
                        split = servable
                    result = await self._classify_or_regress(api, servable, signature, examples)
                return 200, result, _JSON
            servable = self.registry.hold(name, version, label, key)
            if servable.arm is not None and version is None and label is None:
                split = servable
            try:
                with _NO_GC:
                    info = servable.signature(signature)
                    inputs, fmt = ragged.decode_predict(request, info.inputs)
                del request, body  # the parsed lists are not needed while the model runs
                deadline = self._deadline()
                expected = False  # submit_async ends the announcement, even when it raises
                future = servable.submit_async(signature, inputs, deadline=deadline,
                                               expected=True)
                outputs = await self._wait(future, deadline)
                hooks = getattr(self.registry, "hooks", None)
                if hooks is not None:  # the request log: queues and returns
                    rid = scope[_REQUEST_ID] = hk.request_id(_header(scope, b"x-request-id"))
                    hooks.on_predict(servable.name, servable.version,
                                     signature or "serving_default", inputs, outputs,
                                     time.perf_counter() - start, rid)
                    if version is None and label is None:
                        self.registry.copy_to_shadow(servable, signature, inputs, rid, hooks)
                with _NO_GC:
                    result = json_codec.encode_predict(outputs, fmt)
            finally:
                servable.release()
            return 200, result, _JSON
        except ServingError as e:
            status = e.code.name
            raise
        except _Reply:  # 413 / a client gone before its body arrived: not a request served
            status = ""
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if expected:
                batcher.unexpect()
            if status and self.registry.has_model(name):  # unknown names would grow metrics
                seconds = time.perf_counter() - start
                self._record(name, api, status, seconds)
                if split is not None:  # per-arm count, errors and latency of the split
                    self.registry.record_arm(split, status, seconds)

    def _deadline(self) -> float | None:
        return None if self.timeout_s is None else time.monotonic() + self.timeout_s

    async def _wait(self, future: asyncio.Future, deadline: float | None) -> Any:
        """The servable's answer; DEADLINE_EXCEEDED (504) once ``deadline`` passes."""
        if deadline is None:
            return await future
        timer = asyncio.get_running_loop().call_later(
            max(deadline - time.monotonic(), 0.0), self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(self._deadline_error())

    def _deadline_error(self) -> ServingError:
        return deadline_exceeded(f"Request did not finish within its deadline of "
                                 f"{self.timeout_ms} ms (--rest_api_timeout_in_ms)")

    async def _classify_or_regress(self, api: str, servable: Any, signature: str | None,
                                   serialized: list[bytes]) -> bytes:
        deadline = self._deadline()
        # classify_or_regress blocks until its result: run it off the event loop.
        call = functools.partial(servable.classify_or_regress, signature, serialized, api,
                                 deadline=deadline)
        future = asyncio.get_running_loop().run_in_executor(None, call)
        try:
            outputs = await (future if deadline is None else asyncio.wait_for(
                future, max(deadline - time.monotonic(), 0.0)))
        except TimeoutError:
            raise self._deadline_error() from None
        if api == "classify":
            return json_codec.encode_classification(
                ex.classification_result(outputs, len(serialized)))
        return json_codec.encode_regression(ex.regression_result(outputs, len(serialized)))

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


class _GcPaused:
    """Defers Python's cyclic garbage collection while a body turns into objects and back.

    A JSON body parses into one object per number and list; tens of thousands of new objects
    trigger collections, and with TensorFlow loaded a full one scans hundreds of thousands of
    tracked objects: parsing a 64-image body took 10-25x longer than with collection deferred
    (measured on this project's 2-core machine). These objects form no cycles (reference
    counting frees them), so nothing is lost by collecting after the request's synchronous part.
    Re-entrant only in the sense the event loop needs: nothing awaits inside it.
    """

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        if self._was_enabled:
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            gc.enable()


_NO_GC = _GcPaused()


async def _lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: nothing to set up (``tfprod serve`` runs uvicorn with lifespan off; test
    clients send these messages)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


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
                  monitoring_path: str | None) -> RestApi:
    """TF Serving's REST API over ``registry``, as an ASGI app for uvicorn.

    Example::

        app = make_rest_app(registry, max_body_bytes=32 << 20, timeout_ms=30_000,
                            monitoring_path="/monitoring/prometheus/metrics")
        uvicorn.run(app, port=8501, proxy_headers=False)

    Args:
        registry: a started ``ModelRegistry``.
        max_body_bytes: request bodies above this get 413 (read no further).
        timeout_ms: the deadline of each request (``--rest_api_timeout_in_ms``); None or 0 for
            none. Requests past it get 504.
        monitoring_path: the path serving Prometheus metrics; None to serve none.
    """
    return RestApi(registry, max_body_bytes=max_body_bytes, timeout_ms=timeout_ms,
                   monitoring_path=monitoring_path)
