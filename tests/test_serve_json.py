"""JSON <-> numpy for the REST API: TF Serving's formats, rules and error texts (json_tensor.cc)."""

import base64
import json

import numpy as np
import pytest
from tensorflow_serving.apis import classification_pb2, regression_pb2

from tfprod.serve import json_codec as jc
from tfprod.serve.errors import ServingError


def decode(body, inputs):
    return jc.decode_predict(jc.parse_request(body), inputs)


def error(body, inputs):
    with pytest.raises(ServingError) as e:
        decode(body, inputs)
    return e.value.http_status, e.value.message


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"[1]", "JSON Value: [1] Is not object"),
    (b'"x"', 'JSON Value: "x" Is not object'),
    (b'{"instances": [1e400]}', "JSON Parse error: Number too big to be stored in double: 1e400"),
])
def test_parse_errors_have_tf_serving_texts(body, message):
    with pytest.raises(ServingError) as e:
        jc.parse_request(body)
    assert (e.value.http_status, e.value.message) == (400, message)


@pytest.mark.parametrize("body", [b"{", b'{"a": }', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                                  b'{"a": 1} x', b"nul"])
def test_malformed_json_is_a_400_parse_error(body):
    with pytest.raises(ServingError) as e:
        jc.parse_request(body)
    assert e.value.http_status == 400
    assert e.value.message.startswith(("JSON Parse error", "JSON Value"))


def test_nan_and_infinity_are_accepted_as_tf_serving_does():
    arrays, fmt = decode(b'{"instances": [[NaN, Infinity, -Infinity, 1.5]]}', {"x": "float32"})
    x = arrays["x"]
    assert fmt == jc.ROW and x.dtype == np.float32 and x.shape == (1, 4)
    assert np.isnan(x[0, 0]) and x[0, 1] == np.inf and x[0, 2] == -np.inf and x[0, 3] == 1.5


def test_signature_name_must_be_a_string():
    request = jc.parse_request(b'{"signature_name": 5, "instances": [1]}')
    with pytest.raises(ServingError, match="'signature_name' key must be a string value"):
        jc.signature_name(request)
    assert jc.signature_name(jc.parse_request(b'{"instances": [1]}')) == ""


# ------------------------------------------------------------------------------ requests


def test_row_and_columnar_single_input():
    arrays, fmt = decode(b'{"instances": [[1,2],[3,4],[5,6]]}', {"x": "int32"})
    assert fmt == jc.ROW and arrays["x"].dtype == np.int32
    np.testing.assert_array_equal(arrays["x"], [[1, 2], [3, 4], [5, 6]])
    arrays, fmt = decode(b'{"inputs": [[[1,2],[3,4],[5,6]]]}', {"x": "int32"})
    assert fmt == jc.COLUMNAR and arrays["x"].shape == (1, 3, 2)
    arrays, _ = decode(b'{"inputs": {"x": 7}}', {"x": "int64"})
    assert arrays["x"].shape == () and arrays["x"] == 7


def test_mixed_ints_and_decimals_for_float_and_double():
    for dtype in ("float32", "float64"):
        arrays, _ = decode(b'{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"x": dtype})
        assert arrays["x"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(arrays["x"],
                                      np.array([1, 2, 3, 4, 5.003, 0.007, 0], dtype))


def test_multiple_named_inputs_row_and_columnar():
    inputs = {"int_tensor": "int32", "str_tensor": "string", "float_tensor": "float32",
              "dbl_tensor": "float64"}
    body = b"""{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    arrays, fmt = decode(body, inputs)
    assert fmt == jc.ROW
    assert arrays["int_tensor"].shape == (2, 3, 2)
    assert arrays["str_tensor"].tolist() == [[b"foo", b"bar"], [b"baz", b"bat"]]
    assert arrays["float_tensor"].dtype == np.float32 and arrays["float_tensor"][1, 1] == np.inf
    assert arrays["dbl_tensor"].dtype == np.float64 and arrays["dbl_tensor"].shape == (2, 1)
    body = b'{"inputs": {"int_tensor": [[1]], "str_tensor": ["a"], "float_tensor": [1],' \
           b' "dbl_tensor": [2], "ignored": 1}}'
    arrays, fmt = decode(body, inputs)
    assert fmt == jc.COLUMNAR and sorted(arrays) == sorted(inputs)


def test_b64_strings_scalars_lists_and_columnar():
    hello, world = base64.b64encode(b"hello").decode(), base64.b64encode(b"\x00\xff").decode()
    body = json.dumps({"instances": [{"b64": hello}, {"b64": world}]}).encode()
    assert decode(body, {"s": "string"})[0]["s"].tolist() == [b"hello", b"\x00\xff"]
    body = json.dumps({"instances": [[{"b64": hello}], [{"b64": world}]]}).encode()
    assert decode(body, {"s": "string"})[0]["s"].shape == (2, 1)
    body = json.dumps({"inputs": {"s": {"b64": hello}, "t": ["x"]}}).encode()
    arrays = decode(body, {"s": "string", "t": "string"})[0]
    assert arrays["s"].shape == () and arrays["s"][()] == b"hello"
    body = json.dumps({"instances": ["h\u00e9", {"b64": "aGk"}]}).encode()  # unpadded b64
    assert decode(body, {"s": "string"})[0]["s"].tolist() == ["hé".encode(), b"hi"]


def test_fast_path_equals_careful_path():
    rng = np.random.default_rng(0)
    cases = [("float32", rng.normal(size=(8, 5, 3)).tolist()),
             ("float32", rng.integers(-(2 ** 24) + 1, 2 ** 24, size=(4, 7)).tolist()),
             ("float64", rng.normal(size=(3, 4)).tolist()),
             ("int32", rng.integers(-(2 ** 31), 2 ** 31, size=(5, 2)).tolist()),
             ("uint8", rng.integers(0, 256, size=(2, 32, 32, 1)).tolist()),
             ("int64", rng.integers(-(2 ** 62), 2 ** 62, size=(6,)).tolist()),
             ("bool", (rng.random((3, 3)) > 0.5).tolist())]
    for dtype, value in cases:
        fast = jc._fast_array(value, jc._SPECS[dtype], bool_free=True)
        careful = jc._careful_array(value, jc._SPECS[dtype])
        assert fast is not None and fast.dtype == careful.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(fast, careful)
        np.testing.assert_array_equal(fast, np.array(value, dtype))
    # What only the careful path can judge: big ints, ragged lists, bools among numbers.
    for dtype, value in (("float32", [0.5, 16777217]), ("int32", [[1], [2, 3]]),
                         ("float32", [-(2 ** 63)]), ("int32", [1, 2.0]),
                         ("float32", [[1, 2], "ab"]), ("float32", [[1, 2], {"a": 1, "b": 2}]),
                         ("float32", [[1], {"b64": "aGk="}]), ("float32", [[1, 2], [3, [4]]]),
                         ("float32", [1.0, float("inf")]), ("bool", [True, 1])):
        assert jc._fast_array(value, jc._SPECS[dtype], bool_free=True) is None
    assert not jc.parse_request(b'{"instances": [1, true]}').bool_free
    assert jc._fast_array([1, True], jc._SPECS["float32"], bool_free=False) is None


@pytest.mark.parametrize("inputs, body, status, message", [
    ({"x": "int32"}, b'{"instances": [[1,2],[3,4],[5,6,7]]}', 400,
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
     "tensor size: 2 but got: 3"),
    ({"x": "int32"}, b'{"instances": [[1,2],[3,4],[[5,6]]]}', 400,
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
     "shape [2] but got: [1,2]"),
    ({"x": "int32"}, b'{"instances": [[1,2],["a", "b"]]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     '"a" Type: String is not of expected type: int32'),
    ({"x": "int32"}, b'{"instances": [1, [1]]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting "
     "shape [] but got: [1]"),
    ({"x": "int32"}, b'{"instances": [[1, 2.0]]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     "2.0 Type: Number is not of expected type: int32"),
    ({"x": "uint8"}, b'{"instances": [[1, 256]]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     "256 Type: Number is not of expected type: uint8"),
    ({"x": "float32"}, b'{"instances": [1, true]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     "true Type: True is not of expected type: float"),
    ({"x": "float32"}, b'{"instances": [1, null]}', 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     "null Type: Null is not of expected type: float"),
    ({"x": "float32"}, b'{"instances": [16777217]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Cannot "
     "convert JSON value: 16777217 to float without loss of precision."),
    ({"x": "float32"}, b'{"instances": [1.7976931348623157e308]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Cannot "
     "convert JSON value: 1.7976931348623157e+308 to float without loss of precision."),
    ({"x": "float64"}, b'{"instances": [9007199254740993]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Cannot "
     "convert JSON value: 9007199254740993 to double without loss of precision."),
    ({"x": "float32"}, b'{"inputs": [[1, 2], [3]]}', 400,
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"x": "float32"}, b'{"inputs": [[1, 2], 3]}', 400,
     "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ({"x": "string"}, b'{"inputs": [{"b64": "!!"}]}', 400, "Unable to base64 decode"),
    ({"x": "string"}, b'{"inputs": [{"b64": "aGk=", "x": 1}]}', 400,
     'JSON Value: {"b64":"aGk=","x":1} not formatted correctly for base64 data'),
    ({"x": "float32"}, b'{"instances": [{"b64": "aGk="}]}', 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
     '{"b64":"aGk="} Type: Object is not of expected type: float'),
    ({"x": "float16"}, b'{"inputs": [1.5]}', 501, "Conversion of JSON Value: 1.5 to type: half"),
    ({"x": "float32"}, b'{"instances": [1], "inputs": [1]}', 400,
     'JSON Value: {"instances":[1],"inputs":[1]} Not formatted correctly expecting only one of '
     "'inputs' or 'instances' keys to exist "),
    ({"x": "float32"}, b'{"instances": 1}', 400,
     'JSON Value: {"instances":1} Excepting \'instances\' to be an list/array'),
    ({"x": "float32"}, b'{"instances": []}', 400,
     'JSON Value: {"instances":[]} No values in \'instances\' array'),
    ({"x": "float32"}, b'{"signature_name": "x"}', 400, "Missing 'inputs' or 'instances' key"),
    ({}, b'{"instances": [1]}', 400, "Failed to get input map for signature: DEFAULT"),
])
def test_request_errors(inputs, body, status, message):
    assert error(body, inputs) == (status, message)


@pytest.mark.parametrize("body, message", [
    (b'{"instances": [1, 2]}', "instances is a plain list, but expecting list of objects as "
     "multiple input tensors required as per tensorinfo_map"),
    (b'{"inputs": [1, 2]}', "inputs is a plain value/list, but expecting an object as multiple "
     "input tensors required as per tensorinfo_map"),
    (b'{"inputs": {"i": [1]}}', "Missing named input: s in 'inputs' object."),
    (b'{"instances": [{"i": 1, "s": "a"}, [1, 20, 30]]}',
     "Expecting object but got list at item 1 of input list"),
    (b'{"instances": [{"i": 1, "s": "a"}, {"i": 2}]}',
     'Failed to process element: 1 of \'instances\' list. JSON object: {"i":2} must only have '
     "keys: i,s"),
    (b'{"instances": [{"i": 1, "s": "a", "z": 0}]}',
     "Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: JSON "
     "object: does not have named input: z"),
    (b'{"instances": [{"i": [1, 2], "s": "a"}, {"i": [[1, 2]], "s": "b"}]}',
     "Failed to process element: 1 key: i of 'instances' list. Error: INVALID_ARGUMENT: "
     "Expecting shape [2] but got: [1,2]"),
])
def test_multi_input_errors(body, message):
    assert error(body, {"i": "int32", "s": "string"}) == (400, message)


def test_value_only_list_after_objects_and_the_reverse():
    assert error(b'{"instances": [["baz"], {"s": ["bat"]}]}', {"s": "string"}) == (
        400, "Expecting value/list but got object at item 1 of input list")


# ------------------------------------------------------------------------------ responses


def test_float_text_is_tf_servings_six_digits_or_round_trip():
    # TF Serving's json_tensor_test.cc, FromJsonSingleFloatTensorSixDigitPrecision.
    values = np.array([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5], np.float32)
    assert [jc.format_float(v) for v in values.tolist()] == [
        "9e+06", "999999.0", "0.5", "0.0003", "3e-05", "555557.5"]
    assert jc.format_float(0.1) == "0.1"
    assert jc.format_float(float(np.float32(0.123456789))) == "0.123456791"
    assert jc.format_float(float(np.float32(1 / 3))) == "0.333333343"
    assert jc.format_double(1 / 3) == "0.33333333333333331"
    assert jc.format_double(-0.0) == "-0.0"
    assert [jc.format_float(v) for v in (float("nan"), float("inf"), float("-inf"))] == [
        "NaN", "Infinity", "-Infinity"]


def test_vectorized_float_texts_equal_the_scalar_rule_and_round_trip():
    rng = np.random.default_rng(1)
    specials = [0.0, -0.0, 1.0, 3.0, 1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38,
                np.nan, np.inf, -np.inf, 0.1, 1e7, 123456.7, 1e-5]
    for dtype, fmt in ((np.float32, jc.format_float), (np.float64, jc.format_double)):
        flat = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, 500),
                               rng.integers(-1000, 1000, 100), specials]).astype(dtype)
        texts = jc._float_texts(flat)
        assert texts == [fmt(v) for v in flat.tolist()]
        back = np.array(json.loads("[" + ",".join(texts) + "]"), dtype)
        assert np.array_equal(back, flat, equal_nan=True)
        assert (np.signbit(back) == np.signbit(flat)).all()


def test_row_and_columnar_responses_single_output():
    out = {"int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)}
    assert jc.encode_predict(out, jc.ROW) == \
        b'{"predictions":[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]]}'
    assert jc.encode_predict(out, jc.COLUMNAR) == \
        b'{"outputs":[[[1,2],[3,4],[5,6]],[[7,8],[9,0],[1,2]]]}'
    assert jc.encode_predict({"s": np.arange(1, 6)}, jc.ROW) == b'{"predictions":[1,2,3,4,5]}'
    nonfinite = {"f": np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)}
    assert jc.encode_predict(nonfinite, jc.ROW) == \
        b'{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'


def test_multiple_outputs_bytes_and_strings():
    # TF Serving's json_tensor_test.cc, FromJsonMultipleNamedTensors.
    out = {"int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32),
           "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], object),
           "float_tensor": np.array([[1.0], [2.0]], np.float32),
           "double_scalar_tensor": np.array([8.0, 9.0]),
           "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object),
           "flags": np.array([True, False])}
    row = json.loads(jc.encode_predict(out, jc.ROW))
    assert row == {"predictions": [
        {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "flags": True,
         "int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"],
         "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
        {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "flags": False,
         "int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"],
         "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}
    columnar = json.loads(jc.encode_predict(out, jc.COLUMNAR))
    assert columnar["outputs"]["str_tensor_bytes"] == [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                                                       [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
    assert columnar["outputs"]["double_scalar_tensor"] == [8.0, 9.0]
    assert b'"double_scalar_tensor":[8.0,9.0]' in jc.encode_predict(out, jc.COLUMNAR)


def test_zero_batch_and_row_errors():
    empty = {"a": np.zeros((0, 1, 2), object), "b": np.zeros((0, 3, 4), np.float32)}
    assert jc.encode_predict(empty, jc.ROW) == b'{"predictions":[]}'
    assert jc.encode_predict({"a": np.zeros((2, 0, 3), np.int32)}, jc.COLUMNAR) == \
        b'{"outputs":[[],[]]}'
    for outputs, message in (
            ({}, "Cannot convert empty tensor map to JSON"),
            ({"t": np.array(1)}, "Tensor name: t has no shape information "),
            ({"a": np.zeros((2, 3)), "b": np.zeros((1, 3))},
             "Tensor name: b has inconsistent batch size: 1 expecting: 2"),
            ({"c": np.ones(2, np.complex64)}, "Failed to write JSON value for tensor type: "
                                              "complex64")):
        with pytest.raises(ServingError) as e:
            jc.encode_predict(outputs, jc.ROW)
        assert (e.value.http_status, e.value.message) == (400, message)


def test_classification_and_regression_results():
    result = classification_pb2.ClassificationResult()
    for scores in ((0.2, 0.7, 0.1), (0.7, 0.1, 0.2)):
        group = result.classifications.add()
        for label, score in zip(("car", "bike", "bus"), scores, strict=True):
            group.classes.add(label=label, score=score)
    assert jc.encode_classification(result) == (
        b'{"results":[[["car",0.2],["bike",0.7],["bus",0.1]],'
        b'[["car",0.7],["bike",0.1],["bus",0.2]]]}')
    regression = regression_pb2.RegressionResult()
    for v in (0.2, float("inf"), 1.0, float("-inf"), float("nan")):
        regression.regressions.add(value=v)
    assert jc.encode_regression(regression) == b'{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'
    with pytest.raises(ServingError, match="empty ClassificationResults"):
        jc.encode_classification(classification_pb2.ClassificationResult())
    with pytest.raises(ServingError, match="empty RegressionResults"):
        jc.encode_regression(regression_pb2.RegressionResult())


def test_error_body_escapes_what_orjson_cannot_write():
    assert json.loads(jc.error_body('bad "key"')) == {"error": 'bad "key"'}
    assert json.loads(jc.error_body("lone \ud800 surrogate"))["error"].startswith("lone")
