"""Training that works under every tf.distribute strategy, with checkpoints and insight.

- :class:`Trainer`: a fit-like custom loop (default, mirrored, multi-worker, parameter server),
  gradient accumulation, global-norm clipping, mixed precision, exact resume.
- :func:`make_strategy`: a strategy by name, from the devices, or from TF_CONFIG;
  :func:`mirrored_strategy`: a MirroredStrategy that can follow another in one process.
- :class:`TrainingCheckpoint`: model + optimizer + step (+ data iterator) checkpoints.
- Callbacks (work with ``model.fit`` and the Trainer): :class:`RollbackOnNaN`,
  :class:`LossStagnation`, :class:`GradientStats` (gradient and weight histograms),
  :class:`LearningRateLogger`, :class:`RichProgress`.
- A GAN loop with two GradientTapes: :class:`GANTrainer`, :func:`train_gan`.
- Insight without a UI: :func:`profile_training` (input-bound or compute-bound, with a
  tf.profiler trace), :func:`bench_step` (eager vs tf.function vs XLA vs mixed vs fit).
- Model parallelism by hand: :class:`DeviceSplitMLP` (layers on different devices).
- ``tfprod train`` as a library: :class:`TrainConfig`, :func:`run_training` (the task read from
  the labels, held-out data, the best epoch kept), :func:`training_inputs`.

Names are imported on first use, so that process helpers of this package (local cluster
launch, the peer watchdog) start without loading TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "STRATEGIES": "strategies",
    "DeviceSplitMLP": "model_parallel",
    "GANTrainer": "gan",
    "GradientStats": "callbacks",
    "LearningRateLogger": "callbacks",
    "LossStagnation": "callbacks",
    "RichProgress": "progress",
    "ProfileReport": "profile",
    "RollbackOnNaN": "callbacks",
    "StepBenchReport": "step_bench",
    "TrainConfig": "run",
    "TrainResult": "run",
    "Trainer": "trainer",
    "TrainingCheckpoint": "checkpoints",
    "bench_step": "step_bench",
    "equal_replica_weights": "trainer",
    "make_strategy": "strategies",
    "mirrored_strategy": "strategies",
    "profile_training": "profile",
    "run_training": "run",
    "sample_quality": "gan",
    "set_memory_growth": "strategies",
    "split_cpu": "strategies",
    "train_gan": "gan",
    "training_inputs": "inputs",
})
