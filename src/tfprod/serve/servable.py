"""One loaded model version: its signatures, input checks, and calls through the batcher.

A version is a SavedModel in TF Serving's layout (``BASE/<version>/saved_model.pb``). It is
loaded with ``tf.saved_model.load`` (graphs and variables only: no pickled objects, no user
Python code runs) and its signatures are read from ``saved_model.pb`` itself, so method names
(predict / classify / regress) and the SignatureDefs TF Serving reports are exact.

With the ``litert`` runtime the signatures that convert run on the LiteRT interpreter instead
(:mod:`tfprod.serve.litert`): same names, inputs, outputs and checks; a version folder holding
only ``model.tflite`` is served that way whatever the runtime.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfprod.serve import litert, ragged
from tfprod.serve.batching import Arrays, DynamicBatcher
from tfprod.serve.errors import ServingError, internal, invalid_argument, unavailable
from tfprod.serve.metrics import ServingMetrics

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature.

    Attributes:
        name: the signature key, e.g. ``"image"``.
        dtype: e.g. ``tf.float32``, ``tf.string``.
        shape: None for unknown rank; a None dim is unknown (the first is the batch).
    """

    name: str
    dtype: tf.DType
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class SignatureInfo:
    """A signature's method name, inputs and outputs."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    @property
    def batchable(self) -> bool:
        """Whether requests may be merged: every input and output has a free batch dim 0."""
        ins = [t.shape for t in self.inputs.values()]
        outs = [t.shape for t in self.outputs.values()]
        return bool(ins) and all(s is not None and len(s) >= 1 and s[0] is None for s in ins) \
            and all(s is None or (len(s) >= 1 and s[0] is None) for s in outs)


def _tensor_info(key: str, info: Any) -> TensorInfo:
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(None if d.size < 0 else int(d.size)
                                                 for d in shape.dim)
    return TensorInfo(key, tf.dtypes.as_dtype(info.dtype) if info.dtype else tf.string, dims)


def signature_info(name: str, sigdef: meta_graph_pb2.SignatureDef) -> SignatureInfo:
    """A :class:`SignatureInfo` from a SignatureDef proto."""
    return SignatureInfo(name, sigdef.method_name,
                         {k: _tensor_info(k, v) for k, v in sorted(sigdef.inputs.items())},
                         {k: _tensor_info(k, v) for k, v in sorted(sigdef.outputs.items())})


def _has_saved_model(export_dir: str) -> bool:
    return any(tf.io.gfile.exists(os.path.join(export_dir, f))
               for f in ("saved_model.pb", "saved_model.pbtxt"))


def _litert_signature_defs(content: bytes, export_dir: str
                           ) -> dict[str, meta_graph_pb2.SignatureDef]:
    try:
        return litert.signature_defs(content)
    except (ValueError, RuntimeError) as e:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"{litert.TFLITE_FILE} in {export_dir} is not a LiteRT model "
                           f"({_first_line(e)})") from None


def read_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The ``serve`` MetaGraphDef of the SavedModel in ``export_dir``, read from its .pb/.pbtxt.

    Raises:
        ServingError: NOT_FOUND without a saved_model.pb(txt), DATA_LOSS when it does not parse,
            NOT_FOUND when no meta graph has the ``serve`` tag.
    """
    proto = saved_model_pb2.SavedModel()
    pb, pbtxt = os.path.join(export_dir, "saved_model.pb"), os.path.join(export_dir,
                                                                          "saved_model.pbtxt")
    try:
        if tf.io.gfile.exists(pb):
            with tf.io.gfile.GFile(pb, "rb") as f:
                proto.ParseFromString(f.read())
        elif tf.io.gfile.exists(pbtxt):
            from google.protobuf import text_format

            with tf.io.gfile.GFile(pbtxt, "r") as f:
                text_format.Parse(f.read(), proto)
        else:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find SavedModel .pb or .pbtxt at {export_dir}")
    except (DecodeError, UnicodeDecodeError, ValueError) as e:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"saved_model.pb in {export_dir} is corrupt ({type(e).__name__}: "
                           f"{_first_line(e)})") from None
    graphs = list(proto.meta_graphs)
    for g in graphs:
        if "serve" in g.meta_info_def.tags:
            return g
    if len(graphs) == 1 and not graphs[0].meta_info_def.tags:
        return graphs[0]
    raise ServingError(grpc.StatusCode.NOT_FOUND,
                       f"SavedModel in {export_dir} has no meta graph tagged 'serve'")


def _first_line(e: BaseException) -> str:
    text = (getattr(e, "message", None) or str(e)).strip()
    return (text.splitlines() or [type(e).__name__])[0][:500]


def _op_message(e: tf.errors.OpError) -> str:
    """The runtime's own message of an OpError, as TF Serving reports it: without the
    "Graph execution error: Detected at node ..." preamble Python adds, and the text of a
    failed ``tf.debugging.Assert`` without its brackets."""
    text = (e.message or "").strip()
    if text.startswith("Graph execution error"):
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((
            " ", "\t", "Graph execution error", "Detected at node", "<stack traces"))]
        text = lines[0] if lines else text
    text = re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\]$", "", text.splitlines()[0])
    asserted = re.fullmatch(r"assertion failed: \[(.*)\]", text)
    return asserted.group(1) if asserted else text[:500]


def serving_error(e: BaseException) -> ServingError:
    """``e`` as a ServingError: TensorFlow's OpErrors keep their canonical code."""
    if isinstance(e, ServingError):
        return e
    if isinstance(e, tf.errors.OpError):
        return ServingError(_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), _op_message(e))
    return internal(f"{type(e).__name__}: {_first_line(e)}")


class _InputSpec:
    """What one signature input accepts, precomputed for the request path."""

    __slots__ = ("name", "dtype", "np_dtype", "shape", "kind", "limits")

    def __init__(self, info: TensorInfo):
        self.name, self.dtype, self.shape = info.name, info.dtype, info.shape
        self.np_dtype = np.dtype(object) if info.dtype == tf.string else \
            np.dtype(info.dtype.as_numpy_dtype)
        self.kind = "string" if info.dtype == tf.string else self.np_dtype.kind
        self.limits = np.iinfo(self.np_dtype) if self.kind in "iu" else None

    def coerce(self, value: Any, sig: str) -> np.ndarray:
        if isinstance(value, np.ndarray):
            a = value
        else:
            try:
                a = np.asarray(value)
            except (ValueError, TypeError) as e:  # ragged nested lists, mixed types
                raise invalid_argument(f'input "{self.name}" of signature "{sig}" is not a '
                                       f"rectangular array: {_first_line(e)}") from None
        if a.dtype != self.np_dtype:
            a = self._convert(a, sig)
        if self.shape is not None and (
                a.ndim != len(self.shape)
                or any(e is not None and d != e for d, e in zip(a.shape, self.shape, strict=True))):
            expected = "[" + ",".join("-1" if d is None else str(d) for d in self.shape) + "]"
            raise invalid_argument(
                f'input "{self.name}" has shape {list(a.shape)} but signature "{sig}" expects '
                f"{expected} (-1: any size)")
        return a

    def _convert(self, a: np.ndarray, sig: str) -> np.ndarray:
        """``a`` in the signature's dtype when nothing is lost, else INVALID_ARGUMENT."""
        src = a.dtype.kind
        if self.kind == "string" and src in "SU":
            return a.astype(object)  # requests with bytes and str then merge into one batch
        if self.kind in "iu" and src in "iub":
            if a.size and src != "b" and (a.min() < self.limits.min or a.max() > self.limits.max):
                raise invalid_argument(
                    f'input "{self.name}" has values in [{a.min()}, {a.max()}], outside the '
                    f'range of {self.dtype.name} that signature "{sig}" expects')
            return a.astype(self.np_dtype)
        if (self.kind == "f" and src in "iuf") or (self.kind == "c" and src in "iufc"):
            return a.astype(self.np_dtype)
        raise self._dtype_error(a, sig)

    def _dtype_error(self, a: np.ndarray, sig: str) -> ServingError:
        given = "string" if a.dtype.kind in "SUO" else a.dtype.name
        return invalid_argument(f'input "{self.name}" has dtype {given} but signature "{sig}" '
                                f"expects {self.dtype.name}")


class _Signature:
    """A runnable signature: its info, input specs, and the model call.

    ``run`` maps numpy inputs to numpy outputs; ``runtime`` is the metrics label of what runs it
    ("TF2" or "LiteRT").
    """

    def __init__(self, info: SignatureInfo, run: Any, model: str,
                 metrics: ServingMetrics | None, runtime: str = "TF2"):
        self.info = info
        self.specs = [_InputSpec(t) for t in info.inputs.values()]
        self.names = frozenset(info.inputs)
        # Ragged inputs (NAME.values + NAME.row_lengths): the batch is the number of lists.
        self.ragged = ragged.ragged_pairs(info.inputs)
        self.ragged_values = {v: n for v, n in self.ragged.values()}  # values -> row_lengths
        self.batchable = info.batchable
        self.run = run
        self.runtime = runtime
        self.api = {CLASSIFY: "classify", REGRESS: "regress"}.get(info.method_name, "predict")
        self.model, self.metrics = model, metrics  # not the servable: no reference cycle

    def check(self, inputs: dict[str, Any]) -> tuple[Arrays, int]:
        """Validated, converted inputs and the batch size (1 when not batchable)."""
        if inputs.keys() != self.names:
            raise _names_error(inputs, self.names)
        sig = self.info.name
        arrays = {s.name: s.coerce(inputs[s.name], sig) for s in self.specs}
        lists = ragged.check_components(arrays, self.ragged, sig) if self.ragged else None
        if not self.batchable:
            return arrays, 1
        sizes = {a.shape[0] for k, a in arrays.items() if k not in self.ragged_values}
        if len(sizes) > 1:
            got = ", ".join(f"{k}: {a.shape[0]}" for k, a in arrays.items())
            raise invalid_argument(f"inputs of signature \"{sig}\" must have the same size in "
                                   f"dim 0 (the batch); got {got}")
        return arrays, sizes.pop() if sizes else lists

    def __call__(self, inputs: Arrays) -> Arrays:
        start = time.perf_counter()
        try:
            result = self.run(inputs)
        except Exception as e:
            raise serving_error(e) from None
        if self.metrics is not None:
            self.metrics.record_runtime(self.model, self.api, time.perf_counter() - start,
                                        runtime=self.runtime)
        return result


def _tensorflow(fn: Any) -> Any:
    """A TensorFlow signature function as numpy inputs -> numpy outputs.

    Inputs go in as tensors: a signature function converts numpy arrays on a slower path
    (about 0.15 ms more per call for a small CNN at batch 1, measured on this project's 2-core
    machine).
    """
    constant = tf.constant

    def run(inputs: Arrays) -> Arrays:
        outputs = fn(**{k: constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}
    return run


def _names_error(inputs: dict[str, Any], expected: frozenset[str]) -> ServingError:
    # TF Serving's wording (predict_util.cc), which clients already match on.
    sent, want = sorted(inputs), sorted(expected)
    extra = sorted(set(sent) - expected)
    missing = sorted(expected - set(sent))
    return invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(want)} "
        f"len({{{','.join(sent)}}}) != len({{{','.join(want)}}}). "
        f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")


class Servable:
    """One loaded model version.

    Attributes:
        name, version, path: the model name, version number and its folder.
        signatures: signature name -> :class:`SignatureInfo` (the runnable ones).
        signature_defs: signature name -> SignatureDef proto, as stored in saved_model.pb
            (what GetModelMetadata reports; may include ``__saved_model_init_op``).
        batching: whether requests go through the dynamic batcher (else one call per request).
        warmup_records: how many warmup requests were replayed at load.
        runtimes: signature name -> "tensorflow" or "litert" (what runs it).
        fallback: with the ``litert`` runtime, the signatures left on TensorFlow and why, as
            one line ("" when every signature runs on LiteRT or the runtime is tensorflow).

    Args:
        runtime: "tensorflow" or "litert" (see :mod:`tfprod.serve.litert`).
        litert_threads: threads of each LiteRT interpreter.
    """

    def __init__(self, name: str, version: int, path: str, *, executor: DynamicBatcher,
                 batching: bool, metrics: ServingMetrics | None = None,
                 runtime: str = "tensorflow", litert_threads: int = 1):
        self.name, self.version, self.path = name, version, path
        self.arm: str | None = None  # its arm in the model's canary or A/B split (the registry's)
        self.metrics = metrics
        self.batching = batching
        self.warmup_records = 0
        self.fallback = ""
        self._executor = executor
        self._loaded: Any = None
        tflite = litert.read_tflite(path) if runtime == "litert" or not _has_saved_model(path) \
            else None
        if tflite is not None and not _has_saved_model(path):
            self.signature_defs = _litert_signature_defs(tflite, path)
            tags = None
        else:
            meta = read_meta_graph(path)
            # Copies, so the (possibly large) GraphDef is not kept alive by them.
            self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = {
                k: meta_graph_pb2.SignatureDef.FromString(v.SerializeToString())
                for k, v in meta.signature_def.items()}
            tags = list(meta.meta_info_def.tags) or None
        infos = {k: signature_info(k, d) for k, d in self.signature_defs.items()
                 if k != INIT_OP_SIGNATURE}
        self._sigs: dict[str, _Signature] = {}
        if runtime == "litert" or tflite is not None:
            functions, left = litert.plan(path, infos, tflite=tflite, convert=True, tags=tags,
                                          num_threads=litert_threads)
            for key, fn in functions.items():
                self._sigs[key] = _Signature(infos[key], fn, name, metrics, litert.RUNTIME_LABEL)
            if left:
                self.fallback = "; ".join(f"{k}: {why}" for k, why in sorted(left.items()))
        if len(self._sigs) < len(infos):
            self._loaded = tf.saved_model.load(path, tags=tags)
            for key in list(self._loaded.signatures):
                if key in infos and key not in self._sigs:
                    self._sigs[key] = _Signature(infos[key], _tensorflow(
                        self._loaded.signatures[key]), name, metrics)
        self.signatures: dict[str, SignatureInfo] = {k: s.info for k, s in self._sigs.items()}
        self.runtimes = {k: "litert" if s.runtime == litert.RUNTIME_LABEL else "tensorflow"
                         for k, s in self._sigs.items()}
        self._lock = threading.Condition(threading.Lock())
        self._inflight = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"

    # ------------------------------------------------------------------------ requests

    def _get(self, name: str | None) -> _Signature:
        sig = self._sigs.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise invalid_argument(
                f'Serving signature name: "{name or DEFAULT_SIGNATURE}" not found in signature '
                "def")
        return sig

    def signature(self, name: str | None) -> SignatureInfo:
        """The signature ``name`` (None or "" -> ``serving_default``).

        Raises:
            ServingError: INVALID_ARGUMENT for an unknown name (TF Serving's text).
        """
        return self._get(name).info

    def submit(self, signature_name: str | None, inputs: dict[str, Any], *,
               deadline: float | None = None, expected: bool = False,
               executor: DynamicBatcher | None = None) -> Future:
        """Check ``inputs`` against the signature and queue the call; returns its future.

        Inputs are converted to the signature's dtypes where that loses nothing (ints in range to
        narrower ints, ints to floats, str/bytes to strings). The future's result is output name
        -> array (batch dimension first); its exception a ServingError.

        Args:
            signature_name: None or "" for ``serving_default``.
            inputs: input name -> numpy array (or anything ``np.asarray`` takes).
            deadline: ``time.monotonic()`` after which the request must not start.
            expected: the caller announced the request with ``DynamicBatcher.expect()``
                (front ends do; the announcement ends here even when this raises).
            executor: run it on this batcher instead of the version's own (shadow copies have
                their own thread and queue); not with ``expected``.

        Raises:
            ServingError: INVALID_ARGUMENT (unknown signature, missing / unexpected inputs, wrong
                dtype or shape), RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (unloaded).
        """
        return self._submit((executor or self._executor).submit, signature_name, inputs,
                            deadline, expected)

    def submit_async(self, signature_name: str | None, inputs: dict[str, Any], *,
                     deadline: float | None = None, expected: bool = False) -> Any:
        """:meth:`submit` from an event loop's thread: returns an asyncio Future of that loop."""
        return self._submit(self._executor.submit_async, signature_name, inputs, deadline,
                            expected)

    def _submit(self, submit: Any, signature_name: str | None, inputs: dict[str, Any],
                deadline: float | None, expected: bool) -> Any:
        try:
            sig = self._get(signature_name)
            arrays, size = sig.check(inputs)
        except BaseException:
            if expected:
                self._executor.unexpect()
            raise
        mergeable = self.batching and sig.batchable and size > 0
        key = (id(self), sig.info.name, mergeable,
               tuple(a.shape[1:] for a in arrays.values()) if mergeable and not
               self._executor.params.pad_variable_length_inputs else None)
        with self._lock:
            closed = self._closed
            if not closed:
                self._inflight += 1
        if closed:
            if expected:
                self._executor.unexpect()
            raise unavailable(f"Version {self.version} of model {self.name} was unloaded; "
                              "retry the request")
        try:
            return submit(key, sig, arrays, size if mergeable else 1, deadline=deadline,
                          mergeable=mergeable, expected=expected, on_done=self._release)
        except BaseException:
            self._release()
            raise

    def predict(self, signature_name: str | None, inputs: dict[str, Any], *,
                deadline: float | None = None) -> dict[str, np.ndarray]:
        """``submit(...).result()``, for synchronous callers."""
        return self.submit(signature_name, inputs, deadline=deadline).result()

    def classify_or_regress(self, signature_name: str | None, serialized_examples: list[bytes],
                            method: str, *, deadline: float | None = None
                            ) -> dict[str, np.ndarray]:
        """Run a classify or regress signature on serialized ``tf.Example`` protos.

        Raises:
            ServingError: INVALID_ARGUMENT when ``method`` is not "classify"/"regress", the
                signature's method_name differs, or there are no examples.
        """
        expected = {"classify": CLASSIFY, "regress": REGRESS}.get(method)
        if expected is None:
            raise invalid_argument(f"method {method!r}; expected 'classify' or 'regress'")
        sig = self._get(signature_name).info
        if sig.method_name != expected:
            kind = "classification" if method == "classify" else "regression"
            raise invalid_argument(f"Expected {kind} signature method_name to be {expected}. "
                                   f"Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid_argument(f'signature "{sig.name}" has {len(sig.inputs)} inputs; a '
                                   f"{method} signature takes one (serialized tf.Examples)")
        if not serialized_examples:
            raise invalid_argument("Input is empty.")
        name = next(iter(sig.inputs))
        examples = np.empty(len(serialized_examples), dtype=object)
        examples[:] = list(serialized_examples)
        return self.predict(sig.name, {name: examples}, deadline=deadline)

    # ------------------------------------------------------------------------ lifecycle

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._lock.notify_all()

    def hold(self) -> bool:
        """Count one more request in flight; False when the version is already unloaded."""
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    release = _release

    @property
    def inflight(self) -> int:
        """Requests holding this version now (held, queued or running)."""
        return self._inflight

    def close(self, timeout: float | None = None) -> bool:
        """Wait for in-flight requests to finish, then drop the model (its memory is freed once
        nothing else references it). Returns False if ``timeout`` passed first (still closes)."""
        with self._lock:
            drained = self._lock.wait_for(lambda: self._inflight == 0, timeout)
            self._closed = True
        self._sigs = {}
        self._loaded = None
        return drained

    def run_direct(self, signature_name: str | None, inputs: dict[str, Any]) -> Arrays:
        """Check and run one request now on this thread, bypassing the queue (used by warmup)."""
        sig = self._get(signature_name)
        arrays, _ = sig.check(inputs)
        return sig(arrays)

    def warmup(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecords).

        Predict, classify and regress logs are replayed; other kinds are skipped. Without that
        file, signatures with numeric inputs of known shape run once on zeros instead.

        Returns:
            The number of requests replayed.

        Raises:
            ServingError: a request that fails, or more than 1000 records (TF Serving's limit).
        """
        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            self._warm_signatures()
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_WARMUP_RECORDS:
                raise invalid_argument(f"{path} has more than {MAX_WARMUP_RECORDS} warmup "
                                       "records (TF Serving's limit)")
            log = prediction_log_pb2.PredictionLog.FromString(record)
            count += self._replay(log)
        self.warmup_records = count
        return count

    def _warm_signatures(self) -> None:
        """Without warmup records: run each signature whose inputs are numeric with known
        shapes once on a batch of zeros, so TensorFlow's one-time graph optimization (~0.1 s)
        happens now rather than in the first requests. Failures are ignored: it is only a
        warmup, and zeros are not valid input for every model."""
        for sig in self._sigs.values():
            shapes = [s.shape for s in sig.specs]
            if not sig.batchable or any(s.kind not in "biufc" for s in sig.specs) or any(
                    d is None for shape in shapes for d in shape[1:]):
                continue
            zeros = {s.name: np.zeros((1, *s.shape[1:]), s.np_dtype) for s in sig.specs}
            with contextlib.suppress(Exception):
                sig(zeros)

    def _replay(self, log: Any) -> int:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run_direct(request.model_spec.signature_name, inputs)
            return 1
        if kind in ("classify_log", "regress_log"):
            from tfprod.serve.examples import examples_from_input

            request = getattr(log, kind).request
            sig = self._get(request.model_spec.signature_name)
            examples = np.array(examples_from_input(request.input) or [b""], dtype=object)
            sig(sig.check({next(iter(sig.names)): examples})[0])
            return 1
        return 0

