"""tf.Example inputs and the results of classify / regress signatures, for gRPC and REST.

Requests:
- gRPC: :func:`examples_from_input` turns a ``tensorflow.serving.Input`` proto into serialized
  tf.Examples;
- REST: :func:`examples_from_json` turns the parsed body of ``:classify`` / ``:regress``
  (``{"examples": [...], "context": {...}}``) into the same, with TF Serving's JSON rules.

With a context, each example is the context's bytes followed by its own: protobuf merges
concatenated messages, so the example's features override the context's, which is how TF
Serving joins them (``InputToSerializedExampleTensor``).

Results: :func:`classification_result` / :func:`regression_result` build the protos from the
outputs of a classify / regress signature (``classes`` + ``scores``, ``outputs``) with TF
Serving's checks; gRPC returns them as they are, REST encodes them as ``{"results": ...}``
(``json_codec.encode_classification`` / ``encode_regression``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from tfprod.serve.errors import ServingError, failed_precondition, invalid_argument
from tfprod.serve.tensors import datatype_of, dtype_name

CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = (-(2**63), 2**63)
_UINT64_MAX = 2**64


# ------------------------------------------------------------------------------ requests


def examples_from_input(input_proto: Any) -> list[bytes]:
    """The serialized tf.Examples of a ``tensorflow.serving.Input`` proto.

    ``example_list`` gives each example's bytes; ``example_list_with_context`` gives the
    context's bytes followed by each example's (the example's features win). No kind, or no
    examples, gives ``[]`` (the servable answers "Input is empty.").
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        group = input_proto.example_list_with_context
        context = group.context.SerializeToString()
        return [context + e.SerializeToString() for e in group.examples]
    return []


def _json_type(value: Any) -> str:
    # rapidjson's type names, which TF Serving's messages use.
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Mapping):
        return "Object"
    if isinstance(value, list | tuple):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _b64(value: Mapping) -> bytes | None:
    """The decoded bytes of ``{"b64": "..."}``; None when ``value`` is not that object."""
    text = value.get("b64") if len(value) == 1 else None
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"Unable to base64 decode {text[:40]!r}; expected standard "
                               "base64 (A-Z, a-z, 0-9, +, /)") from None


def _kind_error(name: str, kind: str) -> ServingError:
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind} "
                            "(all values of a feature must be ints, floats, or strings)")


def _feature_kind(name: str, value: Any) -> tuple[str, Any]:
    """(``int64_list`` | ``float_list`` | ``bytes_list``, the value to store)."""
    if isinstance(value, bool):
        return "int64_list", int(value)
    if isinstance(value, int) and _INT64[0] <= value < _INT64[1]:
        return "int64_list", value
    if isinstance(value, int) and _INT64[1] <= value < _UINT64_MAX:
        raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
    if isinstance(value, int | float):  # ints beyond uint64 are decimals, as in rapidjson
        try:
            number: float | None = float(value)
        except OverflowError:  # an int beyond the range of doubles
            number = None
        if number is None or (math.isfinite(number) and abs(number) > _FLOAT32_MAX):
            raise invalid_argument(f"Cannot convert JSON value: {value} to float without loss "
                                   "of precision.")
        return "float_list", number
    if isinstance(value, str):
        return "bytes_list", value.encode("utf-8")
    if isinstance(value, Mapping):
        decoded = _b64(value)
        if decoded is not None:
            return "bytes_list", decoded
    raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                           f"{_json_type(value)}; expected a number, a string or "
                           '{"b64": "..."}, or a list of them')


_KIND_NAMES = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}


def example_from_json(features: Any) -> example_pb2.Example:
    """One tf.Example from a JSON object of features (TF Serving's rules).

    Each feature is a value or a list of values: ints (and booleans, as 0/1) -> int64_list,
    decimals (including NaN / Infinity) -> float_list, strings -> bytes_list (UTF-8),
    ``{"b64": "..."}`` -> bytes_list (decoded). All values of one feature have one kind.

    Raises:
        ServingError: INVALID_ARGUMENT for anything else.
    """
    if not isinstance(features, Mapping):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(features)}")
    example = example_pb2.Example()
    feature_map = example.features.feature
    for name, content in features.items():
        values = content if isinstance(content, list) else [content]
        kind, stored = None, []
        for value in values:
            value_kind, value = _feature_kind(name, value)
            if kind is not None and value_kind != kind:
                raise _kind_error(name, _KIND_NAMES[kind])
            kind = value_kind
            stored.append(value)
        feature = feature_pb2.Feature()
        if kind is not None:
            getattr(feature, kind).value.extend(stored)
        feature_map[name].CopyFrom(feature)
    return example


def examples_from_json(body: Mapping[str, Any], method: str = "classify") -> list[bytes]:
    """The serialized tf.Examples of a REST ``:classify`` / ``:regress`` body.

    Example::

        examples_from_json({"context": {"country": "fr"},
                            "examples": [{"age": 31, "height": 1.8}, {"age": 40}]})

    Args:
        body: the parsed JSON object (``signature_name`` is the caller's concern).
        method: "classify" or "regress", for error messages.

    Returns:
        One serialized ``tf.Example`` per entry of ``examples``; with ``context``, each is the
        context's bytes followed by the example's.

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message for a missing, non-list or
            empty ``examples``, a non-object example or context, or a bad feature value.
    """
    if not isinstance(body, Mapping):
        raise invalid_argument(f"Request body must be a JSON object but got JSON "
                               f"{_json_type(body)}")
    prefix = b""
    if "context" in body:
        prefix = example_from_json(body["context"]).SerializeToString()
    if "examples" not in body:
        raise invalid_argument(f"When method is {method}, key 'examples' is expected and was "
                               "not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise invalid_argument("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument("'examples' value is an empty array")
    return [prefix + example_from_json(e).SerializeToString() for e in examples]


# ------------------------------------------------------------------------------ results


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype_text(array: np.ndarray) -> str:
    try:
        return dtype_name(datatype_of(array))
    except ServingError:
        return str(array.dtype)


def _check_matrix(kind: str, array: np.ndarray, want: str, num_examples: int) -> None:
    if array.ndim != 2:
        raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                               f"{_shape_text(array)} (output {kind!r})")
    if _dtype_text(array) != want:
        raise invalid_argument(f"Expected {kind} Tensor of {want}. Got: {_dtype_text(array)}")
    if array.shape[0] != num_examples:
        raise invalid_argument(f"Expected {kind} output batch size of {num_examples}. Got: "
                               f"{array.shape[0]}")


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def classification_result(outputs: Mapping[str, np.ndarray], num_examples: int,
                          result: Any | None = None) -> Any:
    """A ``ClassificationResult`` from a classify signature's outputs, as TF Serving builds it.

    Class ``j`` of example ``i`` has ``label = classes[i, j]`` (when the signature has a
    ``classes`` output, DT_STRING [batch, k]) and ``score = scores[i, j]`` (when it has
    ``scores``, DT_FLOAT [batch, k]).

    Args:
        outputs: output name -> array, as the servable returns them.
        num_examples: how many examples were sent (the batch size to check).
        result: the proto to fill (e.g. ``response.result``); a new one if None.

    Raises:
        ServingError: FAILED_PRECONDITION when neither output exists; INVALID_ARGUMENT for a
            wrong rank, dtype or batch size, or classes and scores of different widths.
    """
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    if classes is None and scores is None:
        raise failed_precondition(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores"; got {sorted(outputs)}')
    if classes is not None:
        _check_matrix(CLASSES, classes, "DT_STRING", num_examples)
    if scores is not None:
        _check_matrix(SCORES, scores, "DT_FLOAT", num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                               f"{classes.shape[1]} vs. {scores.shape[1]}")
    if result is None:
        result = classification_pb2.ClassificationResult()
    labels = [[_label(v) for v in row] for row in classes.tolist()] if classes is not None \
        else None
    values = scores.tolist() if scores is not None else None
    width = (classes if classes is not None else scores).shape[1]
    for i in range(num_examples):
        group = result.classifications.add().classes
        for j in range(width):
            cls = group.add()
            if labels is not None:
                cls.label = labels[i][j]
            if values is not None:
                cls.score = values[i][j]
    return result


def regression_result(outputs: Mapping[str, np.ndarray], num_examples: int,
                      result: Any | None = None) -> Any:
    """A ``RegressionResult`` from a regress signature's ``outputs`` (DT_FLOAT, [batch] or
    [batch, 1]), as TF Serving builds it.

    Raises:
        ServingError: FAILED_PRECONDITION without an ``outputs`` output; INVALID_ARGUMENT for a
            wrong shape, batch size or dtype.
    """
    values = outputs.get(OUTPUTS)
    if values is None:
        raise failed_precondition(f"No regression outputs found in SignatureDef; expected an "
                                  f"output named 'outputs', got {sorted(outputs)}")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got {_shape_text(values)}")
    if values.shape[0] != num_examples:
        raise invalid_argument(f"Input batch size did not match output batch size: "
                               f"{num_examples} vs. {values.shape[0]}")
    if _dtype_text(values) != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_text(values)}")
    if result is None:
        result = regression_pb2.RegressionResult()
    for v in values.reshape(-1).tolist():
        result.regressions.add().value = v
    return result
