"""Models for the seed scenarios: presets, a recommender, a GAN for the digits, custom layers,
and the heads, metrics and ``Target`` layer of models trained on the user's labels.

- :func:`mlp`, :func:`small_cnn`: compiled presets.
- :class:`UserItemEmbedding`, :class:`Recommender`, :func:`train_recommender`: matrix
  factorization for implicit feedback (in-batch softmax) or ratings, top-k with a popularity
  fallback; :func:`evaluate_ranking`, :func:`popularity_recommender`,
  :func:`model_recommender`: recall@k and NDCG@k against popularity.
- :func:`sequence_classifier`, :func:`compare_batching`, :func:`predict_sequences`: a
  masking-aware classifier of variable-length sequences; pad-to-max vs bucketing.
- :func:`sequential_model`, :func:`functional_model`, :class:`SubclassedClassifier`,
  :func:`capabilities`, :func:`share_weights`: one CNN in the three Keras styles.
- :class:`RunningMeanNormalization`: a stateful layer (variables vs tensors).
- :func:`task_head`, :func:`compile_for_task`, :class:`Target`, :class:`MacroF1`,
  :class:`ScaledMeanSquaredError`: models trained on the user's labels.
- :func:`make_generator`, :func:`make_discriminator`: the digits GAN.
- :func:`load_model` (a ``.keras`` file or ``module:function``), :func:`load_data` (data shaped
  for that model): what ``tfprod doctor``, ``export`` and ``optimize`` load.

Importing this package registers tfprod's Keras classes, so ``keras.saving.load_model``
can read ``.keras`` files that use them.
"""

from tfprod.models.embeddings import UserItemEmbedding
from tfprod.models.gan import make_discriminator, make_generator
from tfprod.models.heads import compile_for_task, task_head
from tfprod.models.layers import RunningMeanNormalization
from tfprod.models.loading import load_model
from tfprod.models.losses import ScaledMeanSquaredError
from tfprod.models.metrics import MacroF1, task_metrics
from tfprod.models.model_data import load_data
from tfprod.models.presets import mlp, small_cnn
from tfprod.models.ranking import (
    RankingResult,
    evaluate_ranking,
    model_recommender,
    popularity_recommender,
    recall_ndcg,
)
from tfprod.models.recommender import Recommender, train_recommender
from tfprod.models.sequence import (
    BatchingRun,
    compare_batching,
    predict_sequences,
    sequence_classifier,
)
from tfprod.models.styles import (
    SubclassedClassifier,
    capabilities,
    functional_model,
    sequential_model,
    share_weights,
    subclassed_model,
)
from tfprod.models.target import Target, find_target, find_task

__all__ = [
    "BatchingRun",
    "MacroF1",
    "RankingResult",
    "Recommender",
    "RunningMeanNormalization",
    "ScaledMeanSquaredError",
    "SubclassedClassifier",
    "Target",
    "UserItemEmbedding",
    "capabilities",
    "compare_batching",
    "compile_for_task",
    "evaluate_ranking",
    "find_target",
    "find_task",
    "functional_model",
    "load_data",
    "load_model",
    "make_discriminator",
    "make_generator",
    "mlp",
    "model_recommender",
    "popularity_recommender",
    "predict_sequences",
    "recall_ndcg",
    "sequence_classifier",
    "sequential_model",
    "share_weights",
    "small_cnn",
    "subclassed_model",
    "task_head",
    "task_metrics",
    "train_recommender",
]
