"""One logged request (:class:`LogRecord`), its compact tensor encoding, and TF Serving's
``PredictionLog`` view of it.

The log stores a record's inputs and outputs as one blob each (:func:`encode_tensors`): a small
JSON header (name, dtype, shape, byte length per tensor) followed by the raw little-endian
values; strings as length-prefixed bytes. Encoding costs a ``tobytes`` per tensor, decoding a
``frombuffer``: cheap, exact in both directions. :func:`to_prediction_log`
turns a record into the ``PredictionLog`` proto that TF Serving's request logger writes (what
TFX tools read), with ``log_metadata`` (model spec, sampling rate, time).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

_LEN = struct.Struct("<I")
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(slots=True)
class LogRecord:
    """A served request as the log keeps it.

    Attributes:
        request_id: the client's ``X-Request-Id`` or one the server made.
        time: epoch seconds when the request finished.
        model, version, signature: what served it.
        inputs, outputs: tensor name -> array, batch dimension first.
        latency_ms: the request's time in the server.
        label: feedback joined by request id (None until it arrives).
    """

    request_id: str
    time: float
    model: str
    version: int
    signature: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    latency_ms: float
    label: Any = field(default=None)

    @property
    def rows(self) -> int:
        first = next(iter(self.inputs.values()), None)
        return 0 if first is None or np.ndim(first) == 0 else len(first)


def _text_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


_HEADS: dict[tuple, bytes] = {}  # numeric layout -> its encoded header (see encode_tensors)


def encode_tensors(tensors: dict[str, Any]) -> bytes:
    """``{name: array}`` -> one blob (see the module docstring). The header of a numeric layout
    (names, dtypes, shapes) is kept once encoded, so a served model's requests of one size cost
    a ``tobytes`` per tensor and one join."""
    try:
        if len(tensors) == 1:  # the common case, without building lists
            ((name, v),) = tensors.items()
            return _HEADS[((name, v.dtype, v.shape),)] + v.tobytes()
        return b"".join([_HEADS[tuple([(name, v.dtype, v.shape) for name, v in tensors.items()])],
                         *[v.tobytes() for v in tensors.values()]])
    except (AttributeError, KeyError, TypeError):  # not arrays, or a layout not kept (yet)
        pass
    header, chunks = [], []
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind in "OSU":
            items = [_text_bytes(v) for v in a.ravel().tolist()]
            data = b"".join(_LEN.pack(len(x)) + x for x in items)
            header.append([name, "string", list(a.shape), len(data)])
        else:
            a = _little_endian(a)
            data = a.tobytes()  # C order, whatever the array's layout
            header.append([name, a.dtype.str[1:], a.shape, len(data)])
        chunks.append(data)
    head = orjson.dumps(header)
    head = _LEN.pack(len(head)) + head
    if all(isinstance(v, np.ndarray) and v.dtype.str[0] in "<|" and v.dtype.kind not in "OSU"
           for v in tensors.values()):
        if len(_HEADS) >= 1024:
            _HEADS.clear()
        _HEADS[tuple([(name, v.dtype, v.shape) for name, v in tensors.items()])] = head
    return b"".join([head, *chunks])


def encode_many(tensors: list[dict[str, Any]]) -> list[bytes]:
    """``[encode_tensors(t) for t in tensors]``, faster when the dicts share one numeric layout
    (the same names, dtypes and shapes: a served model's requests of one size): the header is
    encoded once and each tensor's values of all records are copied out in one numpy call."""
    first = tensors[0] if tensors else None
    if first is None or len(tensors) < 8:
        return [encode_tensors(t) for t in tensors]
    layout = [(name, getattr(value, "dtype", None), getattr(value, "shape", None))
              for name, value in first.items()]
    if any(dtype is None or dtype.kind in "OSU" for _, dtype, _ in layout):
        return [encode_tensors(t) for t in tensors]
    columns = []
    for name, dtype, shape in layout:
        values = [t.get(name) for t in tensors]
        if any(getattr(v, "dtype", None) != dtype or getattr(v, "shape", None) != shape
               for v in values) or any(len(t) != len(layout) for t in tensors):
            return [encode_tensors(t) for t in tensors]
        block = _little_endian(np.stack(values)).tobytes()
        size = len(block) // len(tensors)
        columns.append([block[i:i + size] for i in range(0, len(block), size)])
    head = encode_tensors(first)
    head = head[:len(head) - sum(len(c[0]) for c in columns)]
    return [b"".join([head, *parts]) for parts in zip(*columns, strict=True)]


def _little_endian(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and _BIG_ENDIAN):
        return a.astype(a.dtype.newbyteorder("<"))
    return a


def decode_tensors(blob: bytes | memoryview) -> dict[str, np.ndarray]:
    """The inverse of :func:`encode_tensors`."""
    blob = memoryview(blob)
    (size,) = _LEN.unpack_from(blob, 0)
    header = orjson.loads(bytes(blob[4:4 + size]))
    offset = 4 + size
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, length in header:
        data = blob[offset:offset + length]
        offset += length
        if dtype == "string":
            items, i = [], 0
            while i < length:
                (n,) = _LEN.unpack_from(data, i)
                items.append(bytes(data[i + 4:i + 4 + n]))
                i += 4 + n
            a = np.empty(len(items), dtype=object)
            a[:] = items
            out[name] = a.reshape(shape)
        else:
            out[name] = np.frombuffer(data, dtype=np.dtype("<" + dtype if dtype[0] in "fiuc"
                                                            else dtype)).reshape(shape).copy()
    return out


def decode_concatenated(blobs: list[bytes]) -> tuple[dict[str, np.ndarray], list[int]]:
    """The tensors of many blobs concatenated along their first (batch) axis, and each blob's
    batch size: ``records_to_dataset``'s work without a ``decode_tensors`` per blob when the
    blobs share one numeric layout (a served model's requests of one size), which is one
    ``join`` and a strided copy per tensor."""
    if not blobs:
        return {}, []
    first = bytes(blobs[0])
    (size,) = _LEN.unpack_from(first, 0)
    head = first[:4 + size]
    header = orjson.loads(head[4:])
    same = (all(dtype != "string" and len(shape) >= 1 for _, dtype, shape, _ in header)
            and all(len(b) == len(first) and bytes(b[:len(head)]) == head for b in blobs))
    if not same:
        parts = [decode_tensors(b) for b in blobs]
        keys = [k for k in parts[0] if all(k in t for t in parts)]
        rows = [0 if not t or np.ndim(next(iter(t.values()))) == 0 else
                len(next(iter(t.values()))) for t in parts]
        return {k: np.concatenate([t[k] for t in parts]) for k in keys}, rows
    n = len(blobs)
    block = np.frombuffer(b"".join(blobs), np.uint8).reshape(n, len(first))
    out, offset = {}, len(head)
    for name, dtype, shape, length in header:
        dt = np.dtype("<" + dtype if dtype[0] in "fiuc" else dtype)
        column = np.ascontiguousarray(block[:, offset:offset + length])
        out[name] = column.view(dt).reshape((n * shape[0], *shape[1:]))
        offset += length
    return out, [header[0][2][0]] * n if header else [0] * n


def to_prediction_log(record: LogRecord, *, sampling_rate: float = 1.0) -> Any:
    """The record as TF Serving's ``PredictionLog`` (``predict_log`` with request, response)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfprod.serve.tensors import from_ndarray

    log = prediction_log_pb2.PredictionLog()
    meta = log.log_metadata
    meta.model_spec.name = record.model
    meta.model_spec.version.value = record.version
    meta.model_spec.signature_name = record.signature
    meta.sampling_config.sampling_rate = sampling_rate
    meta.timestamp_secs = int(record.time)
    request, response = log.predict_log.request, log.predict_log.response
    request.model_spec.CopyFrom(meta.model_spec)
    response.model_spec.CopyFrom(meta.model_spec)
    for k, v in record.inputs.items():
        from_ndarray(v, request.inputs[k])
    for k, v in record.outputs.items():
        from_ndarray(v, response.outputs[k])
    return log
