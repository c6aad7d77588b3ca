"""tfprod.doctor: a zoo of broken setups, each diagnosed by its first finding; healthy ones clean.

The zoo itself is ``tests/doctor_zoo.py`` (``benchmarks/doctor_speed.py --zoo`` times it): tiny
models on the 8x8 sample digits, synthetic tables and short sequences, built once per module.
"""

import importlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from doctor_zoo import BROKEN, HEALTHY, batches, dense, make_data, mlp
from tfprod.doctor import CHECKS, DoctorReport, Finding, diagnose, rank
from tfprod.doctor.gradients import non_differentiable_ops
from tfprod.doctor.probe import build_probe


@pytest.fixture(scope="module")
def zoo():
    return make_data()


@pytest.fixture(scope="module")
def digits(zoo):
    return zoo.digits  # [N, 8, 8, 1] float32 in 0..255, int64 labels


def assert_contract(report: DoctorReport) -> None:
    """Every finding names its check, severity, title, evidence and fix; no check crashed."""
    for f in report.findings:
        assert f.check in CHECKS and f.severity in ("error", "warning", "info")
        assert f.title.strip() and f.evidence.strip() and f.fix.strip(), f
    assert not report.failed, report.to_markdown()
    json.loads(report.dumps())


def test_the_zoo_is_big_enough():
    kinds = {b.data for b in BROKEN.values()}
    assert len(BROKEN) >= 25 and {"image", "tabular"} <= kinds
    assert len(HEALTHY) >= 8
    assert {b.check for b in BROKEN.values()} >= set(CHECKS) - {
        "lr_range", "training_watch", "overfit_batch", "gradient_flow", "saturated_units",
        "features"}  # full-mode checks, symptoms and notes: covered by the tests below


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_first_finding_names_the_planted_cause(name, zoo):
    setup = BROKEN[name]
    case = setup.build(zoo)
    report = diagnose(case.model, case.dataset, **case.options)
    assert report.findings, f"{name}: no findings"
    first = report.findings[0]
    assert (first.check, first.severity, first.kind) == (setup.check, setup.severity,
                                                         "cause"), report.to_markdown()
    assert setup.words in first.title.lower(), first.title
    assert report.has_errors == (setup.severity == "error")
    assert_contract(report)


#: checks that must have run and passed on every healthy setup.
ALWAYS = {"data_values", "labels", "input_scale", "loss_pairing", "gradient_cut", "trainable",
          "learning_rate", "overfit_batch", "regularization", "leakage", "batch_order"}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_setups_have_no_error_or_warning(name, zoo):
    case = HEALTHY[name](zoo)
    report = diagnose(case.model, case.dataset, **case.options)
    assert not [f for f in report.findings if f.severity != "info"], report.to_markdown()
    assert_contract(report)
    expected = set(ALWAYS)
    if name.startswith(("digits MLP", "digits CNN")):
        expected -= {"leakage"}  # images: no tabular columns to compare with the label
    if "validation" in name:
        expected |= {"validation_overlap", "validation_shift"}
    if "BatchNorm" in name:
        expected |= {"batch_norm"}
    if "schedule" in name:
        expected |= {"lr_schedule"}
    if "LSTM" in name:  # sequences: no tabular columns either
        expected = (expected | {"recurrent_gradients"}) - {"leakage"}
    assert expected <= set(report.passed), (expected - set(report.passed), report.skipped)


def test_class_weights_turn_the_imbalance_error_into_a_note(zoo):
    x, y = zoo.rare
    share = float(y.mean())
    # The same data and model: unweighted, weighted by class_weight, weighted in the batches.
    plain = diagnose(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(x, y))
    first = plain.findings[0]
    assert (first.check, first.severity) == ("class_balance", "error")
    assert "98.0% accuracy" in first.evidence
    assert first.values["suggested_class_weight"]["1"] == pytest.approx(1 / (2 * share), 0.01)
    weights = np.where(y == 1, 0.5 / share, 0.5 / (1 - share)).astype("float32")
    in_batches = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(32)
    for report in (diagnose(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(x, y),
                            class_weight={0: 1.0, 1: 49.0}),
                   diagnose(dense(6, 1, "sigmoid", "binary_crossentropy"), in_batches)):
        note = next(f for f in report.findings if f.check == "class_balance")
        assert note.severity == "info" and "balanced by weights" in note.title
    half = diagnose(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(x, y),
                    class_weight={0: 1.0, 1: 3.0})  # weighted, but not nearly enough
    assert half.findings[0].check == "class_balance" and "do not balance" in (
        half.findings[0].evidence)


def test_scale_is_judged_by_the_bulk_not_the_extremes(zoo):
    from tfprod.doctor.data import WARN_SCALE, column_scales

    x, y = zoo.table
    assert np.abs(x).max() > WARN_SCALE  # heavy tails: a min/max rule would flag these
    probe = build_probe(dense(8, 3, "softmax", "sparse_categorical_crossentropy"),
                        batches(x, y))
    scales = column_scales(probe)
    assert len(scales) == 8 and all(c.magnitude < 5 for c in scales)
    shifted = x.copy()
    shifted[:, 3] += 2020.0  # a year column: small spread, far from 0
    report = diagnose(dense(8, 3, "softmax", "sparse_categorical_crossentropy"),
                      batches(shifted, y))
    first = report.findings[0]
    assert (first.check, first.title) == ("input_scale", "unnormalized inputs")
    assert "x[:, 3]" in first.evidence and list(first.values["columns"]) == ["x[:, 3]"]


def test_a_small_shuffle_buffer_over_a_sorted_file_is_still_unshuffled(digits):
    x, y = digits
    order = np.argsort(y, kind="stable")
    ds = tf.data.Dataset.from_tensor_slices((x[order], y[order])).shuffle(64, seed=0).batch(32)
    report = diagnose(mlp(), ds)
    assert report.findings[0].check == "batch_order", report.to_markdown()
    whole = tf.data.Dataset.from_tensor_slices((x[order], y[order])).shuffle(len(y), seed=0)
    assert "batch_order" in diagnose(mlp(), whole.batch(32)).passed


def test_over_regularization_names_what_to_switch_off(digits):
    model = mlp(before=keras.layers.Dropout(0.9, name="drop_in"),
                between=keras.layers.Dropout(0.9, name="drop_hidden"))
    report = diagnose(model, batches(*digits))
    found = report.findings[0]
    assert found.check == "regularization"
    assert "'drop_in'" in found.evidence and "'drop_hidden'" in found.evidence
    assert found.values["without"]["loss_after"] < 0.2 * found.values["without"]["loss_before"]
    assert "overfit_batch" not in report.passed and "regularization" not in report.passed
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [
        0.9, 0.9]  # switched back on


def test_a_crashing_check_is_reported_as_failed_not_as_a_finding(digits, monkeypatch):
    from tfprod.doctor import diagnose as diagnose_module

    def broken(probe):
        raise RuntimeError("tap failed")

    monkeypatch.setattr(importlib.import_module("tfprod.doctor.diagnose"), "check_activations",
                        broken)
    report = diagnose_module(mlp(), batches(*digits))
    assert report.failed == {"dead_units": "RuntimeError: tap failed",
                             "saturated_units": "RuntimeError: tap failed"}
    assert not report.findings, report.to_markdown()
    assert "dead_units" not in report.passed and "dead_units" not in report.skipped
    assert "**Could not run**" in report.to_markdown()
    assert json.loads(report.dumps())["failed"]["dead_units"] == "RuntimeError: tap failed"


def test_validation_data_is_checked_in_quick_mode_only_when_given(digits):
    report = diagnose(mlp(), batches(*digits))
    assert report.skipped["validation_shift"] == "no validation data given"
    x, y = digits
    half = diagnose(mlp(), batches(x, y), validation_data=batches(
        np.concatenate([x[:5], x[-200:] + 1]), np.concatenate([y[:5], y[-200:]])))
    overlap = next(f for f in half.findings if f.check == "validation_overlap")
    assert overlap.severity == "warning" and overlap.values["shared"] == 5


@pytest.mark.slow
def test_the_model_and_its_optimizer_are_left_unchanged(digits):
    x, y = digits
    model = dense(64, 10, "softmax", "sparse_categorical_crossentropy", dropout=0.2,
                  batchnorm=True)
    data = batches(x.reshape(-1, 64) / 255, y)
    model.fit(data.take(3), verbose=0)  # a used optimizer: moments and an iteration count
    before = [np.array(v.numpy()) for v in [*model.variables, *model.optimizer.variables]]
    config = model.optimizer.get_config()
    diagnose(model, data, mode="full")
    after = [np.array(v.numpy()) for v in [*model.variables, *model.optimizer.variables]]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.optimizer.get_config() == config


def test_a_model_built_under_a_mirrored_strategy(digits):
    """Regression: training checks on mirrored variables failed outside the replica context."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = mlp()
    before = [np.array(w) for w in model.get_weights()]
    report = diagnose(model, batches(*digits))
    assert not report.findings, report.to_markdown()
    assert {"learning_rate", "overfit_batch"} <= set(report.passed)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.slow
def test_full_mode_adds_the_range_test_and_the_watch(digits, tmp_path):
    x, y = digits
    model, dataset = mlp(), batches(x[:1200], y[:1200])
    png = tmp_path / "lr.png"
    report = diagnose(model, dataset, mode="full", plot=png,
                      validation_data=batches(x[1200:], y[1200:]))
    assert not report.has_errors, report.to_markdown()
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert report.artifacts["learning-rate curve"] == str(png)
    assert {"lr_range", "training_watch"} <= set(report.passed)
    suggestion = next(f for f in report.findings if f.check == "lr_range")
    assert 1e-5 < suggestion.values["suggested"] < 1.0


@pytest.mark.slow
def test_full_mode_on_a_too_low_learning_rate_ranks_the_cause_before_the_symptoms(digits):
    model = mlp(optimizer=keras.optimizers.Adam(1e-7))
    report = diagnose(model, batches(*digits), mode="full")
    checks = [f.check for f in report.findings]
    assert checks[0] == "learning_rate"
    assert "training_watch" in checks and "lr_range" in checks
    watch = next(f for f in report.findings if f.check == "training_watch")
    assert watch.title == "training loss stagnates" and watch.kind == "symptom"
    assert checks.index("training_watch") > checks.index("lr_range")


@pytest.mark.slow
def test_the_quickstart_cnn_on_the_sample_digits_is_clean():
    from tfprod.data import load_digits
    from tfprod.models import small_cnn

    (x, y), _ = load_digits(32)
    keras.utils.set_random_seed(0)
    report = diagnose(small_cnn((32, 32, 1), 10), batches(x.astype("float32"), y))
    assert not report.has_errors, report.to_markdown()
    assert not [f for f in report.findings if f.severity == "warning"], report.to_markdown()


def _moons():
    from sklearn.datasets import make_moons

    x, y = make_moons(800, noise=0.3, random_state=0)
    return x.astype("float32"), y.astype("float32")


def test_dead_units_are_skipped_with_a_note_on_subclassed_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(16, activation="relu")
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    xm, ym = _moons()
    net = Net()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    report = diagnose(net, batches(xm, ym.astype("int64")))
    assert not report.has_errors, report.to_markdown()
    assert "dead_units" in report.skipped
    note = next(f for f in report.findings if f.check == "dead_units")
    assert note.severity == "info" and "subclassed" in note.evidence


def test_an_unused_layer_is_reported_as_not_connected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.used = keras.layers.Dense(2)
            self.unused = keras.layers.Dense(3)

        def call(self, x):
            self.unused(x)  # built and trainable, but its output goes nowhere
            return self.used(x)

    xm, ym = _moons()
    net = Net()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    report = diagnose(net, batches(xm, ym.astype("int64")))
    cut = next(f for f in report.findings if f.check == "gradient_cut")
    assert cut.title == "weights not connected to the loss" and net.unused.name in cut.evidence


def test_the_graph_scan_flags_round_but_not_shape_arithmetic(digits):
    x, y = digits
    # Integer arithmetic on a weight-derived tensor's shape carries no gradient to cut.
    scale = keras.layers.Lambda(lambda t: t * tf.cast(tf.shape(t)[1] // 16, tf.float32) / 2)
    clean = build_probe(mlp(between=scale), batches(x, y))
    xb, yb = clean.take(8)
    assert non_differentiable_ops(clean, xb, yb) == []
    cut = build_probe(mlp(between=keras.layers.Lambda(keras.ops.floor)), batches(x, y))
    ops = non_differentiable_ops(cut, *cut.take(8))
    assert [op.type for op in ops] == ["Floor"]


def test_inputs_scaled_twice_are_a_warning(digits):
    x, y = digits
    report = diagnose(mlp(), batches(x / 255, y))
    twice = [f for f in report.findings if f.title == "inputs scaled twice"]
    assert twice and twice[0].severity == "warning"


@pytest.mark.parametrize("train, validation, expected", [
    ([2.3, float("nan")], [2.3, float("nan")], ("error", "loss became NaN during training")),
    ([2.31, 2.30, 2.30], [2.3, 2.3, 2.3], ("error", "training loss stagnates")),
    ([0.40, 0.40, 0.40], [0.5, 0.5, 0.5], ("warning", "training loss stagnates")),
    ([1.0, 0.5, 0.3, 0.2, 0.1], [1.0, 0.6, 0.7, 0.8, 0.9],
     ("warning", "validation loss diverges from training loss")),
    ([1.0, 0.5, 0.3, 0.2, 0.1], [1.0, 0.6, 0.5, 0.65, 0.62], None),  # one bump is noise
])
def test_the_training_watch_reads_the_curves(train, validation, expected, digits, monkeypatch):
    from tfprod.doctor import watch

    nan = next((i + 1 for i, v in enumerate(train) if v != v), None)
    monkeypatch.setattr(watch, "train_curves",
                        lambda *a, **k: watch.Curves(train, validation, nan))
    probe = build_probe(mlp(), batches(*digits))
    found, ran = watch.check_watch(probe)
    assert ran
    assert [(f.severity, f.title) for f in found] == ([expected] if expected else [])
    assert all(f.kind == "symptom" for f in found)


def test_rank_puts_causes_first_then_severity_then_check_order():
    def f(check, severity):
        return Finding(check, severity, check, "numbers", "fix")

    found = rank([f("overfit_batch", "error"), f("learning_rate", "warning"),
                  f("features", "info"), f("dead_units", "error"), f("data_values", "error")])
    assert [(x.check, x.severity) for x in found] == [
        ("data_values", "error"), ("dead_units", "error"), ("learning_rate", "warning"),
        ("overfit_batch", "error"), ("features", "info")]
    assert set(CHECKS.values()) == {"cause", "symptom"}
    with pytest.raises(ValueError):
        Finding("nope", "error", "t", "e", "f")
    with pytest.raises(ValueError):
        Finding("labels", "fatal", "t", "e", "f")


def test_report_renders_as_json_and_markdown():
    report = DoctorReport("net", "quick", 100, [
        Finding("learning_rate", "error", "learning rate too high", "ratio 0.9 | per step",
                "lower it", {"ratio": np.float32(0.9), "loss": float("nan")})],
        passed=["data_values"], skipped={"dead_units": "a subclassed model"},
        seconds={"total": 1.5})
    payload = json.loads(report.dumps())
    assert payload["has_errors"] is True
    assert payload["findings"][0]["kind"] == "cause"
    assert payload["findings"][0]["values"] == {"ratio": pytest.approx(0.9), "loss": None}
    md = report.to_markdown()
    assert "| 1 | error | cause | **learning rate too high** (`learning_rate`)" in md
    assert "ratio 0.9 \\| per step" in md and "`dead_units` (a subclassed model)" in md


def test_the_public_surface_exists():
    doctor = importlib.import_module("tfprod.doctor")
    assert {"diagnose", "DoctorReport", "Finding", "load_model", "load_data"} <= set(
        doctor.__all__)
    assert all(hasattr(doctor, name) for name in doctor.__all__)


@pytest.mark.parametrize("schedule", [
    keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5),
    keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=500, warmup_target=1e-2,
                                           warmup_steps=50),
    keras.optimizers.schedules.PiecewiseConstantDecay([100, 300], [1e-2, 1e-3, 1e-6]),
])
def test_the_schedule_is_read_in_one_call_as_step_by_step(schedule):
    """Equivalence: the vectorized read of a schedule equals calling it at each step."""
    from tfprod.doctor.learning_rate import _schedule_at

    steps = np.array([0, 1, 9, 10, 49, 50, 51, 99, 100, 101, 299, 300, 301, 700, 10**6])
    one_by_one = np.array([float(schedule(int(s))) for s in steps])
    np.testing.assert_allclose(_schedule_at(schedule, steps), one_by_one, rtol=1e-6)


def test_the_schedule_check_finds_the_step_where_it_fades(digits):
    from tfprod.doctor.learning_rate import check_lr_schedule

    # Warm-up to 1e-2 over 50 steps, then cosine to 0 over 100 more: below 1% at step ~144,
    # within 5 epochs of the digits (45 batches each).
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=100, warmup_target=1e-2,
                                                      warmup_steps=50)
    probe = build_probe(mlp(optimizer=keras.optimizers.Adam(schedule)), batches(*digits))
    found, ran = check_lr_schedule(probe)
    assert ran and found[0].values["peak_step"] == 50
    step = found[0].values["floor_step"]
    assert 140 < step < 148 and float(schedule(step)) <= 1e-4 < float(schedule(step - 1))
    assert f"{probe.steps_per_epoch} batches" in found[0].evidence


def test_batch_purity_and_spread_on_known_batches():
    from tfprod.doctor.batch_order import _purity, _spread

    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    assert _purity(labels, [3, 3, 2]) == pytest.approx((1 + 1 + 0.5) / 3)
    targets = np.array([0.0, 2.0, 10.0, 10.0])
    assert _spread(targets, [2, 2]) == pytest.approx(0.5)


def test_leakage_ignores_imbalance_and_finds_a_discrete_copy(zoo):
    from tfprod.doctor.leakage import check_leakage

    x, y = zoo.rare  # 98:2: a constant guess agrees with its neighbour 96% of the time
    probe = build_probe(dense(6, 1, "sigmoid", "binary_crossentropy"), batches(x, y))
    found, ran = check_leakage(probe)
    assert ran and not found
    leaked = np.concatenate([x, y[:, None]], axis=1)
    probe = build_probe(dense(7, 1, "sigmoid", "binary_crossentropy"), batches(leaked, y))
    found, _ = check_leakage(probe)
    assert list(found[0].values["columns"]) == ["x[:, 6]"]


def test_the_docs_list_every_check():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "doctor.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", text, flags=re.M)
    assert [name for name, _ in rows] == list(CHECKS)  # in ranking order, each once
    assert all(len(failure) > 20 for _, failure in rows)
