"""The model registry: policies, labels, states, corrupt versions, polling swaps, warmup, unload."""

import gc
import shutil
import threading
import time
import weakref

import grpc
import numpy as np
import pytest

from serve_models import (
    example,
    publish,
    write_affine,
    write_classifier,
    write_corrupt,
    write_example_warmup,
    write_warmup,
)
from tfprod.serve.config import ModelSpec
from tfprod.serve.errors import ServingError
from tfprod.serve.metrics import ServingMetrics
from tfprod.serve.registry import ModelRegistry, VersionStatus

X = np.array([[1.0, 2.0, 3.0]], np.float32)


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """As the server does at start: long-lived objects out of the collector's way, so the full
    collection after each unload is quick."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Versions 1..3 of the affine model (y = x * version + 0.5) and a classifier."""
    root = tmp_path_factory.mktemp("store")
    for v in (1, 2, 3):
        write_affine(root / f"v{v}", scale=float(v), bias=0.5)
    write_classifier(root / "classifier")
    return root


def make_base(tmp_path, store, versions=(1, 2, 3), name="base"):
    base = tmp_path / name
    base.mkdir()
    for v in versions:
        shutil.copytree(store / f"v{v}", base / str(v))
    return base


def registry_for(*specs, **kw):
    kw.setdefault("poll_wait_seconds", 0)
    kw.setdefault("unload_grace_s", 0.0)
    kw.setdefault("metrics", ServingMetrics(process_metrics=False))
    return ModelRegistry(list(specs), **kw).start()


def scale_of(servable):
    return float(servable.predict(None, {"x": X})["y"][0, 0] - 0.5)


def codes(call):
    with pytest.raises(ServingError) as e:
        call()
    return e.value.code, e.value.message


# ---------------------------------------------------------------------- policies and routing


def test_latest_policy_serves_the_newest_versions(tmp_path, store):
    base = make_base(tmp_path, store)
    with registry_for(ModelSpec("m", str(base), ("latest", 2))) as r:
        assert r.status("m") == [VersionStatus(3, "AVAILABLE"), VersionStatus(2, "AVAILABLE")]
        assert r.get("m").version == 3 and scale_of(r.get("m")) == 3.0
        assert scale_of(r.get("m", version=2)) == 2.0
        assert codes(lambda: r.get("m", version=1)) == (
            grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(m, 1)")
        assert r.ready() and r.model_names() == ["m"]


def test_all_and_specific_policies(tmp_path, store):
    base = make_base(tmp_path, store)
    with registry_for(ModelSpec("a", str(base), ("all",)),
                      ModelSpec("s", str(base), ("specific", (1, 3, 9)))) as r:
        assert [s.version for s in r.status("a")] == [3, 2, 1]
        assert [s.version for s in r.status("s")] == [3, 1]
        assert r.get("s").version == 3 and r.get("s", version=1).version == 1


def test_labels_route_to_versions(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1, 2))
    spec = ModelSpec("m", str(base), ("all",), {"stable": 1, "canary": 2, "next": 3})
    with registry_for(spec) as r:
        assert r.get("m", label="stable").version == 1
        assert r.get("m", label="canary").version == 2
        assert r.labels("m") == {"canary": 2, "next": 3, "stable": 1}
        assert r.status("m", label="stable") == [VersionStatus(1, "AVAILABLE")]
        code, message = codes(lambda: r.get("m", label="nope"))
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in message
        code, message = codes(lambda: r.get("m", label="next"))
        assert code == grpc.StatusCode.UNAVAILABLE and "Specific(m, 3)" in message


def test_unknown_and_invalid_names(tmp_path, store):
    with registry_for(ModelSpec("m", str(make_base(tmp_path, store, (1,))))) as r:
        assert codes(lambda: r.get("zz")) == (grpc.StatusCode.NOT_FOUND,
                                              "Servable not found for request: Latest(zz)")
        assert codes(lambda: r.status("zz")) == (grpc.StatusCode.NOT_FOUND,
                                                 "Could not find any versions of model zz")
        assert codes(lambda: r.status("m", version=4)) == (
            grpc.StatusCode.NOT_FOUND, "Could not find version 4 of model m")
        for bad in ("../m", "m/1", "", "a b", ".."):
            assert codes(lambda b=bad: r.get(b))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert codes(lambda: r.get("m", label="../x"))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert codes(lambda: r.get("m", version=1, label="x"))[0] == (
            grpc.StatusCode.INVALID_ARGUMENT)


def test_hidden_and_non_numeric_entries_are_ignored(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1,))
    shutil.copytree(store / "v3", base / ".tmp-7")
    shutil.copytree(store / "v2", base / "backup")
    (base / "8").write_text("a file, not a folder")
    with registry_for(ModelSpec("m", str(base), ("all",))) as r:
        assert [s.version for s in r.status("m")] == [1]


# ---------------------------------------------------------------------- failures and swaps


def test_corrupt_version_is_reported_while_the_previous_one_serves(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1,))
    write_corrupt(base / "2")
    with registry_for(ModelSpec("m", str(base))) as r:
        failed, serving = r.status("m")
        assert (failed.version, failed.state, failed.error_code) == (2, "END", "DATA_LOSS")
        assert "Failed to load version 2 of model m" in failed.error_message
        assert "corrupt" in failed.error_message and "\n" not in failed.error_message
        assert serving == VersionStatus(1, "AVAILABLE")
        assert scale_of(r.get("m")) == 1.0 and r.ready()
        r.poll_once()                                   # unchanged on disk: not retried
        assert r.status("m", version=2)[0].error_code == "DATA_LOSS"
        shutil.rmtree(base / "2")
        publish(store / "v2", base, 2)                  # a fixed export replaces it
        r.poll_once()
        assert r.status("m", version=2) == [VersionStatus(2, "AVAILABLE")]
        r.wait_unloaded(10)
        assert r.status("m", version=1) == [VersionStatus(1, "END")]
        assert scale_of(r.get("m")) == 2.0


def test_polling_swaps_versions_with_zero_failed_requests(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1,))
    r = registry_for(ModelSpec("m", str(base)), poll_wait_seconds=0.05, unload_grace_s=0.2)
    seen, failures, stop = set(), [], threading.Event()

    def client(use_acquire):
        while not stop.is_set():
            try:
                if use_acquire:
                    with r.acquire("m") as s:
                        y = s.predict(None, {"x": X})["y"]
                else:
                    s = r.get("m")
                    y = s.predict(None, {"x": X})["y"]
                assert y[0, 0] - 0.5 == s.version            # the version that answered
                seen.add(s.version)
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(a,)) for a in (True, False, True)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        publish(store / "v2", base, 2)
        deadline = time.monotonic() + 30
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


def test_deleted_version_is_removed_once_another_is_available(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1, 2))
    with registry_for(ModelSpec("m", str(base))) as r:
        assert r.status("m") == [VersionStatus(2, "AVAILABLE")]
        shutil.rmtree(base / "2")
        r.poll_once()
        r.wait_unloaded(10)
        assert r.status("m") == [VersionStatus(2, "END"), VersionStatus(1, "AVAILABLE")]
        assert r.get("m").version == 1


def test_model_without_versions_is_not_ready(tmp_path, store):
    with registry_for(ModelSpec("m", str(tmp_path / "missing"))) as r:
        assert not r.ready()
        assert codes(lambda: r.get("m"))[0] == grpc.StatusCode.NOT_FOUND


def test_reload_config_adds_removes_and_checks_labels(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1, 2))
    with registry_for(ModelSpec("a", str(base))) as r:
        r.reload_config([ModelSpec("b", str(base), ("specific", (1,)), {"prod": 1})])
        r.wait_unloaded(10)
        assert r.model_names() == ["b"] and r.get("b", label="prod").version == 1
        assert codes(lambda: r.get("a"))[0] == grpc.StatusCode.NOT_FOUND
        code, message = codes(lambda: r.reload_config(
            [ModelSpec("b", str(base), ("specific", (1,)), {"prod": 5})]))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "'prod'" in message


# ---------------------------------------------------------------------- warmup and unload


def test_warmup_requests_are_replayed_before_serving(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1,))
    write_warmup(base / "1", [X, np.zeros((4, 3), np.float32), X])
    with registry_for(ModelSpec("m", str(base))) as r:
        s = r.get("m")
        assert s.warmup_records == 3
        calls = s.predict("calls", {})
        assert (int(calls["runs"]), int(calls["rows"])) == (3, 6)
    with registry_for(ModelSpec("m", str(base)), enable_warmup=False) as r:
        assert int(r.get("m").predict("calls", {})["runs"]) == 0
    # without records, signatures with known numeric input shapes run once on zeros
    plain = make_base(tmp_path, store, versions=(1,), name="plain")
    with registry_for(ModelSpec("m", str(plain))) as r:
        calls = r.get("m").predict("calls", {})
        assert (int(calls["runs"]), int(calls["rows"])) == (1, 1)
        assert r.get("m").warmup_records == 0


def test_a_failing_warmup_fails_the_load(tmp_path, store):
    base = make_base(tmp_path, store, versions=(1,))
    write_warmup(base / "1", [X], input_name="wrong")
    with registry_for(ModelSpec("m", str(base))) as r:
        (status,) = r.status("m")
        assert (status.state, status.error_code) == ("END", "INVALID_ARGUMENT")
        assert "Missing but required: {x}" in status.error_message
        assert not r.ready()


def test_classify_and_regress_warmup_records_are_replayed(tmp_path, store):
    base = tmp_path / "c"
    shutil.copytree(store / "classifier", base / "1")
    write_example_warmup(base / "1", [0.5, 0.25])
    with registry_for(ModelSpec("c", str(base))) as r:
        assert r.status("c") == [VersionStatus(1, "AVAILABLE")]
        assert r.get("c").warmup_records == 2


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_unloading_frees_the_model(tmp_path):
    base = tmp_path / "big"
    write_affine(base / "1", ballast=5_000_000)          # 20 MB of weights
    spec = ModelSpec("big", str(base))
    r = registry_for(spec)
    try:
        ref = weakref.ref(r.get("big")._loaded)
        r.reload_config([])
        assert r.wait_unloaded(10)
        gc.collect()
        assert ref() is None
        sizes = []
        for _ in range(8):
            r.reload_config([spec])
            r.get("big").predict(None, {"x": X})
            r.reload_config([])
            r.wait_unloaded(10)
            gc.collect()
            sizes.append(_rss_mb())
        # 8 leaked versions would add 160 MB; allow allocator noise only.
        assert sizes[-1] - sizes[1] < 40, sizes
    finally:
        r.close()


# ---------------------------------------------------------------------- requests


def test_input_validation_errors(tmp_path, store):
    with registry_for(ModelSpec("m", str(make_base(tmp_path, store, (1,))))) as r:
        s = r.get("m")

        def error(sig, inputs):
            return codes(lambda: s.submit(sig, inputs))

        assert error("nope", {"x": X}) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            'Serving signature name: "nope" not found in signature def')
        assert error(None, {"z": X}) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 1!=1 len({z}) != len({x}). "
            "Sent extra: {z}. Missing but required: {x}.")
        assert error(None, {"x": X[:, :2]}) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            'input "x" has shape [1, 2] but signature "serving_default" expects [-1,3] '
            "(-1: any size)")
        assert error(None, {"x": np.array([["a", "b", "c"]])}) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            'input "x" has dtype string but signature "serving_default" expects float32')
        code, message = error(None, {"x": [[1.0, 2.0, 3.0], [1.0]]})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a rectangular array" in message
        code, message = error("maxlen", {"tokens": np.array([[2**40]])})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the range of int32" in message
        # lossless conversions are accepted: ints and float64 to float32
        assert s.predict(None, {"x": [[1, 2, 3]]})["y"].tolist() == [[1.5, 2.5, 3.5]]
        assert s.predict("", {"x": X.astype(np.float64)})["y"].dtype == np.float32
        assert s.signature(None).inputs["x"].shape == (None, 3)
        assert s.signature(None).method_name == "tensorflow/serving/predict"
        assert "serving_default" in s.signature_defs


def test_classify_and_regress_signatures(tmp_path, store):
    base = tmp_path / "c"
    shutil.copytree(store / "classifier", base / "1")
    with registry_for(ModelSpec("c", str(base))) as r:
        s = r.get("c")
        assert s.signature("classify").method_name == "tensorflow/serving/classify"
        out = s.classify_or_regress("classify", [example(0.25), example(1.0)], "classify")
        np.testing.assert_allclose(out["scores"], [[0.75, 0.25], [0.0, 1.0]])
        assert out["classes"].tolist() == [[b"a", b"b"], [b"a", b"b"]]
        out = s.classify_or_regress("regress", [example(4.0)], "regress")
        np.testing.assert_allclose(out["outputs"], [[8.0]])
        code, message = codes(lambda: s.classify_or_regress("classify", [example(1.0)],
                                                            "regress"))
        assert message == ("Expected regression signature method_name to be "
                           "tensorflow/serving/regress. Was: tensorflow/serving/classify")
        assert codes(lambda: s.classify_or_regress(None, [], "classify"))[1] == "Input is empty."
        # TensorFlow's own errors keep their canonical code, in one line
        code, message = codes(lambda: s.classify_or_regress(None, [b"not a proto"], "classify"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in message


def test_empty_batch_runs_as_its_own_call(tmp_path, store):
    with registry_for(ModelSpec("m", str(make_base(tmp_path, store, (1,))))) as r:
        assert r.get("m").predict(None, {"x": np.zeros((0, 3))})["y"].shape == (0, 3)


def test_the_registry_counts_its_own_loads_states_and_model_calls(tmp_path, store):
    from prometheus_text import delta, samples

    metrics = ServingMetrics(process_metrics=False)
    base = make_base(tmp_path, store, (1, 2))
    with registry_for(ModelSpec("m", str(base)), metrics=metrics) as r:
        loaded = samples(metrics.exposition().decode())  # after the warmup requests ran
        for _ in range(4):
            r.get("m").predict(None, {"x": X})
        got = samples(metrics.exposition().decode())
    def of(name):
        return {tuple(sorted(labels)): v for (n, labels), v in got.items() if n == name}
    # The latest version only, loaded once; nothing recorded that did not happen.
    assert of(":tensorflow:cc:saved_model:load_attempt_count") == {
        (("model_path", str(base / "2")), ("status", "success")): 1.0}
    assert of(":tfprod:serving:model_version_state") == {
        (("model_name", "m"), ("state", "AVAILABLE"), ("version", "2")): 1.0}
    calls = ":tensorflow:serving:runtime_latency_count"
    assert delta(loaded, got, calls, API="predict", model_name="m", runtime="TF2") == 4
    assert [n for n, _ in got if n == calls] == [calls]  # no other API or model
    assert of(":tensorflow:serving:request_count") == {}  # front ends count requests


def test_metrics_use_tf_serving_names(tmp_path, store):
    metrics = ServingMetrics()
    with registry_for(ModelSpec("m", str(make_base(tmp_path, store, (1,)))),
                      metrics=metrics) as r:
        r.get("m").predict(None, {"x": X})
        metrics.record_request("m", "predict", "REST", "OK", 0.002)
        metrics.record_request("m", "predict", "GRPC", "INVALID_ARGUMENT", 0.001)
        text = metrics.exposition().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1.0' in text
    assert (':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",'
            'model_name="m"} 1.0') in text
    assert ':tensorflow:serving:runtime_latency_count{API="predict",model_name="m",' in text
    assert ':tfprod:serving:model_version_state{model_name="m",state="AVAILABLE",version="1"} 1.0'\
        in text
    assert "process_resident_memory_bytes" in text and "_total" not in text.split(
        "process_")[0]
