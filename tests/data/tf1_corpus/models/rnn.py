import tensorflow as tf


def encoder(inputs, lengths):
    cells = [tf.nn.rnn_cell.LSTMCell(32), tf.nn.rnn_cell.GRUCell(32)]  # expect: rnn-cell=manual
    cells = [tf.nn.rnn_cell.DropoutWrapper(c, output_keep_prob=0.9) for c in cells]  # expect: rnn-cell=manual
    stack = tf.nn.rnn_cell.MultiRNNCell(cells)  # expect: rnn-cell=manual
    outputs, state = tf.nn.dynamic_rnn(stack, inputs, sequence_length=lengths,  # expect: rnn-cell=manual
                                       dtype=tf.float32)
    extra = tf.contrib.rnn.LayerNormBasicLSTMCell(16)  # expect: rnn-cell=manual
    return outputs, state, extra
