import tensorflow as tf
from tensorflow.contrib import slim  # expect: contrib=manual


def net(images):
    h = slim.conv2d(images, 16, [3, 3])  # expect: contrib=manual
    h = tf.contrib.layers.fully_connected(tf.reshape(h, [-1, 64]), 10)  # expect: contrib=manual
    penalty = tf.contrib.layers.l2_regularizer(0.01)  # tf_upgrade_v2 rewrites it to keras.regularizers.l2
    return h, penalty
