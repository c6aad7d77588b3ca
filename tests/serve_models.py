"""Small SavedModels in TF Serving's layout for the server's tests (written with TF's own APIs).

- :func:`write_affine`: ``serving_default`` y = x * scale + bias (x float32 [batch, 3]), a
  ``calls`` signature (no inputs) returning how many times the model ran and how many rows it
  saw, a ``maxlen`` signature (int32 [batch, time] -> row max) for variable-length inputs and a
  ``spin`` signature that is busy for a while (steps int32 [batch] -> steps).
- :func:`write_corrupt`: a version folder whose saved_model.pb is garbage.
- :func:`write_warmup`: ``assets.extra/tf_serving_warmup_requests`` with predict logs.
- :func:`write_classifier`: a TF1 SavedModel with classify and regress signatures on tf.Examples.
- :func:`publish`: an exporter's atomic publish (hidden temp folder, then rename).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf


class _Affine(tf.Module):
    def __init__(self, scale: float, bias: float, ballast: int):
        super().__init__()
        self.scale = tf.Variable(scale, dtype=tf.float32)
        self.bias = tf.Variable(bias, dtype=tf.float32)
        self.runs = tf.Variable(0, dtype=tf.int64)
        self.rows = tf.Variable(0, dtype=tf.int64)
        # Weight that makes a leak show in RSS.
        self.ballast = tf.Variable(tf.zeros([ballast], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def predict(self, x):
        self.runs.assign_add(1)
        self.rows.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return {"y": x * self.scale + self.bias + 0.0 * tf.reduce_sum(self.ballast[:1])}

    @tf.function(input_signature=[])
    def calls(self):
        return {"runs": self.runs.read_value(), "rows": self.rows.read_value()}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    def maxlen(self, tokens):
        self.runs.assign_add(1)
        return {"max": tf.reduce_max(tokens, axis=1), "width": tf.fill(
            tf.shape(tokens)[:1], tf.shape(tokens)[1])}


    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="steps")])
    def spin(self, steps):
        """Busy for max(steps) matmuls of 128x128 (a slow request, to test draining)."""
        a = tf.eye(128) * 0.5

        def body(i, m):
            return i + 1, tf.matmul(m, a) + a

        _, m = tf.while_loop(lambda i, m: i < tf.reduce_max(steps), body, (0, a))
        return {"steps": steps + tf.cast(0.0 * m[0, 0], tf.int32)}


def write_affine(path: str | os.PathLike, scale: float = 2.0, bias: float = 1.0, *,
                 ballast: int = 1) -> str:
    """Save the affine test model to ``path`` (a version folder); returns the path."""
    m = _Affine(scale, bias, ballast)
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.predict,
                                                  "calls": m.calls, "maxlen": m.maxlen,
                                                  "spin": m.spin})
    return str(path)


def write_corrupt(path: str | os.PathLike) -> str:
    """A version folder whose saved_model.pb does not parse."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"\x08\x96\x01this is not a SavedModel" * 10)
    return str(path)


def write_warmup(version_dir: str | os.PathLike, batches: list[np.ndarray],
                 signature: str = "serving_default", input_name: str = "x") -> str:
    """Write predict-log warmup records (one per array) into ``assets.extra``."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    folder = os.path.join(version_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as w:
        for x in batches:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ignored"
            request.model_spec.signature_name = signature
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(x))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            w.write(log.SerializeToString())
    return path


def write_example_warmup(version_dir: str | os.PathLike, xs: list[float]) -> str:
    """Warmup records for :func:`write_classifier`: one classify log, one regress log (the
    regress one with ``example_list_with_context``)."""
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    examples = [tf.train.Example.FromString(example(x)) for x in xs]
    folder = os.path.join(version_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tf_serving_warmup_requests")
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classify"
    classify.input.example_list.examples.extend(examples)
    regress = regression_pb2.RegressionRequest(input=input_pb2.Input())
    regress.model_spec.signature_name = "regress"
    regress.input.example_list_with_context.examples.extend(examples)
    regress.input.example_list_with_context.context.CopyFrom(tf.train.Example())
    with tf.io.TFRecordWriter(path) as w:
        w.write(prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(
            request=classify)).SerializeToString())
        w.write(prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(
            request=regress)).SerializeToString())
    return path


def write_classifier(path: str | os.PathLike) -> str:
    """A TF1 SavedModel: feature ``x`` (float) -> classify (classes a/b, scores [1-x, x]) and
    regress (2x); method names set by the signature-def utils, as TF Serving expects."""
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        x = features["x"]
        scores = tf.concat([1.0 - x, x], axis=1)
        classes = tf.tile(tf.constant([[b"a", b"b"]]), [tf.shape(x)[0], 1])
        inputs = tf.compat.v1.saved_model.utils.build_tensor_info(serialized)
        classify = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"inputs": inputs},
            outputs={"classes": tf.compat.v1.saved_model.utils.build_tensor_info(classes),
                     "scores": tf.compat.v1.saved_model.utils.build_tensor_info(scores)},
            method_name="tensorflow/serving/classify")
        regress = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"inputs": inputs},
            outputs={"outputs": tf.compat.v1.saved_model.utils.build_tensor_info(2.0 * x)},
            method_name="tensorflow/serving/regress")
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={"serving_default": classify,
                                                    "classify": classify, "regress": regress})
            builder.save()
    return str(path)


def example(x: float) -> bytes:
    """A serialized tf.Example with one float feature ``x``."""
    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def publish(source: str | os.PathLike, base: str | os.PathLike, version: int) -> str:
    """Copy a version folder into ``base`` as an exporter does: hidden temp dir, then rename."""
    tmp = os.path.join(base, f".tmp-{version}")
    shutil.copytree(source, tmp)
    final = os.path.join(base, str(version))
    os.rename(tmp, final)
    return final
