"""Variable-length lists through the server: REST decoding into NAME.values/NAME.row_lengths,
checks before batching, merging ragged requests, and clear errors for bad ones."""

import threading

import numpy as np
import orjson
import pytest
import tensorflow as tf

from tfprod.serve import json_codec
from tfprod.serve.batching import DynamicBatcher, merge_inputs
from tfprod.serve.config import BatchingParameters
from tfprod.serve.errors import ServingError, invalid_argument
from tfprod.serve.ragged import check_components, decode_predict
from tfprod.serve.servable import serving_error

SEQ = {"tokens.values": tf.int32, "tokens.row_lengths": tf.int64}
REC = {"user_id": tf.int64, "seen.values": tf.int64, "seen.row_lengths": tf.int64}


def _decode(body, inputs):
    return decode_predict(json_codec.parse_request(orjson.dumps(body)), inputs)


@pytest.mark.parametrize("body,fmt", [
    ({"instances": [{"tokens": [3, 9, 4]}, {"tokens": [7]}]}, "row"),
    ({"instances": [[3, 9, 4], [7]]}, "row"),
    ({"inputs": {"tokens": [[3, 9, 4], [7]]}}, "columnar"),
    ({"inputs": [[3, 9, 4], [7]]}, "columnar"),
    ({"inputs": {"tokens.values": [3, 9, 4, 7], "tokens.row_lengths": [3, 1]}}, "columnar"),
])
def test_lists_in_any_format_become_values_and_row_lengths(body, fmt):
    arrays, got_fmt = _decode(body, SEQ)
    assert got_fmt == fmt
    assert arrays["tokens.values"].tolist() == [3, 9, 4, 7]
    assert arrays["tokens.values"].dtype == np.int32
    assert arrays["tokens.row_lengths"].tolist() == [3, 1]


def test_dense_and_ragged_inputs_together_and_empty_lists():
    arrays, _ = _decode({"instances": [{"user_id": 3, "seen": [1, 2]},
                                       {"user_id": 5, "seen": []}]}, REC)
    assert arrays["user_id"].tolist() == [3, 5]
    assert arrays["seen.values"].tolist() == [1, 2]
    assert arrays["seen.row_lengths"].tolist() == [2, 0]
    arrays, _ = _decode({"inputs": {"user_id": [1], "seen": [[]]}}, REC)
    assert arrays["seen.values"].shape == (0,) and arrays["seen.row_lengths"].tolist() == [0]


def test_signatures_without_ragged_inputs_decode_as_tf_serving_does():
    arrays, fmt = _decode({"instances": [[1.0, 2.0]]}, {"x": tf.float32})
    assert fmt == "row" and arrays["x"].tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("body,inputs,match", [
    ({"inputs": {"user_id": [1], "seen": [[1]], "seen.values": [1]}}, REC,
     "'seen' was sent both as lists and as seen.values"),
    ({"inputs": {"user_id": [[1, 2], [3]], "seen": [[1], []]}}, REC,
     "'user_id' takes a dense tensor, but its lists have different lengths; variable-length "
     "lists go only to 'seen'"),
    ({"instances": [{"tokens": 3}]}, SEQ, "example 0 is number 3; expected a list"),
    ({"instances": [{"tokens": [[1, 2]]}]}, SEQ, "nested lists"),
    ({"instances": [{"tokens": [1.5]}]}, SEQ, "not of expected type: int32"),
    ({"instances": [{"user_id": 1, "seen": [2]}, {"user_id": 2}]}, REC,
     "element: 1 of 'instances' list"),
    ({"instances": [[1], [2]]}, REC, "expecting list of objects"),
])
def test_bad_ragged_requests_are_one_line_invalid_arguments(body, inputs, match):
    with pytest.raises(ServingError, match=match) as e:
        _decode(body, inputs)
    assert e.value.http_status == 400 and "\n" not in e.value.message


@pytest.mark.parametrize("values,lengths,match", [
    ([1, 2, 3], [2, 2], "sums to 4 but tokens.values has 3 values"),
    ([1, 2], [3, -1], "negative length"),
    ([[1, 2]], [2], "must be 1-D"),
])
def test_components_are_checked_before_batching(values, lengths, match):
    arrays = {"tokens.values": np.array(values), "tokens.row_lengths": np.array(lengths)}
    with pytest.raises(ServingError, match=match):
        check_components(arrays, {"tokens": ("tokens.values", "tokens.row_lengths")}, "sig")
    good = {"tokens.values": np.array([1, 2, 3]), "tokens.row_lengths": np.array([2, 1, 0])}
    assert check_components(good, {"tokens": ("tokens.values", "tokens.row_lengths")}, "s") == 3


def test_merging_ragged_requests_concatenates_and_pads_with_the_first_list():
    parts = [{"t.row_lengths": np.array([2, 1]), "t.values": np.array([5, 6, 7]),
              "u": np.array([10, 11])},
             {"t.row_lengths": np.array([0, 3]), "t.values": np.array([8, 9, 1]),
              "u": np.array([12, 13])}]
    merged, total, target = merge_inputs(parts, allowed_batch_sizes=[6],
                                         ragged={"t.values": "t.row_lengths"})
    assert (total, target) == (4, 6)
    assert merged["t.row_lengths"].tolist() == [2, 1, 0, 3, 2, 2]
    assert merged["t.values"].tolist() == [5, 6, 7, 8, 9, 1, 5, 6, 5, 6]
    assert merged["u"].tolist() == [10, 11, 12, 13, 10, 10]


class _Checking:
    """A model that refuses negative inputs for the whole batch, as a signature's
    tf.debugging.Assert does; the first call waits so the others queue behind it."""

    ragged_values = {}

    def __init__(self):
        self.calls, self.gate, self.entered = [], threading.Event(), threading.Event()

    def __call__(self, inputs):
        self.calls.append(len(inputs["x"]))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        if (inputs["x"] < 0).any():
            raise invalid_argument("x: negative")
        return {"y": inputs["x"] * 2}


def test_one_bad_request_does_not_fail_the_others_of_its_batch():
    batcher = DynamicBatcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=0,
                                                num_batch_threads=1))
    model = _Checking()
    try:
        first = batcher.submit("k", model, {"x": np.array([1])}, 1)
        assert model.entered.wait(5)
        futures = [batcher.submit("k", model, {"x": np.array([v])}, 1) for v in (2, -3, 4)]
        model.gate.set()
        assert first.result(5)["y"].tolist() == [2]
        assert futures[0].result(5)["y"].tolist() == [4]
        assert futures[2].result(5)["y"].tolist() == [8]
        with pytest.raises(ServingError, match="x: negative"):
            futures[1].result(5)
        assert model.calls == [1, 3, 1, 1, 1]  # tried as one batch first, then one by one
    finally:
        batcher.close()


def test_error_bodies_carry_the_runtime_message_not_pythons_preamble():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def f(n):
        tf.debugging.Assert(tf.reduce_all(n > 0), [tf.strings.format(
            "tokens: list {} is empty (length 0)", [tf.argmin(n)])])
        return n

    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        f(tf.constant([2, 0], tf.int64))
    error = serving_error(e.value)
    assert error.http_status == 400
    assert error.message == "tokens: list 1 is empty (length 0)"
