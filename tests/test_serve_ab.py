"""A/B splits by fixed weights (--ab_weights) and the shadow copy on gRPC, on a real tfprod serve.

The served versions answer ``y = k * x`` (version k), so every answer says which version served
it. One server process serves model ``ab`` (labels a, b, c -> versions 1, 2, 3, split 20/30/50)
and model ``sh`` (stable 1, shadow 2, which is slow; version 3 fails every call).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.errors import TfprodError
from tfprod.serve.config import ConfigError, ModelSpec
from tfprod.serve.split import WeightedSplit, check_ab_weights, parse_ab_weights
from waiting import wait_until

METRICS = "/monitoring/prometheus/metrics"
WEIGHTS = {"a": 20.0, "b": 30.0, "c": 50.0}
VERSION = {"a": 1, "b": 2, "c": 3}
Z99 = 2.576
TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"


# ---------------------------------------------------------------------------- unit


@pytest.mark.parametrize("text, message", [
    ("a=50", "names 1 label; an A/B split needs two or more"),
    ("a=fifty,b=50", "weight 'fifty' of label 'a' is not a number"),
    ("a=-10,b=50", "weight -10 of label 'a'; expected a number >= 0"),
    ("a=0,b=0", "the weights of 'a=0,b=0' sum to 0"),
    ("a=1,a=2", "label 'a' is given twice"),
    ("a:50,b:50", "is not LABEL=WEIGHT"),
    ("m:a=1,b=1;m:a=1,b=3", "gives model 'm' twice"),
])
def test_bad_weights_are_one_line_each(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_ab_weights(text)
    assert "\n" not in str(info.value)


def test_weights_parse_per_model_and_for_every_model():
    assert parse_ab_weights("a=50, b=50") == {None: (("a", 50.0), ("b", 50.0))}
    assert parse_ab_weights("digits:a=90,b=10;ranker:x=1,y=3") == {
        "digits": (("a", 90.0), ("b", 10.0)), "ranker": (("x", 1.0), ("y", 3.0))}
    assert parse_ab_weights("") == {}


@pytest.mark.parametrize("weights, labels, canary, message", [
    ("a=1,z=1", {"a": 1, "b": 2}, 0, "no served model declares the version labels a, z"),
    ("ab:a=1,z=1", {"a": 1, "b": 2}, 0, "model 'ab' has no version label 'z' (it has: a, b)"),
    ("other:a=1,b=1", {"a": 1, "b": 2}, 0, "names model 'other', which is not served"),
    ("a=1,b=1", {"a": 1, "b": 1}, 0, "name versions [1, 1]; each arm needs its own version"),
    ("a=1,shadow=1", {"a": 1, "shadow": 2}, 0, "it cannot be an A/B arm"),
    ("a=1,b=1", {"a": 1, "b": 2, "stable": 1, "canary": 2}, 10,
     "has an A/B split (--ab_weights) and a canary"),
])
def test_a_split_that_does_not_fit_the_config_is_refused(weights, labels, canary, message):
    spec = ModelSpec("ab", "/models/ab", ("all",), labels)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_ab_weights(parse_ab_weights(weights), [spec], canary)


def test_a_canary_and_a_split_on_different_models_live_side_by_side():
    specs = [ModelSpec("ab", "/m/ab", ("all",), {"a": 1, "b": 2}),
             ModelSpec("digits", "/m/d", ("all",), {"stable": 1, "canary": 2})]
    check_ab_weights(parse_ab_weights("a=1,b=1"), specs, 10.0)


def test_shares_match_the_weights_and_keys_are_sticky():
    split = WeightedSplit.build([(arm, w, arm) for arm, w in WEIGHTS.items()])
    n = 20_000
    chosen = Counter(split.choose(f"user-{i}", random.Random())[1] for i in range(n))
    rng = random.Random(0)
    drawn = Counter(split.choose(None, rng)[1] for _ in range(n))
    for arm, w in WEIGHTS.items():
        p = w / 100
        bound = Z99 * math.sqrt(p * (1 - p) / n)
        assert abs(chosen[arm] / n - p) < bound, (arm, chosen)
        assert abs(drawn[arm] / n - p) < bound, (arm, drawn)
    assert all(split.choose(f"user-{i}", random.Random(i))[1] ==
               split.choose(f"user-{i}", random.Random())[1] for i in range(500))


def test_an_unavailable_arm_shares_out_its_weight():
    split = WeightedSplit.build([("a", 20, None), ("b", 30, "B"), ("c", 50, "C")])
    assert [label for label, _ in split.arms] == ["b", "c"]
    assert split.bounds == (3750.0, 10000.0)
    assert WeightedSplit.build([("a", 1, None), ("b", 0, "B")]) is None


# ---------------------------------------------------------------------------- models


class _Scale(tf.Module):
    """Version k: y = k * x; ``delay`` seconds of busy work per call; ``fail``: every call
    fails at run time."""

    def __init__(self, k: int, delay: float = 0.0, fail: bool = False):
        super().__init__()
        self.k, self.delay, self.fail = float(k), delay, fail

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        if self.delay:
            end = tf.timestamp() + self.delay
            n = tf.while_loop(lambda i: tf.timestamp() < end, lambda i: i + 1,
                              [tf.constant(0)])
            x = x + tf.cast(n, tf.float32) * 0.0
        if self.fail:
            tf.debugging.assert_greater(x, 1e9, message="this version always fails")
        return {"y": x * self.k}


def _save(base, k, **kwargs):
    module = _Scale(k, **kwargs)
    tf.saved_model.save(module, os.path.join(base, str(k)),
                        signatures={"serving_default": module.serve})


def _config(root, ab_labels, sh_labels):
    def model(name, labels):
        return (f'  config {{ name: "{name}" base_path: "{root / name}" '
                'model_platform: "tensorflow" model_version_policy { all {} } '
                + " ".join(f'version_labels {{ key: "{k}" value: {v} }}'
                           for k, v in labels.items()) + " }")
    return "model_config_list {\n" + model("ab", ab_labels) + "\n" + \
        model("sh", sh_labels) + "\n}\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    for k in (1, 2, 3):
        _save(root / "ab", k)
    _save(root / "sh", 1)
    _save(root / "sh", 2, delay=0.4)
    _save(root / "sh", 3, fail=True)
    (root / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS}" }}')
    (root / "models.config").write_text(_config(root, VERSION, {"stable": 1, "shadow": 2}))
    return root


@pytest.fixture(scope="module")
def served(root):
    from tfprod.serve.process import ServerProcess

    flags = [f"--model_config_file={root / 'models.config'}",
             "--model_config_file_poll_wait_seconds=0.2", "--file_system_poll_wait_seconds=0",
             f"--monitoring_config_file={root / 'monitoring.config'}",
             f"--request_log={root / 'requests.db'}", "--monitoring_interval_seconds=0",
             "--ab_weights=ab:a=20,b=30,c=50"]
    with ServerProcess("ab", None, log=root / "serve.log", flags=flags) as server, \
            httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}", timeout=30) as client:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        yield server, client, prediction_service_pb2_grpc.PredictionServiceStub(channel)
        channel.close()


def _rest(client, path="/v1/models/ab:predict", rid=None, body=None):
    headers = {"X-Request-Id": rid} if rid else {}
    r = client.post(path, json=body or {"instances": [[1.0]]}, headers=headers)
    assert r.status_code == 200, r.text
    return int(round(r.json()["predictions"][0][0]))  # the version that answered


def _grpc(stub, model, rid=None, version=None, timeout=30):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1), np.float32)))
    metadata = (("x-request-id", rid),) if rid else None
    response = stub.Predict(request, timeout=timeout, metadata=metadata)
    return int(round(tf.make_ndarray(response.outputs["y"])[0, 0])), response.model_spec


def _metric(client, name, **labels):
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in client.get(METRICS).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------- end to end


def test_ab_split_shares_stickiness_explicit_versions_and_per_arm_metrics(served, root):
    """2,000 requests with distinct ids land on a/b/c by 20/30/50 (binomial 99%); an id stays
    on its arm (REST and gRPC); explicit versions and labels are not split; the per-arm
    metrics and the rollout route count exactly the requests sent; the request log has the
    version that answered each request."""
    from tfprod.monitor.store import open_store

    _, client, stub = served
    n = 2000
    served_by = {f"user-{i}": _rest(client, rid=f"user-{i}") for i in range(n)}
    counts = Counter(served_by.values())
    for arm, w in WEIGHTS.items():
        p = w / 100
        assert abs(counts[VERSION[arm]] / n - p) < Z99 * math.sqrt(p * (1 - p) / n), counts
    # sticky: the same id again, over REST and over gRPC metadata, lands on the same version
    again = [f"user-{i}" for i in range(0, n, 20)]
    assert all(_rest(client, rid=rid) == served_by[rid] for rid in again)
    assert all(_grpc(stub, "ab", rid=rid)[0] == served_by[rid] for rid in again)
    # no id: drawn at random, still one of the arms (bound 4 sigma, 400 requests)
    free = Counter(_rest(client) for _ in range(400))
    assert set(free) <= {1, 2, 3}
    assert abs(free[3] / 400 - 0.5) < 4 * math.sqrt(0.25 / 400), free
    # explicit versions and labels bypass the split, and are not counted in it
    before = _metric(client, ":tfprod:rollout:requests", model_name="ab")
    assert {_rest(client, "/v1/models/ab/versions/1:predict", rid=f"user-{i}")
            for i in range(20)} == {1}
    assert {_rest(client, "/v1/models/ab/labels/c:predict", rid=f"user-{i}")
            for i in range(20)} == {3}
    assert {_grpc(stub, "ab", rid=f"user-{i}", version=2)[0] for i in range(20)} == {2}
    assert _metric(client, ":tfprod:rollout:requests", model_name="ab") == before
    # a bad request routed by the split is that arm's error
    bad = {f"user-{i}": served_by[f"user-{i}"] for i in range(5)}
    for rid in bad:
        r = client.post("/v1/models/ab:predict", json={"inputs": {"z": [[1.0]]}},
                        headers={"X-Request-Id": rid})
        assert r.status_code == 400
    sent = Counter(served_by.values()) + Counter([served_by[rid] for rid in again] * 2) + \
        free + Counter(bad.values())
    report = client.get("/v1/models/ab/rollout").json()
    assert report["split"] == "ab" and report["shadow"] is None
    assert [(a["arm"], a["version"], a["weight_percent"]) for a in report["arms"]] == [
        ("a", 1, 20.0), ("b", 2, 30.0), ("c", 3, 50.0)]
    for arm, version in VERSION.items():
        labels = {"model_name": "ab", "version": version, "arm": arm}
        assert _metric(client, ":tfprod:rollout:requests", **labels) == sent[version]
        assert _metric(client, ":tfprod:rollout:request_latency_count", **labels) == sent[version]
        errors = sum(1 for v in bad.values() if v == version)
        assert _metric(client, ":tfprod:rollout:errors", status="INVALID_ARGUMENT",
                       **labels) == errors
        assert _metric(client, ":tfprod:rollout:weight_percent", model_name="ab",
                       label=arm) == WEIGHTS[arm]
        row = next(a for a in report["arms"] if a["arm"] == arm)
        assert (row["requests"], row["errors"]) == (sent[version], errors)
        assert row["available"] and row["latency_ms_mean"] > 0
    # the log: every split request (ids 20.. were never sent with an explicit version) under
    # the version that answered it
    split_only = {f"user-{i}" for i in range(20, n)}
    records = len(split_only) + 2 * sum(1 for rid in again if rid in split_only)
    store = open_store(str(root / "requests.db"), create=False)
    try:
        logged = wait_until(lambda: (lambda got: got if len(got) == records else None)(
            [(r.request_id, r.version) for r in store.read("ab") if r.request_id in split_only]))
    finally:
        store.close()
    assert {rid: {v for i, v in logged if i == rid} for rid in split_only} == {
        rid: {served_by[rid]} for rid in split_only}


def test_online_status_shows_the_live_split_per_arm(served, root, tmp_path):
    """The CLI's report: ``tfprod online status BASE --server`` prints the weights table."""
    server, client, _ = served
    out = subprocess.run([TFPROD, "online", "status", str(root / "ab"), "--model_name", "ab",
                          "--server", f"127.0.0.1:{server.rest_port}", "--json",
                          str(tmp_path / "status.json")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr[-2000:]
    rollout = json.loads((tmp_path / "status.json").read_text())["rollout"]
    assert rollout == client.get("/v1/models/ab/rollout").json()
    assert "A/B split" in out.stdout
    for arm in rollout["arms"]:
        assert re.search(rf"{arm['arm']}\s.*{arm['version']}\s.*{arm['weight_percent']:.1f}"
                         rf"\s.*{arm['requests']}\s", out.stdout), out.stdout
    bad = subprocess.run([TFPROD, "online", "status", str(root / "ab"), "--server", "nowhere"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stdout + bad.stderr


def test_grpc_shadow_answers_are_logged_and_never_returned(served, root):
    """gRPC Predict of model sh: every reply is stable's (version 1), the slow shadow's
    answers reach the request log under the same ids after the replies; a failing shadow
    never affects a reply; REST shares the same shadow path."""
    from tfprod.monitor.store import open_store

    _, client, stub = served
    ids = [f"shadowed-{i}" for i in range(8)]
    started = time.perf_counter()
    for rid in ids:
        version, spec = _grpc(stub, "sh", rid=rid)
        assert version == 1 and spec.version.value == 1
    replies = time.perf_counter() - started
    store = open_store(str(root / "requests.db"), create=False)
    try:
        def logged():
            return [(r.request_id, r.version) for r in store.read("sh")
                    if r.request_id in ids]
        # each copy costs the shadow 0.4 s on its own thread: the replies did not wait for it
        assert replies < 0.4 * len(ids) / 2, replies
        found = wait_until(
            lambda: (lambda got: got if len(got) == 2 * len(ids) else None)(logged()), timeout=60)
        assert sorted(found) == sorted([(rid, 1) for rid in ids] + [(rid, 2) for rid in ids])
        assert _rest(client, "/v1/models/sh:predict", rid="rest-shadowed") == 1
        wait_until(lambda: sorted(r.version for r in store.read("sh")
                                  if r.request_id == "rest-shadowed") == [1, 2])
        assert _metric(client, ":tfprod:rollout:shadow_copies", model_name="sh", version=2,
                       outcome="answered") == len(ids) + 1
        assert client.get("/v1/models/sh/rollout").json()["shadow"] == {
            "version": 2, "answered": len(ids) + 1, "dropped": 0}

        # the shadow label moves to version 3, which fails every call
        (root / "models.config").write_text(_config(root, VERSION, {"stable": 1, "shadow": 3}))
        wait_until(lambda: (client.get("/v1/models/sh/rollout").json()["shadow"] or {}).get(
            "version") == 3)
        failing = [f"failing-{i}" for i in range(6)]
        assert all(_grpc(stub, "sh", rid=rid)[0] == 1 for rid in failing)
        wait_until(lambda: _metric(client, ":tfprod:rollout:shadow_copies", model_name="sh",
                                   version=3, outcome="dropped") == len(failing))
        wait_until(lambda: sorted(r.request_id for r in store.read("sh")
                                  if r.request_id in failing) == sorted(failing))
        assert {r.version for r in store.read("sh") if r.request_id in failing} == {1}
    finally:
        store.close()


def test_a_bad_split_on_reload_keeps_the_previous_one(served, root):
    _, client, _ = served
    good = (root / "models.config").read_text()
    applied = _metric(client, ":tfprod:model_config:reload_errors")
    (root / "models.config").write_text(_config(root, {"a": 1, "b": 2}, {"stable": 1}))
    try:
        wait_until(lambda: _metric(client, ":tfprod:model_config:reload_errors") > applied)
        assert _metric(client, ":tfprod:model_config:applied") == 0.0
        assert [a["arm"] for a in client.get("/v1/models/ab/rollout").json()["arms"]] == \
            ["a", "b", "c"]
        assert _rest(client, "/v1/models/ab/labels/c:predict") == 3
        log = pathlib.Path(served[0].log_path)
        wait_until(lambda: "has no version label 'c'" in log.read_text())
    finally:
        (root / "models.config").write_text(good)
    wait_until(lambda: _metric(client, ":tfprod:model_config:applied") == 1.0)


def test_bad_ab_flags_stop_the_server_before_it_listens(root):
    from tfprod.serve.server import ModelServer, ServerOptions

    config = str(root / "models.config")
    for flag, message in (
            ("a=50,b=-50", "weight -50 of label 'b'; expected a number >= 0"),
            ("ab:a=1,d=1", "model 'ab' has no version label 'd' (it has: a, b, c)"),
            ("a=0,b=0,c=0", "sum to 0")):
        with pytest.raises(TfprodError, match=re.escape(message)):
            ModelServer(ServerOptions(model_config_file=config, ab_weights=flag))


@pytest.mark.parametrize("flag, message", [
    ("ab:a=50,z=50", "model 'ab' has no version label 'z' (it has: a, b, c)"),
    ("a=50;b=50", "'a=50' names 1 label; an A/B split needs two or more"),
])
def test_cli_refuses_bad_weights_with_one_line_and_exit_2(root, flag, message):
    out = subprocess.run([TFPROD, "serve", f"--model_config_file={root / 'models.config'}",
                          f"--ab_weights={flag}", "--port=0", "--rest_api_port=0"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "--ab_weights" in line]
    assert len(lines) == 1 and message in lines[0], out.stderr
