"""``Recommender``: matrix factorization on :class:`UserItemEmbedding`, for implicit feedback or
explicit ratings, with top-k recommendation and a popularity fallback for cold-start users.

Objectives:

* ``implicit`` (clicks, views, purchases: only positives are observed) trains with an
  **in-batch softmax**: each positive ``(user, item)`` pair of a batch is a softmax over the
  batch's items, the other users' positives serving as negatives. One ``(B, dim) x (dim, B)``
  matmul gives ``B - 1`` negatives per positive, with no sampler and no extra lookups, and it
  optimises what top-k serving needs (the rank of the right item among many). In-batch
  negatives are drawn in proportion to popularity, so without a correction popular items are
  pushed down too hard; each logit is corrected by the log of its item's sampling probability
  (logQ correction, Yi et al., RecSys 2019), and an item that is the batch's positive twice is
  not its own negative. Uniformly sampled negatives (BPR) were the alternative: under a
  popularity skew most uniform negatives are tail items the model already ranks low, so they
  teach little per step.
* ``ratings`` regresses explicit ratings with mean squared error on
  ``<u, v> + user bias + item bias + global bias`` (the global bias starts at the mean rating).

Cold start: a user without any training interaction, or whose id is outside the table, gets
the items most popular in training (minus the ones given as seen), in the same call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from tfprod.data.interactions import Interactions
from tfprod.errors import TfprodError
from tfprod.models.embeddings import UserItemEmbedding

OBJECTIVES = ("implicit", "ratings")
_MASKED = -1e9  # logit of an in-batch "negative" that is the positive itself


@keras.saving.register_keras_serializable(package="tfprod")
class Recommender(keras.Model):
    """Matrix factorization with biases, trained for implicit feedback or ratings.

    Inputs are a dict ``{"user_id": (batch,), "item_id": (batch,)}`` of int ids; the output is
    one score per pair. :meth:`recommend` returns the top-k items of users.

    Args:
        num_users, num_items: id spaces (ids outside them follow ``oov``).
        dim: embedding width.
        objective: ``"implicit"`` (in-batch softmax with logQ correction) or ``"ratings"``
            (mean squared error).
        user_features, item_features: side-feature widths (see :class:`UserItemEmbedding`).
        oov: ``"reserved"`` (unknown ids score with a zero row) or ``"error"``.
        l2: L2 penalty on the user and item vectors of each batch (summed, per pair).
        temperature: the in-batch softmax's logits are divided by it (implicit only).
        **kwargs: ``keras.Model`` arguments (``name``).
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 32, *,
                 objective: str = "implicit", user_features: int = 0, item_features: int = 0,
                 oov: str = "reserved", l2: float = 0.0, temperature: float = 1.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise TfprodError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        if not temperature > 0:
            raise TfprodError(f"temperature={temperature}; expected a positive number")
        self.objective = objective
        self.temperature = float(temperature)
        self.embedding = UserItemEmbedding(num_users, num_items, dim,
                                           user_features=user_features,
                                           item_features=item_features, oov=oov,
                                           name="user_item")
        self.l2 = float(l2)
        self.num_users, self.num_items = self.embedding.num_users, self.embedding.num_items
        self.output_names = ["score"]  # Keras' compile and the serving signature name it

    def build(self, input_shape=None) -> None:
        self.embedding.build()
        if self.objective == "implicit":
            # A softmax over items ignores per-user and global offsets: nothing to learn there.
            self.embedding.user_bias.trainable = False
            self.embedding.global_bias.trainable = False
        # Log of each item's share of the training interactions (smoothed): the in-batch
        # sampling probability for the logQ correction, and the cold-start ranking.
        self.item_log_prior = self.add_weight(
            shape=(self.num_items,), name="item_log_prior", trainable=False,
            initializer=keras.initializers.Constant(-float(np.log(self.num_items))))
        # 1.0 for users with training interactions: the others are cold-start users.
        self.user_trained = self.add_weight(shape=(self.num_users,), name="user_trained",
                                            trainable=False, initializer="zeros")

    def build_from_config(self, config) -> None:
        self.build()

    def set_training_counts(self, train: Interactions) -> None:
        """Stores the item popularity and which users are known, from the training set."""
        if (train.num_users, train.num_items) != (self.num_users, self.num_items):
            raise TfprodError(f"interactions over {train.num_users} users x {train.num_items} "
                              f"items; the model has {self.num_users} x {self.num_items}")
        if not self.built:
            self.build()
        counts = train.item_counts().astype(np.float64)
        self.item_log_prior.assign(np.log((counts + 1) / (counts.sum() + self.num_items))
                                   .astype(np.float32))
        self.user_trained.assign((train.user_counts() > 0).astype(np.float32))

    def call(self, inputs):
        return self.embedding(inputs)

    def _penalty(self, u, v):
        if not self.l2:
            return 0.0
        return self.l2 * ops.mean(ops.sum(ops.square(u), axis=-1) + ops.sum(ops.square(v), -1))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        items = ops.reshape(ops.cast(x["item_id"], "int64"), (-1,))
        u, _ = self.embedding.user_vectors(ops.reshape(x["user_id"], (-1,)))
        v, item_bias = self.embedding.item_vectors(items)
        if self.objective == "ratings":
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                        training=training) + self._penalty(u, v)
        known = ops.logical_and(ops.greater_equal(items, 0), ops.less(items, self.num_items))
        log_q = ops.where(known, ops.take(self.item_log_prior,
                                          ops.where(known, items, 0), axis=0), 0.0)
        logits = (ops.matmul(u, ops.transpose(v)) + item_bias[None, :]) / self.temperature
        logits = logits - log_q[None, :]
        batch = ops.shape(items)[0]
        same = ops.equal(items[:, None], items[None, :])
        diagonal = ops.eye(batch, dtype="bool")
        logits = ops.where(ops.logical_and(same, ops.logical_not(diagonal)), _MASKED, logits)
        loss = keras.losses.sparse_categorical_crossentropy(
            ops.arange(batch), logits, from_logits=True)
        if sample_weight is not None:
            loss = loss * ops.reshape(ops.cast(sample_weight, loss.dtype), (-1,))
        total = ops.mean(loss) + self._penalty(u, v)
        for extra in self.losses:
            total = total + ops.cast(extra, total.dtype)
        return total

    # ------------------------------------------------------------------------ top-k

    def recommend_graph(self, user_ids, seen_values, seen_row_lengths, k: int):
        """Top-``k`` items and scores per user, as tensors: the serving computation.

        Brute force: every item is scored with one ``(batch, dim) x (dim, items)`` matmul,
        and :func:`top_k_blocked` keeps the best ``k + s`` of each row (``s``: the longest
        ``seen`` list of the batch); the seen items among them are dropped (``seen`` is
        ragged, as ``values`` and ``row_lengths``; ids outside the table are ignored) and the
        best ``k`` remain. Dropping after the candidate step touches ``(batch, k + s)`` values
        instead of the whole score matrix, and is exact: the best ``k`` unseen items are among
        the best ``k + s`` overall. Cold-start users rank by training popularity.

        Returns:
            ``(item_ids (batch, k) int64, scores (batch, k) float32)``.
        """
        import tensorflow as tf

        user_ids = tf.cast(tf.reshape(user_ids, [-1]), tf.int64)
        in_table = (user_ids >= 0) & (user_ids < self.num_users)
        trained = tf.gather(self.user_trained, tf.where(in_table, user_ids, 0)) > 0
        warm = in_table & trained
        seen = tf.RaggedTensor.from_row_lengths(tf.cast(seen_values, tf.int64),
                                                tf.cast(seen_row_lengths, tf.int64))
        seen = seen.to_tensor(default_value=-1)  # (batch, longest seen list)
        wide = tf.minimum(k + tf.shape(seen, out_type=tf.int64)[1], self.num_items)

        e = self.embedding
        u, user_bias = e.user_vectors(tf.where(warm, user_ids, self.num_users))
        v, item_bias = e.item_vectors()
        values, ids = top_k_blocked(tf.matmul(u, v, transpose_b=True) + item_bias[None, :],
                                    wide)
        values = values + (user_bias + e.global_bias)[:, None]

        def popular():  # the same candidates for every cold-start row
            top = tf.math.top_k(self.item_log_prior, tf.cast(wide, tf.int32))
            shape = tf.shape(ids)
            return (tf.broadcast_to(top.values[None, :], shape),
                    tf.broadcast_to(tf.cast(top.indices, tf.int64)[None, :], shape))

        cold_values, cold_ids = tf.cond(tf.reduce_all(warm), lambda: (values, ids), popular)
        values = tf.where(warm[:, None], values, cold_values)
        ids = tf.where(warm[:, None], ids, cold_ids)
        is_seen = tf.reduce_any(ids[:, :, None] == seen[:, None, :], axis=2)
        top = tf.math.top_k(tf.where(is_seen, tf.constant(-np.inf, values.dtype), values), k)
        return tf.gather(ids, top.indices, batch_dims=1), top.values

    @functools.cached_property
    def _recommend_functions(self) -> dict:
        return {}

    def _recommend_function(self, k: int):
        import tensorflow as tf

        if k not in self._recommend_functions:
            spec = tf.TensorSpec([None], tf.int64)
            self._recommend_functions[k] = tf.function(
                lambda users, values, lengths: self.recommend_graph(users, values, lengths, k),
                input_signature=[spec, spec, spec])
        return self._recommend_functions[k]

    def recommend(self, user_ids: Sequence[int] | np.ndarray, k: int = 10, *,
                  seen: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` item ids and scores of each user, best first.

        Args:
            user_ids: user indices (unknown or untrained ones get the popular items).
            k: items per user (at most ``num_items``).
            seen: for each user, item ids to leave out (e.g. those already interacted with).

        Returns:
            ``(item_ids (n, k) int64, scores (n, k) float32)``.
        """
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        k = check_k(k, self.num_items)
        if seen is None:
            values, lengths = np.zeros(0, np.int64), np.zeros(len(users), np.int64)
        else:
            if len(seen) != len(users):
                raise TfprodError(f"seen has {len(seen)} lists for {len(users)} users; pass one "
                                  "list (possibly empty) per user")
            lengths = np.array([len(s) for s in seen], np.int64)
            values = (np.concatenate([np.asarray(s, np.int64).reshape(-1) for s in seen])
                      if lengths.sum() else np.zeros(0, np.int64))
        ids, scores = self._recommend_function(k)(users, values, lengths)
        return ids.numpy(), scores.numpy()

    def get_config(self) -> dict:
        e = self.embedding
        return {"name": self.name, "num_users": self.num_users, "num_items": self.num_items,
                "dim": e.dim, "objective": self.objective, "user_features": e.user_features,
                "item_features": e.item_features, "oov": e.oov, "l2": self.l2,
                "temperature": self.temperature}


def top_k_blocked(scores, k, *, block: int = 128):
    """``(values, int64 indices)`` of the ``k`` largest of each row of ``scores``, exactly.

    For wide rows (at least ``32 * block`` columns) the row is cut into blocks of ``block``:
    the ``k`` blocks with the largest maxima hold the ``k`` largest values (each of those
    values is at least its block's maximum's rank), so ``top_k`` runs on the block maxima and
    then on the ``k * block`` values of those blocks, instead of on the whole row. Equal
    values may come out in another order than ``tf.math.top_k``'s. ``k`` may be a tensor.
    """
    import tensorflow as tf

    n = scores.shape[-1]

    def full():
        top = tf.math.top_k(scores, tf.cast(k, tf.int32))
        return top.values, tf.cast(top.indices, tf.int64)

    if n is None or n < 32 * block:
        return full()
    blocks = -(-n // block)

    def blocked():
        padded = tf.pad(scores, [[0, 0], [0, blocks * block - n]],
                        constant_values=float("-inf"))
        grid = tf.reshape(padded, [-1, blocks, block])
        best = tf.math.top_k(tf.reduce_max(grid, axis=2), tf.cast(k, tf.int32)).indices
        candidates = tf.reshape(tf.gather(grid, best, batch_dims=1), [tf.shape(grid)[0], -1])
        top = tf.math.top_k(candidates, tf.cast(k, tf.int32))
        index = tf.gather(best, top.indices // block, batch_dims=1) * block + top.indices % block
        return top.values, tf.cast(index, tf.int64)

    return tf.cond(tf.cast(k, tf.int64) <= blocks, blocked, full)


def check_k(k: int, num_items: int) -> int:
    """``k`` checked (a positive integer) and capped at ``num_items``."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise TfprodError(f"k={k!r}; expected a positive number of items to recommend")
    return int(min(k, num_items))


def interaction_dataset(train: Interactions, *, objective: str, batch_size: int,
                        seed: int = 0):
    """Shuffled batches of ``{"user_id", "item_id"}`` (and the rating for ``ratings``)."""
    import tensorflow as tf

    x = {"user_id": train.users.astype(np.int64), "item_id": train.items.astype(np.int64)}
    if objective == "ratings":
        if train.ratings is None:
            raise TfprodError("objective='ratings' needs interactions with ratings; these have "
                              "none (use objective='implicit')")
        ds = tf.data.Dataset.from_tensor_slices((x, train.ratings.astype(np.float32)))
    else:
        ds = tf.data.Dataset.from_tensor_slices(x)
    return ds.shuffle(len(train), seed=seed, reshuffle_each_iteration=True).batch(
        batch_size, drop_remainder=objective == "implicit").prefetch(tf.data.AUTOTUNE)


def train_recommender(
    train: Interactions,
    *,
    objective: str = "implicit",
    dim: int = 16,
    epochs: int = 10,
    batch_size: int = 256,
    learning_rate: float | None = None,
    l2: float | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    verbose: int = 0,
) -> Recommender:
    """A :class:`Recommender` fitted on ``train`` with ``model.fit`` (Adam).

    Args:
        train: the training interactions.
        objective: ``"implicit"`` or ``"ratings"``.
        dim: embedding width.
        epochs: passes over ``train``.
        batch_size: pairs per step (also the in-batch softmax's candidates: larger batches
            give more negatives).
        learning_rate: Adam's learning rate (default: 5e-3 implicit, 1e-2 ratings).
        l2: L2 penalty on each batch's user and item vectors (default: 3e-2 implicit, 0.3
            ratings; both tuned on the synthetic set, where they gave the best held-out
            recall@10 and RMSE).
        temperature: in-batch softmax temperature.
        seed: initial weights and shuffling.
        verbose: ``fit``'s verbosity.

    Returns:
        The trained model, with the training popularity and known users stored in it.
    """
    if len(train) < batch_size and objective == "implicit":
        raise TfprodError(f"{len(train)} training interactions and batch_size={batch_size}; "
                          "the in-batch softmax needs at least one full batch: lower batch_size")
    if objective not in OBJECTIVES:
        raise TfprodError(f"objective={objective!r}; expected one of {OBJECTIVES}")
    implicit = objective == "implicit"
    l2 = (3e-2 if implicit else 0.3) if l2 is None else l2
    learning_rate = (5e-3 if implicit else 1e-2) if learning_rate is None else learning_rate
    keras.utils.set_random_seed(seed)
    model = Recommender(train.num_users, train.num_items, dim, objective=objective, l2=l2,
                        temperature=temperature)
    model.set_training_counts(train)
    if objective == "ratings":
        model.embedding.global_bias.assign(float(np.mean(train.ratings)))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse",
                      metrics=[keras.metrics.RootMeanSquaredError(name="rmse")])
    else:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    model.fit(interaction_dataset(train, objective=objective, batch_size=batch_size, seed=seed),
              epochs=epochs, verbose=verbose, shuffle=False)  # the dataset shuffles
    return model
