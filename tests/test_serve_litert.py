"""The LiteRT runtime of tfprod serve: the same REST / gRPC answers as the SavedModel, a
``model.tflite`` beside or instead of it, version swaps, and TensorFlow for what does not
convert (with the one line that says so)."""

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from rest_serving import ThreadServer, free_port
from serve_models import publish
from tfprod.serve import litert
from tfprod.serve.config import (
    BatchingParameters,
    ConfigError,
    ModelSpec,
    parse_model_server_config,
)
from tfprod.serve.grpc_service import add_grpc_services
from tfprod.serve.metrics import ServingMetrics
from tfprod.serve.registry import ModelRegistry
from tfprod.serve.rest import make_rest_app
from tfprod.serve.server import ServerOptions

X = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 8.0]], np.float32)


class _Scaled(tf.Module):
    """Version ``k``: ``y = x * k + 0.5`` and ``n = 2 n``; a ``text`` signature (strings) and an
    ``odd`` one (igamma: not a LiteRT builtin)."""

    def __init__(self, k: float):
        super().__init__()
        self.k = tf.Variable(k)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int32, name="n")])
    def default(self, x, n):
        return {"y": x * self.k + 0.5, "n2": n * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
    def text(self, s):
        return {"length": tf.strings.length(s)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def odd(self, x):
        return {"y": tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 1.0)}


def _save_scaled(path, k: float, *, extra: bool = False) -> str:
    m = _Scaled(k)
    signatures = {"serving_default": m.default}
    if extra:
        signatures.update(text=m.text, odd=m.odd)
    tf.saved_model.save(m, str(path), signatures=signatures)
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("litert_store")
    for k in (1, 2):
        _save_scaled(root / f"v{k}", float(k))
    _save_scaled(root / "mixed", 3.0, extra=True)
    return root


@pytest.fixture(scope="module")
def digits_base(digits_cnn, tmp_path_factory):
    base = tmp_path_factory.mktemp("litert_digits")
    digits_cnn.model.export(str(base / "1"), format="tf_saved_model", verbose=False)
    return base


def _registry(*specs, **kw):
    kw.setdefault("poll_wait_seconds", 0)
    kw.setdefault("unload_grace_s", 0.0)
    kw.setdefault("metrics", ServingMetrics(process_metrics=False))
    return ModelRegistry(list(specs), **kw).start()


def test_litert_answers_equal_the_savedmodels_whole_and_batched(digits_cnn, digits_base):
    x = digits_cnn.x_test[:40]
    with _registry(ModelSpec("d", str(digits_base))) as tf_registry:
        reference = tf_registry.get("d")
        (name,) = reference.signature(None).inputs
        expected = reference.predict(None, {name: x})
    batching = BatchingParameters(max_batch_size=16, batch_timeout_micros=2000,
                                  num_batch_threads=1)
    with _registry(ModelSpec("d", str(digits_base)), runtime="litert",
                   batching=batching) as registry:
        s = registry.get("d")
        # model.export writes "serve" and "serving_default" (one function): both on LiteRT.
        assert s.runtimes == {"serve": "litert", "serving_default": "litert"}
        assert s.fallback == ""
        assert s.signature_defs == reference.signature_defs   # the same metadata
        whole = s.predict(None, {name: x})                    # one request of 40
        futures = [s.submit(None, {name: x[i:i + 3]}) for i in range(0, 40, 3)]
        parts = np.concatenate([next(iter(f.result(10).values())) for f in futures])
        key = next(iter(expected))
        np.testing.assert_allclose(whole[key], expected[key], atol=1e-5)
        np.testing.assert_allclose(parts, expected[key], atol=1e-5)
        runtime = registry.metrics.runtime_latency.get(("d", "predict", "LiteRT"))
        assert runtime is not None and runtime[-1] >= 2
        assert registry.metrics.wrapped_run_count.get(())[0] < 1 + len(futures)  # merged


def test_rest_row_and_columnar_and_grpc_through_litert(store, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(store / "v2", base / "1")
    with _registry(ModelSpec("m", str(base)), runtime="litert") as registry:
        assert registry.get("m").runtimes == {"serving_default": "litert"}
        app = make_rest_app(registry, max_body_bytes=1 << 20, timeout_ms=None,
                            monitoring_path=None)
        with ThreadServer(app) as srv:
            url = srv.url + "/v1/models/m:predict"
            rows = httpx.post(url, json={"instances": [{"x": X[0].tolist(), "n": 3},
                                                       {"x": X[1].tolist(), "n": -7}]})
            assert rows.status_code == 200, rows.text
            assert rows.json() == {"predictions": [
                {"n2": 6, "y": [2.5, 4.5, 6.5]}, {"n2": -14, "y": [-7.5, 1.5, 16.5]}]}
            columns = httpx.post(url, json={"inputs": {"x": X.tolist(), "n": [3, -7]}})
            assert columns.json() == {"outputs": {"n2": [6, -14],
                                                  "y": [[2.5, 4.5, 6.5], [-7.5, 1.5, 16.5]]}}
            bad = httpx.post(url, json={"instances": [{"x": [1.0, 2.0], "n": 3}]})
            assert bad.status_code == 400 and "expects [-1,3]" in bad.json()["error"]

        server = grpc.server(ThreadPoolExecutor(4))
        add_grpc_services(server, registry, reload_config=registry.reload_config)
        port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "m"
                request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
                request.inputs["n"].CopyFrom(tf.make_tensor_proto(np.array([3, -7], np.int32)))
                reply = stub.Predict(request, timeout=30)
        finally:
            server.stop(0)
        assert reply.model_spec.version.value == 1
        assert reply.model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["y"]), X * 2.0 + 0.5)
        assert tf.make_ndarray(reply.outputs["n2"]).tolist() == [6, -14]


def test_signatures_that_do_not_convert_run_on_tensorflow_and_are_named(store, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(store / "mixed", base / "1")
    events = []
    with _registry(ModelSpec("m", str(base)), runtime="litert", on_event=events.append) as r:
        s = r.get("m")
        assert s.runtimes == {"serving_default": "litert", "text": "tensorflow",
                              "odd": "tensorflow"}
        assert s.fallback == ("odd: ops not in LiteRT's builtin set: tf.Igamma; "
                              "text: string tensors")
        (note,) = [e for e in events if e.state == "LITERT_FALLBACK"]
        assert (note.model, note.version, note.message) == ("m", 1, s.fallback)
        assert s.predict("text", {"s": np.array([b"ab", b"xyz"])})["length"].tolist() == [2, 3]
        odd = s.predict("odd", {"x": X})["y"]
        np.testing.assert_allclose(odd, tf.math.igamma(np.abs(X) + 1, np.abs(X) + 1).numpy())
        np.testing.assert_allclose(s.predict(None, {"x": X, "n": np.array([1, 2])})["y"],
                                   X * 3.0 + 0.5)


def test_model_tflite_beside_the_savedmodel_is_served_as_it_is(digits_cnn, digits_base,
                                                               tmp_path, monkeypatch):
    from tfprod.export.litert import to_litert

    base = tmp_path / "d"
    shutil.copytree(digits_base / "1", base / "1")
    # tfprod optimize's file: one signature ("serve") with the Keras input's name.
    to_litert(digits_cnn.model, base / "1" / litert.TFLITE_FILE, "float32")

    def no_conversion(*args, **kwargs):
        raise AssertionError("the SavedModel was converted although model.tflite is there")

    monkeypatch.setattr(litert, "_convert_in_child", no_conversion)
    x = digits_cnn.x_test[:8]
    with _registry(ModelSpec("d", str(base), platform="litert")) as r:
        s = r.get("d")
        assert s.runtimes == {"serve": "litert", "serving_default": "litert"}
        (name,) = s.signature(None).inputs
        (out,) = s.signature(None).outputs
        np.testing.assert_allclose(s.predict(None, {name: x})[out],
                                   digits_cnn.model.predict(x, verbose=0), atol=1e-5)
    with _registry(ModelSpec("d", str(base))) as r:      # tensorflow: the file is ignored
        assert set(r.get("d").runtimes.values()) == {"tensorflow"}


def test_a_version_folder_with_only_model_tflite(digits_cnn, tmp_path):
    from tfprod.export.litert import to_litert

    to_litert(digits_cnn.model, tmp_path / "d" / "1" / litert.TFLITE_FILE, "float32")
    x = digits_cnn.x_test[:4]
    with _registry(ModelSpec("d", str(tmp_path / "d"))) as r:
        s = r.get("d")
        assert s.runtimes == {"serving_default": "litert"}
        sigdef = s.signature_defs["serving_default"]
        assert sigdef.method_name == "tensorflow/serving/predict"
        (name,) = sigdef.inputs
        assert [d.size for d in sigdef.inputs[name].tensor_shape.dim] == [-1, 32, 32, 1]
        (out,) = sigdef.outputs
        np.testing.assert_allclose(s.predict(None, {name: x})[out],
                                   digits_cnn.model.predict(x, verbose=0), atol=1e-5)


def test_a_failed_conversion_process_leaves_the_version_on_tensorflow(store, tmp_path,
                                                                      monkeypatch):
    def crashed(*args, **kwargs):
        raise RuntimeError("the LiteRT conversion process failed (exit -9): Killed")

    monkeypatch.setattr(litert, "_convert_in_child", crashed)
    base = tmp_path / "m"
    shutil.copytree(store / "v2", base / "1")
    with _registry(ModelSpec("m", str(base)), runtime="litert") as r:
        s = r.get("m")
        assert s.runtimes == {"serving_default": "tensorflow"}
        assert s.fallback == ("serving_default: the LiteRT conversion process failed (exit -9): "
                              "Killed")
        np.testing.assert_allclose(s.predict(None, {"x": X, "n": np.array([1, 2])})["y"],
                                   X * 2.0 + 0.5)


def test_version_swap_under_load_with_litert(store, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(store / "v1", base / "1")
    r = _registry(ModelSpec("m", str(base)), runtime="litert", poll_wait_seconds=0.05,
                  unload_grace_s=0.2)
    seen, failures, stop = set(), [], threading.Event()
    n = np.array([1, 1], np.int32)

    def client():
        while not stop.is_set():
            try:
                with r.acquire("m") as s:
                    y = s.predict(None, {"x": X, "n": n})["y"]
                    assert s.runtimes["serving_default"] == "litert"
                np.testing.assert_allclose(y, X * s.version + 0.5)   # the version that answered
                seen.add(s.version)
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                failures.append(repr(e))
            time.sleep(0.001)  # requests all along, leaving CPU to convert the new version

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        publish(store / "v2", base, 2)
        deadline = time.monotonic() + 120  # a new version is converted in a child process
        while {s.version: s.state for s in r.status("m")} != {2: "AVAILABLE", 1: "END"}:
            assert time.monotonic() < deadline, r.status("m")
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        r.close()
    assert failures == []
    assert seen == {1, 2}


def test_runtime_and_platform_are_checked():
    with pytest.raises(ConfigError, match="--runtime=pytorch; expected one of tensorflow, litert"):
        ServerOptions(model_base_path="/m", runtime="pytorch").check()
    text = ('model_config_list { config { name: "a" base_path: "/a" model_platform: "litert" } '
            'config { name: "b" base_path: "/b" } }')
    assert [s.platform for s in parse_model_server_config(text)] == ["litert", ""]
    with pytest.raises(ConfigError, match="model_platform 'onnx'"):
        parse_model_server_config('model_config_list { config { name: "a" base_path: "/a" '
                                  'model_platform: "onnx" } }')


def test_reason_names_the_ops_that_do_not_convert():
    error = RuntimeError("loc(...): error: 'tf.Igamma' op is neither a custom op nor a flex op\n"
                         "tf.entry_function = {inputs = \"x\"}\n'tf.Betainc' op ...")
    assert litert.reason(error) == "ops not in LiteRT's builtin set: tf.Betainc, tf.Igamma"
    assert litert.reason(ValueError("\nsomething broke\nmore")) == "ValueError: something broke"


def test_tfprod_serve_runtime_litert_end_to_end(store, tmp_path):
    from tfprod.serve import ServerProcess

    base = tmp_path / "m"
    shutil.copytree(store / "mixed", base / "1")
    log = tmp_path / "serve.log"
    with ServerProcess("m", base, log=log, flags=["--runtime=litert"]) as server:
        reply = httpx.post(f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict",
                           json={"inputs": {"x": X.tolist(), "n": [1, 2]}}, timeout=30)
    assert reply.status_code == 200 and reply.json()["outputs"]["n2"] == [2, 4]
    text = log.read_text()
    assert "LiteRT for serving_default" in text
    lines = [ln for ln in text.splitlines() if "LiteRT runtime not used" in ln]
    assert len(lines) == 1 and "tf.Igamma" in lines[0] and "string tensors" in lines[0]
    assert os.path.exists(base / "1" / "saved_model.pb")
