"""The REST API as an OpenAPI 3 document: served at ``GET /v1/openapi.json`` and published as
``docs/openapi.json`` (``python -m tfprod.serve.openapi docs/openapi.json`` writes it; a test
checks the two are the same and that the server answers as the document says).

It describes TF Serving's routes as ``tfprod serve`` answers them (:mod:`tfprod.serve.rest`):
bodies, the HTTP status of each canonical error code, and tfprod's additions (readiness,
feedback, monitoring, this document).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import orjson

OPENAPI_PATH = "/v1/openapi.json"
MONITORING_PATH = "/monitoring/prometheus/metrics"  # the path a monitoring_config usually names

_JSON = "application/json"
_ERROR = {"$ref": "#/components/responses/Error"}
# Every status an inference or model route can give a client mistake or a server state
# (ServingError.http_status): INVALID_ARGUMENT 400, NOT_FOUND 404, FAILED_PRECONDITION 400,
# RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, UNIMPLEMENTED 501.
_ERRORS = {"400": _ERROR, "404": _ERROR}
_INFER_ERRORS = {**_ERRORS, "413": _ERROR, "429": _ERROR, "501": _ERROR, "503": _ERROR,
                 "504": _ERROR}
_SPECS = {  # how a route names the model: latest version, a version, or a label
    "": [],
    "/versions/{version}": [{"$ref": "#/components/parameters/version"}],
    "/labels/{label}": [{"$ref": "#/components/parameters/label"}],
}
_NAME = [{"$ref": "#/components/parameters/model_name"}]


def _json_body(schema: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _operation(op_id: str, summary: str, parameters: list, responses: dict, *,
               body: dict | None = None, tag: str = "TF Serving") -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag],
                           "parameters": parameters, "responses": responses}
    if body is not None:
        out["requestBody"] = body
    return out


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for spec, params in _SPECS.items():
        suffix = {"": "", "/versions/{version}": "_version", "/labels/{label}": "_label"}[spec]
        where = {"": "its latest available version", "/versions/{version}": "a version",
                 "/labels/{label}": "the version a label names"}[spec]
        base = "/v1/models/{model_name}" + spec
        p = _NAME + params
        paths[base] = {"get": _operation(
            f"model_status{suffix}", f"Status of the model's versions ({where})", p,
            {"200": _ok("ModelStatus", "The state of each version"), **_ERRORS})}
        paths[base + "/metadata"] = {"get": _operation(
            f"model_metadata{suffix}", f"Signature defs of {where}", p,
            {"200": _ok("ModelMetadata", "The model spec and its signature defs"), **_ERRORS})}
        paths[base + ":predict"] = {"post": _operation(
            f"predict{suffix}", f"Predict with {where}", p,
            {"200": _ok("PredictResponse", "predictions (row format) or outputs (columnar)"),
             **_INFER_ERRORS},
            body=_json_body("PredictRequest", "Row (instances) or columnar (inputs) format"))}
        for api, result in (("classify", "ClassifyResponse"), ("regress", "RegressResponse")):
            paths[base + f":{api}"] = {"post": _operation(
                f"{api}{suffix}", f"{api.capitalize()} tf.Examples with {where}", p,
                {"200": _ok(result, f"One {api} result per example"), **_INFER_ERRORS},
                body=_json_body("ExamplesRequest", "Examples as JSON objects"))}
    paths["/v1/models/{model_name}:feedback"] = {"post": _operation(
        "feedback", "Labels for logged requests (joined on X-Request-Id)", _NAME,
        {"200": _ok("FeedbackResponse", "How many labels were stored"), **_ERRORS,
         "413": _ERROR},
        body=_json_body("FeedbackRequest", "Request ids from :predict answers, with labels"),
        tag="tfprod")}
    paths["/v1/models/{model_name}/monitor"] = {"get": _operation(
        "monitor", "Drift of the recent window of logged requests", _NAME,
        {"200": _ok("MonitorResponse", "The latest drift computation"), **_ERRORS},
        tag="tfprod")}
    paths["/v1/models/{model_name}/rollout"] = {"get": _operation(
        "rollout", "The canary or A/B split: each arm's share, requests, errors, latency",
        _NAME, {"200": _ok("RolloutResponse", "The split and its arms now"), **_ERRORS},
        tag="tfprod")}
    paths["/v1/ready"] = {"get": _operation(
        "ready", "Readiness for a load balancer", [],
        {"200": _ok("Ready", "Every configured model has an AVAILABLE version"),
         "503": _ERROR}, tag="tfprod")}
    paths[OPENAPI_PATH] = {"get": _operation(
        "openapi", "This document", [],
        {"200": {"description": "The OpenAPI 3 document of this API",
                 "content": {_JSON: {"schema": {"type": "object"}}}}}, tag="tfprod")}
    paths[MONITORING_PATH] = {"get": _operation(
        "prometheus_metrics", "Prometheus metrics (at the path of the monitoring_config; "
        "404 when it enables none)", [],
        {"200": {"description": "Prometheus text exposition format",
                 "content": {"text/plain": {"schema": {"type": "string"}}}},
         "404": _ERROR}, tag="TF Serving")}
    return paths


def _components() -> dict[str, Any]:
    any_value: dict[str, Any] = {}  # any JSON value: tensors of every dtype and shape
    string = {"type": "string"}
    return {
        "parameters": {
            "model_name": {"name": "model_name", "in": "path", "required": True,
                           "description": "The model's name in the server's config",
                           "schema": string},
            "version": {"name": "version", "in": "path", "required": True,
                        "description": "A version number (at most 2^63 - 1)",
                        "schema": {"type": "integer", "minimum": 0}},
            "label": {"name": "label", "in": "path", "required": True,
                      "description": "A version label (version_labels in models.config)",
                      "schema": string},
        },
        "responses": {"Error": {
            "description": "A client mistake or a server state, in TF Serving's error body",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Ready": {"type": "object", "required": ["ready"],
                      "properties": {"ready": {"type": "boolean"}}},
            "ModelStatus": {
                "type": "object", "required": ["model_version_status"],
                "properties": {"model_version_status": {"type": "array", "items": {
                    "type": "object", "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string", "description": "int64 as a string"},
                        "state": {"type": "string", "enum": [
                            "UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                        "status": {"type": "object", "required": ["error_code", "error_message"],
                                   "properties": {"error_code": string,
                                                  "error_message": string}}}}}}},
            "ModelMetadata": {
                "type": "object", "required": ["model_spec", "metadata"],
                "properties": {
                    "model_spec": {"type": "object", "required": ["name", "version"],
                                   "properties": {"name": string, "signature_name": string,
                                                  "version": string}},
                    "metadata": {"type": "object", "required": ["signature_def"],
                                 "properties": {"signature_def": {
                                     "type": "object",
                                     "description": "SignatureDefMap as proto JSON"}}}}},
            "PredictRequest": {
                "type": "object",
                "description": "Exactly one of instances (row format: a list, one entry per "
                               "example) and inputs (columnar: a tensor, or a name -> tensor "
                               "object). Binary strings are {\"b64\": \"...\"}; NaN and "
                               "Infinity are accepted as in TF Serving.",
                "properties": {"signature_name": string,
                               "instances": {"type": "array", "items": any_value},
                               "inputs": any_value}},
            "PredictResponse": {
                "type": "object",
                "description": "predictions for a row-format request, outputs for columnar",
                "properties": {"predictions": any_value, "outputs": any_value}},
            "ExamplesRequest": {
                "type": "object", "required": ["examples"],
                "properties": {
                    "signature_name": string,
                    "context": {"type": "object", "description": "Features common to all "
                                "examples"},
                    "examples": {"type": "array", "items": {
                        "type": "object", "description": "feature name -> a value or a list "
                        "of values (int64, float or bytes)"}}}},
            "ClassifyResponse": {
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "array", "items": {
                    "type": "array", "description": "[label, score] pairs",
                    "items": {"type": "array", "items": any_value}}}}},
            "RegressResponse": {
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "array", "items": {"type": "number"}}}},
            "FeedbackRequest": {
                "type": "object", "required": ["feedback"],
                "properties": {"feedback": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["request_id", "label"],
                    "properties": {"request_id": string, "label": {
                        "description": "a number, a string, a boolean or a list of numbers"}}}}}},
            "FeedbackResponse": {"type": "object", "required": ["accepted"],
                                 "properties": {"accepted": {"type": "integer"}}},
            "MonitorResponse": {
                "type": "object", "required": ["model", "status", "window_rows"],
                "properties": {"model": string, "status": string,
                               "window_rows": {"type": "integer"},
                               "interval_seconds": {"type": "number"},
                               "computed_at": {"type": ["number", "null"]},
                               "error": {"type": ["string", "null"]},
                               "request_log": {"type": "object"},
                               "report": {"type": ["object", "null"]}}},
            "RolloutResponse": {
                "type": "object", "required": ["model", "split", "arms"],
                "properties": {
                    "model": string, "split": {"enum": ["ab", "canary", None]},
                    "arms": {"type": "array", "items": {
                        "type": "object",
                        "required": ["arm", "version", "weight_percent", "requests", "errors"],
                        "properties": {
                            "arm": string, "version": {"type": ["integer", "null"]},
                            "weight_percent": {"type": "number"},
                            "available": {"type": "boolean"},
                            "requests": {"type": "integer"}, "errors": {"type": "integer"},
                            "latency_ms_mean": {"type": ["number", "null"]}}}},
                    "shadow": {"type": ["object", "null"]}}},
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``tfprod serve``'s REST API."""
    from tfprod import __version__

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tfprod serve REST API",
            "version": __version__,
            "description": "TensorFlow Serving's REST API (same routes, bodies and HTTP codes), "
                           "plus readiness, feedback and drift monitoring. Routes match "
                           "case-insensitively; names and labels are percent-decoded. Any "
                           "other path under /v1/ is 400 (Malformed request); paths outside "
                           "it are 404. Request bodies over --max_body_bytes get 413.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://localhost:8501", "description": "--rest_api_port"}],
        "paths": _paths(),
        "components": _components(),
    }


@functools.cache
def document_bytes() -> bytes:
    """:func:`document` as the served JSON (built once)."""
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2) + b"\n"


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "-"
    if target == "-":
        sys.stdout.buffer.write(document_bytes())
    else:
        with open(target, "wb") as f:
            f.write(document_bytes())
