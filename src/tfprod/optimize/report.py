"""The variant comparison: one row per variant, and one recommendation per target."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

COLUMNS = ["variant", "file size", "gzip size", "batch-1 p50", "batch-1 p99", "batch-64 /s",
           "{metric}", "change vs float"]


@dataclasses.dataclass
class VariantResult:
    """The measurements of one variant (latencies in ms, throughput in examples/s)."""

    name: str
    format: str
    path: str
    file_bytes: int
    gzip_bytes: int
    p50_ms: float
    p99_ms: float
    throughput: float
    metric: float
    change: float  # metric minus the float model's (accuracy: percentage points)
    drop: float  # how much worse than the float model (positive: worse)
    notes: list[str] = dataclasses.field(default_factory=list)
    unquantized_ops: list[str] | None = None
    sparsity: float | None = None


@dataclasses.dataclass
class Recommendation:
    """The variant chosen for one target, and why."""

    target: str
    variant: str | None
    reason: str


@dataclasses.dataclass
class OptimizeReport:
    """Every variant measured side by side, the float reference, and the recommendations."""

    model: str
    metric: str
    reference: float
    max_drop: float
    results: list[VariantResult]
    recommendations: list[Recommendation]
    test_examples: int
    seconds: float
    plot: str | None = None
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (variant, why)

    def result(self, name: str) -> VariantResult:
        """The row of variant ``name``."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def columns(self) -> list[str]:
        """Table header."""
        return [c.format(metric=self.metric) for c in COLUMNS]

    @property
    def rows(self) -> list[list[str]]:
        """Table rows, formatted for display."""
        return [[r.name, human_bytes(r.file_bytes), human_bytes(r.gzip_bytes),
                 _ms(r.p50_ms), _ms(r.p99_ms), f"{r.throughput:,.0f}", f"{r.metric:.2f}",
                 f"{r.change:+.2f}"] for r in self.results]

    @property
    def notes(self) -> list[tuple[str, str]]:
        """``(variant, note)`` pairs: ops left in float, layers Keras did not quantize, ..."""
        return [(r.name, note) for r in self.results for note in r.notes]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ms(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


def recommend(results: list[VariantResult], *, max_drop: float,
              metric: str) -> list[Recommendation]:
    """Server: best batch-64 throughput; edge: smallest gzipped LiteRT file; both within
    ``max_drop`` of the float model's metric."""
    within = [r for r in results if r.drop <= max_drop]
    budget = f"within {max_drop:g} of the float model's {metric}"
    recs = []
    if within:
        best = max(within, key=lambda r: r.throughput)
        recs.append(Recommendation("server", best.name, (
            f"highest batch-64 throughput ({best.throughput:,.0f} examples/s) among the "
            f"{len(within)} variants {budget} ({metric} {best.change:+.2f})")))
    else:
        recs.append(Recommendation("server", None, f"no variant is {budget}"))
    edge = [r for r in within if r.format == "litert"]
    if edge:
        best = min(edge, key=lambda r: r.gzip_bytes)
        recs.append(Recommendation("edge", best.name, (
            f"smallest download ({human_bytes(best.gzip_bytes)} gzipped, "
            f"{human_bytes(best.file_bytes)} on disk) among the {len(edge)} LiteRT variants "
            f"{budget} ({metric} {best.change:+.2f}); batch-1 p50 {_ms(best.p50_ms)}")))
    else:
        recs.append(Recommendation("edge", None, f"no LiteRT variant is {budget}"))
    return recs


def plot(report: OptimizeReport, path: str | os.PathLike) -> str:
    """A PNG: gzipped size against batch-1 latency, coloured and labelled by the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    try:
        x = [r.p50_ms for r in report.results]
        y = [r.gzip_bytes / 1024 for r in report.results]
        c = [r.metric for r in report.results]
        points = ax.scatter(x, y, c=c, cmap="viridis", s=70, edgecolors="black")
        for i, (r, xi, yi) in enumerate(zip(report.results, x, y, strict=True)):
            # Staggered labels: variants of equal size and speed (int8, int8-io) stay legible.
            ax.annotate(f"{r.name} {r.metric:.2f}", (xi, yi), textcoords="offset points",
                        xytext=(6, (4, -12, 14, -22)[i % 4]), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.25, y=0.15)  # room for the labels of the right-most points
        ax.set_xlabel("batch-1 p50 latency (ms, log)")
        ax.set_ylabel("gzipped size (KB, log)")
        ax.set_title(f"{report.model}: size vs latency ({report.metric} as colour)")
        fig.colorbar(points, ax=ax, label=report.metric)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        tmp = path + ".tmp"
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
