"""TF1 graphs written with ``tf.compat.v1`` as TF1 users wrote them: placeholders,
``variable_scope`` / ``get_variable``, ``tf.while_loop``. Call them only inside a ``tf.Graph``
(or in a process with TF1 behavior): they are the migrate tests' fixtures and the ``--graph``
function of the checkpoint tests.
"""

import tensorflow as tf

v1 = tf.compat.v1
FEATURES, HIDDEN, CLASSES, LOOP_STEPS = 4, 8, 3, 4


def mlp_graph(hidden=HIDDEN):
    """x [batch, 4] -> relu(x W1 + b1) W2 + b2 -> softmax; returns {"probs", "logits"}."""
    x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
    with v1.variable_scope("mlp"):
        w1 = v1.get_variable("w1", [FEATURES, hidden],
                             initializer=v1.glorot_uniform_initializer(seed=1))
        b1 = v1.get_variable("b1", [hidden], initializer=v1.constant_initializer(0.1))
        h = tf.nn.relu(tf.matmul(x, w1) + b1)
        w2 = v1.get_variable("w2", [hidden, CLASSES],
                             initializer=v1.glorot_uniform_initializer(seed=2))
        b2 = v1.get_variable("b2", [CLASSES], initializer=v1.zeros_initializer())
        logits = tf.add(tf.matmul(h, w2), b2, name="logits")
    return {"probs": tf.nn.softmax(logits, name="probs"), "logits": logits}


def mlp_graph_wrong_shape():
    """The MLP with another hidden size: its variables do not fit the MLP's checkpoint."""
    return mlp_graph(hidden=HIDDEN + 1)


def loop_graph():
    """x [batch, 4] -> LOOP_STEPS steps of h = tanh(h W + x) in a tf.while_loop."""
    x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
    with v1.variable_scope("loop"):
        w = v1.get_variable("w", [FEATURES, FEATURES],
                            initializer=v1.random_normal_initializer(stddev=0.5, seed=3))

    def body(i, h):
        return i + 1, tf.tanh(tf.matmul(h, w) + x)

    _, h = tf.while_loop(lambda i, h: i < LOOP_STEPS, body, [tf.constant(0), x])
    return {"state": tf.identity(h, name="state")}
