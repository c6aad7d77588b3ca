"""tfprod serve with a request log: ids, exact records, feedback, drift in the background
(endpoint + Prometheus gauges), tfprod monitor report, SIGKILL bounds, bad stores."""

import json
import os
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest

from rest_serving import TFPROD
from tfprod.monitor.store import open_store
from tfprod.serve.process import ServerProcess
from waiting import wait_until

METRICS = "/monitoring/prometheus/metrics"


def _data(rng, n, shift=0.0):
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    x[:, 0] += shift
    return x, y


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 4 -> 16 -> 3 classifier exported with a reference sample and an embedding endpoint;
    the Keras model beside the base path (``tiny.keras``)."""
    import keras

    from tfprod.export import export_saved_model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = _data(rng, 3000)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    embed = keras.Model(inputs, hidden)
    base = tmp_path_factory.mktemp("tiny") / "tiny"
    export_saved_model(model, base, reference_data=(x, y), warmup=1,
                       extra_endpoints={"embedding": embed})
    model.save(base.parent / "tiny.keras")
    return base


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS}" }}')
    log = root / "requests.db"
    flags = [f"--request_log={log}", "--monitoring_interval_seconds=1",
             f"--monitoring_config_file={root / 'monitoring.config'}",
             "--file_system_poll_wait_seconds=0"]
    with ServerProcess("tiny", tiny_base, log=root / "serve.log", flags=flags) as server, \
            httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}", timeout=30) as client:
        yield client, log, server


def _predict(client, x, rid=None):
    headers = {"X-Request-Id": rid} if rid else {}
    r = client.post("/v1/models/tiny:predict", json={"instances": x.tolist()}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def _wait_for(fn, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_requests_are_logged_exactly_with_their_ids(served):
    client, log, _ = served
    rng = np.random.default_rng(1)
    x, _ = _data(rng, 3)
    r = _predict(client, x, rid="client-id-1")
    assert r.headers["x-request-id"] == "client-id-1"
    generated = _predict(client, x[:1]).headers["x-request-id"]
    assert generated and generated != "client-id-1"
    store = open_store(str(log), create=False)
    records = _wait_for(lambda: {r.request_id: r for r in store.read("tiny")}
                        if len(store.known_ids("tiny", ["client-id-1", generated])) == 2 else None)
    logged = records["client-id-1"]
    assert logged.version == 1 and logged.signature == "serving_default"
    assert np.array_equal(logged.inputs["x"], x)
    assert np.allclose(logged.outputs["probabilities"], r.json()["predictions"], atol=1e-6)
    assert logged.latency_ms > 0


def test_grpc_predicts_are_logged_with_the_metadata_id(served):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfprod.serve.tensors import from_ndarray

    _, log, server = served
    x, _ = _data(np.random.default_rng(11), 2)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    from_ndarray(x, request.inputs["x"])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _, call = stub.Predict.with_call(request, metadata=(("x-request-id", "grpc-1"),),
                                         timeout=30)
        assert dict(call.trailing_metadata())["x-request-id"] == "grpc-1"
    store = open_store(str(log), create=False)
    logged = _wait_for(lambda: [r for r in store.read("tiny") if r.request_id == "grpc-1"])
    assert np.array_equal(logged[0].inputs["x"], x) and logged[0].version == 1


def test_feedback_joins_labels_and_rejects_bad_ones_in_one_line(served):
    client, log, _ = served
    rng = np.random.default_rng(2)
    x, y = _data(rng, 1)
    _predict(client, x, rid="fb-1")
    url = "/v1/models/tiny:feedback"
    ok = client.post(url, json={"feedback": [{"request_id": "fb-1", "label": int(y[0])}]})
    assert ok.status_code == 200 and ok.json() == {"accepted": 1}
    store = open_store(str(log), create=False)
    assert [r.label for r in store.read("tiny") if r.request_id == "fb-1"] == [int(y[0])]
    cases = [
        ({"feedback": [{"request_id": "never-sent", "label": 1}]}, 404, "unknown request id"),
        ({"feedback": [{"request_id": "fb-1", "label": "seven"}]}, 400, "not a class index"),
        ({"feedback": [{"request_id": "fb-1", "label": 9}]}, 400, "integer labels 0..2"),
        ({"feedback": [{"request_id": "fb-1", "label": {"a": 1}}]}, 400, "has type dict"),
        ({"labels": []}, 400, 'no "feedback" list'),
    ]
    for body, status, message in cases:
        r = client.post(url, json=body)
        assert r.status_code == status and message in r.json()["error"], r.text
        assert "\n" not in r.json()["error"]
    r = client.post(url, content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert [r.label for r in store.read("tiny") if r.request_id == "fb-1"] == [int(y[0])]
    assert client.get("/v1/models/nope/monitor").status_code == 404


def test_drift_in_the_background_endpoint_and_gauges(served):
    client, _, _ = served
    rng = np.random.default_rng(3)
    x, _ = _data(rng, 400)
    for i in range(0, 400, 50):
        _predict(client, x[i:i + 50])

    last = {}

    def computed(drifted):
        doc = last["doc"] = client.get("/v1/models/tiny/monitor").json()
        if doc["status"] == "ok" and doc["window_rows"] >= 400 and \
                doc["report"]["current_rows"] == doc["window_rows"] and \
                doc["report"]["dataset_drift"] == drifted:
            return doc
        return None

    try:
        clean = _wait_for(lambda: computed(False))
    except AssertionError:
        raise AssertionError(str(last.get("doc"))[:3000]) from None
    assert clean["report"]["multivariate"]["test"] == "mmd"  # on the model's embeddings
    shifted, _ = _data(rng, 2000, shift=1.5)
    for i in range(0, 2000, 100):
        _predict(client, shifted[i:i + 100])
    doc = _wait_for(lambda: computed(True))
    report = doc["report"]
    assert "x[0]" in report["drifted"] and "x[1]" not in report["drifted"]
    assert report["prediction_drift"]
    text = client.get(METRICS).text
    assert ':tfprod:drift:dataset{model="tiny"} 1.0' in text
    assert ':tfprod:drift:score{feature="x[0]",model="tiny"}' in text
    assert ":tfprod:request_log:dropped{" in text and ":tfprod:request_log:written{" in text


def test_monitor_report_reads_the_log(served, tiny_base, tmp_path):
    _, log, _ = served
    out = subprocess.run([TFPROD, "monitor", "report", f"--model_base_path={tiny_base}",
                          f"--log={log}", "--since=1h", "--json", str(tmp_path / "r.json"),
                          "--html", str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 1, out.stderr  # the shifted requests of the test above
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["dataset_drift"] and "x[0]" in doc["drifted"]
    assert doc["performance"]["labeled"] >= 1  # the feedback label joined
    assert "estimated_accuracy" in doc["performance"]
    empty = subprocess.run([TFPROD, "monitor", "report", f"--model_base_path={tiny_base}",
                            f"--log={log}", "--model_name=other"], capture_output=True,
                           text=True, timeout=120)
    assert empty.returncode == 2 and "no logged requests of model 'other'" in empty.stderr


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_sigkill_loses_nothing_the_writer_process_was_handed(tiny_base, tmp_path):
    """After a SIGKILL of the server its writer process commits what the pipe holds and ends:
    everything not dropped (and counted) while the server lived is in the log."""
    log = tmp_path / "killed.db"
    server = ServerProcess("tiny", tiny_base, log=tmp_path / "serve.log", flags=[
        f"--request_log={log}", "--request_log_buffer=1000", "--monitoring_interval_seconds=0",
        "--file_system_poll_wait_seconds=0"]).start()
    try:
        x, _ = _data(np.random.default_rng(4), 1)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}") as client:
            for i in range(300):
                _predict(client, x, rid=f"k{i}")
            stats = client.get("/v1/models/tiny/monitor").json()["request_log"]
        time.sleep(0.12)  # past the pump interval (50 ms), inside the flush interval (0.2 s)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        assert stats["writer_pid"] not in (None, server.proc.pid)
        wait_until(lambda: not _running(stats["writer_pid"]), timeout=40,
                   what="the writer process to commit and end")
    finally:
        server.stop()
    store = open_store(str(log), create=False)
    logged = store.count()
    assert stats["dropped"] == 0 and logged == 300
    print(f"committed when killed: {stats['written']}; after: {logged}")
    assert all(r.inputs["x"].shape == (1, 4) for r in store.read(limit=50))


@pytest.mark.parametrize("url,message", [
    ("postgresql://u:pw@127.0.0.1:1/db", "cannot connect"),
    ("corrupt", "corrupt or foreign file"),
])
def test_an_unusable_log_stops_the_server_with_one_line(tiny_base, tmp_path, url, message):
    if url == "corrupt":
        url = str(tmp_path / "corrupt.db")
        (tmp_path / "corrupt.db").write_bytes(b"garbage" * 200)
    out = subprocess.run([TFPROD, "serve", "--model_name=tiny", f"--model_base_path={tiny_base}",
                          "--port=0", "--rest_api_port=0", f"--request_log={url}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "pw" not in errors[0]


def test_logging_config_in_models_config():
    from tfprod.serve.config import ConfigError, parse_model_server_config

    text = ('model_config_list { config { name: "d" base_path: "/m" logging_config { '
            'log_collector_config { type: "%s" filename_prefix: "%s" } '
            'sampling_config { sampling_rate: %s } } } }')
    (spec,) = parse_model_server_config(text % ("sqlite", "/logs/d.db", "0.25"))
    assert spec.logging.url == "/logs/d.db" and spec.logging.sampling_rate == 0.25
    with pytest.raises(ConfigError, match="type 'kafka'"):
        parse_model_server_config(text % ("kafka", "x", "1"))
    with pytest.raises(ConfigError, match="sampling_rate 1.5"):
        parse_model_server_config(text % ("", "/x.db", "1.5"))


def test_feedback_and_monitor_routes_fuzzed_from_the_openapi_document(served):
    """schemathesis on the two routes that need a request log (the other routes are fuzzed in
    test_serve_openapi.py): no 5xx, answers as documented, the server keeps serving."""
    import pathlib

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

    client, _, server = served
    base_url = f"http://127.0.0.1:{server.rest_port}"
    doc = json.loads((pathlib.Path(__file__).parents[1] / "docs" / "openapi.json").read_text())
    schema = schemathesis.openapi.from_dict(doc).include(
        operation_id=["feedback", "monitor"])
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    _predict(client, _data(np.random.default_rng(5), 1)[0], rid="fuzz-1")
    known = client.post("/v1/models/tiny:feedback",
                        json={"feedback": [{"request_id": "fuzz-1", "label": 1}]})
    assert known.status_code == 200, known.text
    named = schema.as_strategy(GenerationMode.POSITIVE, path_parameters={"model_name": "tiny"})
    cases = st.one_of(named, schema.as_strategy(GenerationMode.NEGATIVE,
                                                path_parameters={"model_name": "tiny"}),
                      schema.as_strategy(GenerationMode.POSITIVE))
    statuses: dict[int, int] = {}
    start = time.monotonic()

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        if time.monotonic() - start > 30:
            return
        r = case.call_and_validate(base_url=base_url, checks=checks, timeout=30)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    fuzz()
    assert sum(statuses.values()) >= 50 and {200, 400, 404} <= set(statuses), statuses
    assert server.proc.poll() is None
    assert client.get("/v1/ready").status_code == 200


def test_monitor_skew_runs_the_same_examples_through_both_paths(tiny_base, tmp_path):
    """Logged requests vs the training pipeline (the .keras model) on the same inputs: a log
    whose outputs came from a server scaling its inputs differently is skew, an honest one is
    not; the features of both logs are compared with the export's reference sample."""
    import keras

    from tfprod.monitor.records import LogRecord
    from tfprod.monitor.store import SqliteStore

    net = keras.saving.load_model(tiny_base.parent / "tiny.keras")
    x, _ = _data(np.random.default_rng(5), 2000)
    for name, served in [("honest", x), ("skewed", x * 0.5)]:
        store = SqliteStore(str(tmp_path / f"{name}.db"))
        out = net.predict(served, verbose=0)
        store.write([LogRecord(f"{name}{i}", 1.0 + i, "tiny", 1, "serving_default",
                               {"x": x[i:i + 100]}, {"probabilities": out[i:i + 100]}, 1.0)
                     for i in range(0, len(x), 100)])
        store.close()
    runs = {name: subprocess.run(
        [TFPROD, "monitor", "skew", str(tiny_base), str(tmp_path / f"{name}.db"), "--keras",
         str(tiny_base.parent / "tiny.keras"), "--json", str(tmp_path / f"{name}.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
        for name in ("honest", "skewed")}
    assert runs["honest"].returncode == 0, runs["honest"].stdout + runs["honest"].stderr
    honest = json.loads((tmp_path / "honest.json").read_text())
    assert honest["serving_rows"] == 2000 and not honest["skewed"]
    assert honest["predictions"]["probabilities"]["max_abs_diff"] < 1e-4
    assert honest["predictions"]["probabilities"]["class_flips"] == 0
    assert runs["skewed"].returncode == 1, runs["skewed"].stderr
    skewed = json.loads((tmp_path / "skewed.json").read_text())
    expected_flips = np.mean(net.predict(x, verbose=0).argmax(1)
                             != net.predict(x * 0.5, verbose=0).argmax(1))
    assert skewed["predictions"]["probabilities"]["skew"] and not skewed["skewed"]
    assert skewed["predictions"]["probabilities"]["class_flips"] == pytest.approx(expected_flips)
    assert "served vs training pipeline" in runs["skewed"].stdout


def test_export_keeps_the_reference_embeddings_and_drift_uses_them(tiny_base, tmp_path):
    """The sample's embeddings are the model's penultimate layer on the sampled rows, written
    at export; drift reads them instead of recomputing (planted: a copy whose stored
    embeddings are moved is found as joint drift against unchanged data)."""
    import shutil

    import keras

    from tfprod.monitor import Dataset, detect_drift, load_dataset
    from tfprod.monitor.model import ExportedModel, penultimate, with_model_outputs

    version = tiny_base / "1"
    ref = load_dataset(version)
    net = keras.saving.load_model(tiny_base.parent / "tiny.keras")
    hidden = penultimate(net)
    assert hidden.output.shape == (None, 16) and ref.embeddings.shape == (ref.rows, 16)
    np.testing.assert_allclose(ref.embeddings, hidden.predict(ref.features["x"], verbose=0),
                               rtol=1e-5, atol=1e-5)
    moved = tmp_path / "moved" / "1"
    shutil.copytree(version, moved)
    sample = moved / "assets.extra" / "tfprod" / "reference_sample.npz"
    with np.load(sample) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["embeddings"] = arrays["embeddings"] + 3.0
    np.savez_compressed(sample, **arrays)
    x, _ = _data(np.random.default_rng(6), 400)
    reports = {}
    for name, folder in (("stored", version), ("moved", moved)):
        reference, current = load_dataset(folder), Dataset({"x": x})
        with_model_outputs(ExportedModel(str(folder)), reference, current)
        reports[name] = detect_drift(reference, current)
    assert reports["stored"].multivariate["test"] == "mmd"
    assert not reports["stored"].multivariate["drift"]
    assert reports["moved"].multivariate["drift"]  # the stored, moved embeddings were used


def test_penultimate_finds_the_head_input_past_weightless_layers():
    import keras

    from tfprod.data.task import infer_task
    from tfprod.errors import TfprodError
    from tfprod.export.embedding import has_image_input
    from tfprod.export.embedding import penultimate as find
    from tfprod.models import small_cnn
    from tfprod.monitor.model import penultimate

    task = infer_task(np.array([0, 1, 2, 1]))
    cnn = small_cnn((8, 8, 1), task=task, dense=12)  # Dense(12) -> class_scores -> Target
    assert penultimate(cnn).output.shape == (None, 12) and has_image_input(cnn)
    inputs = keras.Input((4,))
    two = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    assert find(two) is None and not has_image_input(two)
    with pytest.raises(TfprodError, match="no penultimate"):
        penultimate(two)
