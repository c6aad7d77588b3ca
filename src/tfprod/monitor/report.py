"""The drift report: per-feature results, the dataset verdict, and its three renderings.

:class:`DriftReport` is what :func:`tfprod.monitor.detect_drift` returns and what ``tfprod
monitor`` prints: :meth:`~DriftReport.to_json` (the documented JSON), :meth:`~DriftReport.rows`
(the terminal table, ranked by severity) and :func:`tfprod.monitor.html.render_html` (the
self-contained HTML page).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FeatureDrift:
    """One tested column.

    Attributes:
        name, kind: the column and ``"numeric"`` / ``"categorical"``.
        test: ``ks``, ``wasserstein``, ``psi``, ``chi2`` or ``jensen_shannon``.
        score: the raw statistic or distance.
        p_value: the test's p-value (for a distance: the KS or chi-squared p-value of the same
            column); ``p_adjusted`` is after Benjamini-Hochberg across the family.
        threshold: the distance at or above which it drifts (None for p-value tests).
        drift: the decision.
        histogram: ``(edges or categories, reference frequencies, current frequencies)`` for
            the HTML plots (not in the JSON).
    """

    name: str
    kind: str
    test: str
    score: float
    p_value: float | None
    p_adjusted: float | None = None
    threshold: float | None = None
    drift: bool = False
    reference_mean: float | None = None
    current_mean: float | None = None
    histogram: tuple[Any, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def severity(self) -> float:
        """Ranks columns: drifted first, then by distance over threshold or by -log10 p."""
        if self.threshold:
            strength = self.score / self.threshold
        elif self.p_adjusted is not None and not math.isnan(self.p_adjusted):
            strength = -math.log10(max(self.p_adjusted, 1e-300)) / 1.3
        else:
            strength = 0.0
        return (10.0 if self.drift else 0.0) + min(strength, 9.99)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "test": self.test,
                "score": _num(self.score), "p_value": _num(self.p_value),
                "p_adjusted": _num(self.p_adjusted), "threshold": self.threshold,
                "drift": bool(self.drift), "reference_mean": _num(self.reference_mean),
                "current_mean": _num(self.current_mean)}


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.1e}"
    return f"{x:.3f}"


@dataclass
class DriftReport:
    """Drift between a reference and a current dataset (see :func:`detect_drift`)."""

    features: list[FeatureDrift]
    fdr: float
    dataset_drift: bool
    reference_rows: int
    current_rows: int
    multivariate: dict[str, Any] | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    prediction_drift: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    title: str = "drift"

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drift]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    @property
    def validation_errors(self) -> int:
        return sum(1 for v in self.validation if v.get("severity") == "error")

    @property
    def prediction_drifted(self) -> bool:
        return any(p.get("drift") for p in self.prediction_drift.values())

    @property
    def exit_status(self) -> int:
        """1 when drift (features, joint or predictions) or validation errors were found."""
        return int(self.dataset_drift or self.prediction_drifted or self.validation_errors > 0)

    def ranked(self) -> list[FeatureDrift]:
        return sorted(self.features, key=lambda f: (-f.severity, f.name))

    def to_json(self) -> dict[str, Any]:
        """The report as the documented JSON document."""
        return {
            "dataset_drift": bool(self.dataset_drift),
            "share_drifted": self.share_drifted,
            "drifted": self.drifted,
            "fdr": self.fdr,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "multivariate": self.multivariate,
            "features": [f.to_json() for f in self.ranked()],
            "validation": self.validation,
            "prediction_drift": self.prediction_drift,
            "performance": self.performance,
            "seconds": round(self.seconds, 3),
        }

    columns = ["feature", "test", "score", "p (BH)", "drift"]

    def rows(self, limit: int | None = 30) -> list[list[str]]:
        """Terminal table rows ranked by severity (the first ``limit``)."""
        out = []
        for f in self.ranked()[:limit]:
            score = _fmt(f.score) + (f" >= {f.threshold:g}" if f.threshold and f.drift else "")
            out.append([f.name, f.test, score, _fmt(f.p_adjusted), "DRIFT" if f.drift else "-"])
        return out

    def summary(self) -> str:
        """One paragraph: the verdict and what it rests on."""
        parts = [f"{len(self.drifted)} of {len(self.features)} features drifted "
                 f"(Benjamini-Hochberg, false-discovery rate {self.fdr:g})"]
        if self.multivariate:
            m = self.multivariate
            parts.append(f"{m['test']} {_fmt(m['score'])}, p {_fmt(m.get('p_adjusted'))}"
                         f"{': DRIFT' if m['drift'] else ''}")
        for name, p in self.prediction_drift.items():
            parts.append(f"prediction {name}: {p['test']} {_fmt(p['score'])}"
                         f"{': DRIFT' if p['drift'] else ''}")
        if self.performance.get("estimated_accuracy") is not None:
            perf = self.performance
            parts.append(f"estimated accuracy {perf['estimated_accuracy']:.3f} +- "
                         f"{perf['estimated_accuracy_error']:.3f} (reference "
                         f"{perf['reference_accuracy']:.3f})")
        if self.performance.get("accuracy") is not None:
            parts.append(f"accuracy {self.performance['accuracy']:.3f} on "
                         f"{self.performance['labeled']} labeled rows")
        if self.validation:
            parts.append(f"{self.validation_errors} validation errors, "
                         f"{len(self.validation) - self.validation_errors} warnings")
        verdict = "DRIFT" if self.exit_status else "no drift"
        return f"{verdict}: " + "; ".join(parts)
