"""tfprod.train.profile: the verdict names the real bottleneck, and a trace gets written.

Timing enters only through the verdicts, on pipelines built to be far on one side: a pipeline
that sleeps 20 ms per batch feeding a tiny model, and a cached, prefetched pipeline feeding a
model whose step takes tens of milliseconds.
"""

from __future__ import annotations

import json
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_image_folder
from tfprod.errors import TfprodError
from tfprod.models import mlp
from tfprod.train.profile import ProfileReport, load_for_profile, profile_training


def _data(n, features, classes=3):
    rng = np.random.default_rng(0)
    return (rng.random((n, features)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int32))


def _sleepy(x):
    time.sleep(0.02)
    return x


def test_a_pipeline_that_sleeps_per_batch_is_input_bound():
    x, y = _data(256, 16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(
        lambda a, b: (tf.ensure_shape(tf.py_function(_sleepy, [a], tf.float32), [None, 16]), b))
    report = profile_training(mlp((16,), 3, hidden=(8,)), ds, steps=8, warmup=2)
    assert report.verdict == "input-bound"
    assert report.input_wait_share > 0.5
    # The 20 ms sleeps, measured: tf.data may prefetch one batch while a step computes, so a
    # wait is the sleep minus that step's compute, which grows on a busy machine; the
    # median over the steps still shows most of every sleep.
    assert np.median(report.wait_seconds) > 0.01
    assert "num_parallel_calls" in report.fix
    # The pipeline alone is no faster than training: it is the limit, not a missing overlap.
    assert report.input_only_batches_per_second < 2 * report.steps_per_second


def test_a_cached_prefetched_pipeline_feeding_a_heavy_model_is_compute_bound():
    x, y = _data(1024, 784, 10)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(256).cache().prefetch(tf.data.AUTOTUNE)
    report = profile_training(mlp((784,), 10, hidden=(1024, 1024)), ds, steps=8, warmup=2)
    assert report.verdict == "compute-bound"
    # Step by step rather than in total: one load spike on shared cores during one step's
    # fetch does not decide it (the heavy step is ~100x the cached batch's fetch here).
    assert np.median(report.wait_seconds) < 0.1 * np.median(report.compute_seconds)
    assert "XLA" in report.fix
    assert report.input_only_batches_per_second > report.steps_per_second
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["verdict"] == "compute-bound"
    assert len(payload["wait_seconds"]) == len(payload["compute_seconds"]) == 8
    assert all(len(row) == len(report.columns) for row in report.rows)


def test_a_logdir_gets_a_profiler_trace(tmp_path):
    x, y = _data(64, 8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    report = profile_training(mlp((8,), 3, hidden=(4,)), ds, steps=3, warmup=1,
                              logdir=tmp_path / "logs")
    traces = list((tmp_path / "logs" / "plugins" / "profile").glob("*/*"))
    assert traces and all(t.stat().st_size > 0 for t in traces)
    assert sorted(report.trace_files) == sorted(str(t) for t in traces)
    assert any(str(t).endswith(".xplane.pb") for t in traces)


def _report(wait_share: float, steps: int = 20) -> ProfileReport:
    wait, compute = wait_share / steps, (1 - wait_share) / steps
    return ProfileReport(steps=steps, warmup=1, batch_size=8, seconds=1.0,
                         wait_seconds=[wait] * steps, compute_seconds=[compute] * steps,
                         input_only_seconds=1.0, step_mode="function")


@pytest.mark.parametrize(("share", "verdict"), [(0.02, "compute-bound"), (0.25, "balanced"),
                                                (0.45, "input-bound"), (0.9, "input-bound")])
def test_verdict_follows_the_measured_input_wait_share(share, verdict):
    assert _report(share).verdict == verdict


def test_wait_concentrated_in_a_few_steps_is_called_bursty():
    report = _report(0.5)
    report.wait_seconds = [0.0] * 18 + [0.25, 0.25]
    assert report.wait_in_bursts
    assert "bursts" in report.fix


def test_bad_input_is_a_one_line_error():
    x, y = _data(32, 4)
    model = mlp((4,), 3, hidden=(4,))
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(TfprodError, match="expected \\(x, y\\)"):
        profile_training(model, tf.data.Dataset.from_tensor_slices(x).batch(8))
    with pytest.raises(TfprodError, match="empty"):
        profile_training(model, pairs.filter(lambda a, b: False), steps=2, warmup=1)
    with pytest.raises(TfprodError, match="steps=0"):
        profile_training(model, pairs, steps=0)
    uncompiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(TfprodError, match="not compiled"):
        profile_training(uncompiled, pairs, steps=2, warmup=1)


def test_cli_options_resolve_to_a_model_and_its_image_batches(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "imgs", [4, 4], size=(20, 20))
    model, ds = load_for_profile("cnn", tmp_path / "imgs", batch_size=4, image_size=16)
    assert model.input_shape == (None, 16, 16, 1) and model.output_shape == (None, 2)
    x, _ = next(iter(ds))
    assert tuple(x.shape) == (4, 16, 16, 1)
    (tmp_path / "profile_user_models.py").write_text(
        "import keras\n"
        "def rgb():\n"
        "    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),\n"
        "                          keras.layers.Dense(2, activation='softmax')])\n"
        "    m.compile('adam', 'sparse_categorical_crossentropy')\n"
        "    return m\n")
    monkeypatch.chdir(tmp_path)
    model, ds = load_for_profile("profile_user_models:rgb", tmp_path / "imgs", batch_size=2)
    assert tuple(next(iter(ds))[0].shape) == (2, 8, 8, 3)
    with pytest.raises(TfprodError, match="not a folder"):
        load_for_profile("mlp", tmp_path / "missing")
