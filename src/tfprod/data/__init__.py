"""Fast, checked tf.data input pipelines.

- TFRecords with a schema: :func:`write_tfrecords`, :func:`read_tfrecords`.
- Image folders: :func:`image_folder`.
- CSV with preprocessing that lives in the model: :func:`read_csv`, :func:`preprocessing`.
- Held-out data: a hashed ``validation_split`` in every reader (:class:`SplitInfo`); the task
  the labels ask for: :func:`infer_task`, :class:`LabelTask`.
- Variable-length sequences: :func:`padded_batches`, :func:`bucketed_batches`,
  :func:`ragged_batches`, :class:`RaggedToDense`, :func:`compare_strategies`.
- Data larger than memory: :func:`from_generator`, file caches (``cache="path"``).
- Data checks: :func:`inspect_dataset`, :func:`inspect_path`.
- Sample data that ships with scikit-learn: :func:`write_sample`, :func:`load_digits`.
- Interactions for recommenders: :func:`synthetic_interactions` (known low-rank preferences,
  popularity skew), :func:`read_movielens`, :class:`Interactions` (per-user holdout).
- A generated sequence task (content x length, long-tail lengths): :func:`sequence_task`.
"""

from tfprod.data.generators import from_generator
from tfprod.data.images import ImageFolder, image_folder, list_image_folder
from tfprod.data.inspect import Finding, InspectReport, inspect_dataset, inspect_path
from tfprod.data.interactions import Interactions, read_movielens, synthetic_interactions
from tfprod.data.options import cache_dataset, naive_options
from tfprod.data.sample import load_digits, write_sample
from tfprod.data.schema import FeatureSpec, Schema
from tfprod.data.sequence_task import sequence_task
from tfprod.data.sequences import (
    RaggedToDense,
    bucket_boundaries,
    bucketed_batches,
    compare_strategies,
    padded_batches,
    padding_waste,
    ragged_batches,
    ragged_to_padded,
)
from tfprod.data.skipped import SkippedRecordsWarning
from tfprod.data.split import SplitInfo
from tfprod.data.tabular import TabularPreprocessing, preprocessing, read_csv
from tfprod.data.task import LabelTask, infer_task
from tfprod.data.tfrecord import ImageFiles, read_tfrecords, write_tfrecords

__all__ = [
    "FeatureSpec",
    "Finding",
    "ImageFiles",
    "ImageFolder",
    "InspectReport",
    "Interactions",
    "LabelTask",
    "Schema",
    "RaggedToDense",
    "SkippedRecordsWarning",
    "SplitInfo",
    "TabularPreprocessing",
    "bucket_boundaries",
    "bucketed_batches",
    "cache_dataset",
    "compare_strategies",
    "from_generator",
    "image_folder",
    "infer_task",
    "inspect_dataset",
    "inspect_path",
    "list_image_folder",
    "load_digits",
    "naive_options",
    "padded_batches",
    "padding_waste",
    "preprocessing",
    "ragged_batches",
    "ragged_to_padded",
    "read_csv",
    "read_movielens",
    "read_tfrecords",
    "sequence_task",
    "synthetic_interactions",
    "write_sample",
    "write_tfrecords",
]
