"""Parameter-server training: the coordinator schedules steps on workers, variables live on PS.

``model.fit`` does not run here under Keras 3; this is the ``ClusterCoordinator`` loop from the
TF guide, driven by the same :class:`~tfprod.train.Trainer` step and Keras callbacks.

The Trainer imports this module, not the reverse: what the loop needs of a trainer is the
:class:`CoordinatedTrainer` protocol below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import keras
import tensorflow as tf

from tfprod.errors import TfprodError


class CoordinatedTrainer(Protocol):
    """What the coordinator loop uses of a :class:`~tfprod.train.Trainer`."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    strategy: tf.distribute.Strategy
    accumulation_steps: int
    clip_norm: float | None

    def _gradients(self, x: Any, y: Any, sample_weight: Any, global_batch: Any) -> tuple: ...
    def _per_example(self, y: Any, y_pred: Any) -> tf.Tensor: ...
    def _check_labels(self, y: Any, y_pred: Any) -> None: ...
    def _update_metrics(self, y: Any, y_pred: Any, sample_weight: Any) -> None: ...
    def _reset_metrics(self) -> None: ...
    def _metric_results(self) -> dict[str, float]: ...


def fit_parameter_server(
    trainer: CoordinatedTrainer,
    dataset: tf.data.Dataset | Callable[[], tf.data.Dataset],
    *,
    epochs: int,
    steps_per_epoch: int | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    validation_data: tf.data.Dataset | None = None,
) -> keras.callbacks.History:
    """Trains ``trainer.model`` with a ``ClusterCoordinator``; batch logs come per epoch.

    ``dataset`` should be a function that builds the dataset: it is traced and run on every
    worker. A dataset object whose tensors live on the coordinator (e.g. from numpy arrays)
    cannot be shipped to workers; one read from files can. The compiled metrics are updated by
    the workers' steps; ``validation_data`` is evaluated by the coordinator itself at each
    epoch end (:func:`evaluate_on_coordinator`), every example exactly once.
    """
    strategy = trainer.strategy
    dataset_fn = dataset if callable(dataset) else (lambda: dataset)
    dataset = dataset_fn()
    if trainer.accumulation_steps != 1:
        raise TfprodError("accumulation_steps > 1 is not supported with the parameter-server "
                          "strategy (workers apply their updates asynchronously)")
    if steps_per_epoch is None:
        n = int(dataset.cardinality())
        if n < 1:
            raise TfprodError("parameter-server training needs steps_per_epoch (the dataset is "
                              "repeated on every worker)")
        steps_per_epoch = n
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    trainer.worker_steps = {}
    model = trainer.model
    sample = next(iter(dataset.take(1)))
    with strategy.scope():
        y_pred = model(sample[0], training=False)
        if not trainer.optimizer.built:
            trainer.optimizer.build(model.trainable_variables)
        metrics = getattr(model, "_compile_metrics", None)
        if metrics is not None and not metrics.built:
            metrics.build(sample[1], y_pred)
    trainer._check_labels(sample[1], model(sample[0], training=False))
    # Keras 3 counts optimizer steps with a read-then-write (KerasVariable.assign_add is
    # assign(self + 1)), so workers updating at once lose increments: 59 of 72 steps were
    # counted here with two workers. A TF counter on the PS (AssignAddVariableOp, atomic) counts
    # every update; the optimizer's counter is set from it at each epoch end, when no step runs.
    with strategy.scope():
        applied = tf.Variable(0, dtype=tf.int64, trainable=False, name="applied_updates")
    first_step = int(trainer.optimizer.iterations.numpy())

    per_worker = coordinator.create_per_worker_dataset(lambda: dataset_fn().repeat())
    iterator = iter(per_worker)

    def replica_step(batch):
        x, y = batch[0], batch[1]
        sw = batch[2] if len(batch) > 2 else None
        global_batch = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
        loss, grads, y_pred = trainer._gradients(x, y, sw, global_batch)
        trainer._update_metrics(y, y_pred, sw)
        if trainer.clip_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, trainer.clip_norm)
        trainer.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_variables, strict=True)
             if g is not None])
        applied.assign_add(1)
        return loss

    @tf.function
    def worker_step(it):
        loss = strategy.run(replica_step, args=(next(it),))
        # Which worker ran the step: a constant traced into each worker's copy of the function.
        return loss, tf.distribute.coordinator.experimental_get_current_worker_index()

    cbs = keras.callbacks.CallbackList(list(callbacks), add_history=True, model=model,
                                       epochs=epochs, steps=steps_per_epoch, verbose=0)
    model.stop_training = False
    cbs.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(epochs):
        trainer._reset_metrics()
        cbs.on_epoch_begin(epoch)
        results = [coordinator.schedule(worker_step, args=(iterator,))
                   for _ in range(steps_per_epoch)]
        coordinator.join()
        trainer.optimizer.iterations.assign(first_step + applied.read_value())
        fetched = [r.fetch() for r in results]
        losses = [float(loss) for loss, _ in fetched]
        for _, worker in fetched:
            trainer.worker_steps[int(worker)] = trainer.worker_steps.get(int(worker), 0) + 1
        logs = {"loss": sum(losses) / len(losses), **trainer._metric_results()}
        if validation_data is not None:
            logs.update(evaluate_on_coordinator(trainer, validation_data, prefix="val_"))
        cbs.on_train_batch_end(steps_per_epoch - 1, {"loss": losses[-1]})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return model.history


def evaluate_on_coordinator(trainer: CoordinatedTrainer, dataset: tf.data.Dataset, *,
                            prefix: str = "") -> dict[str, float]:
    """Mean loss over the examples of ``dataset`` and the compiled metrics, computed by the
    coordinator with the variables on the parameter servers.

    Evaluation scheduled on workers may run a batch twice when a worker is retried, and the
    split of an evaluation set across workers is not exact; the coordinator reads each example
    once. Fine for validation sets; a large one wants a side-car evaluator.
    """
    model = trainer.model

    @tf.function
    def step(x, y):
        y_pred = model(x, training=False)
        per_example = trainer._per_example(y, y_pred)
        trainer._update_metrics(y, y_pred, None)
        return tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32)

    trainer._reset_metrics()
    total, examples = 0.0, 0.0
    for batch in dataset:
        loss_sum, n = step(batch[0], batch[1])
        total, examples = total + float(loss_sum), examples + float(n)
    if examples == 0:
        raise TfprodError("the evaluation dataset is empty")
    out = {f"{prefix}loss": total / examples,
           **{f"{prefix}{k}": v for k, v in trainer._metric_results().items()}}
    trainer._reset_metrics()
    return out
