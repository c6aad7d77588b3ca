"""REST conformance: every route, format and error of TF Serving's REST API, against a real
``tfprod serve`` process (plus in-process servers for deadlines, a full queue and readiness)."""

import base64
import concurrent.futures
import json
import os
import time

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from rest_serving import MAX_BODY_BYTES, MONITORING_PATH, ThreadServer, shared_server
from serve_models import write_affine
from tfprod.serve.config import BatchingParameters, ModelSpec
from tfprod.serve.registry import ModelRegistry
from tfprod.serve.rest import make_rest_app


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def post(client, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"content-type": "application/json"})


def status_entry(version, state="AVAILABLE", code="OK", message=""):
    return {"version": str(version), "state": state,
            "status": {"error_code": code, "error_message": message}}


# ------------------------------------------------------------------------------ model status


def test_model_status_of_all_versions_a_version_and_a_label(client):
    r = client.get("/v1/models/echo")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    statuses = r.json()["model_version_status"]
    assert statuses[1:] == [status_entry(2), status_entry(1)]
    broken = statuses[0]
    assert (broken["version"], broken["state"], broken["status"]["error_code"]) == (
        "3", "END", "DATA_LOSS")
    assert "saved_model.pb" in broken["status"]["error_message"]
    assert client.get("/v1/models/echo/versions/1").json() == {
        "model_version_status": [status_entry(1)]}
    assert client.get("/v1/models/echo/labels/canary").json() == {
        "model_version_status": [status_entry(2)]}
    # TF Serving matches routes case-insensitively and percent-decodes names.
    assert client.get("/V1/MODELS/ec%68o/VERSIONS/1").json() == {
        "model_version_status": [status_entry(1)]}


def test_metadata_nests_the_signature_def_map_as_tf_serving(client, server):
    r = client.get("/v1/models/multi/metadata")
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "multi", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    serving = sigs["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert serving["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert serving["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False}
    assert serving["outputs"]["total"]["dtype"] == "DT_DOUBLE"
    # Exactly the SignatureDefs stored in saved_model.pb, printed with TF Serving's options.
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(server.root, "multi", "1", "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for key, sigdef in proto.meta_graphs[0].signature_def.items():
        assert sigs[key] == json_format.MessageToDict(
            sigdef, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert set(body) == {"model_spec", "metadata"} and set(body["metadata"]) == {"signature_def"}
    for path, version in (("/v1/models/echo/versions/1/metadata", "1"),
                          ("/v1/models/echo/labels/canary/metadata", "2"),
                          ("/v1/models/echo/metadata", "2")):
        assert client.get(path).json()["model_spec"]["version"] == version


def test_classify_signature_metadata_keeps_its_method_name(client):
    sigs = client.get("/v1/models/examples/metadata").json()["metadata"]["signature_def"][
        "signature_def"]
    assert sigs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["regress"]["method_name"] == "tensorflow/serving/regress"


# ------------------------------------------------------------------------------ predict


def test_predict_row_and_columnar_by_version_label_and_latest(client):
    row = {"instances": [[1.5, 2]]}
    assert post(client, "/v1/models/echo:predict", row).content == \
        b'{"predictions":[[3.0,4.0]]}'
    assert post(client, "/v1/models/echo/versions/1:predict", row).content == \
        b'{"predictions":[[1.5,2.0]]}'
    assert post(client, "/v1/models/echo/labels/stable:predict", row).json() == {
        "predictions": [[1.5, 2.0]]}
    assert post(client, "/v1/models/echo/labels/canary:PREDICT", row).json() == {
        "predictions": [[3.0, 4.0]]}
    columnar = {"signature_name": "serving_default", "inputs": [[1, 2], [3, 4]]}
    assert post(client, "/v1/models/echo:predict", columnar).content == \
        b'{"outputs":[[2.0,4.0],[6.0,8.0]]}'


def test_multi_input_multi_output_shapes(client):
    row = {"instances": [{"x": [1, 2, 3], "k": 2}, {"x": [0.5, 0, -1], "k": -1}]}
    assert post(client, "/v1/models/multi:predict", row).json() == {"predictions": [
        {"scaled": [2.0, 4.0, 6.0], "total": 6.0}, {"scaled": [-0.5, -0.0, 1.0], "total": -0.5}]}
    columnar = {"inputs": {"x": [[1, 2, 3], [4, 5, 6]], "k": [1, 0]}}
    assert post(client, "/v1/models/multi:predict", columnar).json() == {"outputs": {
        "scaled": [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], "total": [6.0, 15.0]}}


def test_b64_inputs_and_bytes_outputs(client):
    raw = b"ab\x00\xfe"
    row = {"instances": [{"b64": base64.b64encode(raw).decode()}, "hello"]}
    predictions = post(client, "/v1/models/strings:predict", row).json()["predictions"]
    assert predictions[0]["upper_bytes"] == {"b64": base64.b64encode(b"AB\x00\xfe").decode()}
    assert predictions[0]["length"] == 4
    assert predictions[1] == {"length": 5, "text": "hello",
                              "upper_bytes": {"b64": base64.b64encode(b"HELLO").decode()}}
    columnar = post(client, "/v1/models/strings:predict", {"inputs": ["x"]}).json()
    assert columnar == {"outputs": {"length": [1], "text": ["x"],
                                    "upper_bytes": [{"b64": base64.b64encode(b"X").decode()}]}}


def test_nan_infinity_and_floats_printed_exactly(client):
    values = np.array([0.1, 0.123456789, 3, 1e-45, 3.4028234663852886e38, 9e6, 555557.5, -0.0,
                       1 / 3], np.float32)
    body = ('{"instances": [[' + ",".join(repr(v) for v in values.tolist())
            + ', NaN, Infinity, -Infinity]]}').encode()
    r = post(client, "/v1/models/echo/labels/stable:predict", body)
    assert r.content == (b'{"predictions":[[0.1,0.123456791,3.0,1.4013e-45,3.40282347e+38,'
                         b'9e+06,555557.5,-0.0,0.333333343,NaN,Infinity,-Infinity]]}')
    back = np.array(json.loads(r.content)["predictions"][0][:9], np.float32)
    assert back.tobytes() == values.tobytes()  # bit for bit, sign of zero included
    r = post(client, "/v1/models/echo:predict",
             {"signature_name": "double", "instances": [1.0, 3.0]})
    assert r.content == b'{"predictions":[0.33333333333333331,1.0]}'


def test_classify_and_regress_with_examples_and_context(client):
    r = post(client, "/v1/models/examples:classify", {"examples": [{"x": 0.25}, {"x": [1.0]}]})
    assert r.content == b'{"results":[[["a",0.75],["b",0.25]],[["a",0.0],["b",1.0]]]}'
    r = post(client, "/v1/models/examples/labels/nope:classify", {"examples": [{"x": 1}]})
    assert r.status_code == 404
    r = post(client, "/v1/models/examples:regress",
             {"signature_name": "regress", "examples": [{"x": 1.0}, {"x": 2.5}]})
    assert r.content == b'{"results":[2.0,5.0]}'
    r = post(client, "/v1/models/examples/versions/1:regress",
             {"signature_name": "regress", "context": {"x": 1.0}, "examples": [{}, {"x": 3.0}]})
    assert r.json() == {"results": [2.0, 6.0]}


# ------------------------------------------------------------------------------ errors

ECHO = "/v1/models/echo:predict"
MULTI = "/v1/models/multi:predict"
ERRORS = [
    # malformed JSON and bodies
    ("POST", ECHO, b'{"instances": [1,', 400, "JSON Parse error: "),
    ("POST", ECHO, b"", 400, "JSON Parse error: The document is empty"),
    ("POST", ECHO, b"[1, 2]", 400, "JSON Value: [1,2] Is not object"),
    ("POST", ECHO, b'{"instances": [[1], [2]], "inputs": [[1]]}', 400,
     'JSON Value: {"instances":[[1],[2]],"inputs":[[1]]} Not formatted correctly expecting only '
     "one of 'inputs' or 'instances' keys to exist "),
    ("POST", ECHO, b'{"instances": []}', 400,
     "JSON Value: {\"instances\":[]} No values in 'instances' array"),
    ("POST", ECHO, b'{"signature_name": 7, "instances": [[1]]}', 400,
     'JSON Value: {"signature_name":7,"instances":[[1]]} not formatted correctly. '
     "'signature_name' key must be a string value."),
    ("POST", ECHO, b'{"signature_name": "nope", "instances": [[1]]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", ECHO, b'{"examples": []}', 400, "Missing 'inputs' or 'instances' key"),
    # wrong shapes and dtypes
    ("POST", ECHO, b'{"instances": [1, 2]}', 400,
     'input "x" has shape [2] but signature "serving_default" expects [-1,-1] (-1: any size)'),
    ("POST", ECHO, b'{"instances": [[1, 2], [3]]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
     "tensor size: 2 but got: 1"),
    ("POST", ECHO, b'{"instances": [["a", "b"]]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     '"a" Type: String is not of expected type: float'),
    ("POST", MULTI, b'{"instances": [{"x": [1, 2, 3], "k": 1.5}]}', 400,
     "Failed to process element: 0 key: k of 'instances' list. Error: INVALID_ARGUMENT: JSON "
     "Value: 1.5 Type: Number is not of expected type: int32"),
    ("POST", MULTI, b'{"inputs": {"x": [[1, 2]], "k": [1]}}', 400,
     'input "x" has shape [1, 2] but signature "serving_default" expects [-1,3] (-1: any size)'),
    ("POST", ECHO, b'{"signature_name": "half", "instances": [1.5]}', 501,
     "Conversion of JSON Value: 1.5 to type: half"),
    # missing inputs
    ("POST", MULTI, b'{"inputs": {"x": [[1, 2, 3]]}}', 400,
     "Missing named input: k in 'inputs' object."),
    ("POST", MULTI, b'{"instances": [{"x": [1, 2, 3]}]}', 400,
     'Failed to process element: 0 of \'instances\' list. JSON object: {"x":[1,2,3]} must only '
     "have keys: k,x"),
    ("POST", MULTI, b'{"instances": [[1, 2, 3]]}', 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors "
     "required as per tensorinfo_map"),
    # unknown models, versions, labels
    ("POST", "/v1/models/nope:predict", b'{"instances": [1]}', 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/echo/versions/7:predict", b'{"instances": [[1]]}', 404,
     "Servable not found for request: Specific(echo, 7)"),
    ("POST", "/v1/models/echo/versions/3:predict", b'{"instances": [[1]]}', 404,
     "Servable not found for request: Specific(echo, 3)"),
    ("POST", "/v1/models/echo/labels/nope:predict", b'{"instances": [[1]]}', 404,
     "Unrecognized servable version label: nope (model echo)"),
    ("POST", "/v1/models/echo/labels/broken:predict", b'{"instances": [[1]]}', 503,
     "Servable not found for request: Specific(echo, 3): label 'broken' names a version that "
     "is not available"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/echo/versions/9", None, 404, "Could not find version 9 of model echo"),
    ("GET", "/v1/models/echo/labels/nope", None, 404,
     "Unrecognized servable version label: nope (model echo)"),
    ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
    # classify / regress on the wrong signature or without examples
    ("POST", "/v1/models/examples:classify", b'{"signature_name": "regress", "examples": [{}]}',
     400, "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/regress"),
    ("POST", "/v1/models/examples:regress", b'{"signature_name": "regress"}', 400,
     "When method is regress, key 'examples' is expected and was not found"),
    # bad routes and names
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/echo:predict", None, 400, "Malformed request: GET /v1/models/echo:predict"),
    ("PUT", "/v1/models/echo", b"{}", 400, "Malformed request: PUT /v1/models/echo"),
    ("POST", "/v1/models/echo", b"{}", 400, "Malformed request: POST /v1/models/echo"),
    ("POST", "/v1/models/echo:explain", b"{}", 400,
     "Malformed request: POST /v1/models/echo:explain"),
    ("GET", "/v1/models/echo/versions/99999999999999999999", None, 400,
     "Failed to convert version: 99999999999999999999 to numeric."),
    ("GET", "/v2/models/echo", None, 404,
     "Not found: GET /v2/models/echo. The REST API is under /v1/models/<name>"),
    ("GET", "/", None, 404, "Not found: GET /. The REST API is under /v1/models/<name>"),
    ("GET", "/v1/models/..%2F..%2Fetc", None, 400,
     "model name '../../etc' is not valid; expected letters, digits, '_', '.' or '-'"),
    ("POST", "/v1/models/%2E%2E:predict", b'{"instances": [1]}', 400,
     "model name '..' is not valid; expected letters, digits, '_', '.' or '-'"),
    ("POST", "/v1/models/echo/labels/..%2Fx:predict", b'{"instances": [[1]]}', 400,
     "version label '../x' is not valid; expected letters, digits, '_', '.' or '-'"),
]


@pytest.mark.parametrize("method, path, body, status, message", ERRORS,
                         ids=[f"{e[3]}-{e[0]}-{e[1]}" for e in ERRORS])
def test_error_codes_and_bodies(client, method, path, body, status, message):
    r = client.request(method, path, content=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()
    assert set(error) == {"error"}
    if message.endswith(": "):
        assert error["error"].startswith(message)
    else:
        assert error["error"] == message


def test_body_over_the_limit_is_413_and_not_read(client, server):
    big = b'{"instances": [' + b"1," * MAX_BODY_BYTES + b"1]}"
    r = client.post(ECHO, content=big)
    assert r.status_code == 413
    assert r.json()["error"] == (f"Request body of {len(big)} bytes exceeds the server's limit "
                                 f"of {MAX_BODY_BYTES} bytes (--max_body_bytes); send fewer "
                                 "instances per request")

    def chunks():  # no Content-Length: the limit holds on the stream itself
        yield b'{"instances": ['
        for _ in range(64):
            yield b"1," * (MAX_BODY_BYTES // 64)

    with httpx.Client(base_url=server.url, timeout=60) as fresh:
        r = fresh.post(ECHO, content=chunks())
    assert r.status_code == 413 and "exceeds the server's limit" in r.json()["error"]
    assert post(client, ECHO, {"instances": [[1]]}).json() == {"predictions": [[2.0]]}


def test_errors_leave_the_server_answering(client, server):
    assert server.proc.poll() is None
    assert post(client, "/v1/models/multi:predict",
                {"instances": [{"x": [1, 2, 3], "k": 3}]}).content == \
        b'{"predictions":[{"scaled":[3.0,6.0,9.0],"total":6.0}]}'
    assert client.get("/v1/ready").status_code == 200


# ------------------------------------------------------------------------------ monitoring


def test_readiness_and_prometheus_metrics(client):
    r = client.get("/v1/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})
    post(client, ECHO, {"instances": [[1]]})
    post(client, "/v1/models/echo/versions/7:predict", {"instances": [[1]]})
    r = client.get(MONITORING_PATH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="echo",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="echo",status="NOT_FOUND"}' in text
    assert 'entrypoint="REST"' in text and ":tensorflow:serving:request_latency_bucket" in text
    assert 'model_name="nope"' not in text  # unknown names do not grow the metrics


def test_prometheus_counts_move_by_exactly_the_requests_sent(client):
    from prometheus_text import delta, samples

    before = samples(client.get(MONITORING_PATH).text)
    for _ in range(5):
        assert post(client, ECHO, {"instances": [[1]]}).status_code == 200
    for _ in range(3):
        assert post(client, "/v1/models/echo/versions/7:predict",
                    {"instances": [[1]]}).status_code == 404
    for _ in range(2):
        assert post(client, ECHO, b"{not json").status_code == 400
    after = samples(client.get(MONITORING_PATH).text)
    count = ":tensorflow:serving:request_count"
    assert delta(before, after, count, model_name="echo", status="OK") == 5
    assert delta(before, after, count, model_name="echo", status="NOT_FOUND") == 3
    assert delta(before, after, count, model_name="echo", status="INVALID_ARGUMENT") == 2
    assert delta(before, after, ":tensorflow:serving:request_latency_count",
                 model_name="echo", API="predict", entrypoint="REST") == 10
    # The model itself ran for the five good requests only.
    assert delta(before, after, ":tensorflow:serving:runtime_latency_count",
                 model_name="echo", API="predict", runtime="TF2") == 5


def test_not_ready_is_503(tmp_path):
    empty = tmp_path / "ghost"
    empty.mkdir()
    registry = ModelRegistry([ModelSpec("ghost", str(empty))], poll_wait_seconds=0).start()
    try:
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=None, monitoring_path=None)
        with ThreadServer(app) as srv:
            r = httpx.get(srv.url + "/v1/ready")
            assert r.status_code == 503
            assert r.json() == {"error": "Not ready: no AVAILABLE version yet for model(s): ghost"}
            r = httpx.post(srv.url + "/v1/models/ghost:predict", content=b'{"instances": [1]}')
            assert (r.status_code, r.json()) == (
                404, {"error": "Servable not found for request: Latest(ghost)"})
            assert httpx.get(srv.url + MONITORING_PATH).status_code == 404
    finally:
        registry.close()


# ------------------------------------------------------------------------------ deadlines, queue


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """(base path of serve_models' affine model, ``spin`` steps that take ~0.8 s here)."""
    base = tmp_path_factory.mktemp("slow")
    write_affine(base / "1")
    registry = ModelRegistry([ModelSpec("slow", str(base))], poll_wait_seconds=0).start()
    try:
        servable = registry.get("slow")
        servable.predict("spin", {"steps": np.array([10], np.int32)})
        start = time.perf_counter()
        servable.predict("spin", {"steps": np.array([500], np.int32)})
        per_step = (time.perf_counter() - start) / 500
    finally:
        registry.close()
    return str(base), int(min(0.8 / per_step, 2_000_000))


def _wait_for(condition, timeout=30.0):
    """Polls ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return False


def spin(steps):
    return f'{{"signature_name": "spin", "instances": [{steps}]}}'.encode()


def test_deadline_is_504_and_the_server_goes_on(slow):
    base, steps = slow
    registry = ModelRegistry([ModelSpec("slow", base)], poll_wait_seconds=0).start()
    try:
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=200, monitoring_path=None)
        with ThreadServer(app) as srv:
            url = srv.url + "/v1/models/slow:predict"
            start = time.monotonic()
            r = httpx.post(url, content=spin(steps), timeout=30)
            answered = time.monotonic() - start
            # The same call without a deadline, measured now on this (shared) machine: the 504
            # came at the deadline, not when the model finished.
            start = time.monotonic()
            registry.get("slow").predict("spin", {"steps": np.array([steps], np.int32)})
            full = time.monotonic() - start
            assert r.status_code == 504 and 0.2 <= answered < full / 2, (answered, full)
            assert r.json() == {"error": "Request did not finish within its deadline of 200 ms "
                                         "(--rest_api_timeout_in_ms)"}
            r = httpx.post(url, content=spin(1), timeout=30)
            assert (r.status_code, r.content) == (200, b'{"predictions":[1]}')
    finally:
        registry.close()


def test_full_queue_is_429(slow):
    base, steps = slow
    batching = BatchingParameters(max_batch_size=1, num_batch_threads=1, max_enqueued_batches=1)
    registry = ModelRegistry([ModelSpec("slow", base)], poll_wait_seconds=0,
                             batching=batching).start()
    try:
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=None, monitoring_path=None)
        with ThreadServer(app) as srv:
            url = srv.url + "/v1/models/slow:predict"
            batcher = registry.batcher
            calls = batcher.batch_calls
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                # One request runs and one waits in the queue (its one batch); only then come
                # two more, which find the queue full. Events, not timing, order them: the second
                # is sent once the first is running, or both could find the first still queued.
                first = [pool.submit(httpx.post, url, content=spin(steps), timeout=60)]
                assert _wait_for(lambda: batcher.batch_calls > calls)
                first.append(pool.submit(httpx.post, url, content=spin(steps), timeout=60))
                assert _wait_for(lambda: batcher.pending == 1)
                late = [pool.submit(httpx.post, url, content=spin(steps), timeout=60)
                        for _ in range(2)]
                replies = [f.result() for f in first + late]
            codes = [r.status_code for r in replies]
            assert codes == [200, 200, 429, 429], codes
            full = next(r for r in replies if r.status_code == 429).json()["error"]
            assert full.startswith("The batch scheduling queue to which this task was submitted "
                                   "is full")
            assert httpx.post(url, content=spin(1), timeout=60).status_code == 200
    finally:
        registry.close()


# ------------------------------------------------------------------------------ the hot path


@pytest.fixture(scope="module")
def affine_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("affine_rest")
    write_affine(base / "1", scale=2.0, bias=1.0)
    return str(base)


def test_a_lone_request_does_not_wait_for_the_batch_timeout(affine_base):
    # TF Serving's batching makes a lone request wait batch_timeout_micros; tfprod does not.
    # A 30 s batch timeout: a request that waited it out could not pass a 10 s bound, which in
    # turn is far above any one request here, even on 2 shared cores.
    batching = BatchingParameters(max_batch_size=8, batch_timeout_micros=30_000_000,
                                  num_batch_threads=1)
    registry = ModelRegistry([ModelSpec("m", affine_base)], poll_wait_seconds=0,
                             batching=batching).start()
    try:
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=None, monitoring_path=None)
        with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            for x in (1.0, 2.0, 3.0):
                start = time.monotonic()
                r = c.post("/v1/models/m:predict", json={"instances": [[x, 0.0, -x]]})
                assert time.monotonic() - start < 10.0
                assert r.json() == {"predictions": [[2 * x + 1, 1.0, -2 * x + 1]]}
            # A request that fails before it is queued does not leave the batcher waiting.
            assert c.post("/v1/models/m:predict", content=b"{").status_code == 400
            assert c.post("/v1/models/m:predict", json={"instances": [[1, 2]]}).status_code == 400
            start = time.monotonic()
            assert c.post("/v1/models/m:predict", json={"instances": [[0, 0, 0]]}).json() == \
                {"predictions": [[1.0, 1.0, 1.0]]}
            assert time.monotonic() - start < 10.0
        assert registry.batcher._arriving == 0
    finally:
        registry.close()


def test_concurrent_rest_requests_are_merged_and_answered_each_their_own(affine_base):
    batching = BatchingParameters(max_batch_size=64, batch_timeout_micros=20_000,
                                  num_batch_threads=1)
    registry = ModelRegistry([ModelSpec("m", affine_base)], poll_wait_seconds=0,
                             batching=batching).start()
    try:
        runs = int(registry.get("m").predict("calls", {})["runs"])
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=None, monitoring_path=None)
        with ThreadServer(app) as srv:
            def one(i):
                return httpx.post(srv.url + "/v1/models/m:predict",
                                  json={"instances": [[i, i, i]]}, timeout=30).json()

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(one, range(48)))
        assert replies == [{"predictions": [[2.0 * i + 1] * 3]} for i in range(48)]
        calls = int(registry.get("m").predict("calls", {})["runs"]) - runs - 1
        assert calls < 48, "concurrent requests were never merged"
    finally:
        registry.close()


def test_the_app_is_plain_asgi_with_lifespan_and_a_bounded_route_cache(affine_base):
    import asyncio

    from tfprod.serve import rest

    registry = ModelRegistry([ModelSpec("m", affine_base)], poll_wait_seconds=0).start()
    try:
        app = make_rest_app(registry, max_body_bytes=1024, timeout_ms=None, monitoring_path=None)
        assert isinstance(app, rest.RestApi)
        sent = []

        async def lifespan():
            messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

            async def receive():
                return next(messages)

            async def send(message):
                sent.append(message["type"])

            await app({"type": "lifespan"}, receive, send)

        asyncio.run(lifespan())
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            for v in range(rest._ROUTE_CACHE + 5):          # distinct paths: all routed right
                r = c.post(f"/v1/models/m/labels/l{v}:predict", json={"instances": [[1, 2, 3]]})
                assert r.status_code == 404 and f"label: l{v}" in r.json()["error"]
            assert len(app._predict_routes) <= rest._ROUTE_CACHE
            assert c.post("/v1/models/%6D:predict", json={"instances": [[1, 2, 3]]}).json() == \
                {"predictions": [[3.0, 5.0, 7.0]]}                    # %6D is "m"
    finally:
        registry.close()
