import tensorflow as tf


def collatz_steps(n):
    def body(i, value):
        return i + 1, tf.where(value % 2 == 0, value // 2, 3 * value + 1)

    steps, _ = tf.while_loop(lambda i, value: value > 1, body, [0, n])  # expect: control-flow=advice
    return tf.cond(steps > 10, lambda: steps, lambda: -steps)  # expect: control-flow=advice
