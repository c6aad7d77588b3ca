"""Export: versioned SavedModels in TF Serving's layout, ``.keras`` and weights files.

- :func:`export_saved_model`: ``BASE/<version>/`` with a named ``serving_default`` signature,
  warmup requests and reference statistics, published atomically.
- :func:`list_versions`, :func:`next_version`: the versions under a base path.
- :func:`load_reference_stats`, :func:`read_warmup_requests`, :func:`read_signatures`: what an
  exported version holds.
- :func:`save_keras`, :func:`save_weights`, :func:`load_keras`: Keras files for continued
  training (optimizer state included) and weights only.
- :func:`to_litert`, :class:`LiteRTConverter`, :class:`LiteRTModel`: LiteRT files (float32,
  dynamic-range, float16, int8) and the LiteRT interpreter on all cores.
- :func:`predict`, :func:`load_predictor`: batched inference with any exported variant (one
  input, or several named inputs).
- :class:`RaggedInput`: a model input served as variable-length lists (``NAME.values`` +
  ``NAME.row_lengths``, padded and masked inside the signature).
- :func:`export_recommender`: a :class:`~tfprod.models.Recommender` with ``serving_default``
  (pair scores) and ``recommend`` (top-k, seen items left out).

Names load on first use: importing this package does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Examples": "examples",
    "ExportResult": "savedmodel",
    "LiteRTConverter": "litert",
    "LiteRTModel": "litert",
    "PredictResult": "predict",
    "REFERENCE_FILE": "reference",
    "RaggedInput": "ragged",
    "ServingInputs": "signature",
    "WARMUP_FILE": "warmup",
    "build_archive": "savedmodel",
    "check_base": "publish",
    "collect_examples": "examples",
    "export_recommender": "recommender",
    "export_saved_model": "savedmodel",
    "list_versions": "publish",
    "load_keras": "keras_files",
    "load_predictor": "predict",
    "load_reference_stats": "reference",
    "next_version": "publish",
    "predict": "predict",
    "read_signatures": "signature",
    "read_warmup_requests": "warmup",
    "reference_stats": "reference",
    "save_keras": "keras_files",
    "save_weights": "keras_files",
    "serving_inputs": "signature",
    "to_litert": "litert",
    "write_warmup_requests": "warmup",
})
