"""``detect_drift``: everything that changed between a reference and a current dataset.

Per column (see :mod:`tfprod.monitor.univariate` for the tests and how one is chosen), a
multivariate test of the joint distribution (:mod:`tfprod.monitor.multivariate`), schema
validation (:mod:`tfprod.monitor.validation`), prediction drift, and accuracy: measured where
the current rows have labels, estimated from confidence where they do not
(:mod:`tfprod.monitor.performance`).

The decision. The p-values of all columns and of the multivariate test form one family,
adjusted with Benjamini-Hochberg at the false-discovery rate ``fdr``; a column drifts when its
adjusted p-value is below ``fdr`` and, for a distance test, its distance reaches the threshold;
the joint distribution drifts when its adjusted p-value is below ``fdr`` (and, for the domain
classifier, the AUC reaches 0.55). The dataset drifts when a column or the joint distribution
does. With no drift at all, BH keeps the chance of any false alarm at or below ``fdr``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.monitor import multivariate as mv
from tfprod.monitor import performance as perf
from tfprod.monitor import univariate as uni
from tfprod.monitor.datasets import Dataset, as_dataset
from tfprod.monitor.report import DriftReport, FeatureDrift
from tfprod.monitor.table import Column, check_same_features, column_values, plan_columns
from tfprod.monitor.validation import Schema

HIST_BINS = 20


def _numeric(column: str, test: str, a: np.ndarray, b: np.ndarray) -> FeatureDrift:
    a, b = uni._finite(a), uni._finite(b)
    if not a.size or not b.size:
        return FeatureDrift(column, "numeric", test, float("nan"), None)
    std = float(np.std(a))
    if min(a.size, b.size) > uni.EXACT_MAX_ROWS:  # linear time where sorting is not
        binned = uni.tight_binned_cdfs(a, b, std)
        if binned is not None:
            return _numeric_binned(column, test, a, b, std, binned)
    a, b = np.sort(a), np.sort(b)
    d, p, w = uni.ks_wasserstein(a, b, assume_sorted=True)
    if test == "ks":
        score = d
    elif test == "wasserstein":
        score = w / max(std, 1e-12)
    else:
        score = uni.psi(a, b)
    lo, hi = float(a[int(0.001 * (a.size - 1))]), float(a[int(0.999 * (a.size - 1))])
    median = float(b[b.size // 2])  # b is sorted
    lo, hi = min(lo, median), max(hi, median)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    ref = np.diff(np.searchsorted(a, edges, side="right")) / a.size
    cur = np.diff(np.searchsorted(b, edges, side="right")) / b.size
    return FeatureDrift(column, "numeric", test, score, p,
                        threshold=uni.THRESHOLDS.get(test), reference_mean=float(a.mean()),
                        current_mean=float(b.mean()), histogram=(edges, ref, cur))


def _numeric_binned(column: str, test: str, a: np.ndarray, b: np.ndarray, std: float,
                    binned: uni.BinnedCdfs) -> FeatureDrift:
    """:func:`_numeric` on fine histograms: the same scores within the stated bounds."""
    d = binned.ks
    p = uni.ks_p_value(d, a.size, b.size)
    if test == "ks":
        score = d
    elif test == "wasserstein":
        score = binned.wasserstein / max(std, 1e-12)
    else:
        score = uni.psi(a, b)
    lo, hi = binned.quantile("reference", 0.001), binned.quantile("reference", 0.999)
    median = binned.quantile("current", 0.5)
    lo, hi = min(lo, median), max(hi, median)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    return FeatureDrift(column, "numeric", test, score, p,
                        threshold=uni.THRESHOLDS.get(test), reference_mean=float(a.mean()),
                        current_mean=float(b.mean()),
                        histogram=(edges, binned.shares("reference", edges),
                                   binned.shares("current", edges)))


def _categorical(column: str, test: str, a: np.ndarray, b: np.ndarray) -> FeatureDrift:
    cats, r, c = uni.category_counts(a, b)
    statistic, p = uni.chi2_from_counts(r, c)
    score = statistic if test == "chi2" else uni.jensen_shannon_from_counts(r, c)
    top = np.argsort(-(r + c))[:HIST_BINS]
    hist = ([str(cats[i]) for i in top], r[top] / max(r.sum(), 1), c[top] / max(c.sum(), 1))
    return FeatureDrift(column, "categorical", test, score, p,
                        threshold=uni.THRESHOLDS.get(test), histogram=hist)


def _test_column(ref: dict, cur: dict, column: Column, numeric_test: str, categorical_test: str
                 ) -> FeatureDrift:
    a, b = column_values(ref, column), column_values(cur, column)
    override = numeric_test if column.kind == "numeric" else categorical_test
    test = uni.choose_test(column.kind, len(a), len(b), override)
    if column.kind == "numeric":
        return _numeric(column.name, test, a, b)
    return _categorical(column.name, test, a, b)


def _joint_matrix(ref: dict, cur: dict, columns: list[Column], rows_a: np.ndarray,
                  rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns as ``[rows, columns]`` float32 matrices of the chosen rows only."""
    ra, ca = [], []
    for c in columns:
        a, b = column_values(ref, c)[rows_a], column_values(cur, c)[rows_b]
        if c.kind == "categorical":
            cats = np.union1d(uni._as_categories(a), uni._as_categories(b))
            a = np.searchsorted(cats, uni._as_categories(a))
            b = np.searchsorted(cats, uni._as_categories(b))
        ra.append(np.asarray(a, np.float32))
        ca.append(np.asarray(b, np.float32))
    return np.stack(ra, 1), np.stack(ca, 1)


def _rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``k`` row indices of ``n``, sorted (the domain classifier's subsample)."""
    return np.arange(n) if n <= k else np.sort(rng.choice(n, k, replace=False))


def _multivariate(ref: Dataset, cur: Dataset, columns: list[Column], how: str, seed: int
                  ) -> mv.MultivariateResult | None:
    if how == "none":
        return None
    has_embeddings = ref.embeddings is not None and cur.embeddings is not None
    if how == "mmd" or (how == "auto" and has_embeddings):
        if not has_embeddings:
            raise TfprodError("multivariate='mmd' needs embeddings of both datasets; export the "
                              "model with an 'embedding' endpoint or use 'domain_classifier'")
        return mv.mmd(ref.embeddings, cur.embeddings, seed=seed)
    scalar = [c for c in columns if c.part in ("value", "element")]
    if how == "auto" and len(scalar) < 2:
        return None
    rng = np.random.default_rng(seed)
    a, b = _joint_matrix(ref.features, cur.features, scalar or columns,
                         _rows(ref.rows, mv.MAX_ROWS, rng), _rows(cur.rows, mv.MAX_ROWS, rng))
    finite = np.isfinite(a).all(1)
    a = a[finite]
    b = b[np.isfinite(b).all(1)]
    if min(len(a), len(b)) < 20:
        return None
    return mv.domain_classifier(a, b, seed=seed)


def _prediction_drift(ref: Dataset, cur: Dataset, fdr: float, categorical_test: str,
                      numeric_test: str) -> dict[str, Any]:
    shared = sorted(set(ref.predictions) & set(cur.predictions))
    if not shared:
        return {}
    a = perf.prediction_columns({k: ref.predictions[k] for k in shared})
    b = perf.prediction_columns({k: cur.predictions[k] for k in shared})
    results = []
    for name in a:
        if name not in b:
            continue
        kind, x = a[name]
        y = b[name][1]
        override = numeric_test if kind == "numeric" else categorical_test
        test = uni.choose_test(kind, len(x), len(y), override)
        f = _numeric(name, test, x, y) if kind == "numeric" else _categorical(name, test, x, y)
        results.append(f)
    _decide(results, fdr)
    out = {}
    for f in results:
        entry = f.to_json()
        if f.kind == "categorical" and f.histogram is not None:
            cats, r, c = f.histogram
            entry["reference_frequencies"] = dict(zip(cats, np.round(r, 4).tolist(), strict=True))
            entry["current_frequencies"] = dict(zip(cats, np.round(c, 4).tolist(), strict=True))
        out[f.name] = entry
    return out


def _decide(features: list[FeatureDrift], fdr: float, extra: list[float] = ()) -> np.ndarray:
    p = np.array([np.nan if f.p_value is None else f.p_value for f in features] + list(extra),
                 dtype=np.float64)
    adjusted = uni.benjamini_hochberg(p)
    for f, q in zip(features, adjusted, strict=False):
        f.p_adjusted = None if np.isnan(q) else float(q)
        significant = f.p_adjusted is not None and f.p_adjusted < fdr
        f.drift = bool(significant and (f.threshold is None or f.score >= f.threshold))
    return adjusted[len(features):]


def _performance(ref: Dataset, cur: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if len(ref.predictions) != 1 or len(cur.predictions) != 1:
        return out
    (name, rp), = ref.predictions.items()
    cp = cur.predictions.get(name)
    if cp is None or not perf.is_classifier_output(rp) or not perf.is_classifier_output(cp):
        return out
    if cur.labels is not None:
        labels = np.asarray(cur.labels, np.float64).reshape(len(cp))
        known = np.isfinite(labels) & (labels >= 0)
        if known.any():
            out["accuracy"] = perf.accuracy(cp[known], labels[known])
            out["labeled"] = int(known.sum())
            if cur.times is not None:
                span = float(np.ptp(cur.times[known])) or 1.0
                out["accuracy_by_window"] = perf.accuracy_by_window(
                    cur.times[known], cp[known], labels[known], max(span / 10, 1.0))
    if ref.labels is not None and len(ref.labels) >= 20:
        calibration = perf.ConfidenceCalibration.fit(rp, ref.labels)
        estimate, error = calibration.estimate(cp)
        out.update(reference_accuracy=calibration.reference_accuracy,
                   estimated_accuracy=estimate, estimated_accuracy_error=error,
                   estimation="confidence-based (CBPE), calibrated on the reference")
    return out


def detect_drift(reference: Any, current: Any, *, fdr: float = 0.05, numeric_test: str = "auto",
                 categorical_test: str = "auto", multivariate: str = "auto",
                 workers: int = 1, seed: int = 0) -> DriftReport:
    """Compare ``current`` with ``reference``: columns, joint distribution, predictions, schema.

    Args:
        reference, current: :class:`Dataset`\\ s, dicts of arrays ``[n, ...]``, 2-D arrays or
            paths (see :func:`load_dataset`).
        fdr: the false-discovery rate of the Benjamini-Hochberg correction.
        numeric_test: ``auto``, ``ks``, ``wasserstein`` or ``psi``.
        categorical_test: ``auto``, ``chi2`` or ``jensen_shannon``.
        multivariate: ``auto`` (MMD on embeddings when both have them, else the domain
            classifier on the scalar columns), ``domain_classifier``, ``mmd`` or ``none``.
        workers: threads for the column tests (1: measured fastest; the work is memory-bound).
        seed: the multivariate test's subsample and permutations.

    Raises:
        TfprodError: different features, an empty dataset, a bad option.
    """
    start = time.perf_counter()
    if not 0 < fdr < 1:
        raise TfprodError(f"fdr={fdr}; expected a false-discovery rate in (0, 1), e.g. 0.05")
    for opt, value, allowed in (("numeric_test", numeric_test, uni.NUMERIC_TESTS),
                                ("categorical_test", categorical_test, uni.CATEGORICAL_TESTS),
                                ("multivariate", multivariate,
                                 ("domain_classifier", "mmd", "none"))):
        if value != "auto" and value not in allowed:
            raise TfprodError(f"{opt}={value!r}; expected auto or one of {', '.join(allowed)}")
    ref, cur = as_dataset(reference, "reference"), as_dataset(current, "current")
    for d in (ref, cur):
        if d.rows == 0:
            raise TfprodError(f"{d.source}: no rows to compare (an empty window?); send traffic "
                              "or widen the window (--since)")
    check_same_features(ref.features, cur.features, where=cur.source)
    issues = Schema.infer(ref.features).validate(cur.features, cur.ids)
    columns = plan_columns(ref.features)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        features = list(pool.map(lambda c: _test_column(ref.features, cur.features, c,
                                                        numeric_test, categorical_test),
                                 columns))
    joint = _multivariate(ref, cur, columns, multivariate, seed)
    extra = [joint.p_value] if joint is not None else []
    joint_adjusted = _decide(features, fdr, extra)
    multi = None
    if joint is not None:
        multi = joint.to_json()
        q = float(joint_adjusted[0])
        multi["p_adjusted"] = q
        multi["drift"] = bool(q < fdr and (joint.threshold is None or
                                           joint.score >= joint.threshold))
    dataset_drift = any(f.drift for f in features) or bool(multi and multi["drift"])
    return DriftReport(
        features=features, fdr=fdr, dataset_drift=dataset_drift, reference_rows=ref.rows,
        current_rows=cur.rows, multivariate=multi, validation=issues,
        prediction_drift=_prediction_drift(ref, cur, fdr, categorical_test, numeric_test),
        performance=_performance(ref, cur), seconds=time.perf_counter() - start)
