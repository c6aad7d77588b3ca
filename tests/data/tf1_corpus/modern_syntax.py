"""Python 3.8+ syntax that tf_upgrade_v2's parser (pasta) does not read."""  # expect: tf_upgrade_v2=manual
import tensorflow as tf


def run(values):
    if (count := len(values)) > 2:
        print(f"{count=}")
    with tf.Session() as sess:  # expect: session=manual
        return sess.run(tf.reduce_sum(values))
