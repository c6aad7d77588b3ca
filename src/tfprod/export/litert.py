"""LiteRT (.tflite) variants of a Keras model, and running them with the LiteRT interpreter.

Kinds: ``float32``, ``dynamic`` (int8 weights, float activations), ``float16`` (float16
weights) and ``int8`` (full integer, calibrated on a representative sample of the training data;
``int8_io=True`` also makes the model's input and output int8). Files run with
``ai_edge_litert.interpreter.Interpreter`` on every core: ``tf.lite.Interpreter`` is deprecated.

Example::

    from tfprod.export.litert import LiteRTModel, to_litert

    to_litert(model, "model_int8.tflite", "int8", representative=x_train)
    runner = LiteRTModel.load("model_int8.tflite")
    probabilities = runner(x_test[:64])
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from tfprod.errors import TfprodError

KINDS: tuple[str, ...] = ("float32", "dynamic", "float16", "int8")
# Ops that sit on the model's float boundary in a full-integer model: they convert, not compute.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_FLOAT_TYPES = (np.float32, np.float16, np.float64)


def num_cores() -> int:
    """The cores this process may run on (the interpreter's thread count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def input_shapes(model) -> dict[str, tuple[int | None, ...]]:
    """Each serving input of ``model`` by name -> its example shape (without the batch)."""
    from tfprod.export.signature import serving_inputs

    inputs = serving_inputs(model)
    return {n: tuple(s.shape[1:]) for n, s in zip(inputs.names, inputs.specs, strict=True)}


class LiteRTUnsupported(TfprodError):
    """One LiteRT kind cannot be built for this model (the others may): the reason."""


def fit_inputs(x: Any, specs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Named examples shaped and typed for ``specs`` (name -> (shape, numpy dtype)): a column
    ``(n,)`` for a ``(n, 1)`` input gets its axis; strings become bytes objects."""
    out = {}
    for name, (shape, dtype) in specs.items():
        v = np.asarray(x[name])
        if shape and v.ndim == len(shape) and shape[-1] == 1:  # a column for an (n, 1) input
            v = v[..., None]
        if dtype == np.dtype(object):
            v = np.array([e.encode() if isinstance(e, str) else e for e in v.ravel()],
                         dtype=object).reshape(v.shape)
        else:
            v = v.astype(dtype, copy=False)
        out[name] = v
    return out


def check_examples(x: np.ndarray, expected: Sequence[int | None], *, what: str) -> None:
    """Raises a one-line error unless ``x`` is a batch of examples of shape ``expected``."""
    shape = tuple(np.shape(x))
    fits = len(shape) == len(expected) + 1 and all(
        e is None or int(e) == s for e, s in zip(expected, shape[1:], strict=True))
    if not fits:
        want = tuple(expected)
        raise TfprodError(f"{what} has examples of shape {shape[1:]} (array {shape}); the model "
                          f"expects {want} per example; draw it from the data the model was "
                          f"trained on, shaped (N, {', '.join(str(d) for d in want)})")


def representative_dataset(x: np.ndarray, *, num_samples: int = 200,
                           seed: int = 0) -> tuple[np.ndarray, ...]:
    """Up to ``num_samples`` examples of ``x`` drawn at random, for int8 calibration."""
    x = np.asarray(x)
    if len(x) == 0:
        raise TfprodError("the representative dataset is empty; pass some training examples")
    pick = np.random.default_rng(seed).permutation(len(x))[:num_samples]
    return tuple(x[i:i + 1].astype(np.float32) for i in np.sort(pick))


class LiteRTConverter:
    """Converts one Keras model to any LiteRT kind; the SavedModel is written once.

    ``tf.lite.TFLiteConverter.from_keras_model`` fails with Keras 3 models
    (tensorflow/tensorflow#117453, #63867), so the model goes through
    ``keras.export.ExportArchive`` (a SavedModel with a ``serve`` endpoint) and
    ``from_saved_model``, as Keras' own LiteRT export does.

    Args:
        model: a built Keras model with one input tensor or several named inputs.
        representative: training examples ``[N, ...]`` (a dict of them by input name for
            several inputs) for the ``int8`` kind.
        num_samples: how many of them calibrate the int8 ranges.
    """

    def __init__(self, model, *, representative: Any = None,
                 num_samples: int = 200) -> None:
        from tfprod.export.batches import check_named, count, take
        from tfprod.export.signature import serving_inputs

        self.model = model
        self.inputs = serving_inputs(model)
        self.shapes = {n: tuple(s.shape[1:])
                       for n, s in zip(self.inputs.names, self.inputs.specs, strict=True)}
        self.example_shape = (next(iter(self.shapes.values())) if len(self.shapes) == 1
                              else None)
        self._samples = None
        if representative is not None and self.example_shape is not None and not isinstance(
                representative, dict):
            check_examples(representative, self.example_shape, what="the representative dataset")
            self._samples = representative_dataset(representative, num_samples=num_samples)
        elif representative is not None:
            if not isinstance(representative, dict):
                representative = {self.inputs.names[0]: representative}
            check_named(representative, self.shapes, what="the representative dataset")
            specs = {n: (self.shapes[n], _numpy_dtype(s))
                     for n, s in zip(self.inputs.names, self.inputs.specs, strict=True)}
            pick = np.random.default_rng(0).permutation(count(representative))[:num_samples]
            self._samples = tuple(fit_inputs(take(representative, int(i), int(i) + 1), specs)
                                  for i in np.sort(pick))
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> LiteRTConverter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Removes the intermediate SavedModel."""
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _saved_model(self) -> str:
        import keras
        import tensorflow as tf

        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="tfprod-litert-")
            archive = keras.export.ExportArchive()
            archive.track(self.model)
            model, inputs = self.model, self.inputs
            if inputs.kind == "tensor":
                serve = functools.partial(model.__call__, training=False)
            else:
                def serve(*tensors):
                    return model(inputs.structure(tensors), training=False)
            archive.add_endpoint("serve", serve, input_signature=[
                tf.TensorSpec(s.shape, s.dtype, name=n)
                for n, s in zip(inputs.names, inputs.specs, strict=True)])
            archive.write_out(self._dir.name, verbose=False)
        return self._dir.name

    def convert(self, kind: str, *, int8_io: bool = False) -> bytes:
        """The ``.tflite`` bytes of one kind (see :data:`KINDS`).

        Raises:
            TfprodError: an unknown kind; ``int8`` without representative data; ``int8_io``
                with a kind other than ``int8``.
        """
        import tensorflow as tf

        if kind not in KINDS:
            raise TfprodError(f"LiteRT kind {kind!r}; expected one of {list(KINDS)}")
        if int8_io and kind != "int8":
            raise TfprodError(f"int8 input/output needs the 'int8' kind, not {kind!r}")
        if kind == "int8" and self._samples is None:
            raise TfprodError("the int8 kind needs representative data: pass representative= "
                              "some training examples (100 to 300 are enough)")
        converter = tf.lite.TFLiteConverter.from_saved_model(self._saved_model(), ["serve"])
        if kind != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if kind == "int8":
            samples = self._samples
            # Several inputs: one dict per sample, keyed by the signature's input names.
            converter.representative_dataset = lambda: (
                s if isinstance(s, dict) else [s] for s in samples)
            # Builtin float kernels stay allowed, so an op without an int8 kernel falls back to
            # float instead of failing the conversion; unquantized_ops() names such ops.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        try:
            with _quiet():
                return converter.convert()
        except Exception as e:  # the converter's own reason, for this kind only
            raise LiteRTUnsupported(_conversion_failure(self.model, kind, e)) from None


def _numpy_dtype(spec: Any) -> np.dtype:
    return np.dtype(object) if spec.dtype.name == "string" else np.dtype(
        spec.dtype.as_numpy_dtype)


def _conversion_failure(model, kind: str, error: Exception) -> str:
    """One line: why ``kind`` could not be built, and what would make it work."""
    text = " ".join(str(error).split())
    ops = sorted(set(re.findall(r"tf\.([A-Za-z0-9_]+)", text)))
    if "not supported by the native TFLite runtime" in text or "Select TF" in text or ops:
        found = ", ".join(ops[:6]) or "some ops"
        return (f"model {model.name!r} uses TensorFlow ops that LiteRT's "
                f"builtins lack ({found}); select TF ops (Flex) would convert them, but the "
                "LiteRT interpreter here cannot run them: move that preprocessing out of the "
                "model or use a SavedModel variant")
    return f"the LiteRT converter failed for model {model.name!r}: {text[:300]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The converter's MLIR passes and LiteRT's C++ logger write to file descriptor 2, whatever
    # the Python loggers say; quiet unless TensorFlow's own logs are on (--verbose).
    from tfprod import runtime

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("0", "1"):
        yield
        return
    with runtime._stderr_to_devnull():
        yield


def to_litert(model, path: str | os.PathLike, kind: str = "float32", *,
              representative: np.ndarray | None = None, int8_io: bool = False,
              num_samples: int = 200) -> str:
    """Converts ``model`` to one LiteRT kind and writes it to ``path`` (atomically).

    Args:
        model: a built Keras model with one input tensor or several named inputs.
        path: the ``.tflite`` file to write.
        kind: ``float32``, ``dynamic``, ``float16`` or ``int8``.
        representative: training examples for ``int8`` calibration.
        int8_io: int8 input and output tensors (``int8`` only).
        num_samples: examples drawn from ``representative``.

    Returns:
        The path written.

    Raises:
        TfprodError: see :meth:`LiteRTConverter.convert`; a representative dataset whose
            example shape does not fit the model.
    """
    with LiteRTConverter(model, representative=representative if kind == "int8" else None,
                         num_samples=num_samples) as converter:
        content = converter.convert(kind, int8_io=int8_io)
    return write_atomic(path, content)


def write_atomic(path: str | os.PathLike, content: bytes) -> str:
    """Writes ``content`` to a temporary file beside ``path``, then renames it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tfprod-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _interpreter(content: bytes, *, source: str, delegates: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else \
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with _quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2
            interpreter = Interpreter(model_content=content, num_threads=num_cores(),
                                      experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TfprodError(f"{source} is not a valid LiteRT model ({first}); re-export it with "
                          "tfprod optimize or tfprod.export.litert.to_litert") from None
    return interpreter


class LiteRTModel:
    """A ``.tflite`` model on the LiteRT interpreter: batches of float inputs in, outputs out.

    Int8 inputs are quantized with the input tensor's scale and zero point, int8 outputs
    dequantized, so callers always pass and get floats. The input is resized to each new
    batch size.
    """

    def __init__(self, content: bytes, *, source: str = "the LiteRT model") -> None:
        self.content = content
        self.source = source
        self._interpreter = _interpreter(content, source=source)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(outputs) != 1:
            raise TfprodError(f"{source} has {len(outputs)} outputs; expected one")
        self._runner = None
        if len(inputs) > 1:
            # Several inputs: by name, through the model's signature.
            keys = list(self._interpreter.get_signature_list())
            if not keys:
                raise TfprodError(f"{source} has {len(inputs)} inputs but no signature to name "
                                  "them; convert it from a SavedModel signature (tfprod "
                                  "optimize does)")
            self._runner = self._interpreter.get_signature_runner(keys[0])
            details = self._runner.get_input_details()
            self.input_shapes = {n: tuple(int(v) if v > 0 else None
                                          for v in d["shape_signature"][1:])
                                 for n, d in details.items()}
            self.input_dtypes = {n: np.dtype(d["dtype"]) for n, d in details.items()}
            self._quant = {n: d["quantization"] for n, d in details.items()}
            self.example_shape = None
            self._out = outputs[0]
            return
        self._in, self._out = inputs[0], outputs[0]
        self.example_shape = tuple(int(d) if d > 0 else None
                                   for d in self._in["shape_signature"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._batch = int(self._in["shape"][0])

    @classmethod
    def load(cls, path: str | os.PathLike) -> LiteRTModel:
        """Reads a ``.tflite`` file; a corrupt or foreign one is a one-line :class:`TfprodError`."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise TfprodError(f"{path}: no such .tflite file")
        with open(path, "rb") as f:
            return cls(f.read(), source=path)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            index = self._in["index"]
            self._interpreter.resize_tensor_input(index, [batch, *self._in["shape"][1:]])
            self._interpreter.allocate_tensors()
            self._in = self._interpreter.get_input_details()[0]
            self._out = self._interpreter.get_output_details()[0]
            self._batch = batch

    def __call__(self, x: Any) -> np.ndarray:
        """Outputs for one batch ``x`` (float values; quantized here when the input is int8);
        a dict of inputs by name for a model with several."""
        if self._runner is not None:
            return self._call_named(x)
        x = np.asarray(x)
        self._resize(len(x))
        x = _to_input(x, self.input_dtype, self._in["quantization"])
        self._interpreter.set_tensor(self._in["index"], x)
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._out["index"]),
                                self._out["quantization"])

    def _call_named(self, x: Any) -> np.ndarray:
        from tfprod.export.batches import check_named

        check_named(x, self.input_shapes, what="the batch")
        feed = {}
        for name, shape in self.input_shapes.items():
            dtype, quantization = self.input_dtypes[name], self._quant[name]
            quantized = dtype.kind in "iu" and bool(quantization[0])
            target = (np.dtype(object) if dtype.kind in "OSU" else
                      np.dtype(np.float32) if quantized else dtype)
            value = fit_inputs(x, {name: (shape, target)})[name]
            feed[name] = _to_input(value, dtype, quantization) if quantized else value
        (y,) = self._runner(**feed).values()
        return self._dequantize(y, self._out["quantization"])

    @staticmethod
    def _dequantize(y: np.ndarray, quantization) -> np.ndarray:
        if np.issubdtype(y.dtype, np.integer) and quantization[0]:
            scale, zero = quantization
            y = (y.astype(np.float32) - zero) * scale
        return y

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of an int8 input, else ``None``."""
        scale, zero = self._in["quantization"]
        return (float(scale), int(zero)) if scale else None

    def unquantized_ops(self) -> list[str]:
        """See :func:`unquantized_ops`."""
        return unquantized_ops(self.content, source=self.source)


def _to_input(x: np.ndarray, dtype: np.dtype, quantization) -> np.ndarray:
    """Float values as the input tensor takes them (quantized for an int8/uint8 input)."""
    if (dtype == np.int8 or dtype == np.uint8) and quantization[0]:
        scale, zero = quantization
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def unquantized_ops(content: bytes, *, source: str = "the LiteRT model") -> list[str]:
    """The ops of a quantized model that still compute in float, as ``"OP (tensor name)"``.

    The model is opened without the default delegates, so each node is one converted op;
    an op counts as float when one of its outputs is a float tensor. The QUANTIZE/DEQUANTIZE
    ops on the model's float boundary are not counted.
    """
    interpreter = _interpreter(content, source=source, delegates=False)
    found = []
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name in _BOUNDARY_OPS or name == "DELEGATE":
            continue
        if any(np.dtype(t).type in _FLOAT_TYPES for t in op["result_types"]):
            outputs = [i for i in op["outputs"] if i >= 0]
            tensor = interpreter._get_tensor_details(outputs[0], 0)["name"] if outputs else ""
            found.append(f"{name} ({tensor})" if tensor else name)
    return found
