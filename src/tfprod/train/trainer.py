"""A fit-like training loop for Keras 3 models that runs unchanged under every tf.distribute
strategy, including the ones where ``model.fit`` fails.

Upstream gaps it works around (TF 2.21 / Keras 3.15):

- ``model.fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585) and under
  ParameterServerStrategy; this loop uses ``strategy.run`` / ``ClusterCoordinator.schedule``.
- The optimizer's ``gradient_accumulation_steps`` fails under MirroredStrategy
  (keras-team/keras#20582); here micro-batches are accumulated inside one replica step instead,
  so no cross-step state is involved and every strategy behaves the same.
- Keras clips gradients (``global_clipnorm``) *before* it all-reduces them, so under N replicas
  each replica's partial gradient is clipped instead of the true one; here the gradients are
  all-reduced first, then clipped.

The loss is averaged over the *global* batch (``sum(per-example loss) / global batch``) so the
summed gradient across replicas is the gradient of the mean loss, whatever the replica count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.train.checkpoints import TrainingCheckpoint
from tfprod.train.parameter_server import evaluate_on_coordinator, fit_parameter_server
from tfprod.train.strategies import is_parameter_server

ModelOrBuilder = keras.Model | Callable[[], keras.Model]


def _per_example_loss(loss: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """An unreduced loss function from what ``model.compile(loss=...)`` was given."""
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        obj = fn

        def call(y_true, y_pred):
            return obj.call(y_true, y_pred)

        return call
    if fn is None or not callable(fn):
        raise TfprodError(f"loss {loss!r} is not a Keras loss; pass a name or a keras.losses.Loss")
    return fn


class Trainer:
    """Trains a compiled Keras model with a custom loop under any tf.distribute strategy.

    It complements ``model.fit`` rather than replacing it: the same Keras callbacks work with
    both, and where ``fit`` works it remains a fine choice.

    Args:
        model: a compiled ``keras.Model`` (built under ``strategy.scope()`` when a strategy is
            given), or a function returning one, which the trainer calls inside the scope.
        strategy: a ``tf.distribute.Strategy`` (default: the current one); see
            :func:`tfprod.train.make_strategy`.
        jit_compile: compile the forward/backward computation with XLA.
        accumulation_steps: split each batch into this many micro-batches and apply one update
            with their summed gradients: the update of the whole batch with the activation
            memory of one micro-batch.
        clip_norm: clip the (all-reduced) gradients to this global norm.
        checkpoint_dir: save model, optimizer, step, epoch (and the data iterator, on the
            default strategy) here with ``tf.train.CheckpointManager``; ``fit(resume=True)``
            continues from the latest one.
        checkpoint_every: also save every N steps (default: at epoch ends only).
        penalty: ``penalty(x, y_pred) -> scalar`` added to the loss of every step (a
            regularizer that needs the batch or the weights: EWC's quadratic anchor, LwF's
            distillation; see :mod:`tfprod.online`). It is a global term: each replica and
            micro-batch adds its share.

    Example:
        >>> strategy = tfprod.train.make_strategy("mirrored")
        >>> trainer = Trainer(lambda: build_compiled_model(), strategy=strategy)
        >>> history = trainer.fit(dataset, epochs=5, callbacks=[...])
    """

    def __init__(
        self,
        model: ModelOrBuilder,
        *,
        strategy: tf.distribute.Strategy | None = None,
        jit_compile: bool = False,
        accumulation_steps: int = 1,
        clip_norm: float | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        penalty: Callable[[Any, Any], tf.Tensor] | None = None,
    ) -> None:
        self.strategy = strategy or tf.distribute.get_strategy()
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise TfprodError(f"accumulation_steps={accumulation_steps!r}; expected an integer "
                              ">= 1")
        if clip_norm is not None and not clip_norm > 0:
            raise TfprodError(f"clip_norm={clip_norm!r}; expected a positive number or None")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise TfprodError(f"checkpoint_every={checkpoint_every}; expected a positive integer")
        if not isinstance(model, keras.Model):
            with self.strategy.scope():
                model = model()
            if not isinstance(model, keras.Model):
                raise TfprodError(f"the model function returned {type(model).__name__}; "
                                  "expected a compiled keras.Model")
        if getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None:
            raise TfprodError(f"model {model.name!r} is not compiled with a loss and an optimizer;"
                              " call model.compile(optimizer=..., loss=...) first")
        self.model = model
        self.optimizer = model.optimizer
        self.jit_compile = jit_compile
        self.accumulation_steps = accumulation_steps
        self.clip_norm = clip_norm
        self._losses = self._loss_fns(model)
        self._train_step = None
        self._eval_step = None
        self.checkpoint = (TrainingCheckpoint(checkpoint_dir, model, self.optimizer)
                           if checkpoint_dir is not None else None)
        self.checkpoint_every = checkpoint_every
        self.penalty = penalty
        self.steps_per_second: float | None = None
        #: parameter-server training: steps each worker ran (worker index -> steps).
        self.worker_steps: dict[int, int] = {}

    # ------------------------------------------------------------------------------ the step

    @staticmethod
    def _loss_fns(model: keras.Model):
        loss = model.loss
        if isinstance(loss, dict):
            return {k: _per_example_loss(v) for k, v in loss.items()}
        if isinstance(loss, list | tuple):
            return [_per_example_loss(v) for v in loss]
        return _per_example_loss(loss)

    def _per_example(self, y, y_pred) -> tf.Tensor:
        def one(fn, yt, yp):
            yp = tf.cast(yp, tf.float32) if yp.dtype.is_floating else yp
            values = fn(yt, yp)
            if values.shape.rank and values.shape.rank > 1:
                values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
            return tf.cast(values, tf.float32)

        fns = self._losses
        if isinstance(fns, dict):
            if not isinstance(y_pred, dict):
                names = self.model.output_names
                y_pred = dict(zip(names, tf.nest.flatten(y_pred), strict=True))
            return tf.add_n([one(f, y[k], y_pred[k]) for k, f in fns.items()])
        if isinstance(fns, list):
            return tf.add_n([one(f, yt, yp) for f, yt, yp in
                             zip(fns, tf.nest.flatten(y), tf.nest.flatten(y_pred), strict=True)])
        return one(fns, y, y_pred)

    def _gradients(self, x, y, sw, global_batch):
        """Loss and gradients of one micro-batch, loss scaled to the global batch."""
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            per_example = self._per_example(y, y_pred)
            if sw is not None:
                per_example = per_example * tf.cast(tf.reshape(sw, [-1]), per_example.dtype)
            loss = tf.reduce_sum(per_example) / global_batch
            replicas = self.strategy.num_replicas_in_sync * self.accumulation_steps
            if model.losses:
                loss += tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) / replicas
            if self.penalty is not None:
                loss += tf.cast(self.penalty(x, y_pred), tf.float32) / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        return loss, grads, y_pred

    def _replica_step(self, x, y, sw=None):
        ctx = tf.distribute.get_replica_context()
        local = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
        global_batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
        compute = tf.function(self._gradients, jit_compile=True) if self.jit_compile else (
            self._gradients)
        k = self.accumulation_steps
        variables = self.model.trainable_variables
        if k == 1:
            loss, grads, y_pred = compute(x, y, sw, global_batch)
            self._update_metrics(y, y_pred, sw)
        else:
            def micro(t, i):
                size = tf.shape(t)[0] // k
                return t[i * size:(i + 1) * size]

            loss = tf.constant(0.0)
            grads = [tf.zeros_like(v) for v in variables]
            for i in tf.range(k):
                # One micro-batch at a time: the loop's iterations are independent, and TF would
                # otherwise run up to 10 at once, holding their activations together.
                tf.autograph.experimental.set_loop_options(parallel_iterations=1)
                xi, yi = tf.nest.map_structure(lambda t, i=i: micro(t, i), (x, y))
                si = None if sw is None else micro(sw, i)
                li, gi, pi = compute(xi, yi, si, global_batch)
                loss += li
                grads = [a + (tf.zeros_like(v) if g is None else tf.convert_to_tensor(g))
                         for a, g, v in zip(grads, gi, variables, strict=True)]
                self._update_metrics(yi, pi, si)
        replicas = self.strategy.num_replicas_in_sync
        present = [g for g in grads if g is not None]
        if replicas > 1:
            present = ctx.all_reduce(tf.distribute.ReduceOp.SUM, present)
        if self.clip_norm is not None:
            scale = getattr(self.optimizer, "dynamic_scale", None)
            limit = self.clip_norm * (tf.cast(scale, tf.float32) if scale is not None else 1.0)
            present, _ = tf.clip_by_global_norm(present, limit)
        if replicas > 1:
            # Keras' optimizer all-reduces (sums) gradients again in a replica context; hand it
            # 1/N of the already-reduced sum so that its sum is the true gradient.
            present = [g / replicas for g in present]
        it = iter(present)
        grads = [None if g is None else next(it) for g in grads]
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])
        return loss

    def _update_metrics(self, y, y_pred, sw) -> None:
        metrics = getattr(self.model, "_compile_metrics", None)
        if metrics is not None:
            metrics.update_state(y, y_pred, sample_weight=sw)

    def _replica_eval(self, x, y, sw=None):
        """(sum of the per-example losses, examples) of this replica's part of the batch."""
        y_pred = self.model(x, training=False)
        per_example = self._per_example(y, y_pred)
        self._update_metrics(y, y_pred, sw)
        return tf.stack([tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32)])

    def _make_steps(self) -> None:
        strategy = self.strategy

        def unpack(batch):
            if isinstance(batch, tuple | list) and len(batch) in (2, 3):
                return tuple(batch)
            raise TfprodError("the dataset must yield (x, y) or (x, y, sample_weight) batches")

        @tf.function
        def train_step(batch):
            per_replica = strategy.run(self._replica_step, args=unpack(batch))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        @tf.function
        def eval_step(batch):
            per_replica = strategy.run(self._replica_eval, args=unpack(batch))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._train_step, self._eval_step = train_step, eval_step

    # ----------------------------------------------------------------------------- the data

    def _prepare(self, dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, int | None]:
        if not isinstance(dataset, tf.data.Dataset):
            raise TfprodError(f"expected a tf.data.Dataset of (x, y) batches, got "
                              f"{type(dataset).__name__}; wrap arrays with "
                              "tf.data.Dataset.from_tensor_slices((x, y)).batch(n)")
        spec = dataset.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise TfprodError(f"the dataset yields {spec}; expected (x, y) or "
                              "(x, y, sample_weight) batches")
        k = self.accumulation_steps
        replicas = self.strategy.num_replicas_in_sync
        if k > 1:
            first = next(iter(dataset.take(1)), None)
            if first is None:
                raise TfprodError("the dataset is empty")
            batch = int(tf.shape(tf.nest.flatten(first[0])[0])[0])
            if batch % (replicas * k):
                raise TfprodError(
                    f"batch size {batch} does not split into {k} micro-batches on each of "
                    f"{replicas} replica(s); use a batch size divisible by {replicas * k}")
            # Each step takes k of the user's batches and runs them as k micro-batches.
            dataset = dataset.unbatch().batch(batch * k, drop_remainder=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
        n = int(dataset.cardinality())
        return dataset, (n if n >= 0 else None)

    # ------------------------------------------------------------------------------ fitting

    def fit(
        self,
        dataset: tf.data.Dataset | Callable[[], tf.data.Dataset],
        *,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
        validation_data: tf.data.Dataset | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        resume: bool = False,
        verbose: int = 0,
    ) -> keras.callbacks.History:
        """Trains for ``epochs``; returns a Keras ``History`` like ``model.fit``.

        Args:
            dataset: batches of ``(x, y)`` or ``(x, y, sample_weight)``, of the global batch
                size; or a function returning such a dataset (required for parameter-server
                training, where each worker builds its own).
            epochs: epochs to train (in total, when resuming).
            steps_per_epoch: steps per epoch (required when the dataset's length is unknown,
                and for parameter-server training).
            validation_data: evaluated at each epoch end (``val_*`` logs).
            callbacks: Keras callbacks, called as ``fit`` calls them.
            resume: continue from the latest checkpoint in ``checkpoint_dir``.
            verbose: 0 silent, 1 a Keras progress bar.
        """
        if epochs < 1:
            raise TfprodError(f"epochs={epochs}; expected at least 1")
        if resume and self.checkpoint is None:
            raise TfprodError("resume=True needs Trainer(checkpoint_dir=...)")
        if is_parameter_server(self.strategy):
            return fit_parameter_server(self, dataset, epochs=epochs,
                                        steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                                        validation_data=validation_data)
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            dataset = dataset()
        data, known = self._prepare(dataset)
        steps = steps_per_epoch or known
        if steps is None:
            # One counting pass (no training compute); pass steps_per_epoch to skip it.
            steps = int(data.reduce(np.int64(0), lambda n, _: n + 1))
        if steps < 1:
            raise TfprodError("the dataset yields no full batch; use more data or a smaller "
                              "batch size")
        self._build(data)
        # One iterator over the repeated data for the whole run: epochs reshuffle inside it, it
        # can be checkpointed mid-epoch, and no per-epoch iterator teardown (which can stall
        # for seconds with tf.data autotuning) is paid.
        dist = self.strategy.experimental_distribute_dataset(data.repeat())
        iterator = iter(dist)
        start_epoch, start_step = 0, 0
        if self.checkpoint is not None:
            track_iterator = self.strategy.num_replicas_in_sync == 1 and not isinstance(
                self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
            self.checkpoint.attach_iterator(iterator if track_iterator else None)
            if resume:
                done = self.checkpoint.restore_latest()
                if done is not None:
                    start_epoch, start_step = divmod(done, steps)
        if self._train_step is None:
            self._make_steps()

        cbs = keras.callbacks.CallbackList(
            list(callbacks), add_history=True, add_progbar=verbose > 0, model=self.model,
            epochs=epochs, steps=steps, verbose=verbose)
        self.model.stop_training = False
        cbs.on_train_begin()
        logs: dict[str, float] = {}
        t_start, n_steps = time.perf_counter(), 0
        for epoch in range(start_epoch, epochs):
            self._reset_metrics()
            cbs.on_epoch_begin(epoch)
            total, count = tf.constant(0.0), 0
            first = start_step if epoch == start_epoch else 0
            for step in range(first, steps):
                cbs.on_train_batch_begin(step)
                # The loss stays a tensor: no host sync per step unless a callback reads it.
                loss = self._train_step(next(iterator))
                n_steps += 1
                total += loss
                count += 1
                logs = {"loss": loss}
                if self.checkpoint is not None:
                    self.checkpoint.step.assign(epoch * steps + step + 1)
                    if self.checkpoint_every and (epoch * steps + step + 1) % \
                            self.checkpoint_every == 0:
                        self.checkpoint.save()
                cbs.on_train_batch_end(step, logs)
                if self.model.stop_training:
                    break
            logs = {"loss": float(total) / max(count, 1), **self._metric_results()}
            if validation_data is not None:
                logs.update(self.evaluate(validation_data, prefix="val_"))
            if self.checkpoint is not None:
                self.checkpoint.save()
            cbs.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        elapsed = time.perf_counter() - t_start
        self.steps_per_second = n_steps / elapsed if elapsed > 0 else None
        cbs.on_train_end(logs)
        return self.model.history

    def evaluate(self, dataset: tf.data.Dataset, *, prefix: str = "") -> dict[str, float]:
        """Mean loss over the examples of ``dataset``, and the compiled metrics."""
        if is_parameter_server(self.strategy):
            return evaluate_on_coordinator(self, dataset, prefix=prefix)
        data, _ = self._prepare_eval(dataset)
        if self._eval_step is None:
            self._make_steps()
        self._reset_metrics()
        # The mean over examples, not over batches: a short last batch counts for its size.
        total = tf.zeros([2])
        for batch in self.strategy.experimental_distribute_dataset(data):
            total += self._eval_step(batch)
        loss_sum, examples = (float(v) for v in total.numpy())
        if examples == 0:
            raise TfprodError("the evaluation dataset is empty")
        out = {f"{prefix}loss": loss_sum / examples}
        out.update({f"{prefix}{k}": v for k, v in self._metric_results().items()})
        self._reset_metrics()
        return out

    def _prepare_eval(self, dataset):
        accumulation, self.accumulation_steps = self.accumulation_steps, 1
        try:
            return self._prepare(dataset)
        finally:
            self.accumulation_steps = accumulation

    def _build(self, data: tf.data.Dataset) -> None:
        """Creates model, optimizer and metric variables (in the strategy's scope) up front."""
        model = self.model
        batch = next(iter(data.take(1)))
        # One example is enough to create the variables; a whole (accumulated) batch would
        # set the process's peak memory before training starts.
        x, y = tf.nest.map_structure(lambda t: t[:1], (batch[0], batch[1]))
        with self.strategy.scope():
            y_pred = model(x, training=False)
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
            metrics = getattr(model, "_compile_metrics", None)
            if metrics is not None and not metrics.built:
                metrics.build(y, y_pred)
        self._check_labels(y, y_pred)

    def _check_labels(self, y, y_pred) -> None:
        try:
            self._per_example(y, y_pred)
        except (ValueError, tf.errors.InvalidArgumentError) as e:
            shapes = tf.nest.map_structure(lambda t: tuple(t.shape[1:]), (y, y_pred))
            raise TfprodError(
                f"labels of shape {shapes[0]} per example do not fit the model's output "
                f"{shapes[1]} under "
                f"loss {self.model.loss!r} ({str(e).splitlines()[0][:160]}); fix the labels "
                "(e.g. integer class ids for sparse_categorical_crossentropy, one-hot for "
                "categorical_crossentropy) or the loss") from None

    def _metric_results(self) -> dict[str, float]:
        metrics = getattr(self.model, "_compile_metrics", None)
        if metrics is None or not metrics.built:
            return {}
        out = {}
        for name, value in metrics.result().items():
            v = np.asarray(value)
            out[name] = float(v) if v.size == 1 else v.tolist()
        return out

    def _reset_metrics(self) -> None:
        metrics = getattr(self.model, "_compile_metrics", None)
        if metrics is not None and metrics.built:
            metrics.reset_state()


def equal_replica_weights(model: keras.Model) -> bool:
    """True when every replica of every variable holds the same values (mirrored training)."""
    for v in model.weights:
        value = getattr(v, "value", v)
        values = getattr(value, "values", None)
        if values is None:
            continue
        first = values[0].numpy()
        if not all(np.array_equal(first, r.numpy()) for r in values[1:]):
            return False
    return True
