"""TF Serving's gRPC API, driven by the official tensorflow_serving.apis stubs against a real
grpc.server on a loopback port, with real SavedModels loaded by the model registry."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tfprod.serve.config import ModelSpec
from tfprod.serve.examples import example_from_json
from tfprod.serve.grpc_service import add_grpc_services
from tfprod.serve.registry import ModelRegistry

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
TIMEOUT = 30.0
W = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], np.float32)  # the tabular model's logits


# ------------------------------------------------------------------------------ models


class _Calc(tf.Module):
    """Version ``k``: scaled = x * k, total = sum(x) + n, count = n * k; text and big
    signatures."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int64, name="n")])
    def default(self, x, n):
        return {"scaled": x * float(self.k),
                "total": tf.reduce_sum(x, axis=1) + tf.cast(n, tf.float32),
                "count": n * self.k}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
    def text(self, s):
        return {"greeting": tf.strings.join([f"v{self.k}:", s]),
                "length": tf.strings.length(s)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def big(self, x):
        return {"total": tf.reduce_sum(x, axis=1)}


    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="steps")])
    def spin(self, steps):
        """Busy for max(steps) loop iterations: a slow request."""
        _, total = tf.while_loop(lambda i, t: i < tf.reduce_max(steps),
                                 lambda i, t: (i + 1, t * 0.5 + 1.0), (0, tf.constant(0.0)))
        return {"steps": steps + tf.cast(total * 0.0, tf.int32)}


def _save_calc(base: str, k: int) -> None:
    module = _Calc(k)
    tf.saved_model.save(module, os.path.join(base, str(k)), signatures={
        "serving_default": module.default, "text": module.text, "big": module.big,
        "spin": module.spin})


def _save_tabular(path: str) -> None:
    """A TF1-style SavedModel with classify and regress signatures (the only way to set those
    method names: TF2's tf.saved_model.save always writes tensorflow/serving/predict)."""
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as sess:
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        scores = tf.nn.softmax(tf.matmul(x, tf.constant(W)))
        classes = tf.tile(tf.constant([["a", "b", "c"]]), [tf.shape(x)[0], 1])
        total = tf.reduce_sum(x, axis=1)
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, [tf.saved_model.SERVING], signature_def_map={
            "serving_default": v1.saved_model.classification_signature_def(
                serialized, classes, scores),
            "scores_only": v1.saved_model.classification_signature_def(serialized, None, scores),
            "regress": v1.saved_model.regression_signature_def(serialized, total),
        })
        builder.save()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc_models")
    calc = str(root / "calc")
    for k in (1, 2):
        _save_calc(calc, k)
    tabular = str(root / "tabular")
    _save_tabular(os.path.join(tabular, "1"))
    return {"calc": calc, "tabular": tabular}


def _specs(bases, *extra):
    return [ModelSpec("calc", bases["calc"], ("all",), {"stable": 1, "canary": 2}),
            ModelSpec("tabular", bases["tabular"]), *extra]


@pytest.fixture(scope="module")
def server(bases):
    """A grpc.server with the services on a free loopback port; yields the registry and stubs."""
    registry = ModelRegistry(_specs(bases), poll_wait_seconds=0).start()

    def reload_config(specs):
        if any(s.name == "explode" for s in specs):
            raise RuntimeError("disk on fire")
        registry.reload_config(specs)

    srv = grpc.server(ThreadPoolExecutor(max_workers=8), options=UNLIMITED)
    add_grpc_services(srv, registry, reload_config=reload_config)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=UNLIMITED)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield {"registry": registry,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "model": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    srv.stop(0).wait(10)
    registry.close()


def _predict_request(model="calc", signature="", version=None, label=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.25]], np.float32)
N = np.array([10, 20], np.int64)


def _error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=TIMEOUT)
    return e.value


# ------------------------------------------------------------------------------ Predict


def test_predict_multi_input_multi_output_on_the_latest_version(server):
    response = server["predict"].Predict(_predict_request(x=X, n=N), timeout=TIMEOUT)
    assert response.model_spec.name == "calc"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert sorted(response.outputs) == ["count", "scaled", "total"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["scaled"]), X * 2)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["total"]),
                                  X.sum(axis=1) + N.astype(np.float32))
    assert tf.make_ndarray(response.outputs["count"]).tolist() == [20, 40]
    # Typed fields, as TF Serving answers: clients reading float_val / int64_val work.
    assert list(response.outputs["scaled"].float_val) == (X * 2).ravel().tolist()
    assert list(response.outputs["count"].int64_val) == [20, 40]
    assert response.outputs["count"].dtype == types_pb2.DT_INT64


def test_predict_routes_by_version_and_label(server):
    for kwargs, version in (({"version": 1}, 1), ({"version": 2}, 2), ({"label": "stable"}, 1),
                            ({"label": "canary"}, 2)):
        response = server["predict"].Predict(_predict_request(x=X, n=N, **kwargs),
                                             timeout=TIMEOUT)
        assert response.model_spec.version.value == version
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["scaled"]), X * version)


def test_predict_string_inputs_and_output_filter(server):
    s = np.array([b"ab", "é".encode(), b"\xff\x00"], dtype=object)
    request = _predict_request(signature="text", version=1, s=s)
    response = server["predict"].Predict(request, timeout=TIMEOUT)
    assert response.model_spec.signature_name == "text"
    assert list(response.outputs["greeting"].string_val) == [b"v1:ab", b"v1:" + "é".encode(),
                                                             b"v1:\xff\x00"]
    assert tf.make_ndarray(response.outputs["length"]).tolist() == [2, 2, 2]
    request.output_filter.append("length")
    response = server["predict"].Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["length"]


def test_predict_typed_field_inputs_broadcast_like_tensorflow(server):
    request = _predict_request(n=N)
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    for size in (2, 3):
        x.tensor_shape.dim.add().size = size
    x.float_val.append(1.5)  # one value fills the whole [2, 3] tensor
    response = server["predict"].Predict(request, timeout=TIMEOUT)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["scaled"]),
                                  np.full((2, 3), 3.0, np.float32))


def test_a_64_mib_request_is_accepted(server):
    x = np.ones((1, 2**24), np.float32)  # 64 MiB of tensor_content
    request = _predict_request(signature="big", x=x)
    assert request.ByteSize() > 64 * 2**20
    response = server["predict"].Predict(request, timeout=120)
    assert tf.make_ndarray(response.outputs["total"]).tolist() == [2.0**24]


@pytest.mark.parametrize("kwargs,inputs,code,message", [
    ({"model": "nope"}, {"x": X, "n": N}, grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ({"version": 7}, {"x": X, "n": N}, grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(calc, 7)"),
    ({"label": "beta"}, {"x": X, "n": N}, grpc.StatusCode.NOT_FOUND,
     "Unrecognized servable version label: beta"),
    ({"model": "../etc"}, {"x": X, "n": N}, grpc.StatusCode.INVALID_ARGUMENT,
     "model name '../etc' is not valid"),
    ({"signature": "nope"}, {"x": X, "n": N}, grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    ({}, {"x": X.astype(np.float64), "n": N}, grpc.StatusCode.INVALID_ARGUMENT,
     'input "x" has dtype DT_DOUBLE but signature "serving_default" expects DT_FLOAT'),
    ({}, {"x": X}, grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 1!=2 len({x}) != len({n,x}). Sent extra: {}. "
     "Missing but required: {n}."),
    ({}, {"x": X, "n": N, "z": N}, grpc.StatusCode.INVALID_ARGUMENT,
     "Sent extra: {z}."),
    ({}, {"x": X[:, :2], "n": N}, grpc.StatusCode.INVALID_ARGUMENT,
     'input "x" has shape [2, 2]'),
])
def test_predict_errors_have_tf_serving_codes(server, kwargs, inputs, code, message):
    error = _error(server["predict"].Predict, _predict_request(**kwargs, **inputs))
    assert error.code() == code
    assert message in error.details()


def test_output_filter_errors(server):
    request = _predict_request(x=X, n=N)
    request.output_filter.append("nope")
    error = _error(server["predict"].Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("output tensor alias not found in signature: nope Outputs "
                               "expected to be in the set {count,scaled,total}.")
    request.output_filter[:] = ["total", "total"]
    error = _error(server["predict"].Predict, request)
    assert error.details() == "duplicate output tensor alias: total"


def test_requests_are_counted_in_the_metrics(server):
    metrics = server["registry"].metrics
    before_ok = (metrics.request_count.get(("calc", "OK")) or [0])[0]
    before_bad = (metrics.request_count.get(("calc", "INVALID_ARGUMENT")) or [0])[0]
    server["predict"].Predict(_predict_request(x=X, n=N), timeout=TIMEOUT)
    _error(server["predict"].Predict, _predict_request(x=X))
    assert metrics.request_count.get(("calc", "OK"))[0] == before_ok + 1
    assert metrics.request_count.get(("calc", "INVALID_ARGUMENT"))[0] == before_bad + 1
    assert metrics.request_latency.get(("calc", "Predict", "GRPC"))[-1] >= 2


def test_concurrent_predictions_get_their_own_answers(server):
    def one(i):
        x = np.full((1, 3), float(i), np.float32)
        response = server["predict"].Predict(_predict_request(x=x, n=np.array([i])),
                                             timeout=TIMEOUT)
        return tf.make_ndarray(response.outputs["count"]).tolist()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(32))) == [[2 * i] for i in range(32)]


# ------------------------------------------------------------------------------ metadata


def _metadata(fields=("signature_def",), **route):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = route.get("model", "calc")
    if "version" in route:
        request.model_spec.version.value = route["version"]
    request.metadata_field.extend(fields)
    return request


def test_get_model_metadata_returns_the_signature_def_map(server):
    response = server["predict"].GetModelMetadata(_metadata(), timeout=TIMEOUT)
    assert response.model_spec.name == "calc" and response.model_spec.version.value == 2
    assert list(response.metadata) == ["signature_def"]
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert {"serving_default", "text", "big"} <= set(signature_map.signature_def)
    default = signature_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert default.outputs["count"].dtype == types_pb2.DT_INT64
    older = server["predict"].GetModelMetadata(_metadata(version=1), timeout=TIMEOUT)
    assert older.model_spec.version.value == 1


def test_get_model_metadata_of_classify_and_regress_signatures(server):
    response = server["predict"].GetModelMetadata(_metadata(model="tabular"),
                                                  timeout=TIMEOUT)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    sigs = signature_map.signature_def
    assert sigs["serving_default"].method_name == "tensorflow/serving/classify"
    assert sigs["regress"].method_name == "tensorflow/serving/regress"
    assert sorted(sigs["serving_default"].outputs) == ["classes", "scores"]


@pytest.mark.parametrize("fields,message", [
    ((), "GetModelMetadataRequest must specify at least one metadata_field"),
    (("signature_def", "graph"), "Metadata field graph is not supported"),
])
def test_get_model_metadata_errors(server, fields, message):
    error = _error(server["predict"].GetModelMetadata, _metadata(fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    error = _error(server["predict"].GetModelMetadata, _metadata(model="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND




# ------------------------------------------------------------------------------ classify, regress


def _examples_request(kind, signature="", rows=((1.0, 2.0), (0.5, -1.0)), context=None):
    request = (classification_pb2.ClassificationRequest() if kind == "classify"
               else regression_pb2.RegressionRequest())
    request.model_spec.name = "tabular"
    if signature:
        request.model_spec.signature_name = signature
    if context is not None:
        group = request.input.example_list_with_context
        group.context.CopyFrom(example_from_json(context))
    else:
        group = request.input.example_list
    for row in rows:
        group.examples.add().CopyFrom(example_from_json({"x": list(row)}))
    return request


def _softmax(rows):
    logits = np.asarray(rows, np.float32) @ W
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classify_returns_labels_and_scores(server):
    rows = ((1.0, 2.0), (0.5, -1.0))
    response = server["predict"].Classify(_examples_request("classify", rows=rows),
                                          timeout=TIMEOUT)
    assert response.model_spec.name == "tabular" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    got = response.result.classifications
    assert [[c.label for c in g.classes] for g in got] == [["a", "b", "c"]] * 2
    np.testing.assert_allclose([[c.score for c in g.classes] for g in got], _softmax(rows),
                               rtol=1e-6)


def test_classify_with_context_and_a_scores_only_signature(server):
    request = _examples_request("classify", "scores_only", rows=(), context={"x": [2.0, 1.0]})
    request.input.example_list_with_context.examples.add()  # an empty example: the context's x
    request.input.example_list_with_context.examples.add().CopyFrom(
        example_from_json({"x": [0.0, 3.0]}))
    response = server["predict"].Classify(request, timeout=TIMEOUT)
    got = response.result.classifications
    assert [c.label for c in got[0].classes] == ["", "", ""]
    np.testing.assert_allclose([[c.score for c in g.classes] for g in got],
                               _softmax([(2.0, 1.0), (0.0, 3.0)]), rtol=1e-6)


def test_regress_returns_one_value_per_example(server):
    rows = ((1.0, 2.0), (0.5, -1.0), (1e-3, 4.0))
    response = server["predict"].Regress(_examples_request("regress", "regress", rows=rows),
                                         timeout=TIMEOUT)
    assert response.model_spec.signature_name == "regress"
    assert [r.value for r in response.result.regressions] == [
        float(np.float32(a) + np.float32(b)) for a, b in rows]


def _multi(*tasks, rows=((1.0, 2.0), (0.5, -1.0))):
    """A MultiInferenceRequest: tasks of (model, signature, method) on the same examples."""
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    for row in rows:
        request.input.example_list.examples.add().CopyFrom(example_from_json({"x": list(row)}))
    return request


def test_multi_inference_classifies_and_regresses_in_one_call(server):
    rows = ((1.0, 2.0), (0.5, -1.0), (1e-3, 4.0))
    response = server["predict"].MultiInference(
        _multi(("tabular", "", "classify"), ("tabular", "regress", "regress"), rows=rows),
        timeout=TIMEOUT)
    classified, regressed = response.results
    assert (classified.model_spec.name, classified.model_spec.version.value,
            classified.model_spec.signature_name) == ("tabular", 1, "serving_default")
    assert regressed.model_spec.signature_name == "regress"
    # The same answers as one Classify and one Regress request.
    alone = server["predict"].Classify(_examples_request("classify", rows=rows), timeout=TIMEOUT)
    assert classified.classification_result == alone.result
    assert [[c.label for c in g.classes] for g in alone.result.classifications] == [
        ["a", "b", "c"]] * 3
    alone = server["predict"].Regress(_examples_request("regress", "regress", rows=rows),
                                      timeout=TIMEOUT)
    assert regressed.regression_result == alone.result
    assert [r.value for r in regressed.regression_result.regressions] == [
        float(np.float32(a) + np.float32(b)) for a, b in rows]


@pytest.mark.parametrize("tasks,code,message", [
    ((), "INVALID_ARGUMENT", "MultiInferenceRequest has no tasks"),
    ((("tabular", "", "classify"), ("other", "regress", "regress")), "INVALID_ARGUMENT",
     "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ((("", "", "classify"),), "INVALID_ARGUMENT", "Found ModelSpec with an empty model name."),
    ((("tabular", "", "classify"), ("tabular", "serving_default", "classify")),
     "INVALID_ARGUMENT", "Duplicate evaluation of signature: serving_default"),
    ((("tabular", "", "predict"),), "UNIMPLEMENTED",
     "Unsupported signature method_name: tensorflow/serving/predict"),
    ((("tabular", "nope", "classify"),), "INVALID_ARGUMENT",
     "Requested signature not found in model graph: nope"),
    ((("tabular", "regress", "classify"),), "INVALID_ARGUMENT",
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: "
     "tensorflow/serving/regress"),
    ((("nope", "", "classify"),), "NOT_FOUND", "nope"),
])
def test_multi_inference_errors(server, tasks, code, message):
    error = _error(server["predict"].MultiInference, _multi(*tasks))
    assert error.code() == getattr(grpc.StatusCode, code)
    assert message in error.details()


@pytest.mark.parametrize("call,request_args,message", [
    ("Classify", ("classify", "regress"), "Expected classification signature method_name to be "
                                          "tensorflow/serving/classify. Was: "
                                          "tensorflow/serving/regress"),
    ("Regress", ("regress", ""), "Expected regression signature method_name to be "
                                 "tensorflow/serving/regress. Was: tensorflow/serving/classify"),
    ("Classify", ("classify", "", ()), "Input is empty."),
    ("Classify", ("classify", "nope"), "No signature was found with the name: nope"),
    ("Regress", ("regress", "nope"), "No signature was found with the name: nope"),
])
def test_classify_and_regress_errors(server, call, request_args, message):
    error = _error(getattr(server["predict"], call), _examples_request(*request_args))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_classify_on_a_predict_signature_is_invalid_argument(server):
    request = _examples_request("classify")
    request.model_spec.name = "calc"
    error = _error(server["predict"].Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Was: tensorflow/serving/predict" in error.details()


# ------------------------------------------------------------------------------ ModelService


def _status(server, model="calc", version=None, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return server["model"].GetModelStatus(request, timeout=TIMEOUT)


def test_get_model_status_lists_versions_with_their_states(server):
    response = _status(server)
    assert [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status] == [(2, AVAILABLE, 0, ""),
                                                        (1, AVAILABLE, 0, "")]
    assert [s.version for s in _status(server, version=1).model_version_status] == [1]
    assert [s.version for s in _status(server, label="canary").model_version_status] == [2]


@pytest.mark.parametrize("kwargs,code,message", [
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope"),
    ({"version": 9}, grpc.StatusCode.NOT_FOUND, "Could not find version 9 of model calc"),
    ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request."),
])
def test_get_model_status_errors(server, kwargs, code, message):
    with pytest.raises(grpc.RpcError) as e:
        _status(server, **kwargs)
    assert e.value.code() == code and e.value.details() == message


def _reload_request(bases, *extra):
    """A ReloadConfigRequest for the module's models plus ``extra`` (name, base_path) pairs."""
    config = model_server_config_pb2.ModelServerConfig()
    models = config.model_config_list.config
    calc = models.add(name="calc", base_path=bases["calc"], model_platform="tensorflow")
    calc.model_version_policy.all.SetInParent()
    calc.version_labels["stable"] = 1
    calc.version_labels["canary"] = 2
    models.add(name="tabular", base_path=bases["tabular"], model_platform="tensorflow")
    for name, base_path in extra:
        models.add(name=name, base_path=base_path, model_platform="tensorflow")
    return model_management_pb2.ReloadConfigRequest(config=config)


def _wait(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_reload_config_adds_then_removes_a_model(server, bases):
    model = server["model"]
    response = model.HandleReloadConfigRequest(
        _reload_request(bases, ("extra", bases["calc"])), timeout=60)
    assert response.status.error_code == 0 and response.status.error_message == ""
    # Loaded before the reply: latest policy serves version 2 only.
    statuses = _status(server, "extra").model_version_status
    assert [(s.version, s.state) for s in statuses] == [(2, AVAILABLE)]
    answer = server["predict"].Predict(_predict_request("extra", x=X, n=N), timeout=TIMEOUT)
    assert answer.model_spec.name == "extra" and answer.model_spec.version.value == 2

    response = model.HandleReloadConfigRequest(_reload_request(bases), timeout=60)
    assert response.status.error_code == 0
    error = _error(server["predict"].Predict, _predict_request("extra", x=X, n=N))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    def gone():
        try:
            return all(s.state == END for s in _status(server, "extra").model_version_status)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.NOT_FOUND

    assert _wait(gone)
    # The models that stayed keep serving.
    assert _status(server).model_version_status[0].state == AVAILABLE


def test_reload_config_errors(server, bases):
    model = server["model"]
    error = _error(model.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in error.details()
    error = _error(model.HandleReloadConfigRequest,
                   _reload_request(bases, ("../up", bases["calc"])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model name '../up' is not valid" in error.details()
    # An unexpected failure is INTERNAL, and the server keeps answering.
    error = _error(model.HandleReloadConfigRequest,
                   _reload_request(bases, ("explode", bases["calc"])))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "RuntimeError: disk on fire"
    assert _status(server).model_version_status[0].state == AVAILABLE


def test_the_client_deadline_reaches_the_queue(server):
    """A request still queued when its gRPC deadline passes is dropped, not run: every request
    thread is busy with a slow request (~4 s here), so the next one waits past its 0.2 s
    deadline."""
    metrics, stub = server["registry"].metrics, server["predict"]
    before = (metrics.request_count.get(("calc", "DEADLINE_EXCEEDED")) or [0])[0]
    busy = server["registry"].batcher.params.num_batch_threads
    spin = _predict_request(signature="spin", steps=np.array([1_000_000], np.int32))
    with ThreadPoolExecutor(busy) as pool:
        slow = [pool.submit(stub.Predict, spin, timeout=120) for _ in range(busy)]
        time.sleep(0.3)
        error = _error(lambda r, timeout: stub.Predict(r, timeout=0.2), _predict_request(x=X, n=N))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(not f.done() for f in slow), "the slow requests ended too soon for this test"
        assert [tf.make_ndarray(f.result().outputs["steps"]).tolist() for f in slow] == [
            [1_000_000]] * busy
    assert _wait(lambda: (metrics.request_count.get(("calc", "DEADLINE_EXCEEDED")) or [0])[0]
                 == before + 1, timeout=10)


def test_a_lone_grpc_request_does_not_wait_for_the_batch_timeout(bases):
    from tfprod.serve.config import BatchingParameters

    # A 30 s batch timeout against a 10 s bound: see the REST test of the same name.
    batching = BatchingParameters(max_batch_size=8, batch_timeout_micros=30_000_000,
                                  num_batch_threads=1)
    registry = ModelRegistry(_specs(bases), poll_wait_seconds=0, batching=batching).start()
    srv = grpc.server(ThreadPoolExecutor(max_workers=4), options=UNLIMITED)
    add_grpc_services(srv, registry, reload_config=registry.reload_config)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(3):
                start = time.monotonic()
                reply = stub.Predict(_predict_request(x=X, n=N), timeout=60)
                assert time.monotonic() - start < 10.0
                np.testing.assert_allclose(tf.make_ndarray(reply.outputs["scaled"]), X * 2)
            bad = _error(lambda r, timeout: stub.Predict(r, timeout=timeout),
                         _predict_request(x=X))     # n missing: fails before it is queued
            assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
            start = time.monotonic()
            stub.Predict(_predict_request(x=X, n=N), timeout=60)
            assert time.monotonic() - start < 10.0
        assert registry.batcher._arriving == 0
    finally:
        srv.stop(0)
        registry.close()


# ------------------------------------------------------------------------------ `tfprod serve`


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_official_stubs_against_a_tfprod_serve_process(bases, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(text_format.MessageToString(_reload_request(bases).config))
    port = _free_port()
    tfprod = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([tfprod, "serve", f"--port={port}", "--rest_api_port=0",
                                 "--grpc_host=127.0.0.1", f"--model_config_file={config}",
                                 "--enable_batching"], stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=UNLIMITED)
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        model = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "tabular"

        def ready():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status = model.GetModelStatus(request, timeout=2)
            except grpc.RpcError:
                return False
            return status.model_version_status[0].state == AVAILABLE

        assert _wait(ready, timeout=90), (tmp_path / "serve.log").read_text()
        # Concurrent requests go through the dynamic batcher and get their own answers.
        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(lambda i: predict.Predict(_predict_request(
                x=np.full((1, 3), i, np.float32), n=np.array([i])), timeout=TIMEOUT), range(16))
            assert [tf.make_ndarray(a.outputs["count"]).tolist() for a in answers] == [
                [2 * i] for i in range(16)]
        response = predict.Classify(_examples_request("classify"), timeout=TIMEOUT)
        assert [c.label for c in response.result.classifications[0].classes] == ["a", "b", "c"]
        metadata = predict.GetModelMetadata(_metadata(version=1), timeout=TIMEOUT)
        assert metadata.model_spec.version.value == 1
        reload = _reload_request(bases)
        del reload.config.model_config_list.config[1]  # drop "tabular"
        assert model.HandleReloadConfigRequest(reload, timeout=60).status.error_code == 0
        error = _error(predict.Classify, _examples_request("classify"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
