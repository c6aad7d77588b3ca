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
"""

from tfprod.export.examples import Examples, collect_examples
from tfprod.export.keras_files import load_keras, save_keras, save_weights
from tfprod.export.litert import LiteRTConverter, LiteRTModel, to_litert
from tfprod.export.predict import PredictResult, load_predictor, predict
from tfprod.export.publish import check_base, list_versions, next_version
from tfprod.export.ragged import RaggedInput
from tfprod.export.recommender import export_recommender
from tfprod.export.reference import REFERENCE_FILE, load_reference_stats, reference_stats
from tfprod.export.savedmodel import ExportResult, build_archive, export_saved_model
from tfprod.export.signature import ServingInputs, read_signatures, serving_inputs
from tfprod.export.warmup import WARMUP_FILE, read_warmup_requests, write_warmup_requests

__all__ = [
    "REFERENCE_FILE",
    "WARMUP_FILE",
    "Examples",
    "ExportResult",
    "LiteRTConverter",
    "LiteRTModel",
    "PredictResult",
    "RaggedInput",
    "ServingInputs",
    "build_archive",
    "check_base",
    "collect_examples",
    "export_recommender",
    "export_saved_model",
    "list_versions",
    "load_keras",
    "load_predictor",
    "load_reference_stats",
    "next_version",
    "predict",
    "read_signatures",
    "read_warmup_requests",
    "reference_stats",
    "save_keras",
    "save_weights",
    "serving_inputs",
    "to_litert",
    "write_warmup_requests",
]
