"""TF1 -> TF 2.21 / Keras 3: code, models, and proof that they compute the same thing.

- :func:`migrate_code`: TensorFlow's own ``tf_upgrade_v2``, then tfprod's rules
  (:data:`RULES`) for what it leaves broken under Keras 3; safe rewrites applied, every other
  finding (:class:`Finding`) reported with its line in a :class:`CodeReport`.
- :func:`migrate_model`: a TF1 SavedModel, frozen GraphDef or checkpoint -> a TF2 SavedModel in
  TF Serving's layout (:class:`MigrationResult`), variables kept as variables.
- :func:`check_migration`: the TF1 graph (a Session, in a child process) against the migrated
  model on the same inputs (:class:`CheckReport`).
- :func:`bench_graph`, :func:`make_problem`: TF1 Session vs eager vs ``tf.function`` vs XLA
  (:class:`GraphBenchReport`).

Names load on first use: importing this package does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CheckReport": "check",
    "CodeReport": "code_report",
    "Finding": "finding",
    "GraphBenchReport": "graph_bench",
    "MigrationResult": "model",
    "RULES": "rules",
    "Tf1Source": "tf1_graph",
    "bench_graph": "graph_bench",
    "check_migration": "check",
    "detect_source": "tf1_graph",
    "make_problem": "graph_bench",
    "migrate_code": "code",
    "migrate_model": "model",
})
