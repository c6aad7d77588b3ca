"""A masking-aware classifier of variable-length token sequences, and bucketing vs pad-to-max.

The model takes token ids padded with ``0`` (``(batch, steps)``, any number of steps):
``IntegerLookup`` maps them to embedding rows (``0`` stays the mask, ids outside
``1 .. vocab_size - 1`` go to its one out-of-vocabulary row), ``Embedding(mask_zero=True)``
makes the mask, and a bidirectional GRU reads only the real steps, so the same sequence gets
the same answer whatever it is padded to. Exported with
``ragged_inputs={"tokens": RaggedInput(max_length=...)}`` the signature takes the lists
themselves and pads them inside (see :mod:`tfprod.export.ragged`).

:func:`compare_batching` trains the same initial weights twice, on batches padded to the
longest sequence overall ("pad to max") and on bucketed batches, and reports training speed,
padding waste and test accuracy side by side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import keras
import numpy as np

from tfprod.data.sequences import (
    bucket_boundaries,
    bucketed_batches,
    padded_batches,
    padding_waste,
)
from tfprod.errors import TfprodError

STRATEGIES = ("pad_to_max", "bucketed")


def sequence_classifier(vocab_size: int, num_classes: int, *, embedding_dim: int = 16,
                        units: int = 32, learning_rate: float = 3e-3,
                        name: str = "sequence_classifier") -> keras.Model:
    """A compiled functional model: token ids ``(batch, steps)`` -> ``probabilities``.

    Args:
        vocab_size: token ids ``1 .. vocab_size - 1`` are known; ``0`` is padding.
        num_classes: softmax outputs.
        embedding_dim: embedding width.
        units: GRU units per direction.
        learning_rate: Adam's learning rate.
        name: the model's name.
    """
    if vocab_size < 2 or num_classes < 2:
        raise TfprodError(f"vocab_size={vocab_size}, num_classes={num_classes}; expected at "
                          "least 2 each")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    ids = keras.layers.IntegerLookup(vocabulary=np.arange(1, vocab_size, dtype=np.int64),
                                     mask_token=0, num_oov_indices=1, name="token_ids")(tokens)
    x = keras.layers.Embedding(vocab_size + 1, embedding_dim, mask_zero=True,
                               name="embedding")(ids)
    x = keras.layers.Bidirectional(keras.layers.GRU(units), name="bigru")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(tokens, outputs, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def check_sequences(sequences: Sequence[np.ndarray], *, max_length: int | None = None) -> None:
    """Refuses empty sequences and (with ``max_length``) longer ones, naming the first."""
    for i, s in enumerate(sequences):
        n = len(s)
        if n == 0:
            raise TfprodError(f"sequence {i} is empty; a classifier needs at least one token "
                              "per sequence: drop it or give it a token")
        if max_length is not None and n > max_length:
            raise TfprodError(f"sequence {i} has {n} tokens, more than max_length={max_length}; "
                              "truncate it or raise max_length")


def predict_sequences(model: keras.Model, sequences: Sequence[np.ndarray], *,
                      batch_size: int = 256) -> np.ndarray:
    """The model's outputs for variable-length sequences, padded per batch (order kept)."""
    check_sequences(sequences)
    ds = padded_batches(sequences, batch_size=batch_size)
    return np.concatenate([keras.ops.convert_to_numpy(model(x, training=False)) for x in ds])


@dataclasses.dataclass
class BatchingRun:
    """One training run of :func:`compare_batching`.

    Attributes:
        strategy: ``pad_to_max`` or ``bucketed``.
        batches: batches per epoch.
        seconds: time of the timed epochs (all but the first).
        steps_per_s, sequences_per_s: training speed over the timed epochs.
        waste_pct: share of the batches' steps that are padding, in percent.
        accuracy: test accuracy, in percent.
        model: the trained model.
    """

    strategy: str
    batches: int
    seconds: float
    steps_per_s: float
    sequences_per_s: float
    waste_pct: float
    accuracy: float
    model: keras.Model

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}


class _StepTimer(keras.callbacks.Callback):
    """Steps, sequences and seconds of every epoch after the first (tracing excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.seconds = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch, self._start, self._steps = epoch, time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None) -> None:
        if epoch > 0:
            self.steps += self._steps
            self.seconds += time.perf_counter() - self._start


def compare_batching(train: tuple[Sequence[np.ndarray], np.ndarray],
                     test: tuple[Sequence[np.ndarray], np.ndarray], *, vocab_size: int,
                     num_classes: int, epochs: int = 4, batch_size: int = 64,
                     num_buckets: int = 8, units: int = 32, seed: int = 0,
                     strategies: Sequence[str] = STRATEGIES) -> list[BatchingRun]:
    """Trains the same initial model on pad-to-max and on bucketed batches, side by side.

    Both runs see the same sequences in each epoch (reshuffled with the same seed); each
    batch of the pad-to-max run is padded to the longest training sequence, each bucketed
    batch to its own longest. Speed is measured from the second epoch on (the first traces).
    ``units`` are the GRU's units per direction (see :func:`sequence_classifier`).

    Returns:
        One :class:`BatchingRun` per strategy, in the order asked.
    """
    sequences, labels = train
    check_sequences(sequences)
    check_sequences(test[0])
    if epochs < 2:
        raise TfprodError(f"epochs={epochs}; expected at least 2 (the first is not timed)")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise TfprodError(f"strategies {unknown}; expected some of {list(STRATEGIES)}")
    longest = max(len(s) for s in sequences)
    boundaries = bucket_boundaries([len(s) for s in sequences], num_buckets)
    keras.utils.set_random_seed(seed)
    template = sequence_classifier(vocab_size, num_classes, units=units)
    weights = template.get_weights()
    rows = []
    for strategy in strategies:
        counted = list(_pipeline(strategy, sequences, labels, batch_size=batch_size, seed=seed,
                                 longest=longest, boundaries=boundaries, return_lengths=True))
        waste = padding_waste(counted)
        batches = len(counted)
        per_batch = len(sequences) / batches  # bucketing leaves a partial batch per bucket
        pipeline = _pipeline(strategy, sequences, labels, batch_size=batch_size, seed=seed,
                             longest=longest, boundaries=boundaries)
        keras.utils.set_random_seed(seed)
        model = sequence_classifier(vocab_size, num_classes, units=units)
        model.set_weights(weights)
        timer = _StepTimer()
        model.fit(pipeline, epochs=epochs, verbose=0, callbacks=[timer],
                  shuffle=False)  # the pipeline shuffles
        probabilities = predict_sequences(model, test[0])
        accuracy = float(np.mean(probabilities.argmax(axis=1) == np.asarray(test[1])))
        rows.append(BatchingRun(strategy, batches, timer.seconds, timer.steps / timer.seconds,
                                timer.steps * per_batch / timer.seconds, 100 * waste,
                                100 * accuracy, model))
    return rows


def _pipeline(strategy: str, sequences, labels, *, batch_size: int, seed: int, longest: int,
              boundaries: list[int], return_lengths: bool = False):
    if strategy == "pad_to_max":
        return padded_batches(sequences, labels, batch_size=batch_size, shuffle=True, seed=seed,
                              padded_length=longest, return_lengths=return_lengths)
    return bucketed_batches(sequences, labels, batch_size=batch_size, boundaries=boundaries,
                            shuffle=True, seed=seed, return_lengths=return_lengths)
