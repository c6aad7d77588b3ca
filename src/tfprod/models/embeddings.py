"""``UserItemEmbedding``: the user and item tables of a recommender, as one serializable layer."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfprod.errors import TfprodError

OOV_POLICIES = ("reserved", "error")


def _table_initializer(stddev: float):
    """Small random rows with the last (out-of-vocabulary) row zero: an unknown id scores as
    "no preference", whatever the table learned."""
    normal = keras.initializers.RandomNormal(stddev=stddev)

    def initialize(shape, dtype=None):
        rows = normal((shape[0] - 1, *shape[1:]), dtype=dtype)
        return ops.concatenate([rows, ops.zeros((1, *shape[1:]), dtype=dtype)], axis=0)

    return initialize


@keras.saving.register_keras_serializable(package="tfprod")
class UserItemEmbedding(keras.layers.Layer):
    """User and item embedding tables with biases and optional side features; scores pairs.

    ``score(u, i) = <user(u), item(i)> + user_bias[u] + item_bias[i] + global_bias``, where
    ``item(i) = item_table[i] + item_features[i] @ item_kernel`` when the items have side
    features (a ``num_items x F`` matrix stored in the layer, e.g. genres; a new item with
    features but no interactions still gets a vector), and likewise for users.

    Out-of-vocabulary policy: ids outside ``[0, num_users)`` / ``[0, num_items)`` (negative
    ones included) never index out of range. With ``oov="reserved"`` they read a reserved
    last row that starts at zero (no preference, no bias); with ``oov="error"`` the call
    fails with an ``InvalidArgumentError`` naming the id (a 400 from a server).

    Every weight is created in ``build``; the feature matrices are non-trainable weights, so
    they are saved with the model and ``get_config`` holds only their widths.

    Args:
        num_users, num_items: table sizes (one more row each is reserved for unknown ids).
        dim: embedding width.
        user_features, item_features: widths of the side-feature matrices (0: none).
        oov: ``"reserved"`` or ``"error"``.
        stddev: standard deviation of the initial embeddings.

    Example:
        >>> layer = UserItemEmbedding(1000, 500, dim=16, item_features=20)
        >>> layer.set_item_features(genres)          # (500, 20)
        >>> scores = layer({"user_id": users, "item_id": items})
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 32, *,
                 user_features: int = 0, item_features: int = 0, oov: str = "reserved",
                 stddev: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        for name, value, low in (("num_users", num_users, 1), ("num_items", num_items, 1),
                                 ("dim", dim, 1), ("user_features", user_features, 0),
                                 ("item_features", item_features, 0)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise TfprodError(f"UserItemEmbedding {name}={value!r}; expected an integer >= "
                                  f"{low}")
        if oov not in OOV_POLICIES:
            raise TfprodError(f"UserItemEmbedding oov={oov!r}; expected one of {OOV_POLICIES}")
        self.num_users, self.num_items, self.dim = int(num_users), int(num_items), int(dim)
        self.user_features, self.item_features = int(user_features), int(item_features)
        self.oov, self.stddev = oov, float(stddev)

    def build(self, input_shape=None) -> None:
        init = _table_initializer(self.stddev)
        self.user_table = self.add_weight(shape=(self.num_users + 1, self.dim), name="user_table",
                                          initializer=init)
        self.item_table = self.add_weight(shape=(self.num_items + 1, self.dim), name="item_table",
                                          initializer=init)
        self.user_bias = self.add_weight(shape=(self.num_users + 1,), name="user_bias",
                                         initializer="zeros")
        self.item_bias = self.add_weight(shape=(self.num_items + 1,), name="item_bias",
                                         initializer="zeros")
        self.global_bias = self.add_weight(shape=(), name="global_bias", initializer="zeros")
        self.user_feature_matrix = self.user_kernel = None
        self.item_feature_matrix = self.item_kernel = None
        if self.user_features:
            self.user_feature_matrix = self.add_weight(
                shape=(self.num_users + 1, self.user_features), name="user_feature_matrix",
                initializer="zeros", trainable=False)
            self.user_kernel = self.add_weight(shape=(self.user_features, self.dim),
                                               name="user_kernel", initializer="glorot_uniform")
        if self.item_features:
            self.item_feature_matrix = self.add_weight(
                shape=(self.num_items + 1, self.item_features), name="item_feature_matrix",
                initializer="zeros", trainable=False)
            self.item_kernel = self.add_weight(shape=(self.item_features, self.dim),
                                               name="item_kernel", initializer="glorot_uniform")

    # ------------------------------------------------------------------------ side features

    def _set_features(self, which: str, values, rows: int, width: int) -> None:
        if not self.built:
            self.build()
        values = np.asarray(values, np.float32)
        if width == 0 or values.shape != (rows, width):
            raise TfprodError(f"{which} features of shape {values.shape}; this layer takes "
                              f"({rows}, {width}) (create it with {which}_features={width or 'F'})")
        matrix = getattr(self, f"{which}_feature_matrix")
        matrix.assign(np.concatenate([values, np.zeros((1, width), np.float32)]))

    def set_user_features(self, values) -> None:
        """Stores the users' side features, ``(num_users, user_features)``."""
        self._set_features("user", values, self.num_users, self.user_features)

    def set_item_features(self, values) -> None:
        """Stores the items' side features, ``(num_items, item_features)``."""
        self._set_features("item", values, self.num_items, self.item_features)

    # ------------------------------------------------------------------------ lookups

    def _rows(self, ids, size: int, what: str):
        ids = ops.cast(ids, "int64")
        known = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, size))
        if self.oov == "error":
            import tensorflow as tf

            bad = tf.boolean_mask(ids, tf.logical_not(known))
            message = tf.strings.format(
                # No quotes: the Assert op escapes them in its message.
                f"{what} {{}} is outside the table [0, {size}); this model was built with "
                "oov=error (oov=reserved scores unknown ids with a zero row)",
                [bad[:1]], summarize=1)
            check = tf.debugging.Assert(tf.equal(tf.size(bad), 0), [message])
            with tf.control_dependencies([check]):
                ids = tf.identity(ids)
        return ops.where(known, ids, size)

    def user_vectors(self, user_ids):
        """``(vectors (batch, dim), bias (batch,))`` of users; unknown ids per the OOV policy."""
        rows = self._rows(user_ids, self.num_users, "user_id")
        vectors = ops.take(self.user_table, rows, axis=0)
        if self.user_kernel is not None:
            vectors = vectors + ops.take(self.user_feature_matrix, rows, axis=0) @ self.user_kernel
        return vectors, ops.take(self.user_bias, rows, axis=0)

    def item_vectors(self, item_ids=None):
        """``(vectors, bias)`` of items; every known item (in id order) when ``item_ids`` is
        None."""
        if item_ids is None:
            table = self.item_table[:self.num_items]
            bias = self.item_bias[:self.num_items]
            if self.item_kernel is not None:
                table = table + self.item_feature_matrix[:self.num_items] @ self.item_kernel
            return table, bias
        rows = self._rows(item_ids, self.num_items, "item_id")
        vectors = ops.take(self.item_table, rows, axis=0)
        if self.item_kernel is not None:
            vectors = vectors + ops.take(self.item_feature_matrix, rows, axis=0) @ self.item_kernel
        return vectors, ops.take(self.item_bias, rows, axis=0)

    def call(self, inputs):
        """Scores of ``(user_id, item_id)`` pairs: a dict with both keys, or a pair of tensors.
        Returns ``(batch,)`` float scores."""
        if isinstance(inputs, dict):
            missing = {"user_id", "item_id"} - set(inputs)
            if missing:
                raise TfprodError(f"UserItemEmbedding got inputs {sorted(inputs)}; expected "
                                  "'user_id' and 'item_id'")
            users, items = inputs["user_id"], inputs["item_id"]
        else:
            users, items = inputs
        u, user_bias = self.user_vectors(ops.reshape(users, (-1,)))
        v, item_bias = self.item_vectors(ops.reshape(items, (-1,)))
        return ops.sum(u * v, axis=-1) + user_bias + item_bias + self.global_bias

    def score_all(self, user_ids):
        """Scores of every known item for each user: ``(batch, num_items)``."""
        u, user_bias = self.user_vectors(user_ids)
        v, item_bias = self.item_vectors()
        return ops.matmul(u, ops.transpose(v)) + item_bias[None, :] + (
            user_bias[:, None] + self.global_bias)

    def compute_output_shape(self, input_shape):
        shape = input_shape["user_id"] if isinstance(input_shape, dict) else input_shape[0]
        return (shape[0],)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_users": self.num_users,
                "num_items": self.num_items, "dim": self.dim,
                "user_features": self.user_features, "item_features": self.item_features,
                "oov": self.oov, "stddev": self.stddev}
