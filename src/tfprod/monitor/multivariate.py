"""Multivariate drift: a domain classifier on the joint table, MMD on embeddings.

Both find a change of the joint distribution that leaves every marginal as it was (a rotation
of two correlated features), which no per-feature test can see.

- :func:`domain_classifier`: gradient-boosted trees learn to tell reference rows from current
  rows on one half of a balanced subsample; the AUC on the other half is the score. Under "no
  drift" the held-out labels are exchangeable given the scores, so the AUC follows the
  Mann-Whitney null (its permutation distribution), which gives the p-value; a bootstrap of the
  held-out half gives the interval.
- :func:`mmd`: the unbiased squared maximum mean discrepancy with a Gaussian kernel (median
  heuristic bandwidth), with a permutation p-value; for images, on the model's embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

#: AUC at or above which the domain classifier reports drift (with a significant p-value).
AUC_THRESHOLD = 0.55
MAX_ROWS = 5000
MMD_MAX_ROWS = 1000


@dataclass(frozen=True)
class MultivariateResult:
    """A multivariate test: ``score`` (AUC or MMD^2), its p-value and a 95% interval."""

    test: str
    score: float
    p_value: float
    interval: tuple[float, float] | None
    threshold: float | None
    rows: int

    def to_json(self) -> dict:
        return {"test": self.test, "score": self.score, "p_value": self.p_value,
                "interval": list(self.interval) if self.interval else None,
                "threshold": self.threshold, "rows_per_side": self.rows}


def _subsample(x: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= rows:
        return x
    return x[np.sort(rng.choice(len(x), rows, replace=False))]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve from ranks (ties count half)."""
    ranks = stats.rankdata(scores)
    pos = labels.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _bootstrap_auc(labels: np.ndarray, scores: np.ndarray, resamples: int,
                   rng: np.random.Generator) -> list[float]:
    """AUCs of bootstrap resamples, each as a weighted AUC over one shared sort of the scores."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    group = np.r_[0, np.cumsum(s[1:] != s[:-1])]  # tied scores share a group
    n = len(s)
    out = []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n)[order].astype(np.float64)
        wp, wn = w * y, w * ~y
        if not wp.sum() or not wn.sum():
            continue
        neg = np.bincount(group, wn)
        below = np.cumsum(neg) - neg
        out.append(float(np.dot(wp, below[group] + 0.5 * neg[group]) / (wp.sum() * wn.sum())))
    return out


def domain_classifier(reference: np.ndarray, current: np.ndarray, *, max_rows: int = MAX_ROWS,
                      seed: int = 0, bootstrap: int = 200) -> MultivariateResult:
    """Can a classifier tell current rows from reference rows? ``[n, d]`` numeric matrices.

    Args:
        reference, current: rows x features (categorical features as integer codes).
        max_rows: rows drawn from each side (balanced), half to train, half to score.
        seed: the subsample, split and trees.
        bootstrap: resamples of the held-out half for the interval.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    rows = min(len(reference), len(current), max_rows)
    a = _subsample(np.asarray(reference, np.float32), rows, rng)
    b = _subsample(np.asarray(current, np.float32), rows, rng)
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(rows, np.int8), np.ones(rows, np.int8)])
    perm = rng.permutation(2 * rows)
    x, y = x[perm], y[perm]
    half = rows  # train on one half of the shuffled rows, score the other
    model = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, max_leaf_nodes=15,
                                           early_stopping=False, random_state=seed)
    # One OpenMP thread: on a busy machine (or in a server thread) spinning OpenMP workers cost
    # ten times the work itself; the subsample is small enough for one core.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x[:half], y[:half])
        scores = model.predict_proba(x[half:])[:, 1]
    held = y[half:]
    value = auc(held, scores)
    n1, n0 = int(held.sum()), int(len(held) - held.sum())
    sd = np.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
    p = float(stats.norm.sf((value - 0.5) / sd))
    boots = _bootstrap_auc(held, scores, bootstrap, rng)
    interval = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) \
        if boots else None
    return MultivariateResult("domain_classifier", value, p, interval, AUC_THRESHOLD, rows)


def mmd(reference: np.ndarray, current: np.ndarray, *, max_rows: int = MMD_MAX_ROWS,
        permutations: int = 200, seed: int = 0) -> MultivariateResult:
    """Unbiased MMD^2 of two ``[n, d]`` samples (Gaussian kernel), with a permutation p-value."""
    rng = np.random.default_rng(seed)
    # Each side keeps up to max_rows rows (sizes may differ): a small window is compared with
    # as much of the reference as the budget allows, not with an equally small subsample.
    a = _subsample(np.asarray(reference, np.float64).reshape(len(reference), -1), max_rows, rng)
    b = _subsample(np.asarray(current, np.float64).reshape(len(current), -1), max_rows, rng)
    na, nb = len(a), len(b)
    z = np.concatenate([a, b])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / bandwidth)
    np.fill_diagonal(k, 0.0)
    # Every permutation at once: column j of ``pos`` marks side A of permutation j (0: as given).
    pos = np.empty((na + nb, permutations + 1), bool)
    pos[:, 0] = np.arange(na + nb) < na
    for j in range(1, permutations + 1):
        pos[:, j] = pos[rng.permutation(na + nb), 0]
    kp = k @ pos
    kq = k.sum(1, keepdims=True) - kp
    s_aa = (kp * pos).sum(0)
    s_bb = (kq * ~pos).sum(0)
    s_ab = (kq * pos).sum(0)
    values = s_aa / (na * (na - 1)) + s_bb / (nb * (nb - 1)) - 2 * s_ab / (na * nb)
    observed = float(values[0])
    p = float((1 + np.sum(values[1:] >= observed)) / (permutations + 1))
    return MultivariateResult("mmd", observed, p, None, None, min(na, nb))
