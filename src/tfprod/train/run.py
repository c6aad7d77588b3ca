"""``tfprod train``: a model (preset or ``module:function``) on data from ``tfprod.data``.

The configuration is one dataclass read at the edge (the CLI); workers launched by
``--workers N`` receive the same command with their own TF_CONFIG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

from tfprod.errors import TfprodError

if TYPE_CHECKING:
    from tfprod.train.inputs import TrainingInputs

PRESETS = ("mlp", "cnn")


@dataclasses.dataclass
class TrainConfig:
    """Everything ``tfprod train`` takes."""

    model: str
    data: str
    epochs: int = 5
    batch_size: int = 32
    strategy: str = "auto"
    label: str | None = None
    image_size: int = 32
    logdir: str = "runs"
    checkpoint_dir: str | None = None
    resume: bool = False
    accumulation_steps: int = 1
    clip_norm: float | None = None
    mixed_precision: str | None = None
    jit_compile: bool = False
    learning_rate: float = 1e-3
    validation: str | None = None
    validation_split: float = 0.2
    task: str | None = None
    num_classes: int | None = None
    early_stopping: int | None = None
    seed: int = 0
    save: str | None = None
    cluster_timeout: float = 60.0


@dataclasses.dataclass
class TrainResult:
    history: dict[str, list[float]]
    strategy: str
    replicas: int
    task: str
    steps_per_second: float | None
    saved: str | None
    weights_sha256: str
    seconds: float
    label_task: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    epochs: list[int] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    #: updates the optimizer applied (one per step; one per --accumulate micro-batches).
    optimizer_steps: int = 0
    #: parameter-server training: steps run by each worker, by worker index.
    worker_steps: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _task() -> tuple[str, int]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return "local", 0
    task = json.loads(raw).get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0))


def is_chief() -> bool:
    kind, index = _task()
    return kind in ("local", "chief") or (kind == "worker" and index == 0 and "chief" not in
                                          json.loads(os.environ["TF_CONFIG"])["cluster"])


def _build_model(config: TrainConfig, inputs: TrainingInputs):
    """The model to train: a preset with the task's head on the data's input side, a .keras
    file, or the user's ``module:function``."""
    import keras

    from tfprod.models import mlp, small_cnn

    task, shape = inputs.task, inputs.input_shape
    if config.model == "cnn":
        if shape is None or len(shape) != 3:
            what = "named columns" if shape is None else f"examples of shape {shape}"
            raise TfprodError(f"--model cnn needs images; the data has {what}; use --model mlp")
        return small_cnn(shape, learning_rate=config.learning_rate, task=task)
    if config.model == "mlp":
        if shape is None:
            from tfprod.data.tabular import preprocessing

            # Normalization / lookups from the training rows only, inside the model.
            prep = preprocessing(inputs.columns(), label=task.label)
            return mlp(learning_rate=config.learning_rate, inputs=prep.inputs,
                       features=prep.encoded, task=task)
        if inputs.feature is not None and len(shape) <= 1:
            x = keras.Input(shape, name=inputs.feature)
            mean, variance = _moments(inputs.columns(), inputs.feature)
            features = keras.layers.Normalization(mean=mean, variance=variance,
                                                  name=f"{inputs.feature}_normalization")(x)
            return mlp(learning_rate=config.learning_rate, inputs=x, features=features,
                       task=task)
        return mlp(shape, learning_rate=config.learning_rate, task=task)
    if config.model.endswith(".keras"):
        if not os.path.exists(config.model):
            raise TfprodError(f"--model {config.model}: no such file")
        return keras.saving.load_model(config.model)
    if ":" not in config.model:
        raise TfprodError(f"--model {config.model!r}; expected a preset ({', '.join(PRESETS)}), "
                          "module:function, or a .keras file")
    from tfprod.models.loading import load_model_function

    return load_model_function(config.model)()


def _moments(dataset, feature: str):
    """Per-component mean and variance of one feature over the training rows (float64)."""
    import numpy as np

    n, total, squares = 0, 0.0, 0.0
    for x, _ in dataset:
        v = np.asarray(x[feature], np.float64).reshape(len(x[feature]), -1)
        n, total, squares = n + len(v), total + v.sum(0), squares + (v * v).sum(0)
    mean = total / n
    variance = np.maximum(squares / n - mean * mean, 0.0)
    variance[variance == 0] = 1.0  # constant components: centred only (see preprocessing())
    return mean.tolist(), variance.tolist()


def _label_encoder(inputs: TrainingInputs, model):
    """A function making the label encoder for this model: its own task's form when it has a
    Target layer (a preset, or a .keras file trained by tfprod), class indices or raw values
    otherwise."""
    from tfprod.models.target import find_task

    own = find_task(model)
    if own is None:
        return lambda: inputs.task.encoder(head_shape=False, indexed=inputs.indexed)
    data = inputs.task
    fits = (own.kind == data.kind == "regression") or (
        own.classification and data.classification and set(data.classes) <= set(own.classes)
        and (not inputs.indexed or data.classes == own.classes))
    if not fits:
        raise TfprodError(f"--model {model.name}: it was trained for {own.summary()}; the data "
                          f"asks for {data.summary()}; train a new model (--model mlp or cnn)")
    return lambda: own.encoder(indexed=inputs.indexed)


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in model.weights:
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def run_training(config: TrainConfig, *, console=None) -> TrainResult:
    """Trains as configured; the chief saves the model and writes TensorBoard logs.

    With validation data, the weights of the epoch with the lowest validation loss are kept
    (and saved): training stops after ``early_stopping`` epochs without improvement, or runs
    all ``epochs`` and restores the best one.
    """
    import keras

    from tfprod.models.target import find_target
    from tfprod.train.inputs import training_inputs
    from tfprod.train.progress import RichProgress
    from tfprod.train.strategies import is_parameter_server, make_strategy
    from tfprod.train.trainer import Trainer

    if config.epochs < 1:
        raise TfprodError(f"--epochs {config.epochs}; expected at least 1")
    if config.batch_size < 1:
        raise TfprodError(f"--batch-size {config.batch_size}; expected at least 1")
    if config.early_stopping is not None and config.early_stopping < 1:
        raise TfprodError(f"--early-stopping {config.early_stopping}; expected a patience of at "
                          "least 1 epoch")
    start = time.perf_counter()
    # The strategy comes first: multi-worker training must create it before any other TF op.
    strategy = make_strategy(config.strategy, cluster_timeout=config.cluster_timeout)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_dtype_policy(config.mixed_precision)
    inputs = training_inputs(
        config.data, label=config.label, validation=config.validation,
        validation_split=config.validation_split, batch_size=config.batch_size,
        image_size=config.image_size, seed=config.seed, task=config.task,
        num_classes=config.num_classes)
    if config.early_stopping is not None and not inputs.has_validation:
        raise TfprodError("--early-stopping watches the validation loss, and there is no "
                          "validation data; drop --validation-split 0 or pass --validation PATH")
    chief = is_chief()
    if chief and console is not None:
        console.print(f"task: {inputs.task.summary()}", highlight=False)
        console.print(f"data: {_split_line(inputs.split)}", highlight=False)
    trainer = Trainer(
        lambda: _build_model(config, inputs), strategy=strategy,
        jit_compile=config.jit_compile, accumulation_steps=config.accumulation_steps,
        clip_norm=config.clip_norm,
        checkpoint_dir=_own_dir(config.checkpoint_dir) if config.checkpoint_dir else None,
    )
    encoder = _label_encoder(inputs, trainer.model)
    train_fn, val_fn = inputs.train_fn(encoder), inputs.val_fn(encoder)
    callbacks: list[keras.callbacks.Callback] = []
    best = None
    if val_fn is not None:
        # Every worker runs it: they see the same validation loss, so they stop together.
        best = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping or config.epochs,
            restore_best_weights=True)
        callbacks.append(best)
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(config.logdir))
    ps = is_parameter_server(strategy)
    train = train_fn if ps else train_fn()
    if chief and console is not None and not ps:
        import tensorflow as tf

        steps = int(tf.data.experimental.cardinality(train))
        if steps > 0:
            callbacks.append(RichProgress(steps, console=console))
    history = trainer.fit(train, epochs=config.epochs, resume=config.resume,
                          validation_data=None if val_fn is None else val_fn(),
                          callbacks=callbacks)
    best_epoch = None
    if best is not None and best.best_weights is not None:
        best_epoch = best.best_epoch + 1
    target = find_target(trainer.model)
    if target is not None:  # which rows of --data it never trained on, for tfprod optimize
        target.held_out = (config.validation_split if config.validation is None
                           and config.validation_split > 0 else None)
    saved = None
    if config.save and chief:
        os.makedirs(os.path.dirname(os.path.abspath(config.save)), exist_ok=True)
        trainer.model.save(config.save)
        saved = config.save
    kind, index = _task()
    epochs = history.epoch if hasattr(history, "epoch") else []
    return TrainResult(
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        strategy=type(strategy).__name__, replicas=strategy.num_replicas_in_sync,
        task=f"{kind}:{index}", steps_per_second=trainer.steps_per_second, saved=saved,
        weights_sha256=weights_digest(trainer.model),
        seconds=round(time.perf_counter() - start, 2),
        label_task=inputs.task.to_json(), split=inputs.split,
        epochs=[e + 1 for e in epochs], best_epoch=best_epoch,
        stopped_early=bool(best is not None and best.stopped_epoch > 0),
        optimizer_steps=int(trainer.optimizer.iterations.numpy()),
        worker_steps={str(k): v for k, v in sorted(trainer.worker_steps.items())})


def _split_line(split: dict[str, Any]) -> str:
    train, held = split["training"], split["held_out"]
    if held is None:
        return f"{train['rows']} training examples, no validation data"
    return (f"{train['rows']} training / {held['rows']} validation examples "
            f"({split['validation']})")


def _own_dir(path: str) -> str:
    """Non-chief workers write to their own subfolder, as TF's multi-worker guide asks."""
    if is_chief():
        return path
    kind, index = _task()
    return os.path.join(path, f".{kind}-{index}")


def worker_json_path(path):
    """Each non-chief worker writes its own ``NAME.worker-N.json`` beside the chief's."""
    if path is None or is_chief():
        return path
    kind, index = _task()
    return path.with_name(f"{path.stem}.{kind}-{index}{path.suffix}")
