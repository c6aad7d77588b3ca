"""Keras 2 APIs that Keras 3 dropped: each needs a person."""
import tensorflow as tf
from tensorflow.keras.layers import CuDNNLSTM  # expect: keras=manual

session = tf.keras.backend.get_session()  # expect: keras=manual
sgd = tf.keras.optimizers.SGD(learning_rate=0.1, decay=1e-4)  # expect: keras=auto, keras=manual
scaled = tf.keras.initializers.VarianceScaling(scale=2.0, dtype=tf.float32)  # expect: keras=auto, keras=manual
lstm = CuDNNLSTM(8)  # expect: keras=manual
