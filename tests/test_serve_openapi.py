"""The published contract: ``docs/openapi.json`` is what the server serves at
``/v1/openapi.json``, the server answers as it says, and schemathesis fuzzing of every
operation (bounded, loopback only) gets no 5xx and does not crash the server."""

import json
import pathlib
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rest_serving import MONITORING_PATH, shared_server
from tfprod.serve import openapi

DOC = pathlib.Path(__file__).parents[1] / "docs" / "openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
FUZZ_CASES = 300
FUZZ_BUDGET_S = 40.0
MODELS = ["echo", "multi", "strings", "examples"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def schema(server):
    loaded = schemathesis.openapi.from_dict(json.loads(DOC.read_text()))
    loaded.config.update(base_url=server.url)
    return loaded


def test_the_published_document_is_the_one_the_code_builds():
    assert DOC.read_bytes() == openapi.document_bytes(), (
        "docs/openapi.json is stale: python -m tfprod.serve.openapi docs/openapi.json")


def test_every_route_of_the_server_is_in_the_document():
    paths = json.loads(DOC.read_text())["paths"]
    for spec in ("", "/versions/{version}", "/labels/{label}"):
        base = "/v1/models/{model_name}" + spec
        assert {base, base + "/metadata", base + ":predict", base + ":classify",
                base + ":regress"} <= set(paths)
    assert {"/v1/ready", "/v1/openapi.json", "/v1/models/{model_name}:feedback",
            "/v1/models/{model_name}/monitor", "/v1/models/{model_name}/rollout",
            MONITORING_PATH} <= set(paths)


def test_the_server_serves_the_document(server):
    r = httpx.get(server.url + "/v1/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == DOC.read_bytes()
    assert httpx.get(server.url + "/V1/OpenAPI.json", timeout=10).content == r.content


# (operation, path parameters, body, expected status): one real request per operation.
CONFORMANCE = [
    ("GET /v1/models/{model_name}", {"model_name": "echo"}, None, 200),
    ("GET /v1/models/{model_name}/versions/{version}", {"model_name": "echo", "version": 2},
     None, 200),
    ("GET /v1/models/{model_name}/labels/{label}", {"model_name": "echo", "label": "stable"},
     None, 200),
    ("GET /v1/models/{model_name}/metadata", {"model_name": "multi"}, None, 200),
    ("GET /v1/models/{model_name}/versions/{version}/metadata",
     {"model_name": "echo", "version": 1}, None, 200),
    ("GET /v1/models/{model_name}/labels/{label}/metadata",
     {"model_name": "echo", "label": "canary"}, None, 200),
    ("POST /v1/models/{model_name}:predict", {"model_name": "multi"},
     {"instances": [{"x": [1, 2, 3], "k": 2}]}, 200),
    ("POST /v1/models/{model_name}/versions/{version}:predict",
     {"model_name": "echo", "version": 2}, {"inputs": [[1.0, 2.0]]}, 200),
    ("POST /v1/models/{model_name}/labels/{label}:predict",
     {"model_name": "echo", "label": "stable"}, {"instances": [[1.0]]}, 200),
    ("POST /v1/models/{model_name}:classify", {"model_name": "examples"},
     {"examples": [{"x": 0.25}]}, 200),
    ("POST /v1/models/{model_name}/versions/{version}:classify",
     {"model_name": "examples", "version": 1}, {"examples": [{"x": 0.5}]}, 200),
    ("POST /v1/models/{model_name}/labels/{label}:classify",
     {"model_name": "examples", "label": "nope"}, {"examples": [{"x": 0.5}]}, 404),
    ("POST /v1/models/{model_name}:regress", {"model_name": "examples"},
     {"examples": [{"x": 1.5}], "signature_name": "regress"}, 200),
    ("POST /v1/models/{model_name}/versions/{version}:regress",
     {"model_name": "examples", "version": 1},
     {"examples": [{"x": 2.0}], "signature_name": "regress"}, 200),
    ("POST /v1/models/{model_name}/labels/{label}:regress",
     {"model_name": "nope", "label": "x"}, {"examples": [{"x": 1.0}]}, 404),
    ("POST /v1/models/{model_name}:feedback", {"model_name": "echo"},
     {"feedback": [{"request_id": "r1", "label": 1}]}, 404),  # no request log on this server
    ("GET /v1/models/{model_name}/monitor", {"model_name": "echo"}, None, 404),
    ("GET /v1/models/{model_name}/rollout", {"model_name": "echo"}, None, 200),
    ("GET /v1/ready", {}, None, 200),
    ("GET /v1/openapi.json", {}, None, 200),
    (f"GET {MONITORING_PATH}", {}, None, 200),
]


def test_the_server_answers_as_the_document_says(schema, server):
    """A real request for every documented operation, its answer checked against the document
    (status documented, content type, body schema)."""
    covered = set()
    for label, params, body, status in CONFORMANCE:
        operation = schema.find_operation_by_label(label)
        assert operation is not None, label
        kwargs = {"path_parameters": params} if params else {}
        if body is not None:
            kwargs["body"] = body
            kwargs["media_type"] = "application/json"
        case = operation.Case(**kwargs)
        response = case.call_and_validate(base_url=server.url, checks=CHECKS)
        assert response.status_code == status, (label, response.text)
        covered.add(label)
    documented = {f"{method.upper()} {path}" for path, item in
                  json.loads(DOC.read_text())["paths"].items() for method in item}
    assert covered == documented
    # The predict answers carry the values, not only the shape the schema allows.
    r = httpx.post(server.url + "/v1/models/echo/versions/2:predict",
                   json={"instances": [[1.0, 2.0]]}, timeout=30)
    assert r.json() == {"predictions": [[2.0, 4.0]]}


def test_schemathesis_fuzzing_gets_no_5xx_and_the_server_survives(schema, server):
    """Schema-valid and schema-violating requests to every operation, on the served models'
    names and on generated ones; bounded in count and time, 127.0.0.1 only."""
    assert server.url.startswith("http://127.0.0.1:")
    named = [schema.as_strategy(mode, path_parameters={"model_name": name})
             for name in MODELS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    free = [schema.as_strategy(mode)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    cases = st.one_of(*named, *free)
    seen: dict[str, int] = {}
    start = time.monotonic()

    @settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        if time.monotonic() - start > FUZZ_BUDGET_S:
            return
        response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)
        key = f"{case.operation.label} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1

    fuzz()
    assert sum(seen.values()) >= 100, seen
    statuses = {key.rsplit(" ", 1)[1] for key in seen}
    assert {"200", "400", "404"} <= statuses, seen
    assert server.proc.poll() is None, server.output()
    assert httpx.get(server.url + "/v1/ready", timeout=10).status_code == 200
    r = httpx.post(server.url + "/v1/models/echo:predict", json={"instances": [[3.0]]},
                   timeout=30)
    assert r.status_code == 200
