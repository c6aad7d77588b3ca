import tensorflow as tf

filenames = tf.train.string_input_producer(["train-0.tfrecord"], num_epochs=1)  # expect: queues=manual
reader = tf.TFRecordReader()  # expect: queues=manual
_, record = reader.read(filenames)
batch = tf.train.shuffle_batch([record], batch_size=32, capacity=1000,  # expect: queues=manual
                               min_after_dequeue=100)
labels = tf.train.batch([record], batch_size=8)  # expect: queues=manual
threads = tf.train.start_queue_runners()  # expect: queues=manual
