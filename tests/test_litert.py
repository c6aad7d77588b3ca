"""LiteRT variants: each kind converted, loaded back in the LiteRT interpreter, evaluated."""

import os

import keras
import numpy as np
import pytest

from tfprod.errors import TfprodError
from tfprod.export.litert import (
    LiteRTConverter,
    LiteRTModel,
    to_litert,
    unquantized_ops,
)


@pytest.fixture(scope="module")
def variants(digits_cnn, tmp_path_factory):
    """Every kind of the shared digits CNN, written to disk and loaded back."""
    out = tmp_path_factory.mktemp("litert")
    paths = {}
    with LiteRTConverter(digits_cnn.model, representative=digits_cnn.x_train) as converter:
        for name, kind, io in (("float32", "float32", False), ("dynamic", "dynamic", False),
                               ("float16", "float16", False), ("int8", "int8", False),
                               ("int8-io", "int8", True)):
            paths[name] = out / f"{name}.tflite"
            paths[name].write_bytes(converter.convert(kind, int8_io=io))
    return paths


@pytest.fixture(scope="module")
def keras_outputs(digits_cnn):
    return digits_cnn.model.predict(digits_cnn.x_test, batch_size=256, verbose=0)


def _accuracy(outputs, labels):
    return float(np.mean(outputs.argmax(axis=1) == labels))


def test_float32_matches_keras_exactly_in_argmax(digits_cnn, variants, keras_outputs):
    runner = LiteRTModel.load(variants["float32"])
    out = runner(digits_cnn.x_test)
    assert out.shape == keras_outputs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, keras_outputs, atol=1e-4)
    np.testing.assert_array_equal(out.argmax(axis=1), keras_outputs.argmax(axis=1))


@pytest.mark.parametrize("name,max_drop", [("dynamic", 0.02), ("float16", 0.005),
                                           ("int8", 0.02), ("int8-io", 0.02)])
def test_each_quantized_kind_keeps_accuracy(digits_cnn, variants, name, max_drop):
    runner = LiteRTModel.load(variants[name])
    # Batches of different sizes, the last one partial: the input is resized each time.
    out = np.concatenate([runner(digits_cnn.x_test[i:i + 100])
                          for i in range(0, len(digits_cnn.x_test), 100)])
    assert out.shape == (len(digits_cnn.y_test), 10)
    assert _accuracy(out, digits_cnn.y_test) >= digits_cnn.accuracy - max_drop


def test_sizes_shrink_as_expected(variants):
    size = {k: os.path.getsize(p) for k, p in variants.items()}
    assert size["int8"] * 3.5 <= size["float32"]
    assert size["dynamic"] * 3 <= size["float32"]
    assert size["float16"] * 1.8 <= size["float32"] <= size["float16"] * 2.2


def test_int8_io_quantizes_inputs_with_the_input_tensor_parameters(digits_cnn, variants):
    from ai_edge_litert.interpreter import Interpreter

    runner = LiteRTModel.load(variants["int8-io"])
    assert runner.input_dtype == np.int8
    scale, zero = runner.input_quantization
    assert scale > 0 and -128 <= zero <= 127
    assert LiteRTModel.load(variants["int8"]).input_quantization is None
    # The same batch through a bare interpreter, quantized and dequantized by hand.
    raw = Interpreter(model_path=str(variants["int8-io"]))
    x = digits_cnn.x_test[:1].astype(np.float32)
    raw.allocate_tensors()
    inp, out = raw.get_input_details()[0], raw.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    raw.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    raw.invoke()
    out_scale, out_zero = out["quantization"]
    expected = (raw.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale
    np.testing.assert_allclose(runner(x), expected, rtol=0, atol=1e-7)


def test_the_digits_cnn_is_fully_int8(variants):
    assert unquantized_ops(variants["int8"].read_bytes()) == []


def test_an_op_without_an_int8_kernel_is_reported_by_name():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(16, name="dense_in")(inputs)
    waves = keras.layers.Lambda(lambda t: keras.ops.sin(t), name="waves")(hidden)
    outputs = keras.layers.Dense(4, name="dense_out")(waves)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    with LiteRTConverter(model, representative=x) as converter:
        content = converter.convert("int8")
    ops = unquantized_ops(content)
    assert len(ops) == 1 and ops[0].startswith("SIN (") and "waves" in ops[0], ops
    # Still runs end to end, int8 around the float op.
    out = LiteRTModel(content)(x[:5])
    np.testing.assert_allclose(out, model.predict(x[:5], verbose=0), atol=0.15)


def test_corrupted_tflite_is_one_line_error(variants, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(variants["float32"].read_bytes()[:2000])
    for path in (broken, tmp_path / "missing.tflite"):
        with pytest.raises(TfprodError) as e:
            LiteRTModel.load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(TfprodError, match="is not a valid LiteRT model"):
        LiteRTModel.load(garbage)


def test_representative_data_of_the_wrong_shape_is_refused_and_writes_nothing(digits_cnn,
                                                                              tmp_path):
    wrong = np.zeros((10, 28, 28, 1), np.float32)
    target = tmp_path / "int8.tflite"
    with pytest.raises(TfprodError) as e:
        to_litert(digits_cnn.model, target, "int8", representative=wrong)
    message = str(e.value)
    assert "(28, 28, 1)" in message and "(32, 32, 1)" in message and "\n" not in message
    assert os.listdir(tmp_path) == []
    with pytest.raises(TfprodError, match="per example"):
        LiteRTConverter(digits_cnn.model, representative=np.zeros((10, 32, 32), np.float32))


def test_bad_kinds_are_refused(digits_cnn):
    converter = LiteRTConverter(digits_cnn.model)
    with pytest.raises(TfprodError, match="needs representative data"):
        converter.convert("int8")
    with pytest.raises(TfprodError, match="expected one of"):
        converter.convert("int4")
    with pytest.raises(TfprodError, match="needs the 'int8' kind"):
        converter.convert("float16", int8_io=True)


def test_to_litert_writes_a_loadable_file(digits_cnn, tmp_path, keras_outputs):
    path = to_litert(digits_cnn.model, tmp_path / "sub" / "m.tflite", "float16")
    assert os.listdir(tmp_path / "sub") == ["m.tflite"]
    out = LiteRTModel.load(path)(digits_cnn.x_test[:32])
    np.testing.assert_allclose(out, keras_outputs[:32], atol=5e-3)

