"""TF Serving warmup records: ``assets.extra/tf_serving_warmup_requests``.

A TFRecord file of ``tensorflow.serving.PredictionLog`` protos, each holding a ``PredictRequest``
(model name, signature name, inputs as ``TensorProto``) built from real examples. TF Serving and
``tfprod serve`` replay them when a version loads, so the first user request does not pay for
lazy initialization (graph optimization, kernel selection). TF Serving reads at most 1,000.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export.publish import version_file

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: TF Serving refuses a warmup file with more records than this.
MAX_WARMUP_RECORDS = 1000


def _batch_sizes(count: int, available: int) -> list[int]:
    """1, 2, 4, ... examples per request: warms up the batch shapes a server will see."""
    return [min(2 ** i, available) for i in range(count)]


def write_warmup_requests(
    path: str | os.PathLike,
    inputs: Mapping[str, np.ndarray],
    *,
    model_name: str,
    signature_name: str = "serving_default",
    count: int = 4,
) -> int:
    """Writes ``count`` PredictRequests of 1, 2, 4, ... examples drawn from ``inputs``.

    Args:
        path: the file to write (usually ``<version>/assets.extra/tf_serving_warmup_requests``).
        inputs: signature input name -> examples ``[n, ...]`` shaped and typed for the signature.
        model_name: ``model_spec.name`` of every request.
        signature_name: ``model_spec.signature_name``.
        count: requests to write (at most ``MAX_WARMUP_RECORDS``).

    Returns:
        The number of requests written.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not 0 <= count <= MAX_WARMUP_RECORDS:
        raise TfprodError(f"warmup={count}; expected 0 to {MAX_WARMUP_RECORDS} requests (TF "
                          "Serving's limit)")
    available = min(len(v) for v in inputs.values())
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sizes = _batch_sizes(count, available)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        start = 0
        for size in sizes:
            if start + size > available:
                start = 0
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for name, values in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(values[start:start + size]))
            start += size
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(sizes)


def read_warmup_requests(path: str | os.PathLike) -> list[dict]:
    """The requests of a warmup file: ``[{"model_name", "signature_name", "inputs": {...}}]``.

    ``inputs`` maps each input name to its numpy array. A version folder may be given instead
    of the file.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_file(path, WARMUP_FILE, "warmup requests")
    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        requests.append({
            "model_name": request.model_spec.name,
            "signature_name": request.model_spec.signature_name,
            "inputs": {k: tf.make_ndarray(v) for k, v in request.inputs.items()},
        })
    return requests
