"""Dynamic batching: merging, padding, the bounded queue, deadlines; then through real models."""

import concurrent.futures
import threading
import time
from concurrent.futures import CancelledError

import grpc
import numpy as np
import pytest

from serve_models import write_affine
from tfprod.serve.batching import DynamicBatcher, merge_inputs, split_outputs
from tfprod.serve.config import BatchingParameters, ModelSpec
from tfprod.serve.errors import ServingError
from tfprod.serve.metrics import ServingMetrics


class GatedModel:
    """y = 10 * x; the first call blocks until released, so later requests queue up."""

    def __init__(self):
        self.calls = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, inputs):
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        return {"y": inputs["x"] * 10, "n": np.full(len(inputs["x"]), len(inputs["x"]))}


def _batcher(**kw):
    params = dict(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1,
                  max_enqueued_batches=4)
    params.update(kw)
    metrics = ServingMetrics(process_metrics=False)
    return DynamicBatcher(BatchingParameters(**params), metrics=metrics), metrics


def _block(batcher, model, key="k"):
    """Occupy the single batch thread with one request; returns its future."""
    first = batcher.submit(key, model, {"x": np.array([[0.0]])}, 1)
    assert model.entered.wait(5)
    return first


def test_concurrent_requests_run_as_one_call_and_split_back():
    batcher, metrics = _batcher()
    model = GatedModel()
    first = _block(batcher, model)
    xs = [np.array([[float(i)]] * (1 + i % 2)) for i in range(1, 6)]   # sizes 2,1,2,1,2 = 8
    futures = [batcher.submit("k", model, {"x": x}, len(x)) for x in xs]
    model.gate.set()
    results = [f.result(5) for f in futures]
    assert first.result(5)["y"].tolist() == [[0.0]]
    assert len(model.calls) == 2 and model.calls[1]["x"].shape == (8, 1)
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r["y"], x * 10)   # equal to running it alone
        assert r["n"].tolist() == [8] * len(x)
    assert batcher.batch_calls == 2
    assert metrics.processed_batch_size.get(())[-1] == 2       # two batches recorded
    assert metrics.processed_batch_size.get(())[-2] == 1 + 8
    batcher.close()


def test_batches_stop_at_max_batch_size_and_oversize_requests_run_alone():
    batcher, _ = _batcher(max_batch_size=4, max_enqueued_batches=10)
    model = GatedModel()
    _block(batcher, model)
    small = [batcher.submit("k", model, {"x": np.ones((3, 1))}, 3) for _ in range(2)]
    big = batcher.submit("k", model, {"x": np.ones((6, 1))}, 6)
    model.gate.set()
    for f in [*small, big]:
        f.result(5)
    assert [len(c["x"]) for c in model.calls] == [1, 3, 3, 6]
    batcher.close()


def test_allowed_batch_sizes_pad_with_the_first_row():
    batcher, metrics = _batcher(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    model = GatedModel()
    _block(batcher, model)
    futures = [batcher.submit("k", model, {"x": np.array([[float(i)]])}, 1) for i in (1, 2, 3)]
    model.gate.set()
    assert [f.result(5)["y"].tolist() for f in futures] == [[[10.0]], [[20.0]], [[30.0]]]
    # the first call (1 row) was padded to 2, the batch of 3 to 4, with copies of row 0
    assert [c["x"][:, 0].tolist() for c in model.calls] == [[0.0, 0.0], [1.0, 2.0, 3.0, 1.0]]
    assert metrics.padding_size.get(("4",))[-2] == 1
    batcher.close()


def test_different_shapes_are_never_merged():
    batcher, _ = _batcher()
    model = GatedModel()
    _block(batcher, model)
    a = batcher.submit(("k", (1,)), model, {"x": np.ones((1, 1))}, 1)
    b = batcher.submit(("k", (2,)), model, {"x": np.ones((1, 2))}, 1)
    model.gate.set()
    assert a.result(5)["y"].shape == (1, 1) and b.result(5)["y"].shape == (1, 2)
    assert len(model.calls) == 3
    batcher.close()


def test_merge_pads_variable_length_inputs_with_each_tensors_first_element():
    merged, total, padded = merge_inputs(
        [{"t": np.array([[7, 1]])}, {"t": np.array([[5, 2, 3], [4, 4, 4]])}],
        pad_variable_length=True)
    assert (total, padded) == (3, 3)
    assert merged["t"].tolist() == [[7, 1, 7], [5, 2, 3], [4, 4, 4]]
    with pytest.raises(ServingError) as e:
        merge_inputs([{"t": np.ones((1, 2))}, {"t": np.ones((1, 3))}])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pad_variable_length_inputs" in e.value.message


def test_split_outputs_checks_the_batch_dimension():
    parts = split_outputs({"y": np.arange(5)}, [2, 3], 5)
    assert [p["y"].tolist() for p in parts] == [[0, 1], [2, 3, 4]]
    with pytest.raises(ServingError, match="must return 5 rows"):
        split_outputs({"y": np.arange(4)}, [2, 3], 5)


def test_full_queue_is_resource_exhausted_at_once_and_bounded():
    batcher, _ = _batcher(max_batch_size=2, max_enqueued_batches=2)   # 4 instances pending
    model = GatedModel()
    _block(batcher, model)
    queued = [batcher.submit("k", model, {"x": np.ones((1, 1))}, 1) for _ in range(4)]
    # "At once": the refusal comes while the model is still blocked, so it cannot have waited
    # for room in the queue (a submit that waited would hang here until the 30 s bound).
    refused = concurrent.futures.ThreadPoolExecutor(1).submit(
        batcher.submit, "k", model, {"x": np.ones((1, 1))}, 1)
    with pytest.raises(ServingError) as e:
        refused.result(30)
    assert not model.gate.is_set() and not any(f.done() for f in queued)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.http_status == 429
    assert "queue" in e.value.message and batcher.pending == 4
    model.gate.set()
    assert all(f.result(5)["y"].shape == (1, 1) for f in queued)
    assert batcher.pending == 0
    batcher.submit("k", model, {"x": np.ones((1, 1))}, 1).result(5)   # room again
    batcher.close()


def test_deadline_passed_in_the_queue_is_deadline_exceeded_and_not_run():
    batcher, _ = _batcher()
    model = GatedModel()
    _block(batcher, model)
    late = batcher.submit("k", model, {"x": np.full((1, 1), 5.0)}, 1,
                          deadline=time.monotonic() + 0.05)
    ok = batcher.submit("k", model, {"x": np.full((1, 1), 6.0)}, 1,
                        deadline=time.monotonic() + 30)
    time.sleep(0.1)
    model.gate.set()
    with pytest.raises(ServingError) as e:
        late.result(5)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and e.value.http_status == 504
    assert ok.result(5)["y"].tolist() == [[60.0]]
    assert [c["x"].tolist() for c in model.calls[1:]] == [[[6.0]]]   # the late one never ran
    batcher.close()


def test_cancelled_requests_are_dropped():
    batcher, _ = _batcher()
    model = GatedModel()
    _block(batcher, model)
    gone = batcher.submit("k", model, {"x": np.ones((1, 1))}, 1)
    assert gone.cancel()
    kept = batcher.submit("k", model, {"x": np.ones((1, 1))}, 1)
    model.gate.set()
    kept.result(5)
    with pytest.raises(CancelledError):
        gone.result(0)
    assert len(model.calls) == 2 and len(model.calls[1]["x"]) == 1
    batcher.close()


def test_batch_timeout_waits_for_more_requests():
    batcher, _ = _batcher(batch_timeout_micros=200_000)
    calls = []

    def model(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    futures = [batcher.submit("k", model, {"x": np.ones((1, 1))}, 1)]
    time.sleep(0.05)
    futures.append(batcher.submit("k", model, {"x": np.ones((1, 1))}, 1))
    for f in futures:
        f.result(5)
    assert calls == [2]                # the first waited for the second
    batcher.close()


def test_an_announced_lone_request_does_not_wait_for_the_timeout():
    # The low-load trap of TF Serving's batching: a lone request waited batch_timeout_micros.
    batcher, _ = _batcher(batch_timeout_micros=2_000_000)
    calls = []

    def model(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    batcher.expect()
    started = time.monotonic()
    batcher.submit("k", model, {"x": np.ones((1, 1))}, 1, expected=True).result(5)
    assert time.monotonic() - started < 0.5 and calls == [1]
    batcher.close()


def test_a_batch_waits_for_announced_requests_and_runs_when_the_last_one_is_queued():
    batcher, _ = _batcher(batch_timeout_micros=5_000_000)
    calls = []

    def model(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    for _ in range(3):
        batcher.expect()
    first = batcher.submit("k", model, {"x": np.ones((1, 1))}, 1, expected=True)
    second = batcher.submit("k", model, {"x": np.full((2, 1), 3.0)}, 2, expected=True)
    time.sleep(0.1)
    assert not first.done() and calls == []      # one announced request is still on its way
    batcher.unexpect()                           # ... and never comes (it failed to parse)
    assert first.result(5)["y"].tolist() == [[2.0]]
    assert second.result(5)["y"].tolist() == [[6.0], [6.0]] and calls == [3]
    batcher.close()


def test_async_submits_of_one_loop_iteration_run_as_one_batch_and_resolve_on_the_loop():
    import asyncio

    batcher, metrics = _batcher(batch_timeout_micros=5_000_000)
    model_threads = []

    def model(inputs):
        model_threads.append(threading.current_thread().name)
        return {"y": inputs["x"] + 1}

    async def main():
        futures = []
        for i in range(5):
            batcher.expect()
            futures.append(batcher.submit_async("k", model, {"x": np.full((1, 1), float(i))},
                                                1, expected=True))
        results = await asyncio.wait_for(asyncio.gather(*futures), 5)
        return [r["y"].item() for r in results], threading.current_thread().name

    values, loop_thread = asyncio.run(main())
    assert values == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert batcher.batch_calls == 1 and model_threads[0] != loop_thread
    assert metrics.processed_batch_size.get(())[-1] == 1   # one batch of five
    batcher.close()


def test_async_requests_cancelled_or_failing_and_on_done_for_each():
    import asyncio

    batcher, _ = _batcher()
    model = GatedModel()
    _block(batcher, model)
    done = []

    async def main():
        gone = batcher.submit_async("k", model, {"x": np.ones((1, 1))}, 1,
                                    on_done=lambda: done.append("gone"))
        kept = batcher.submit_async("k", model, {"x": np.full((1, 1), 2.0)}, 1,
                                    on_done=lambda: done.append("kept"))
        gone.cancel()
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.wait_for(kept, 5)

    assert asyncio.run(main())["y"].tolist() == [[20.0]]
    assert sorted(done) == ["gone", "kept"]
    assert [c["x"].tolist() for c in model.calls[1:]] == [[[2.0]]]   # the cancelled one never ran

    async def broken():
        def fail(inputs):
            raise ValueError("boom")
        return await asyncio.wait_for(batcher.submit_async("k2", fail, {"x": np.ones((1, 1))},
                                                           1), 5)

    with pytest.raises(ServingError, match="ValueError: boom"):
        asyncio.run(broken())
    batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_thread_lives_on():
    batcher, _ = _batcher()

    def broken(inputs):
        raise ValueError("boom\nsecond line")

    with pytest.raises(ServingError) as e:
        batcher.submit("k", broken, {"x": np.ones((1, 1))}, 1).result(5)
    assert e.value.code == grpc.StatusCode.INTERNAL and e.value.message == "ValueError: boom"
    assert batcher.submit("k2", lambda i: {"y": i["x"]}, {"x": np.ones((1, 1))}, 1).result(5)
    batcher.close()
    with pytest.raises(ServingError) as e:
        batcher.submit("k", broken, {"x": np.ones((1, 1))}, 1)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


# ----------------------------------------------------------------------- through real models


@pytest.fixture(scope="module")
def affine_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("affine")
    write_affine(base / "1", scale=3.0, bias=0.5)
    return base


def _registry(base, **batching):
    from tfprod.serve.registry import ModelRegistry

    params = BatchingParameters(**{"max_batch_size": 64, "num_batch_threads": 1, **batching})
    return ModelRegistry([ModelSpec("m", str(base))], batching=params, poll_wait_seconds=0,
                         metrics=ServingMetrics(process_metrics=False)).start()


def test_servable_requests_merge_into_fewer_model_calls(affine_base):
    registry = _registry(affine_base, batch_timeout_micros=20_000)
    try:
        servable = registry.get("m")
        runs_before = int(servable.predict("calls", {})["runs"])
        xs = [np.full((1 + i % 3, 3), i, np.float32) for i in range(32)]
        barrier = threading.Barrier(32)
        results = [None] * 32

        def client(i):
            barrier.wait()
            results[i] = servable.predict(None, {"x": xs[i]})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        runs = int(servable.predict("calls", {})["runs"]) - runs_before
        assert 1 <= runs <= 8, f"32 concurrent requests took {runs} model calls"
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_allclose(r["y"], x * 3.0 + 0.5)
    finally:
        registry.close()


def test_variable_length_inputs_padded_through_a_servable(affine_base):
    registry = _registry(affine_base, pad_variable_length_inputs=True,
                         batch_timeout_micros=50_000)
    try:
        s = registry.get("m")
        rows = [np.array([[1, 9]], np.int32), np.array([[4, 2, 8, 3], [5, 5, 5, 5]], np.int32)]
        futures = [s.submit("maxlen", {"tokens": r}) for r in rows]
        out = [f.result(10) for f in futures]
        assert out[0]["max"].tolist() == [9] and out[1]["max"].tolist() == [8, 5]
        assert out[0]["width"].tolist() == [4]          # ran in one padded batch of width 4
    finally:
        registry.close()


def test_digits_cnn_batched_equals_the_keras_model(digits_cnn, tmp_path):
    digits_cnn.model.export(str(tmp_path / "1"), format="tf_saved_model", verbose=False)
    registry = _registry(tmp_path, batch_timeout_micros=5_000)
    try:
        s = registry.get("m")
        (name,) = s.signature(None).inputs
        x = digits_cnn.x_test[:24]
        futures = [s.submit(None, {name: x[i:i + 1]}) for i in range(24)]
        got = np.concatenate([next(iter(f.result(10).values())) for f in futures])
        np.testing.assert_allclose(got, digits_cnn.model.predict(x, verbose=0), atol=1e-5)
        assert registry.metrics.wrapped_run_count.get(())[0] < 24
    finally:
        registry.close()
