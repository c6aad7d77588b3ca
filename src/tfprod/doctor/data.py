"""Data checks: NaN/Inf, input scale against the model's own preprocessing, labels, balance.

Most statistics come from :func:`tfprod.data.inspect_dataset` (``tfprod data inspect``); this
module judges them against the model: 0-255 pixels are fine for a model that starts with
``Rescaling(1/255)`` and an error for one that does not, and labels are checked against the
output's number of classes. Scale is judged per column from the bulk of the distribution (the
1st and 99th percentiles), not from the extremes: standardized features with heavy tails reach
10+ standard deviations in a few rows and are fine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfprod.data.inspect import InspectReport, inspect_dataset
from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe

#: layers that bring inputs to a sane scale inside the model.
INPUT_SCALERS = ("Rescaling", "Normalization")
#: layers after which a badly scaled input is tamed, though the first layer still sees it.
LATER_NORMALIZERS = ("BatchNormalization", "LayerNormalization", "GroupNormalization",
                     "UnitNormalization")
#: layers that take integer ids or categories, whose range is not a scale.
ID_LAYERS = ("Embedding", "IntegerLookup", "StringLookup", "CategoryEncoding", "Hashing",
             "Discretization")

#: the bulk's magnitude (largest of |1st percentile|, |99th percentile|) above which a column is
#: unscaled: a warning, then an error. Standardized (even heavy-tailed) or [0, 1] inputs stay
#: well below; 0-255 pixels, raw counts, amounts or years do not.
WARN_SCALE = 10.0
ERROR_SCALE = 50.0
#: largest:smallest class count from which imbalance is reported, and the majority share from
#: which an unweighted loss is an error (predicting the majority alone scores that accuracy).
IMBALANCE_RATIO = 10.0
IMBALANCE_ERROR_SHARE = 0.95
_SCALE_ROWS = 1024
_SCALE_VALUES = 200_000


def layer_types(model) -> dict[str, list]:
    """Layers of ``model`` (recursively) by class name."""
    out: dict[str, list] = {}
    for layer in model._flatten_layers(include_self=False):
        out.setdefault(type(layer).__name__, []).append(layer)
    return out


def inspect_probe(probe: Probe) -> InspectReport:
    labelled = isinstance(probe.y, np.ndarray) and probe.y.dtype.kind in "biuf"
    ds = tf.data.Dataset.from_tensor_slices((probe.x, probe.y) if labelled else probe.x)
    ds = ds.batch(512)
    num_classes = probe.task.num_classes if probe.task.labels == "sparse" else None
    return inspect_dataset(ds, num_classes=num_classes, source="sample")


def check_data(probe: Probe, report: InspectReport) -> list[Finding]:
    """Findings about the data itself, judged against the model and its loss."""
    return [*_values(probe, report), *_labels(probe, report), *_scale(probe, report),
            *(_balance(probe, report) if probe.task.classification and probe.task.labels in (
                "sparse", "onehot") else []), *_features(report)]


def _values(probe: Probe, report: InspectReport) -> list[Finding]:
    bad = [s for s in [*report.features, *([report.label] if report.label else [])]
           if s.nan or s.inf]
    if not bad:
        return []
    where = ", ".join(f"{s.name}: {s.nan} NaN / {s.inf} Inf" for s in bad)
    n_bad = probe.n - probe.n_finite
    return [Finding(
        "data_values", "error", "NaN/Inf values in the data",
        f"{n_bad} of {probe.n} examples hold a NaN or Inf ({where}); one is enough to make the "
        "loss and then every weight NaN",
        "drop or impute those examples in the input pipeline (e.g. dataset.filter on "
        "tf.math.is_finite), or fix the export that wrote them",
        {"examples": n_bad, "of": probe.n,
         "values": {s.name: {"nan": s.nan, "inf": s.inf} for s in bad}})]


def _labels(probe: Probe, report: InspectReport) -> list[Finding]:
    task = probe.task
    y = probe.y
    if isinstance(y, np.ndarray) and y.dtype.kind in "OSU":
        return [_string_labels(probe, y)]
    if isinstance(y, np.ndarray) and task.loss_kind == "sparse_ce" and (
            task.labels == "continuous"):
        scaled = _scaled_ids(y[probe.finite])
        if scaled is not None:
            return [scaled]
    counts = report.class_counts
    if not counts or task.labels != "sparse" or not task.classification:
        return []
    out = []
    classes = sorted(counts)
    c = task.num_classes
    if c is not None:
        outside = [k for k in classes if k < 0 or k >= c]
        if outside:
            n_out = sum(counts[k] for k in outside)
            what = (f"{task.units} output unit(s)" if task.loss_kind != "bce" else
                    "binary cross-entropy (labels 0 or 1)")
            out.append(Finding(
                "labels", "error", "labels outside the output's range",
                f"{n_out} of {report.num_examples} examples have labels {outside[:10]} but the "
                f"model has {what}: valid labels are 0..{c - 1}",
                f"give the output layer {max(classes) + 1} units, or remap the labels to "
                f"0..{c - 1} (they must be class indices)",
                {"labels_outside": outside[:100], "examples": n_out, "num_classes": c}))
    if len(classes) == 1 and report.num_examples > 1:
        out.append(Finding(
            "labels", "error", "a single class in the labels",
            f"all {report.num_examples} examples have label {classes[0]}",
            "check the label column/folder layout: nothing can be learned from one class",
            {"label": classes[0]}))
    return out


def _string_labels(probe: Probe, y: np.ndarray) -> Finding:
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in np.unique(y.ravel())]
    shown = ", ".join(repr(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    vocab = ", ".join(repr(v) for v in values[:3])
    return Finding(
        "labels", "error", "string labels where class indices are expected",
        f"the labels are strings ({len(values)} distinct: {shown}) and {probe.task.loss_name} "
        "needs integer class indices 0..C-1: the loss cannot be computed",
        f"map them to indices in the input pipeline: lookup = keras.layers.StringLookup("
        f"vocabulary=[{vocab}{', ...' if len(values) > 3 else ''}], num_oov_indices=0); "
        "dataset.map(lambda x, y: (x, lookup(y)))",
        {"classes": values[:100]})


def _scaled_ids(y: np.ndarray) -> Finding | None:
    """Float labels that are class ids divided by a constant (normalized with the features)."""
    values = np.unique(np.asarray(y, np.float64).ravel())
    if not 2 <= len(values) <= 100 or values.min() < 0:
        return None
    step = float(np.min(np.diff(values)))
    ids = values / step
    if step <= 0 or not np.allclose(ids, np.round(ids), atol=1e-3):
        return None
    shown = ", ".join(f"{v:.4g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return Finding(
        "labels", "error", "non-integer class labels (scaled class ids?)",
        f"the labels take {len(values)} evenly spaced non-integer values ({shown}): class ids "
        f"divided by {1 / step:.4g}, as if normalized with the features; a sparse "
        "classification loss truncates them to integers, so most examples train as class 0",
        f"keep the label column out of the feature scaling and give integer ids "
        f"(y = round(y * {1 / step:.4g}), cast to int64)",
        {"values": values[:100].tolist(), "step": step})


@dataclasses.dataclass
class ColumnScale:
    """The scale of one input column (a tabular feature, or one channel of an image)."""

    name: str
    low: float  # 1st percentile
    high: float  # 99th percentile
    min: float
    max: float
    mean: float
    std: float
    integral: bool
    image: bool

    @property
    def magnitude(self) -> float:
        return max(abs(self.low), abs(self.high))


def column_scales(probe: Probe, *, skip_int: bool = False) -> list[ColumnScale]:
    """Per-column scale of the numeric inputs, on a sample of the clean examples."""
    rng = np.random.default_rng(probe.seed)
    index = np.flatnonzero(probe.finite)
    if len(index) > _SCALE_ROWS:
        index = np.sort(rng.choice(index, _SCALE_ROWS, replace=False))
    named = probe.x.items() if isinstance(probe.x, dict) else [("x", probe.x)]
    out = []
    for name, a in named:
        if a.dtype.kind not in "biuf" or (skip_int and a.dtype.kind in "biu"):
            continue
        image = a.ndim >= 3
        if image:  # a few images give plenty of values per channel
            per_example = max(1, int(np.prod(a.shape[1:-1])))
            index = index[:max(16, _SCALE_VALUES // per_example)]
        a = np.asarray(a[index])
        cols = a.reshape(len(a), 1) if a.ndim == 1 else a.reshape(-1, a.shape[-1])
        if len(cols) > _SCALE_VALUES // max(1, cols.shape[1]):
            keep = max(64, _SCALE_VALUES // max(1, cols.shape[1]))
            cols = cols[rng.choice(len(cols), min(keep, len(cols)), replace=False)]
        cols = cols.astype(np.float64)
        low, high = np.quantile(cols, [0.01, 0.99], axis=0)
        integral = np.all(cols == np.round(cols), axis=0)
        for j in range(cols.shape[1]):
            col = name if cols.shape[1] == 1 else (
                f"{name}[..., {j}]" if image else f"{name}[:, {j}]")
            c = cols[:, j]
            out.append(ColumnScale(col, float(low[j]), float(high[j]), float(c.min()),
                                   float(c.max()), float(c.mean()), float(c.std()),
                                   bool(integral[j]), image))
    return out


def _scale(probe: Probe, report: InspectReport) -> list[Finding]:
    layers = layer_types(probe.model)
    scalers = [layer for k in INPUT_SCALERS for layer in layers.get(k, [])]
    later = [k for k in LATER_NORMALIZERS if k in layers]
    takes_ids = any(k in layers for k in ID_LAYERS)
    numeric = [s for s in report.features
               if s.dtype not in ("string", "bytes") and np.isfinite(s.max)
               and not (takes_ids and s.dtype.startswith("int"))]
    out = []
    unscaled = [c for c in column_scales(probe, skip_int=takes_ids) if c.magnitude > WARN_SCALE]
    if unscaled and not scalers:
        out.append(_unscaled(unscaled, later))
    rescale = [layer for layer in layers.get("Rescaling", [])
               if np.all(np.abs(np.asarray(layer.scale, np.float64)) <= 1 / 100)]
    twice = [s for s in numeric if s.max <= 1.5 and s.min >= -1.5 and s.std > 0]
    if rescale and twice:
        s = twice[0]
        out.append(Finding(
            "input_scale", "warning", "inputs scaled twice",
            f"{s.name} is already in [{s.min:.3g}, {s.max:.3g}] and the model divides it "
            f"again by {1 / float(np.max(rescale[0].scale)):.0f} in {rescale[0].name!r}: "
            "the first layer sees values near 0",
            "scale in one place only: drop the division from the input pipeline (keep the "
            "Rescaling layer, so serving scales the same way)",
            {"feature": s.name, "min": s.min, "max": s.max}))
    return out


def _unscaled(columns: list[ColumnScale], later: list[str]) -> Finding:
    worst = max(columns, key=lambda c: c.magnitude)
    clearly = any(c.magnitude > ERROR_SCALE for c in columns)
    pixels = worst.image and worst.min >= 0 and worst.max <= 255 and worst.integral
    fix = ("add keras.layers.Rescaling(1/255) as the model's first layer (then serving scales "
           "the same way)" if pixels else
           "add a keras.layers.Normalization layer adapted on the training data as the model's "
           "first layer")
    note = (f"; {', '.join(later)} inside the model only tames it after the first layer"
            if later else "; the model has no Rescaling or Normalization layer")
    more = f" (and {len(columns) - 1} more column(s))" if len(columns) > 1 else ""
    return Finding(
        "input_scale", "error" if clearly and not later else "warning",
        "unnormalized 0-255 inputs" if pixels else "unnormalized inputs",
        f"{worst.name}: 98% of its values lie in [{worst.low:.4g}, {worst.high:.4g}] (mean "
        f"{worst.mean:.4g}, std {worst.std:.4g}){more}{note}: initializers assume inputs of "
        f"scale ~1, so pre-activations ~{worst.magnitude:.0f}x too large saturate or kill "
        "units and push the initial loss above chance",
        fix, {"columns": {c.name: {"p01": c.low, "p99": c.high, "min": c.min, "max": c.max,
                                   "mean": c.mean, "std": c.std} for c in columns[:50]}})


def _class_weights(probe: Probe, classes: list[int]) -> tuple[dict[int, float], str] | None:
    """The weight each class gets in the loss, and from where; ``None`` if unweighted."""
    if probe.class_weight:
        return {c: float(probe.class_weight.get(c, 1.0)) for c in classes}, "class_weight"
    if probe.sample_weight is None or not isinstance(probe.y, np.ndarray):
        return None
    y = probe.y.reshape(len(probe.y), -1)
    ids = y[:, 0].astype(np.int64) if y.shape[1] == 1 else np.argmax(y, axis=1)
    return {c: float(np.mean(probe.sample_weight[ids == c])) if np.any(ids == c) else 1.0
            for c in classes}, "sample weights"


def _balance(probe: Probe, report: InspectReport) -> list[Finding]:
    classes = sorted(report.class_counts)
    counts = {c: report.class_counts[c] for c in classes}
    if len(counts) < 2 or max(counts.values()) < IMBALANCE_RATIO * min(counts.values()):
        return []
    total = sum(counts.values())
    major = max(counts, key=counts.get)
    minor = min(counts, key=counts.get)
    share = counts[major] / total
    shown = ":".join(str(counts[c]) for c in classes[:10]) + (":..." if len(classes) > 10 else "")
    values = {"class_counts": {str(c): n for c, n in counts.items()}, "majority_class": major,
              "majority_share": share}
    balance = (f"class counts {shown} (classes {classes[0]}..{classes[-1]}); class {major} is "
               f"{share:.1%} of the examples, class {minor} {counts[minor] / total:.1%}")
    weighted = _class_weights(probe, classes)
    focal = "focal" in probe.task.loss_name.lower()
    if weighted is not None:
        weights, source = weighted
        effective = {c: counts[c] * weights[c] for c in classes}
        values["class_weights"] = {str(c): w for c, w in weights.items()}
        if max(effective.values()) < 3 * min(effective.values()):
            return [Finding(
                "class_balance", "info", "class imbalance, balanced by weights",
                f"{balance}; the {source} bring the classes' total weight within "
                f"{max(effective.values()) / min(effective.values()):.1f}:1",
                "track per-class recall or precision-recall AUC, not accuracy", values)]
    if focal:
        return [Finding(
            "class_balance", "info", "class imbalance, with a focal loss",
            f"{balance}; {probe.task.loss_name} down-weights the easy majority examples",
            "track per-class recall or precision-recall AUC, not accuracy", values)]
    suggest = {c: round(total / (len(classes) * counts[c]), 2) for c in classes}
    suggested = ("{" + ", ".join(f"{c}: {w:g}" for c, w in list(suggest.items())[:10])
                 + (", ..." if len(suggest) > 10 else "") + "}")
    values["suggested_class_weight"] = {str(c): w for c, w in suggest.items()}
    return [Finding(
        "class_balance", "error" if share >= IMBALANCE_ERROR_SHARE else "warning",
        "severe class imbalance, unweighted loss",
        f"{balance}; always predicting class {major} scores {share:.1%} accuracy, so with an "
        "unweighted loss the model can sit on that plateau (minority recall 0) while accuracy "
        "looks fine" + ("" if weighted is None else
                        "; the weights given do not balance it"),
        f"pass class_weight={suggested} to fit (n / (classes * count)), or resample to balance "
        "(tf.data.Dataset.rejection_resample / sample_from_datasets), and track a metric that "
        "sees the minority (keras.metrics.Recall, AUC(curve='PR'))", values)]


def _features(report: InspectReport) -> list[Finding]:
    out = []
    constant = [s.name for s in report.features if s.constant]
    if constant:
        out.append(Finding(
            "features", "info", "constant input features",
            f"{', '.join(constant[:8])} hold the same value in every example of the sample",
            "they carry no signal: drop them, or check the data export", {"features": constant}))
    if report.duplicates:
        pct = 100 * report.duplicates / report.num_examples
        out.append(Finding(
            "features", "info", "duplicate examples",
            f"{report.duplicates} duplicates ({pct:.1f}%) in {report.num_examples} examples",
            "deduplicate, and make sure no duplicate spans the train/validation split",
            {"duplicates": report.duplicates}))
    return out
