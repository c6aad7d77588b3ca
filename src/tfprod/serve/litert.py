"""The LiteRT runtime of a served version: the same signatures, run by the LiteRT interpreter.

A version folder may hold ``model.tflite`` (the name TF Serving's ``--prefer_tflite_model``
reads) beside ``saved_model.pb``, or instead of it. With the ``litert`` runtime
(``tfprod serve --runtime=litert``, or ``model_platform: "litert"`` in models.config):

- ``model.tflite`` present: its signatures serve the SavedModel's signatures of the same names
  (a file with one signature, such as the ones ``tfprod optimize`` writes, serves
  ``serving_default``); inputs and outputs must match in name (or be one of each), dtype and
  rank;
- absent: the SavedModel's predict signatures are converted when the version loads (float32,
  nothing quantized: answers equal TensorFlow's up to float rounding), in a child process at
  low CPU priority: TensorFlow's converter holds the GIL for up to seconds, which in the
  server's process would stall every request in flight while a new version loads;
- what does not convert or match (an op LiteRT lacks, string tensors, classify / regress
  signatures on tf.Examples) runs on TensorFlow; :func:`plan` says which and why, for the one
  line the server logs.

An interpreter is not thread-safe: each signature keeps a pool with one interpreter per thread
calling it at the same time, created on first need; an interpreter resizes its tensors only
when the batch size changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

TFLITE_FILE = "model.tflite"
PREDICT = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"
RUNTIME_LABEL = "LiteRT"  # the ``runtime`` label of :tensorflow:serving:runtime_latency

Arrays = dict[str, np.ndarray]


def read_tflite(version_dir: str) -> bytes | None:
    """The bytes of ``version_dir/model.tflite``, or None when there is none."""
    import tensorflow as tf

    path = os.path.join(version_dir, TFLITE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def convert_saved_model(export_dir: str, signature_keys: list[str],
                        tags: list[str] | None = None) -> bytes:
    """The SavedModel's ``signature_keys`` as one float32 LiteRT model (TFLite builtin ops).

    Raises:
        Exception: whatever the converter raises (:func:`reason` makes it one line).
    """
    import tensorflow as tf

    from tfprod.export.litert import _quiet

    converter = tf.lite.TFLiteConverter.from_saved_model(
        export_dir, signature_keys=signature_keys, tags=set(tags) if tags else None)
    with _quiet():
        return converter.convert()


# Op names; the converter's attributes (tf.entry_function, ...) start lower case.
_OPS = re.compile(r"\btf\.[A-Z]\w*")


def reason(error: BaseException) -> str:
    """One short line saying why a conversion failed (the ops LiteRT lacks, when named)."""
    text = str(error)
    ops = sorted(set(_OPS.findall(text)))
    if ops:
        return "ops not in LiteRT's builtin set: " + ", ".join(ops[:6]) + \
            (", ..." if len(ops) > 6 else "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return f"{type(error).__name__}: {first[:200]}"


def _interpreter(content: bytes, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    from tfprod.export.litert import _quiet

    # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2, when the delegate
    # is applied: at the first allocation.
    with _quiet():
        interpreter = Interpreter(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


class LiteRTFunction:
    """One signature of a LiteRT model as ``fn(inputs) -> outputs`` on numpy arrays.

    Thread-safe: each call takes an interpreter from the pool (a new one when all are busy) and
    puts it back.

    Args:
        content: the ``.tflite`` bytes.
        key: the signature's key in the file.
        inputs: served input name -> the file's input name.
        outputs: served output name -> the file's output name.
        num_threads: threads of each interpreter.
    """

    def __init__(self, content: bytes, key: str, inputs: Mapping[str, str],
                 outputs: Mapping[str, str], *, num_threads: int = 1):
        self.content, self.key, self.num_threads = content, key, num_threads
        self._inputs = dict(inputs)
        self._outputs = dict(outputs)
        self._identity = all(k == v for k, v in self._inputs.items())
        self._pool: list[Any] = []

    def _runner(self) -> Any:
        return _interpreter(self.content, self.num_threads).get_signature_runner(self.key)

    def __call__(self, inputs: Arrays) -> Arrays:
        try:
            runner = self._pool.pop()
        except IndexError:
            runner = self._runner()
        try:
            if self._identity:
                out = runner(**inputs)
            else:
                out = runner(**{self._inputs[k]: v for k, v in inputs.items()})
        finally:
            self._pool.append(runner)
        return {served: out[name] for served, name in self._outputs.items()}


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1: any size


def _signatures(content: bytes) -> dict[str, tuple[dict[str, _Tensor], dict[str, _Tensor]]]:
    """key -> (inputs, outputs) of every signature in a LiteRT model."""
    interpreter = _interpreter(content, 1)
    found = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        found[key] = tuple(
            {n: _Tensor(n, np.dtype(d["dtype"]), tuple(int(x) for x in d["shape_signature"]))
             for n, d in details.items()}
            for details in (runner.get_input_details(), runner.get_output_details()))
    return found


def _match(served: Mapping[str, Any], lite: Mapping[str, _Tensor], what: str
           ) -> tuple[dict[str, str], str]:
    """Served name -> file name for one side of a signature, or ("", why not)."""
    if set(served) == set(lite):
        names = {n: n for n in served}
    elif len(served) == 1 and len(lite) == 1:
        names = {next(iter(served)): next(iter(lite))}
    else:
        return {}, (f"its {what} are {sorted(lite)}, the SavedModel's {sorted(served)}")
    for s, n in names.items():
        info, tensor = served[s], lite[n]
        want = np.dtype(object) if info.dtype.name == "string" else \
            np.dtype(info.dtype.as_numpy_dtype)
        if tensor.dtype != want:
            return {}, f"{what[:-1]} {s!r} is {tensor.dtype} there, {want} in the SavedModel"
        if info.shape is not None and (
                len(info.shape) != len(tensor.shape) or any(
                    d is not None and t != -1 and d != t
                    for d, t in zip(info.shape, tensor.shape, strict=True))):
            return {}, (f"{what[:-1]} {s!r} has shape {list(tensor.shape)} there, "
                        f"{[-1 if d is None else d for d in info.shape]} in the SavedModel")
    return names, ""


def _convertible(info: Any) -> str:
    """"" when a signature may run on LiteRT, else why not."""
    if info.method_name != PREDICT:
        return f"method {info.method_name.rsplit('/', 1)[-1]} (on tf.Examples)"
    tensors = [*info.inputs.values(), *info.outputs.values()]
    if not info.inputs:
        return "no inputs"
    if any(t.dtype.name == "string" for t in tensors):
        return "string tensors"
    return ""


def plan(export_dir: str, signatures: Mapping[str, Any], *, tflite: bytes | None,
         convert: bool, tags: list[str] | None = None, num_threads: int = 1
         ) -> tuple[dict[str, LiteRTFunction], dict[str, str]]:
    """Which signatures run on LiteRT, and why the others do not.

    Args:
        export_dir: the version folder.
        signatures: served name -> its ``SignatureInfo`` (from the SavedModel, or from the file).
        tflite: the bytes of ``model.tflite``, if the folder has one.
        convert: convert the SavedModel when there is no ``model.tflite``.
        tags: the SavedModel's meta graph tags.
        num_threads: threads of each interpreter.

    Returns:
        (served name -> LiteRTFunction, served name -> why it stays on TensorFlow).
    """
    functions: dict[str, LiteRTFunction] = {}
    left: dict[str, str] = {}
    wanted = {}
    for name, info in signatures.items():
        why = _convertible(info)
        if why:
            left[name] = why
        else:
            wanted[name] = info
    if not wanted:
        return functions, left
    if tflite is not None:
        try:
            models = [(tflite, _signatures(tflite), ())]
        except (ValueError, RuntimeError) as e:
            return functions, {**left, **dict.fromkeys(wanted, f"{TFLITE_FILE}: {reason(e)}")}
    elif convert:
        try:
            models, failed = _convert_in_child(export_dir, list(wanted), tags)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
            return functions, {**left, **dict.fromkeys(wanted, str(e))}
        left.update(failed)
    else:
        return functions, {**left, **dict.fromkeys(wanted, f"no {TFLITE_FILE}")}
    for name, info in wanted.items():
        if name in left:
            continue
        where = _find(name, models)
        if where is None:
            have = sorted(k for _, found, _ in models for k in found)
            left[name] = f"no signature {name!r} in {TFLITE_FILE} (it has {have})"
            continue
        content, key, (lite_in, lite_out) = where
        inputs, why = _match(info.inputs, lite_in, "inputs")
        outputs, why_out = _match(info.outputs, lite_out, "outputs") if not why else ({}, "")
        if why or why_out:
            left[name] = f"signature {key!r} of the LiteRT model: {why or why_out}"
            continue
        functions[name] = LiteRTFunction(content, key, inputs, outputs, num_threads=num_threads)
    return functions, left


# (content, signature key -> (inputs, outputs), (key, served name) for signatures served under
# another name)
_Model = tuple[bytes, dict[str, tuple[dict[str, _Tensor], dict[str, _Tensor]]],
               tuple[tuple[str, str], ...]]


def _find(name: str, models: list[_Model]) -> tuple[bytes, str, Any] | None:
    """(content, key, (inputs, outputs)) of the signature serving ``name``: the one of that key,
    one made for ``name``, or the only one of a model (as ``serving_default``, as TF Serving
    does)."""
    for content, found, _ in models:
        if name in found:
            return content, name, found[name]
    for content, found, made_for in models:
        for key, alias in made_for:
            if alias == name and key in found:
                return content, key, found[key]
    for content, found, _ in models:
        if len(found) == 1 and name == DEFAULT_SIGNATURE:
            key = next(iter(found))
            return content, key, found[key]
    return None


def _convert(export_dir: str, wanted: Mapping[str, Any], tags: list[str] | None
             ) -> tuple[list[_Model], dict[str, str]]:
    """LiteRT models holding the SavedModel's ``wanted`` signatures, and why the others failed.

    One model holds them all when they convert together. The converter keeps one of several
    signatures that share a function (Keras' ``model.export`` writes ``serve`` and
    ``serving_default``): a missing one is served by the kept signature with the same inputs
    and outputs, or else converted on its own. When the joint conversion fails, each signature
    is tried alone.
    """
    keys = list(wanted)
    try:
        joint = convert_saved_model(export_dir, keys, tags)
    except Exception as e:  # the converter raises ConverterError, ValueError, ...
        if len(keys) == 1:
            return [], {keys[0]: reason(e)}
        alone = keys
        models: list[_Model] = []
    else:
        found = _signatures(joint)
        aliases, alone = [], []
        for key in keys:
            if key in found:
                continue
            twins = [k for k in found if k in wanted and _same(wanted[k], wanted[key])]
            if len(twins) == 1:
                aliases.append((twins[0], key))
            else:
                alone.append(key)
        models = [(joint, found, tuple(aliases))]
    failed: dict[str, str] = {}
    for key in alone:
        try:
            content = convert_saved_model(export_dir, [key], tags)
        except Exception as e:
            failed[key] = reason(e)
        else:
            found = _signatures(content)
            models.append((content, found, tuple((k, key) for k in found)))
    return models, failed


def _same(a: Any, b: Any) -> bool:
    return a.method_name == b.method_name and a.inputs == b.inputs and a.outputs == b.outputs


CONVERT_TIMEOUT_S = 600.0


def _convert_in_child(export_dir: str, keys: list[str], tags: list[str] | None
                      ) -> tuple[list[_Model], dict[str, str]]:
    """:func:`_convert` in a child process (``python -m tfprod.serve.litert``), at low CPU
    priority, so the converter neither holds this process's GIL nor takes its CPU first.

    Raises:
        RuntimeError: the child failed (its last line of output says why).
    """
    with tempfile.TemporaryDirectory(prefix="tfprod-litert-") as out:
        command = [sys.executable, "-m", "tfprod.serve.litert", export_dir, out,
                   json.dumps({"keys": keys, "tags": tags})]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=CONVERT_TIMEOUT_S)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"the LiteRT conversion process failed (exit "
                               f"{done.returncode}): {lines[-1][:300]}")
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        models: list[_Model] = []
        for item in manifest["models"]:
            with open(os.path.join(out, item["file"]), "rb") as f:
                content = f.read()
            models.append((content, _signatures(content),
                           tuple(tuple(pair) for pair in item["aliases"])))
    return models, manifest["failed"]


def _child(export_dir: str, out: str, spec: str) -> None:
    """The conversion process: :func:`_convert`, the models and ``manifest.json`` to ``out``."""
    from tfprod import runtime

    os.nice(5)  # below the server's request path, without starving on a busy machine
    runtime.configure(verbose=False)
    from tfprod.serve.servable import read_meta_graph, signature_info

    request = json.loads(spec)
    defs = read_meta_graph(export_dir).signature_def
    wanted = {k: signature_info(k, defs[k]) for k in request["keys"]}
    models, failed = _convert(export_dir, wanted, request["tags"])
    manifest: dict[str, Any] = {"models": [], "failed": failed}
    for i, (content, _, aliases) in enumerate(models):
        name = f"model-{i}.tflite"
        with open(os.path.join(out, name), "wb") as f:
            f.write(content)
        manifest["models"].append({"file": name, "aliases": [list(a) for a in aliases]})
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)


def signature_defs(content: bytes) -> dict[str, Any]:
    """SignatureDef protos of a LiteRT model, for a version folder without a SavedModel: each
    signature by its key (a single one as ``serving_default``, as TF Serving names it), method
    predict, tensor names ``<name>:0`` and -1 for sizes that vary."""
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.python.framework import dtypes

    found = _signatures(content)
    defs = {}
    for key, (inputs, outputs) in found.items():
        served = DEFAULT_SIGNATURE if len(found) == 1 else key
        sigdef = meta_graph_pb2.SignatureDef(method_name=PREDICT)
        for target, tensors in ((sigdef.inputs, inputs), (sigdef.outputs, outputs)):
            for name, t in tensors.items():
                info = target[name]
                info.name = f"{name}:0"
                info.dtype = dtypes.as_dtype(t.dtype).as_datatype_enum
                for d in t.shape:
                    info.tensor_shape.dim.add(size=d)
        defs[served] = sigdef
    return defs


if __name__ == "__main__":
    _child(*sys.argv[1:4])
