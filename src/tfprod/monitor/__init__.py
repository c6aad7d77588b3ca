"""`tfprod.monitor`: why the model does worse in production.

- :func:`detect_drift` -> :class:`DriftReport`: per-feature tests with Benjamini-Hochberg, a
  multivariate test (domain classifier / MMD on embeddings), prediction drift, accuracy measured
  or estimated (CBPE-style), schema validation; JSON, terminal rows, :func:`render_html`.
- :class:`Dataset`, :func:`load_dataset`: CSV, Parquet, TFRecord folders, ``.npy``/``.npz``,
  exported version folders (their reference sample).
- :class:`Profile`: exact mergeable summaries plus a bounded uniform row sample.
- :class:`Schema`: validation of served data against the reference.
- :func:`feature_skew`, :func:`prediction_skew`, :func:`skew_report` -> :class:`SkewReport`:
  training/serving skew (TFDV's comparator).

Names load on first use; nothing here imports TensorFlow until a model is run.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Dataset": "datasets",
    "DriftReport": "report",
    "FeatureDrift": "report",
    "Profile": "profile",
    "Schema": "validation",
    "SkewReport": "skew",
    "benjamini_hochberg": "univariate",
    "detect_drift": "drift",
    "load_dataset": "datasets",
    "feature_skew": "skew",
    "prediction_skew": "skew",
    "render_html": "html",
    "skew_report": "skew",
})
