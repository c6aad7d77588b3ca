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

Names load on first use: importing this package does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "FeatureSpec": "schema",
    "Finding": "inspect",
    "ImageFiles": "tfrecord",
    "ImageFolder": "images",
    "InspectReport": "inspect",
    "Interactions": "interactions",
    "LabelTask": "task",
    "RaggedToDense": "sequences",
    "Schema": "schema",
    "SkippedRecordsWarning": "skipped",
    "SplitInfo": "split",
    "TabularPreprocessing": "tabular",
    "bucket_boundaries": "sequences",
    "bucketed_batches": "sequences",
    "cache_dataset": "options",
    "compare_strategies": "sequences",
    "from_generator": "generators",
    "image_folder": "images",
    "infer_task": "task",
    "inspect_dataset": "inspect",
    "inspect_path": "inspect",
    "list_image_folder": "images",
    "load_digits": "sample",
    "naive_options": "options",
    "padded_batches": "sequences",
    "padding_waste": "sequences",
    "preprocessing": "tabular",
    "ragged_batches": "sequences",
    "ragged_to_padded": "sequences",
    "read_csv": "tabular",
    "read_movielens": "interactions",
    "read_tfrecords": "tfrecord",
    "sequence_task": "sequence_task",
    "synthetic_interactions": "interactions",
    "write_sample": "sample",
    "write_tfrecords": "tfrecord",
})
