"""A TF1 MLP: placeholders, variable scopes, tf.layers, an optimizer and a Session."""
import numpy as np
import tensorflow as tf

x = tf.placeholder(tf.float32, [None, 4], name="x")  # expect: session=manual
labels = tf.placeholder(tf.int64, [None], name="labels")  # expect: session=manual
with tf.variable_scope("mlp"):  # expect: variables=manual
    w = tf.get_variable("w", [4, 8], initializer=tf.contrib.layers.xavier_initializer())  # expect: variables=manual, keras=auto
    b = tf.get_variable("b", [8], initializer=tf.zeros_initializer())  # expect: variables=manual
    hidden = tf.nn.relu(tf.matmul(x, w) + b)
logits = tf.layers.dense(hidden, 3, name="out")  # expect: layers=manual
loss = tf.reduce_mean(
    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
train_op = tf.train.AdamOptimizer(0.01).minimize(loss)  # expect: optimizer=manual
saver = tf.train.Saver()  # expect: session=manual

with tf.Session() as sess:  # expect: session=manual
    sess.run(tf.global_variables_initializer())  # expect: session=manual
    for step in range(10):
        sess.run(train_op, feed_dict={x: np.ones((2, 4)), labels: [0, 1]})  # expect: session=manual
    saver.save(sess, "/tmp/model.ckpt")  # expect: tf_upgrade_v2=manual
