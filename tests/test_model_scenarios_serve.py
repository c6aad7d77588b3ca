"""The model-building scenarios through a real `tfprod serve` process (REST and gRPC): the
recommender's two signatures, the sequence classifier with variable-length lists, the three
Keras styles, and a 400 (never a 5xx) with one clear line for each kind of bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.data.interactions import synthetic_interactions
from tfprod.export import export_saved_model
from tfprod.export.ragged import RaggedInput
from tfprod.export.recommender import export_recommender
from tfprod.models import Recommender, train_recommender
from tfprod.models.sequence import sequence_classifier
from tfprod.models.styles import INPUT_SHAPE, STYLES, build_style, share_weights
from tfprod.serve.client import RestClient
from tfprod.train.cluster import free_ports

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"
DIGITS = np.random.default_rng(0).uniform(0, 16, (5, *INPUT_SHAPE)).astype("float32")
MAX_LENGTH = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Six exported models in one `tfprod serve --enable_batching` (stopped by PID)."""
    root = tmp_path_factory.mktemp("scenarios")
    keras.utils.set_random_seed(0)
    data = synthetic_interactions(300, 150, per_user=10, seed=0)
    train, _ = data.split(0.2, cold_users=0.05, seed=0)
    rec = train_recommender(train, epochs=2, batch_size=128, dim=8)
    export_recommender(rec, root / "rec", k=5)
    strict = Recommender(300, 150, 8, oov="error")
    strict.set_training_counts(train)
    export_recommender(strict, root / "strict", k=5)
    seq = sequence_classifier(50, 4, units=4)
    export_saved_model(seq, root / "seq", ragged_inputs={"tokens": RaggedInput(
        max_length=MAX_LENGTH)})
    styles = {s: build_style(s, compile=False) for s in STYLES}
    share_weights(styles["functional"], styles["sequential"], styles["subclassed"])
    for style, model in styles.items():
        export_saved_model(model, root / style, reference_data=DIGITS)
    names = ["rec", "strict", "seq", *STYLES]
    config = root / "models.config"
    config.write_text("model_config_list {" + "".join(
        f' config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }}'
        for n in names) + " }")
    rest, grpc_port = free_ports(2)
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([TFPROD, "serve", f"--model_config_file={config}",
                             f"--port={grpc_port}", f"--rest_api_port={rest}",
                             "--rest_api_host=127.0.0.1", "--grpc_host=127.0.0.1",
                             "--enable_batching"], stdout=log, stderr=subprocess.STDOUT)
    client = RestClient("127.0.0.1", rest, timeout=60)
    try:
        client.wait_ready(120)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        yield {"client": client, "stub": prediction_service_pb2_grpc.PredictionServiceStub(
            channel), "rec": rec, "seq": seq, "styles": styles, "train": train, "proc": proc}
        channel.close()
    finally:
        client.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def _post(served, model, body):
    return served["client"]._request("POST", f"/v1/models/{model}:predict",
                                     json.dumps(body).encode())


def _grpc(served, model, signature, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = served["stub"].Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ------------------------------------------------------------------------------ recommender


def test_served_top_k_equals_the_models_through_rest_and_grpc(served):
    users, seen = [0, 4, 10**6, -1], [[1, 2, 3], [], [7], []]
    ids, scores = served["rec"].recommend(users, 5, seen=seen)
    status, body = _post(served, "rec", {"signature_name": "recommend", "instances": [
        {"user_id": u, "seen": s} for u, s in zip(users, seen, strict=True)]})
    assert status == 200, body
    assert [p["item_ids"] for p in body["predictions"]] == ids.tolist()
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]], scores, rtol=1e-5)
    status, body = _post(served, "rec", {"signature_name": "recommend",
                                         "inputs": {"user_id": users, "seen": seen}})
    assert status == 200 and body["outputs"]["item_ids"] == ids.tolist()
    out = _grpc(served, "rec", "recommend", {
        "user_id": np.array(users, np.int64), "seen.values": np.array([1, 2, 3, 7], np.int64),
        "seen.row_lengths": np.array([3, 0, 1, 0], np.int64)})
    np.testing.assert_array_equal(out["item_ids"], ids)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-6)


def test_pair_scores_through_rest_and_grpc_with_the_oov_row(served):
    users, items = np.array([0, 5, 10**7]), np.array([3, 10**9, 4])
    want = served["rec"].predict({"user_id": users, "item_id": items}, verbose=0)
    status, body = _post(served, "rec", {"instances": [
        {"user_id": int(u), "item_id": int(i)} for u, i in zip(users, items, strict=True)]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], want, rtol=1e-5)
    out = _grpc(served, "rec", "serving_default", {"user_id": users.astype(np.int64),
                                                   "item_id": items.astype(np.int64)})
    np.testing.assert_allclose(out["score"], want, rtol=1e-5)


# ------------------------------------------------------------------------------ sequences


def test_variable_length_lists_in_one_request_equal_keras(served):
    batch = [[3, 9, 4], [7], list(range(2, 2 + MAX_LENGTH))]
    want = np.concatenate([served["seq"](np.array([s], np.int32)).numpy() for s in batch])
    for body, key in (({"instances": [{"tokens": s} for s in batch]}, "predictions"),
                      ({"instances": batch}, "predictions"),
                      ({"inputs": {"tokens": batch}}, "outputs"),
                      ({"inputs": {"tokens.values": sum(batch, []),
                                   "tokens.row_lengths": [len(s) for s in batch]}}, "outputs")):
        status, out = _post(served, "seq", body)
        assert status == 200, out
        np.testing.assert_allclose(out[key], want, rtol=1e-5, atol=1e-6)
    got = _grpc(served, "seq", "serving_default", {
        "tokens.values": np.array(sum(batch, []), np.int32),
        "tokens.row_lengths": np.array([len(s) for s in batch], np.int64)})
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ styles


@pytest.mark.parametrize("style", STYLES)
def test_each_style_serves_the_same_answers(served, style):
    status, body = _post(served, style, {"instances": DIGITS.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"],
                               served["styles"]["functional"].predict(DIGITS, verbose=0),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("model,body,message", [
    ("strict", {"instances": [{"user_id": 5, "item_id": 3}, {"user_id": 9999, "item_id": 1}]},
     "user_id [9999] is outside the table [0, 300); this model was built with oov=error"),
    ("seq", {"instances": [{"tokens": [3, 4]}, {"tokens": []}]},
     "tokens: list 1 is empty (length 0)"),
    ("seq", {"instances": [{"tokens": list(range(2, 3 + MAX_LENGTH))}]},
     f"tokens: list 0 has {MAX_LENGTH + 1} values, more than the longest this model takes "
     f"({MAX_LENGTH}); truncate or split it"),
    ("seq", {"inputs": {"tokens": [[3]], "tokens.values": [3], "tokens.row_lengths": [1]}},
     "input 'tokens' was sent both as lists and as tokens.values"),
    ("rec", {"signature_name": "recommend", "inputs": {"user_id": [[1, 2], [3]],
                                                       "seen": [[], []]}},
     "input 'user_id' takes a dense tensor, but its lists have different lengths"),
    ("seq", {"inputs": {"tokens.values": [3, 4], "tokens.row_lengths": [3]}},
     "tokens.row_lengths sums to 3 but tokens.values has 2 values"),
    ("seq", {"instances": [{"tokens": [2**40]}]}, "is not of expected type: int32"),
])
def test_bad_input_is_a_400_with_one_clear_line(served, model, body, message):
    status, out = _post(served, model, body)
    assert status == 400, out
    assert message in out["error"] and "\n" not in out["error"]


def test_a_bad_request_in_a_busy_batch_fails_alone_and_the_server_lives(served):
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"instances": [{"tokens": [3, 4]}]} if i % 4 else
              {"instances": [{"tokens": []}]} for i in range(24)]
    # One connection per worker thread: an http.client connection is not safe to share, and
    # the pool runs any body on any of its threads.
    local, clients = threading.local(), []

    def send(body):
        if not hasattr(local, "client"):
            local.client = RestClient("127.0.0.1", served["client"].port, timeout=60)
            clients.append(local.client)
        return local.client._request("POST", "/v1/models/seq:predict",
                                     json.dumps(body).encode())[0]

    try:
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(send, bodies))
    finally:
        for c in clients:
            c.close()
    assert statuses == [400 if i % 4 == 0 else 200 for i in range(24)]
    assert served["proc"].poll() is None
    with pytest.raises(grpc.RpcError) as e:
        _grpc(served, "seq", "serving_default", {"tokens.values": np.array([3], np.int32),
                                                 "tokens.row_lengths": np.array([1, 0])})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens: list 1 is empty" in e.value.details()
