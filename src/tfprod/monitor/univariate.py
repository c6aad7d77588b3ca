"""Per-feature two-sample tests, exact and fast on wide tables, with Benjamini-Hochberg.

Numeric columns: one merge of the two sorted samples gives both the Kolmogorov-Smirnov statistic
(and its p-value) and the exact 1-Wasserstein distance, normalized by the reference's standard
deviation as Evidently normalizes it; PSI on the reference's deciles is the third option.
Categorical columns: the chi-squared test of homogeneity and the Jensen-Shannon distance of the
two frequency vectors. Every function takes two 1-D samples; :func:`benjamini_hochberg` adjusts
a family of p-values.

Large samples (more than ``EXACT_MAX_ROWS`` a side): sorting is n log n and a column of 10M
rows no longer fits a cache, so :func:`binned_cdfs` histograms both sides on ``FINE_BINS``
equal-width bins instead (linear time; more bins when the rows are many, see
:func:`tight_binned_cdfs`) and reads KS and Wasserstein off the two cumulative
histograms, with a bound on each error: the KS statistic is off by at most the largest bin's
mass, the Wasserstein distance by at most two bin widths. Where a bound is looser than stated
(``BINNED_MAX_KS_ERROR`` in units of KS's standard error, ``BINNED_MAX_W_ERROR`` of the
reference's standard deviation: atoms, extreme outliers), the exact path runs instead.

Which test decides (:func:`choose_test`): with at most ``SMALL_SAMPLE`` rows on either side, the
test's p-value (KS, chi-squared); with more, a distance with a threshold (normalized Wasserstein,
Jensen-Shannon), because with large samples every negligible difference is significant. A
distance test still reports a p-value (KS's for Wasserstein and PSI, chi-squared's for
Jensen-Shannon) and needs it to be significant after the correction too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

SMALL_SAMPLE = 1000
#: Distances at or above which a feature drifts (Evidently's defaults for the same tests).
THRESHOLDS = {"wasserstein": 0.1, "jensen_shannon": 0.1, "psi": 0.1}
NUMERIC_TESTS = ("ks", "wasserstein", "psi")
CATEGORICAL_TESTS = ("chi2", "jensen_shannon")
PSI_BINS = 10
_EPS = 1e-4
#: Above this many rows on both sides numeric columns are compared on fine histograms.
EXACT_MAX_ROWS = 1_000_000
FINE_BINS = 1 << 18
#: At most this many bins when the first histogram's bounds are too loose (10M rows a side
#: need about 2^19 on a normal column: the KS bound tightens as 1/sqrt(n) and the bins' mass
#: shrinks only as 1/bins).
MAX_FINE_BINS = 1 << 22
#: The binned KS statistic may be off by this many of its standard errors, 1/sqrt(n_eff).
BINNED_MAX_KS_ERROR = 0.05
#: The binned Wasserstein distance may be off by this share of the reference's std (1% of
#: the 0.1 threshold).
BINNED_MAX_W_ERROR = 1e-3


@dataclass(frozen=True)
class TestResult:
    """One feature's test: the raw ``score`` (a statistic or a distance) and its ``p_value``."""

    test: str
    score: float
    p_value: float | None


def choose_test(kind: str, n_reference: int, n_current: int, override: str = "auto") -> str:
    """The test for a ``"numeric"`` or ``"categorical"`` feature of these sample sizes."""
    small = min(n_reference, n_current) <= SMALL_SAMPLE
    if kind == "numeric":
        if override in NUMERIC_TESTS:
            return override
        return "ks" if small else "wasserstein"
    if override in CATEGORICAL_TESTS:
        return override
    return "chi2" if small else "jensen_shannon"


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            x = x[finite]
    elif x.dtype.kind == "b":
        x = x.astype(np.int8)
    return x


def ks_wasserstein(reference: np.ndarray, current: np.ndarray, *, assume_sorted: bool = False
                   ) -> tuple[float, float, float]:
    """KS statistic, its two-sided p-value and the (raw) 1-Wasserstein distance, exactly.

    Both come from one stable merge of the sorted samples: at every distinct value the two
    empirical CDFs are the running counts of each side. Equal to ``scipy.stats.ks_2samp``
    (statistic; p-value with ``method="asymp"``) and ``scipy.stats.wasserstein_distance``.
    NaN and Inf are left out.
    """
    a = _finite(reference)
    b = _finite(current)
    n, m = a.size, b.size
    if not n or not m:
        return float("nan"), float("nan"), float("nan")
    if not assume_sorted:
        a, b = np.sort(a), np.sort(b)
    # float32 samples stay float32 (counts are exact in float32 up to 2**24 rows a side), with
    # float64 accumulation: half the memory traffic of the obvious float64 path.
    work = np.float32 if a.dtype == b.dtype == np.float32 and max(n, m) < 2 ** 24 \
        else np.float64
    v = np.concatenate([a, b]).astype(work, copy=False)
    order = np.argsort(v, kind="stable")  # two sorted runs: a linear merge
    s = v[order]
    fa = np.cumsum(order < n, dtype=np.int32 if n + m < 2 ** 31 else np.int64)
    fb = np.arange(1, n + m + 1, dtype=fa.dtype)
    fb -= fa
    last = np.empty(n + m, bool)  # the CDFs are read after the last of equal values
    np.not_equal(s[1:], s[:-1], out=last[:-1])
    last[-1] = True
    gap = np.abs(fa.astype(work) * work(1.0 / n) - fb.astype(work) * work(1.0 / m))
    d = float(gap[last].max())
    if n == m:  # equal sizes: W1 is the mean distance between order statistics
        w = float(np.abs(a.astype(work, copy=False) - b.astype(work, copy=False)).mean(
            dtype=np.float64))
    else:
        w = float((gap[:-1] * np.diff(s)).sum(dtype=np.float64))
    return d, ks_p_value(d, n, m), w


@dataclass(frozen=True)
class BinnedCdfs:
    """Both samples' empirical CDFs at the right edges of equal-width bins (:func:`binned_cdfs`).

    ``ks`` and ``wasserstein`` are within ``ks_error`` and ``wasserstein_error`` of the exact
    values (KS from below).
    """

    edges: np.ndarray
    reference: np.ndarray
    current: np.ndarray
    ks: float
    wasserstein: float
    ks_error: float
    wasserstein_error: float

    def quantile(self, side: str, q: float) -> float:
        """The ``q`` quantile of one side, to one bin's width."""
        cdf = self.reference if side == "reference" else self.current
        return float(self.edges[1 + min(int(np.searchsorted(cdf, q)), cdf.size - 1)])

    def shares(self, side: str, edges: np.ndarray) -> np.ndarray:
        """The share of one side between consecutive ``edges``, to one bin's mass at each."""
        cdf = self.reference if side == "reference" else self.current
        at = np.interp(edges, self.edges, np.concatenate([[0.0], cdf]))
        return np.diff(at)


#: Rows a histogram pass works on at a time (:func:`_fine_counts`).
_CHUNK = 1 << 20


def _fine_counts(x: np.ndarray, lo: float, scale: float, bins: int) -> np.ndarray:
    """Counts of ``x`` on ``bins`` equal-width bins from ``lo`` (a bincount of positions:
    a quarter of ``np.histogram``'s time; float64 positions, so no value changes bin). Chunks
    of ``_CHUNK`` rows through two reused buffers: whole-column temporaries (80 MB each at 10M
    rows) are fresh memory from the kernel on every call, and faulting their pages in made the
    cost per row grow with the rows."""
    counts = np.zeros(bins, np.intp)
    size = min(_CHUNK, x.size)
    position, index = np.empty(size), np.empty(size, np.intp)
    low = np.float64(lo)
    for start in range(0, x.size, _CHUNK):
        part = x[start:start + _CHUNK]
        p, i = position[:part.size], index[:part.size]
        np.subtract(part, low, out=p)
        np.multiply(p, scale, out=p)
        np.copyto(i, p, casting="unsafe")  # truncates, as astype does
        np.clip(i, 0, bins - 1, out=i)
        counts += np.bincount(i, minlength=bins)
    return counts


def binned_cdfs(reference: np.ndarray, current: np.ndarray, *, bins: int = FINE_BINS
                ) -> BinnedCdfs:
    """KS and 1-Wasserstein of two finite, non-empty samples in linear time, with error bounds.

    Both sides are counted on ``bins`` equal-width bins over their joint range; the CDFs at the
    bin edges are exact, so the largest gap there is the KS statistic up to the largest bin
    mass (between edges a CDF moves by at most its bin's mass), and the area between the two
    step functions is the Wasserstein distance up to two bin widths.
    """
    n, m = reference.size, current.size
    lo = float(min(reference.min(), current.min()))
    hi = float(max(reference.max(), current.max()))
    if hi <= lo:
        hi = lo + 1.0
    scale = bins / (hi - lo)
    ca = _fine_counts(reference, lo, scale, bins)
    cb = _fine_counts(current, lo, scale, bins)
    fa = np.cumsum(ca) / n
    fb = np.cumsum(cb) / m
    gap = np.abs(fa - fb)
    width = (hi - lo) / bins
    return BinnedCdfs(np.linspace(lo, hi, bins + 1), fa, fb, float(gap.max()),
                      float(gap[:-1].sum() * width),
                      float(max(ca.max() / n, cb.max() / m)), 2.0 * width)


def binned_is_tight(b: BinnedCdfs, n: int, m: int, std: float) -> bool:
    """Whether ``b``'s error bounds are within the stated tolerances for these sizes."""
    return (b.ks_error * np.sqrt(n * m / (n + m)) <= BINNED_MAX_KS_ERROR
            and b.wasserstein_error <= BINNED_MAX_W_ERROR * max(std, 1e-12))


def tight_binned_cdfs(reference: np.ndarray, current: np.ndarray, std: float
                      ) -> BinnedCdfs | None:
    """:func:`binned_cdfs` on at least ``FINE_BINS`` bins, more for many rows, and once more on
    as many as its bounds ask for if they are still too loose (up to ``MAX_FINE_BINS``; a bin's
    mass and width shrink in proportion to the bins on a continuous column); None when even
    that is too loose (atoms, outliers that stretch the range): sort instead."""
    n, m = reference.size, current.size
    # A normal column over its range (about 11 standard deviations at 10M rows) puts 4.4/bins of
    # its mass in its fullest bin, and the KS bound asks for 0.05/sqrt(n_eff): so start at
    # 128 sqrt(n_eff) bins (2^18 up to 4M rows a side, 2^19 at 10M) rather than find out.
    first = max(FINE_BINS, 1 << int(np.ceil(np.log2(128 * np.sqrt(n * m / (n + m))))))
    b = binned_cdfs(reference, current, bins=min(first, MAX_FINE_BINS))
    if binned_is_tight(b, n, m, std):
        return b
    factor = max(b.ks_error * np.sqrt(n * m / (n + m)) / BINNED_MAX_KS_ERROR,
                 b.wasserstein_error / (BINNED_MAX_W_ERROR * max(std, 1e-12)))
    bins = len(b.reference) << max(int(np.ceil(np.log2(1.5 * factor))), 1)
    if bins > MAX_FINE_BINS:
        return None
    b = binned_cdfs(reference, current, bins=bins)
    return b if binned_is_tight(b, n, m, std) else None


#: Above this effective sample size the limiting Kolmogorov distribution replaces ``kstwo``
#: (they agree to 0.3% there; ``kstwo.sf`` can take a second per call at n = 500,000).
KSTWO_MAX_N = 10_000


def ks_p_value(d: float, n: int, m: int) -> float:
    """Two-sided p-value of a two-sample KS statistic (scipy's ``asymp`` method: ``kstwo`` at
    the effective size ``n*m/(n+m)``; its limit, Kolmogorov's distribution, for large sizes)."""
    en = round(n * m / (n + m))
    if en > KSTWO_MAX_N:
        return float(np.clip(special.kolmogorov(np.sqrt(en) * d), 0.0, 1.0))
    return float(np.clip(stats.kstwo.sf(d, max(en, 1)), 0.0, 1.0))


def normalized_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """1-Wasserstein distance divided by the reference's standard deviation (Evidently's)."""
    a = _finite(reference)
    _, _, w = ks_wasserstein(a, current)
    return w / max(float(np.std(a)), 1e-12)


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = PSI_BINS) -> float:
    """Population stability index on the reference's quantile bins."""
    a, b = _finite(reference), _finite(current)
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    ref = np.histogram(np.clip(a, edges[0], edges[-1]), edges)[0]
    cur = np.histogram(np.clip(b, edges[0], edges[-1]), edges)[0]
    return psi_from_counts(ref, cur)


def psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two histograms on the same bins."""
    p = np.maximum(reference / max(reference.sum(), 1), _EPS)
    q = np.maximum(current / max(current.sum(), 1), _EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def category_counts(reference: np.ndarray, current: np.ndarray
                    ) -> tuple[list, np.ndarray, np.ndarray]:
    """The union of categories and each side's counts over it."""
    ref_values, ref_counts = np.unique(_as_categories(reference), return_counts=True)
    cur_values, cur_counts = np.unique(_as_categories(current), return_counts=True)
    union = np.union1d(ref_values, cur_values)
    r = np.zeros(union.size, np.int64)
    c = np.zeros(union.size, np.int64)
    r[np.searchsorted(union, ref_values)] = ref_counts
    c[np.searchsorted(union, cur_values)] = cur_counts
    return union.tolist(), r, c


def _as_categories(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x).ravel()
    if x.dtype.kind == "O":
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in x])
    if x.dtype.kind == "S":
        return np.char.decode(x, "utf-8", "replace")
    if x.dtype.kind == "f":
        return x[~np.isnan(x)]
    return x


def chi2_from_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity of two count vectors: (statistic, p-value)."""
    keep = (reference + current) > 0
    table = np.stack([reference[keep], current[keep]]).astype(np.float64)
    if table.shape[1] < 2 or table[0].sum() == 0 or table[1].sum() == 0:
        return 0.0, 1.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(special.chdtrc(table.shape[1] - 1, statistic))


def jensen_shannon_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, as ``scipy.spatial.distance.jensenshannon``)."""
    p = reference / max(reference.sum(), 1)
    q = current / max(current.sum(), 1)
    mix = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / mix), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / mix), 0.0).sum()
    return float(np.sqrt(max((kl_p + kl_q) / 2, 0.0)))


def numeric_test(test: str, reference: np.ndarray, current: np.ndarray) -> TestResult:
    """Run ``"ks"``, ``"wasserstein"`` (normalized) or ``"psi"`` on two numeric samples."""
    a = _finite(reference)
    d, p, w = ks_wasserstein(a, current)
    if test == "ks":
        return TestResult("ks", d, p)
    if test == "wasserstein":
        return TestResult("wasserstein", w / max(float(np.std(a)), 1e-12), p)
    if test == "psi":
        return TestResult("psi", psi(a, current), p)
    raise ValueError(f"numeric test {test!r}; expected one of {NUMERIC_TESTS}")


def categorical_test(test: str, reference: np.ndarray, current: np.ndarray) -> TestResult:
    """Run ``"chi2"`` or ``"jensen_shannon"`` on two categorical samples."""
    _, r, c = category_counts(reference, current)
    statistic, p = chi2_from_counts(r, c)
    if test == "chi2":
        return TestResult("chi2", statistic, p)
    if test == "jensen_shannon":
        return TestResult("jensen_shannon", jensen_shannon_from_counts(r, c), p)
    raise ValueError(f"categorical test {test!r}; expected one of {CATEGORICAL_TESTS}")


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values): reject where ``adjusted < fdr`` controls the FDR.

    NaN entries (no p-value) stay NaN and do not count toward the family size.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if not m:
        return out
    q = p[ok]
    order = np.argsort(q)
    ranked = q[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    out[ok] = adjusted
    return out
