"""tf.layers functions without variables: rewritten in place to Keras 3 layers."""
import tensorflow as tf


def pool(images):
    return tf.layers.max_pooling2d(images, 2, 2, padding="same")  # expect: layers=auto


def average(sequence):
    return tf.layers.average_pooling1d(sequence, pool_size=3, strides=1)  # expect: layers=auto


def flat(images):
    return tf.layers.flatten(images)  # expect: layers=auto


def no_dropout(values):
    return tf.layers.dropout(values, rate=0.5)  # expect: layers=auto


def dropout_when(values, is_training):
    return tf.layers.dropout(values, 0.5, training=is_training)  # expect: layers=manual
