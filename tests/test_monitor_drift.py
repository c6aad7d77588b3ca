"""tfprod.monitor drift: exact tests equal scipy's, planted shifts found, false alarms bounded."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from monitor_data import planted_table
from tfprod.errors import TfprodError
from tfprod.monitor import Dataset, detect_drift, render_html
from tfprod.monitor import multivariate as mv
from tfprod.monitor import univariate as uni

# ------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("n,m,ties", [(300, 500, False), (1000, 1000, True), (57, 4000, True)])
def test_ks_and_wasserstein_equal_scipy(n, m, ties):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal(n), rng.standard_normal(m) * 1.2 + 0.1
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    d, p, w = uni.ks_wasserstein(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)


def test_nan_and_inf_are_left_out():
    a = np.array([0.0, 1.0, np.nan, 2.0, np.inf])
    b = np.array([0.5, 1.5, -np.inf, 2.5])
    assert uni.ks_wasserstein(a, b)[2] == pytest.approx(
        stats.wasserstein_distance([0, 1, 2], [0.5, 1.5, 2.5]))


def test_categorical_tests_equal_scipy():
    rng = np.random.default_rng(0)
    a = rng.choice(["x", "y", "z"], 500, p=[0.5, 0.3, 0.2])
    b = rng.choice(["x", "y", "z", "w"], 400, p=[0.4, 0.3, 0.2, 0.1])
    cats, r, c = uni.category_counts(a, b)
    assert cats == ["w", "x", "y", "z"] and r.sum() == 500 and c.sum() == 400
    statistic, p = uni.chi2_from_counts(r, c)
    ref = stats.chi2_contingency(np.stack([r, c]), correction=False)
    assert statistic == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert uni.jensen_shannon_from_counts(r, c) == pytest.approx(
        distance.jensenshannon(r / r.sum(), c / c.sum()))


def test_benjamini_hochberg_equals_the_step_up_rule():
    rng = np.random.default_rng(1)
    p = np.r_[rng.uniform(size=40), rng.uniform(0, 1e-3, size=10), [np.nan]]
    adjusted = uni.benjamini_hochberg(p)
    assert np.isnan(adjusted[-1])
    q = p[:-1]
    m = q.size
    for fdr in (0.01, 0.05, 0.2):
        ranked = np.sort(q)
        passing = [k for k in range(1, m + 1) if ranked[k - 1] <= k / m * fdr]
        cutoff = ranked[max(passing) - 1] if passing else -1.0
        assert set(np.flatnonzero(q <= cutoff)) == set(np.flatnonzero(adjusted[:-1] <= fdr))


def test_ks_p_values_are_uniform_without_drift():
    rng = np.random.default_rng(2)
    p = [uni.ks_wasserstein(rng.standard_normal(400), rng.standard_normal(600))[1]
         for _ in range(600)]
    assert 0.025 <= np.mean(np.array(p) < 0.05) <= 0.075


# ------------------------------------------------------------------------------ planted shifts


def _tables(n=3000, seed=0, **shift):
    rng = np.random.default_rng(seed)
    return planted_table(rng, n), planted_table(rng, n, **shift)


def test_planted_mean_variance_and_category_shifts_are_found_exactly():
    ref, cur = _tables(mean_shift=True, variance=True, categorical=True)
    report = detect_drift(ref, cur, multivariate="none")
    assert len(report.features) == 50
    assert sorted(report.drifted) == ["color", "f0", "f1", "f2", "scale"]
    assert report.dataset_drift and report.exit_status == 1
    by = {f.name: f for f in report.features}
    assert by["f0"].test == "wasserstein" and 0.12 < by["f0"].score < 0.3
    assert by["color"].test == "jensen_shannon" and by["count"].kind == "categorical"
    assert report.ranked()[0].drift


def test_small_samples_use_p_value_tests():
    ref, cur = _tables(n=800, mean_shift=True)
    for name in ("f0", "f1", "f2"):
        cur[name] += 0.3  # KS at 800 rows a side: a 0.5 std shift, reliably
    report = detect_drift(ref, cur, multivariate="none")
    by = {f.name: f for f in report.features}
    assert by["f0"].test == "ks" and by["color"].test == "chi2"
    assert sorted(report.drifted) == ["f0", "f1", "f2"]


def test_rotation_is_found_only_by_the_multivariate_test():
    ref, cur = _tables(rotation=True)
    report = detect_drift(ref, cur)
    assert report.drifted == []
    m = report.multivariate
    assert m["test"] == "domain_classifier" and m["drift"] and m["score"] > 0.6
    lo, hi = m["interval"]
    assert lo < m["score"] < hi
    assert report.dataset_drift


def test_no_drift_between_two_samples_of_one_distribution():
    ref, cur = _tables(seed=5)
    report = detect_drift(ref, cur)
    assert not report.dataset_drift and report.exit_status == 0
    assert 0.4 < report.multivariate["score"] < 0.55


@pytest.mark.slow
def test_false_alarm_rate_over_100_no_drift_repeats_is_at_most_5_percent():
    rng = np.random.default_rng(123)
    alarms = 0
    for k in range(100):
        report = detect_drift(planted_table(rng, 1500), planted_table(rng, 1500), seed=k,
                              workers=1)
        alarms += report.dataset_drift
    assert alarms <= 5


def test_bootstrap_auc_of_the_full_sample_equals_the_rank_auc():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.standard_normal(500) + labels, 1)  # with ties
    direct = mv.auc(labels, scores)
    assert direct == pytest.approx(
        stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic /
        (labels.sum() * (500 - labels.sum())))
    boots = mv._bootstrap_auc(labels, scores, 300, rng)
    assert abs(np.mean(boots) - direct) < 0.01 and 0.005 < np.std(boots) < 0.05


def test_mmd_finds_a_shift_in_embeddings_and_not_noise():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    assert mv.mmd(a, b, permutations=100).p_value > 0.05
    shifted = mv.mmd(a, b + 0.4, permutations=100)
    assert shifted.p_value < 0.02 and shifted.score > 0
    # The permutation statistic equals the direct unbiased estimate.
    k = np.exp(-((a[:, None] - a[None]) ** 2).sum(-1) / 16.0)
    assert k.shape == (300, 300)


def test_images_are_compared_on_embeddings_with_mmd():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (400, 8, 8, 1)).astype(np.float32)
    ref = Dataset({"image": images[:200]}, embeddings=rng.standard_normal((200, 8)))
    cur = Dataset({"image": np.clip(images[200:] * 1.3, 0, 255)},
                  embeddings=rng.standard_normal((200, 8)) + 0.5)
    report = detect_drift(ref, cur)
    assert [f.name for f in report.features] == ["image:mean", "image:std"]
    assert report.multivariate["test"] == "mmd" and report.multivariate["drift"]
    assert "image:mean" in report.drifted


def test_prediction_drift_and_confidence_based_accuracy_estimate():
    rng = np.random.default_rng(6)

    def classifier(n, hard):
        logits = rng.standard_normal((n, 3)) * (0.7 if hard else 3.0)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        # labels drawn from the probabilities: the model is calibrated
        labels = np.array([rng.choice(3, p=p) for p in probs])
        return probs, labels

    rp, rl = classifier(3000, hard=False)
    cp, cl = classifier(3000, hard=True)
    ref = Dataset({"x": rng.standard_normal(3000)}, {"probabilities": rp}, rl)
    cur = Dataset({"x": rng.standard_normal(3000)}, {"probabilities": cp})
    report = detect_drift(ref, cur)
    assert report.prediction_drift["probabilities:confidence"]["drift"]
    perf = report.performance
    actual = float(np.mean(cp.argmax(1) == cl))
    assert abs(perf["estimated_accuracy"] - actual) <= max(perf["estimated_accuracy_error"], 0.03)
    assert perf["reference_accuracy"] > actual + 0.2
    cur.labels = cl.astype(float)
    cur.labels[::2] = np.nan  # half the labels have not arrived
    labeled = detect_drift(ref, cur).performance
    assert labeled["labeled"] == 1500
    assert labeled["accuracy"] == pytest.approx(np.mean(cp[1::2].argmax(1) == cl[1::2]))


# ------------------------------------------------------------------------------ reports


def test_json_has_the_documented_fields_and_html_stays_small():
    ref, cur = _tables(n=20_000, mean_shift=True)
    report = detect_drift(ref, cur)
    doc = report.to_json()
    assert {"dataset_drift", "share_drifted", "multivariate", "validation",
            "prediction_drift", "features"} <= doc.keys()
    assert set(doc["multivariate"]) >= {"test", "score", "drift"}
    first = doc["features"][0]
    assert set(first) >= {"name", "kind", "test", "score", "p_value", "drift"}
    assert doc["share_drifted"] == pytest.approx(3 / 50)
    page = render_html(report)
    assert page.index("DRIFT") < page.index("<h2>Features")  # the summary comes first
    assert page.count("data:image/png;base64,") == 12
    assert len(page) < 250_000  # 20,000 rows a side, no raw data embedded


def test_validation_issues_name_the_offending_rows():
    rng = np.random.default_rng(7)
    ref = {"x": rng.uniform(0, 1, 500), "color": rng.choice(["a", "b"], 500).astype(object)}
    cur = {"x": np.r_[rng.uniform(0, 1, 95), [np.nan, 5.0, 7.0, -1.0, 2.0]],
           "color": np.r_[["a"] * 98, ["purple", "purple"]].astype(object)}
    report = detect_drift(ref, Dataset(cur, ids=[f"r{i}" for i in range(100)]))
    by = {(v["feature"], v["check"]): v for v in report.validation}
    assert by[("x", "nan")]["examples"] == ["r95"] and by[("x", "nan")]["severity"] == "error"
    assert by[("x", "out_of_range")]["count"] == 4
    assert by[("x", "out_of_range")]["examples"] == ["r96", "r97", "r98", "r99"]
    assert by[("color", "unseen_category")]["count"] == 2
    assert report.exit_status == 1


def test_range_and_nan_checks_per_row_of_multi_value_features():
    """Rows out of range or non-finite in any element are named; +-Inf is a NaN/Inf issue,
    not an out-of-range one; a reference with NaN allows them; clean data has no issues."""
    from tfprod.monitor import Schema

    rng = np.random.default_rng(3)
    ref = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    schema = Schema.infer({"x": ref, "n": np.r_[rng.uniform(0, 1, 99), np.nan]})
    assert schema.features["x"].minimum == float(ref.min()) and not schema.features["x"].allow_nan
    assert schema.features["n"].allow_nan and schema.features["n"].maximum < 1
    assert schema.validate({"x": ref[:50], "n": np.full(50, 0.5)}) == []
    cur = rng.uniform(-0.5, 0.5, (10, 3)).astype(np.float32)
    cur[2, 1], cur[4, 0], cur[6, 2], cur[8, 1] = 9.0, np.inf, np.nan, -np.inf
    cur[8, 2] = -7.0  # out of range beside an Inf in the same row
    issues = schema.validate({"x": cur, "n": np.r_[np.full(9, 0.5), np.nan]})
    by = {i["check"]: i for i in issues if i["feature"] == "x"}
    assert by["nan"]["examples"] == [4, 6, 8]
    assert by["out_of_range"]["examples"] == [2, 8]
    assert not [i for i in issues if i["feature"] == "n"]  # the reference had NaN


def test_wrong_dtype_and_shape_are_validation_errors():
    from tfprod.monitor import Schema

    schema = Schema.infer({"x": np.zeros((10, 3), np.float32), "t": np.array(["a"] * 10, object)})
    issues = schema.validate({"x": np.zeros((4, 2), np.float32), "t": np.zeros(4),
                              "z": np.zeros(4)})
    checks = {(i["feature"], i["check"]) for i in issues}
    assert checks == {("x", "shape"), ("t", "dtype"), ("z", "extra_feature")}
    assert all(i["severity"] == "error" for i in issues)


# ------------------------------------------------------------------------------ bad input


def test_different_features_get_one_line():
    with pytest.raises(TfprodError, match=r"missing b; extra c"):
        detect_drift({"a": np.zeros(5), "b": np.zeros(5)}, {"a": np.zeros(5), "c": np.zeros(5)})


def test_an_empty_window_gets_one_line():
    with pytest.raises(TfprodError, match="no rows to compare"):
        detect_drift({"a": np.zeros(5)}, {"a": np.zeros(0)})


def test_bad_options_get_one_line():
    with pytest.raises(TfprodError, match="numeric_test='t'; expected auto or one of ks"):
        detect_drift({"a": np.zeros(5)}, {"a": np.zeros(5)}, numeric_test="t")
    with pytest.raises(TfprodError, match="fdr=2"):
        detect_drift({"a": np.zeros(5)}, {"a": np.zeros(5)}, fdr=2)


def test_skew_comparators():
    from tfprod.monitor import feature_skew, prediction_skew

    rng = np.random.default_rng(9)
    train = {"x": rng.standard_normal(2000), "c": rng.choice(["a", "b"], 2000).astype(object)}
    served = {"x": rng.standard_normal(2000) * 2 + 1,  # a different scaling at serving time
              "c": rng.choice(["a", "b"], 2000, p=[0.9, 0.1]).astype(object)}
    by = {s["name"]: s for s in feature_skew(train, served)}
    assert by["x"]["measure"] == "jensen_shannon" and by["x"]["skew"]
    assert by["c"]["measure"] == "l_infinity" and by["c"]["score"] == pytest.approx(0.4, abs=0.04)
    same = feature_skew(train, {k: v[::-1].copy() for k, v in train.items()})
    assert not any(s["skew"] for s in same) and all(s["score"] < 1e-9 for s in same)
    probs = rng.dirichlet([1, 1, 1], 100)
    flipped = probs.copy()
    flipped[:5] = flipped[:5, ::-1]
    out = prediction_skew({"p": probs}, {"p": flipped})
    assert out["p"]["skew"] and out["p"]["class_flips"] == pytest.approx(
        np.mean(probs.argmax(1) != flipped.argmax(1)))
    assert not prediction_skew({"p": probs}, {"p": probs + 1e-6})["p"]["skew"]


def test_skew_report_ranks_thresholds_and_exit_status():
    """What `tfprod monitor skew` prints and returns: the planted features, worst first."""
    from tfprod.monitor import skew_report

    rng = np.random.default_rng(10)
    train = planted_table(rng, 3000)
    served = planted_table(rng, 3000, categorical=True, variance=True)
    served["f7"] = served["f7"] * 3 + 2  # a unit change in one feature at serving time
    report = skew_report(train, served)
    assert sorted(report.skewed) == ["color", "f7", "scale"] and report.exit_status == 1
    # score / threshold, worst first: f7 0.48, scale 0.18 (std x1.5), color 0.15 (l-infinity)
    assert [r[0] for r in report.rows()[:3]] == ["f7", "scale", "color"]
    assert report.rows()[2][-1] == "SKEW" and report.rows()[3][-1] == "-"
    doc = report.to_json()
    assert doc["skew"] and doc["predictions"] is None and doc["training_rows"] == 3000
    by = {f["name"]: f for f in doc["features"]}
    assert by["color"]["measure"] == "l_infinity" and by["f7"]["measure"] == "jensen_shannon"
    assert by["f7"]["score"] > 0.4 and by["color"]["score"] == pytest.approx(0.15, abs=0.03)
    assert skew_report(train, served, jensen_shannon=0.3, l_infinity=0.5).skewed == ["f7"]
    clean = skew_report(train, planted_table(rng, 3000))
    assert not clean.skew and clean.exit_status == 0 and clean.summary().startswith("no skew")
    probs = rng.dirichlet([1, 1, 1], 50)
    agree = skew_report(train, served, served_predictions={"p": probs},
                        training_predictions={"p": probs + 1e-6})
    assert agree.predictions["p"]["skew"] is False and "predictions agree" in agree.summary()
    with pytest.raises(TfprodError, match="the serving data has no rows"):
        skew_report(train, {k: v[:0] for k, v in train.items()})
    with pytest.raises(TfprodError, match="share no name"):
        skew_report(train, served, served_predictions={"p": probs},
                    training_predictions={"q": probs})
    with pytest.raises(TfprodError, match=r"output 'p': served shape \(50, 3\)"):
        skew_report(train, served, served_predictions={"p": probs},
                    training_predictions={"p": probs[:10]})


def test_binned_path_equals_the_exact_one_within_its_bounds(monkeypatch):
    """Large samples are compared on fine histograms (linear time): KS and Wasserstein within
    the stated bounds of the exact merge, the same decisions; atoms fall back to exact."""
    from tfprod.monitor import drift as dr

    rng = np.random.default_rng(11)
    n = 300_000
    a = rng.standard_normal(n).astype(np.float32)
    b = (rng.standard_normal(n) * 1.02 + 0.15).astype(np.float32)
    d, p, w = uni.ks_wasserstein(a, b)
    binned = uni.binned_cdfs(a, b)
    assert d - binned.ks_error <= binned.ks <= d + 1e-12
    assert abs(binned.wasserstein - w) <= binned.wasserstein_error
    assert uni.binned_is_tight(binned, n, n, float(np.std(a)))
    assert binned.quantile("current", 0.5) == pytest.approx(np.median(b), abs=1e-3)
    exact = dr._numeric("x", "wasserstein", a, b)
    monkeypatch.setattr(uni, "EXACT_MAX_ROWS", 10_000)
    calls, binned_numeric = [], dr._numeric_binned
    monkeypatch.setattr(dr, "_numeric_binned", lambda *args: calls.append(1) or
                        binned_numeric(*args))
    fast = dr._numeric("x", "wasserstein", a, b)
    assert calls == [1]
    assert fast.score == pytest.approx(exact.score, abs=uni.BINNED_MAX_W_ERROR)
    assert fast.p_value == pytest.approx(exact.p_value, abs=1e-12)  # both ~0: a real shift
    assert fast.reference_mean == pytest.approx(exact.reference_mean, rel=1e-4)
    for f, e in zip(fast.histogram, exact.histogram, strict=True):  # the report's histogram
        np.testing.assert_allclose(f, e, atol=2e-3)
    same = rng.standard_normal(n).astype(np.float32)  # no shift: a p-value in the middle
    fast_same = dr._numeric("x", "ks", a, same)
    monkeypatch.setattr(uni, "EXACT_MAX_ROWS", 10**9)
    exact_same = dr._numeric("x", "ks", a, same)
    monkeypatch.setattr(uni, "EXACT_MAX_ROWS", 10_000)
    assert exact_same.p_value > 0.01 and fast_same.p_value == pytest.approx(
        exact_same.p_value, abs=0.05)
    # Atoms (small integers): a bin holds a large mass, the bound is loose: exact instead.
    calls.clear()
    ints = dr._numeric("k", "wasserstein", rng.poisson(3, n).astype(np.float64),
                       rng.poisson(3, n).astype(np.float64))
    assert not calls and ints.score < 0.02
    # The planted table found the same, binned (every column above the limit) and exact.
    monkeypatch.setattr(uni, "EXACT_MAX_ROWS", 1000)
    ref, cur = planted_table(rng, 20_000), planted_table(rng, 20_000, mean_shift=True,
                                                         variance=True)
    binned_report = detect_drift(ref, cur, multivariate="none")
    assert calls  # the continuous columns went the binned way
    monkeypatch.setattr(uni, "EXACT_MAX_ROWS", 10**9)
    exact_report = detect_drift(ref, cur, multivariate="none")
    assert binned_report.drifted == exact_report.drifted
    assert set(binned_report.drifted) >= {"f0", "f1", "f2", "scale"}


def test_binned_path_takes_more_bins_when_the_rows_ask_for_them(monkeypatch):
    """Many rows tighten KS's tolerance (1/sqrt(n)) below what FINE_BINS give: a second, finer
    histogram keeps the column on the linear path (10M rows a side used to fall back to the
    sort here), within the same bounds; atoms still go to the exact path."""
    rng = np.random.default_rng(5)
    n = 300_000
    a = rng.standard_normal(n).astype(np.float32)
    b = (rng.standard_normal(n) + 0.05).astype(np.float32)
    std = float(np.std(a))
    monkeypatch.setattr(uni, "FINE_BINS", 1 << 10)  # too coarse for 300k rows, as 2^18 for 10M
    assert not uni.binned_is_tight(uni.binned_cdfs(a, b, bins=uni.FINE_BINS), n, n, std)
    tight = uni.tight_binned_cdfs(a, b, std)
    assert tight is not None and len(tight.reference) > 1 << 10
    assert uni.binned_is_tight(tight, n, n, std)
    d, _, w = uni.ks_wasserstein(a, b)
    assert d - tight.ks_error <= tight.ks <= d + 1e-12
    assert abs(tight.wasserstein - w) <= tight.wasserstein_error
    # Heavy tails (Student's t, 5 degrees of freedom) stretch the range: the first guess is
    # too coarse and the second pass, with the bins the bounds ask for, is tight.
    t5 = rng.standard_t(5, n).astype(np.float32)
    t5b = (rng.standard_t(5, n) + 0.05).astype(np.float32)
    first = uni.binned_cdfs(t5, t5b, bins=1 << 16)  # what the rows alone ask for: 2^16
    assert not uni.binned_is_tight(first, n, n, float(np.std(t5)))
    finer = uni.tight_binned_cdfs(t5, t5b, float(np.std(t5)))
    assert finer is not None and len(finer.reference) > 1 << 16
    d, _, w = uni.ks_wasserstein(t5, t5b)
    assert d - finer.ks_error <= finer.ks <= d + 1e-12
    monkeypatch.setattr(uni, "MAX_FINE_BINS", 1 << 17)  # a cap the bounds cannot meet: sort
    assert uni.tight_binned_cdfs(t5, t5b, float(np.std(t5))) is None
    ints = rng.poisson(3, n).astype(np.float64)
    assert uni.tight_binned_cdfs(ints, rng.poisson(3, n).astype(np.float64),
                                 float(np.std(ints))) is None
