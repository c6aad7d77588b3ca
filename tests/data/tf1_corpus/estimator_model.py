import numpy as np
import tensorflow as tf
from tensorflow import estimator  # expect: estimator=manual

columns = [tf.feature_column.numeric_column("x", shape=[4])]
classifier = tf.estimator.DNNClassifier(hidden_units=[8], feature_columns=columns)  # expect: estimator=manual
train_input = tf.estimator.inputs.numpy_input_fn({"x": np.ones((8, 4))}, np.ones(8),  # expect: estimator=manual
                                                 shuffle=True)
classifier.train(train_input, steps=10)
config = estimator.RunConfig()  # expect: estimator=manual
