"""TensorProto <-> numpy (tensors.py) and tf.Example requests / classify-regress results
(examples.py), checked against TensorFlow's own conversions and TF Serving's formats."""

import base64
import math

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import input_pb2

from tfprod.serve.errors import ServingError
from tfprod.serve.examples import (
    classification_result,
    example_from_json,
    examples_from_input,
    examples_from_json,
    regression_result,
)
from tfprod.serve.tensors import TensorProto, from_ndarray, to_ndarray

INVALID = grpc.StatusCode.INVALID_ARGUMENT

ARRAYS = {
    "float32": np.array([[0.1, -0.0, np.nan], [np.inf, -np.inf, 3.4e38]], np.float32),
    "float64": np.array([0.1, 1e-300, -2.5], np.float64),
    "float16": np.array([0.5, -65504.0, np.inf], np.float16),
    "bfloat16": np.array([1.5, -2.0], tf.bfloat16.as_numpy_dtype),
    "int8": np.array([-128, 0, 127], np.int8),
    "int16": np.array([-32768, 32767], np.int16),
    "int32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "int64": np.array([-(2**63), 2**63 - 1, 0], np.int64),
    "uint8": np.array([0, 255], np.uint8),
    "uint16": np.array([65535], np.uint16),
    "uint32": np.array([2**32 - 1], np.uint32),
    "uint64": np.array([2**64 - 1, 1], np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3.5j], np.complex64),
    "complex128": np.array([1e-300 + 2j], np.complex128),
    "string": np.array([b"ab", "é".encode(), b"\xff\x00", b""], dtype=object),
    "scalar": np.array(7.25, np.float32),
    "empty": np.zeros((0, 3), np.float32),
}


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code


# ------------------------------------------------------------------------------ tensors


@pytest.mark.parametrize("key", sorted(ARRAYS))
def test_typed_fields_round_trip_exactly_and_read_like_tensorflow(key):
    array = ARRAYS[key]
    proto = from_ndarray(array)
    assert not proto.tensor_content  # TF Serving's AsProtoField: typed fields only
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    back = to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    reference = tf.make_ndarray(proto)
    if key == "string":
        assert back.tolist() == array.tolist() == reference.tolist()
    else:
        # Bit-exact, NaN and -0.0 included.
        assert back.tobytes() == np.ascontiguousarray(array).tobytes()
        assert reference.tobytes() == back.tobytes()


def test_packed_floats_equal_the_element_by_element_encoding():
    array = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    slow = TensorProto(dtype=types_pb2.DT_FLOAT)
    slow.tensor_shape.dim.add().size = 4
    slow.tensor_shape.dim.add().size = 5
    slow.float_val.extend(array.ravel().tolist())
    assert from_ndarray(array).SerializeToString() == slow.SerializeToString()
    assert list(from_ndarray(array).float_val) == array.ravel().tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.bool_, np.int32,
                                   np.uint64])
def test_large_typed_fields_decode_like_make_ndarray(dtype):
    values = np.random.default_rng(1).standard_normal(100_003) * 1e6
    array = (values > 0 if dtype is np.bool_ else np.abs(values) if dtype is np.uint64
             else values).astype(dtype).reshape(-1, 1)
    proto = TensorProto(dtype=from_ndarray(array[:1]).dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    field = getattr(proto, {np.float32: "float_val", np.float64: "double_val",
                            np.complex64: "scomplex_val", np.bool_: "bool_val",
                            np.int32: "int_val", np.uint64: "uint64_val"}[dtype])
    field.extend(array.view(np.float32).ravel().tolist() if dtype is np.complex64
                 else array.ravel().tolist())  # the obvious, element-by-element encoding
    assert from_ndarray(array).SerializeToString() == proto.SerializeToString()
    back = to_ndarray(proto)
    assert back.dtype == array.dtype and back.tobytes() == array.tobytes()
    assert tf.make_ndarray(proto).tobytes() == array.tobytes()


@pytest.mark.parametrize("key", ["float32", "float64", "int8", "int64", "uint16", "bool",
                                 "complex64", "float16", "string", "scalar"])
def test_make_tensor_proto_inputs_decode_exactly(key):
    array = ARRAYS[key]
    proto = tf.make_tensor_proto(array)
    back = to_ndarray(proto, "x")
    if key == "string":
        assert back.tolist() == array.tolist()
    else:
        assert back.dtype == array.dtype and back.tobytes() == array.tobytes()


def test_tensor_content_is_wrapped_without_a_copy_of_the_values():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = to_ndarray(tf.make_tensor_proto(array))
    assert back.flags.writeable is False and back.base is not None
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("values,shape,expected", [
    ([1.5], [2, 3], np.full((2, 3), 1.5, np.float32)),        # one value broadcasts
    ([1.0, 2.0], [4], np.array([1, 2, 2, 2], np.float32)),    # the last value repeats
    ([], [2], np.zeros(2, np.float32)),                       # none: zeros
    ([1.0, 2.0, 3.0], [2], np.array([1, 2], np.float32)),     # extra values are ignored
])
def test_fewer_typed_values_than_the_shape_broadcast_as_tensorflow_does(values, shape, expected):
    proto = TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    np.testing.assert_array_equal(to_ndarray(proto), expected)
    if len(values) <= math.prod(shape):
        np.testing.assert_array_equal(tf.make_ndarray(proto), expected)


def test_strings_broadcast_and_default_to_empty():
    proto = TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a"])
    proto.tensor_shape.dim.add().size = 3
    assert to_ndarray(proto).tolist() == [b"a", b"a", b"a"]
    del proto.string_val[:]
    assert to_ndarray(proto).tolist() == [b"", b"", b""]


def test_bad_tensors_are_invalid_argument_with_the_input_name():
    proto = tf.make_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(ServingError, match=r"tensor parsing error: image \(tensor_content has 20 "
                                           r"bytes; shape \[2, 3\] of DT_FLOAT needs 24\)") as e:
        to_ndarray(proto, "image")
    assert _code(e) == INVALID
    unknown = TensorProto(dtype=types_pb2.DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(ServingError, match="unknown_rank"):
        to_ndarray(unknown, "x")
    negative = TensorProto(dtype=types_pb2.DT_FLOAT)
    negative.tensor_shape.dim.add().size = -1
    with pytest.raises(ServingError, match="negative dimension"):
        to_ndarray(negative, "x")
    with pytest.raises(ServingError, match="DT_RESOURCE is not supported") as e:
        to_ndarray(TensorProto(dtype=types_pb2.DT_RESOURCE), "h")
    assert _code(e) == INVALID


def test_dtype_differing_from_the_signature_is_invalid_argument():
    proto = tf.make_tensor_proto(np.zeros(2, np.float64))
    with pytest.raises(ServingError, match='input "x" has dtype DT_DOUBLE but signature '
                                           '"serving_default" expects DT_FLOAT') as e:
        to_ndarray(proto, "x", expected=types_pb2.DT_FLOAT, signature="serving_default")
    assert _code(e) == INVALID
    assert to_ndarray(proto, "x", expected=types_pb2.DT_DOUBLE).dtype == np.float64


# ------------------------------------------------------------------------------ Input protos


def _example(**features) -> example_pb2.Example:
    return example_from_json(features)


def test_example_list_serializes_each_example():
    proto = input_pb2.Input()
    for i in range(3):
        proto.example_list.examples.add().CopyFrom(_example(i=i))
    out = examples_from_input(proto)
    assert [example_pb2.Example.FromString(b).features.feature["i"].int64_list.value[0]
            for b in out] == [0, 1, 2]


def test_example_list_with_context_merges_the_context_and_examples_win():
    proto = input_pb2.Input()
    group = proto.example_list_with_context
    group.context.CopyFrom(_example(country="fr", age=0))
    group.examples.add().CopyFrom(_example(age=31))
    group.examples.add().CopyFrom(_example(height=1.5))
    parsed = tf.io.parse_example(examples_from_input(proto), {
        "country": tf.io.FixedLenFeature([], tf.string),
        "age": tf.io.FixedLenFeature([], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})
    assert parsed["country"].numpy().tolist() == [b"fr", b"fr"]
    assert parsed["age"].numpy().tolist() == [31, 0]
    assert parsed["height"].numpy().tolist() == [0.0, 1.5]


def test_an_input_without_examples_gives_an_empty_list():
    assert examples_from_input(input_pb2.Input()) == []


# ------------------------------------------------------------------------------ JSON examples


def test_json_features_follow_tf_serving_typing_rules():
    raw = b"\x00\xffbin"
    example = example_from_json({
        "i": 3, "ints": [1, -2], "b": True, "f": 2.5, "floats": [0.1, float("nan")],
        "s": "héllo", "bin": {"b64": base64.b64encode(raw).decode()}, "unpadded": {"b64": "YQ"},
        "empty": [], "big": 1e20, "huge_int": 10**20})
    f = example.features.feature
    assert list(f["i"].int64_list.value) == [3]
    assert list(f["ints"].int64_list.value) == [1, -2]
    assert list(f["b"].int64_list.value) == [1]
    assert list(f["f"].float_list.value) == [2.5]
    assert f["floats"].float_list.value[0] == np.float32(0.1) and math.isnan(
        f["floats"].float_list.value[1])
    assert list(f["s"].bytes_list.value) == ["héllo".encode()]
    assert list(f["bin"].bytes_list.value) == [raw]
    assert list(f["unpadded"].bytes_list.value) == [b"a"]
    assert f["empty"].WhichOneof("kind") is None and "empty" in f
    assert list(f["big"].float_list.value) == [np.float32(1e20)]
    assert list(f["huge_int"].float_list.value) == [np.float32(1e20)]  # as rapidjson reads it


def test_json_context_is_merged_into_each_example():
    out = examples_from_json({"context": {"c": "x", "a": 0},
                              "examples": [{"a": 1}, {"b": 2.0}]})
    assert len(out) == 2
    first = example_pb2.Example.FromString(out[0]).features.feature
    second = example_pb2.Example.FromString(out[1]).features.feature
    assert list(first["a"].int64_list.value) == [1] and list(first["c"].bytes_list.value) == [b"x"]
    assert list(second["a"].int64_list.value) == [0]
    assert list(second["b"].float_list.value) == [2.0]


@pytest.mark.parametrize("body,message", [
    ({"instances": []}, "When method is classify, key 'examples' is expected and was not found"),
    ({"examples": {"a": 1}}, "Expecting 'examples' value to be an list/array"),
    ({"examples": []}, "'examples' value is an empty array"),
    ({"examples": [[1]]}, "Example must be JSON object but got JSON Array"),
    ({"examples": [{"a": [1, 2.5]}]}, "Unexpected element type in feature: a expecting type: "
                                      "int64"),
    ({"examples": [{"a": ["x", 1]}]}, "Unexpected element type in feature: a expecting type: "
                                      "bytes"),
    ({"examples": [{"a": None}]}, "Feature: a has element with unexpected JSON type: Null"),
    ({"examples": [{"a": [[1]]}]}, "Feature: a has element with unexpected JSON type: Array"),
    ({"examples": [{"a": {"x": 1}}]}, "Feature: a has element with unexpected JSON type: Object"),
    ({"examples": [{"a": {"b64": "%%%"}}]}, "Unable to base64 decode"),
    ({"examples": [{"a": 2**63}]}, "Feature: a has uint64 element. Only int64 is supported."),
    ({"examples": [{"a": 1e39}]}, "Cannot convert JSON value: 1e+39 to float without loss of "
                                  "precision."),
    ({"context": [1], "examples": [{}]}, "Example must be JSON object but got JSON Array"),
    ([1], "Request body must be a JSON object"),
])
def test_bad_json_examples_are_invalid_argument_with_tf_serving_text(body, message):
    with pytest.raises(ServingError) as e:
        examples_from_json(body)
    assert _code(e) == INVALID
    assert message in e.value.message


# ------------------------------------------------------------------------------ results


def test_classification_result_pairs_labels_and_scores():
    classes = np.array([[b"a", b"b"], [b"c", "é".encode()]], dtype=object)
    scores = np.array([[0.25, 0.75], [0.1, 0.9]], np.float32)
    result = classification_result({"classes": classes, "scores": scores}, 2)
    got = [[(c.label, c.score) for c in g.classes] for g in result.classifications]
    assert got == [[("a", 0.25), ("b", 0.75)],
                   [("c", float(np.float32(0.1))), ("é", float(np.float32(0.9)))]]


def test_classification_with_only_scores_or_only_classes():
    scores_only = classification_result({"scores": np.array([[1.0, 0.0]], np.float32)}, 1)
    assert [(c.label, c.score) for c in scores_only.classifications[0].classes] == [
        ("", 1.0), ("", 0.0)]
    classes_only = classification_result({"classes": np.array([[b"x"]], dtype=object)}, 1)
    only = classes_only.classifications[0].classes[0]
    assert (only.label, only.score) == ("x", 0.0)


@pytest.mark.parametrize("outputs,n,code,message", [
    ({"probabilities": np.zeros((1, 2), np.float32)}, 1, grpc.StatusCode.FAILED_PRECONDITION,
     'at least one of "classes" or "scores"'),
    ({"scores": np.zeros(2, np.float32)}, 2, INVALID,
     "Expected Tensor shape: [batch_size num_classes] but got [2]"),
    ({"scores": np.zeros((1, 2), np.float64)}, 1, INVALID,
     "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    ({"classes": np.zeros((1, 2), np.float32)}, 1, INVALID,
     "Expected classes Tensor of DT_STRING. Got: DT_FLOAT"),
    ({"scores": np.zeros((3, 2), np.float32)}, 2, INVALID,
     "Expected scores output batch size of 2. Got: 3"),
    ({"scores": np.zeros((1, 2), np.float32), "classes": np.full((1, 3), b"", object)}, 1,
     INVALID, "Tensors class and score should match in dim_size(1). Got 3 vs. 2"),
])
def test_bad_classification_outputs(outputs, n, code, message):
    with pytest.raises(ServingError) as e:
        classification_result(outputs, n)
    assert _code(e) == code and message in e.value.message


def test_regression_result_takes_batch_or_batch_by_one():
    for values in (np.array([1.5, -2.0, 0.1], np.float32),
                   np.array([[1.5], [-2.0], [0.1]], np.float32)):
        result = regression_result({"outputs": values}, 3)
        assert [r.value for r in result.regressions] == values.ravel().tolist()


@pytest.mark.parametrize("outputs,n,message", [
    ({"y": np.zeros(1, np.float32)}, 1, "No regression outputs found"),
    ({"outputs": np.zeros((2, 2), np.float32)}, 2,
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,2]"),
    ({"outputs": np.zeros(3, np.float32)}, 2,
     "Input batch size did not match output batch size: 2 vs. 3"),
    ({"outputs": np.zeros(2, np.int64)}, 2, "Expected output Tensor of DT_FLOAT.  Got: DT_INT64"),
])
def test_bad_regression_outputs(outputs, n, message):
    with pytest.raises(ServingError) as e:
        regression_result(outputs, n)
    assert message in e.value.message
