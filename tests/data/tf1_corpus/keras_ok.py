"""Keras through tf.compat.v1.keras and Keras 2 arguments: every fix here is automatic."""
import tensorflow as tf

layer = tf.compat.v1.keras.layers.Dense(4, activation="relu")  # expect: keras=auto
optimizer = tf.keras.optimizers.Adam(lr=0.01)  # expect: keras=auto, keras=auto
init = tf.keras.initializers.glorot_uniform(seed=1)  # expect: keras=auto
