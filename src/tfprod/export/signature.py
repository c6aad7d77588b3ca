"""The serving signature of a Keras model: stable input and output names, batch dimension None.

Keras' own export names a functional model's outputs ``output_0``, ``output_1``...; tfprod names
them after the output layers (``probabilities``) or the keys of a dict output, and the inputs
after the ``keras.Input`` names (``image``) or the keys of a dict input (a tabular model's
columns), so clients and ``tfprod serve`` address tensors by meaning, not by position.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfprod.errors import TfprodError

# What TF accepts as a signature key of an input or output tensor.
_VALID_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*").fullmatch


def _check_name(name: str, what: str) -> str:
    if not _VALID_NAME(name):
        raise TfprodError(f"{what} name {name!r} cannot name a signature tensor; use letters, "
                          "digits, '_', '.', '-' or '/' (rename the keras.Input or layer)")
    return name


@dataclasses.dataclass(frozen=True)
class ServingInputs:
    """The inputs of a model as a serving signature takes them.

    Attributes:
        names: the signature's input names, in the model's order.
        specs: one ``tf.TensorSpec`` per name (batch dimension ``None``, named).
        kind: how the model takes them: ``"tensor"`` (one input), ``"list"`` or ``"dict"``.
    """

    names: tuple[str, ...]
    specs: tuple[tf.TensorSpec, ...]
    kind: str

    def structure(self, tensors: Sequence[Any]) -> Any:
        """The model's input structure from the signature's tensors (in ``names`` order)."""
        if self.kind == "tensor":
            return tensors[0]
        if self.kind == "dict":
            return dict(zip(self.names, tensors, strict=True))
        return list(tensors)

    def spec(self, name: str) -> tf.TensorSpec:
        return self.specs[self.names.index(name)]


def _structure(model: keras.Model, one: str, many: str) -> Any:
    """``model.input`` (a functional model's own structure, dict keys included), or for a
    Sequential model, which is never called symbolically, ``model.inputs``."""
    for attr in (one, many):
        try:
            struct = getattr(model, attr)
        except (AttributeError, ValueError):
            continue
        if struct is not None:
            return struct
    return None


def _call_argument(model: keras.Model) -> str:
    """The name of the first argument of ``model.call`` (``x``, ``inputs``, ``image``...)."""
    try:
        params = list(inspect.signature(model.call).parameters)
    except (TypeError, ValueError):
        params = []
    return params[0] if params else "inputs"


def _subclassed_inputs(model: keras.Model) -> tuple[dict[str, tf.TensorSpec], str]:
    """The inputs of a subclassed model, from the shapes Keras recorded when it was first
    built or called (batch dimension freed; dtype: the model's input dtype)."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if model.built and getattr(model, "_called", False) and not shapes:
        raise TfprodError(
            f"model {model.name!r} was called, but Keras recorded no input shape for it: it "
            "could not trace call() on symbolic inputs, and a serving graph needs exactly "
            "that; use keras.ops.cond / tf.cond instead of Python 'if' on tensor values and "
            "keras.ops instead of .numpy()/float(), or pass input_signature= to see the error")
    if not model.built or len(shapes) != 1:
        raise TfprodError(
            f"model {model.name!r} is a subclassed model that has never been called or built, "
            "so its input shape is unknown; call it once on a batch (model(x[:1])) or "
            "model.build((None, ...)) before exporting, pass input_signature={name: "
            "tf.TensorSpec(...)}, or build it with keras.Input")
    shape = next(iter(shapes.values()))
    dtype = tf.as_dtype(model.input_dtype)

    def spec(name: str, dims: Any) -> tf.TensorSpec:
        if not isinstance(dims, tuple | list) or not all(
                d is None or isinstance(d, int) for d in dims):
            raise TfprodError(f"model {model.name!r} was called with a nested input {name!r} "
                              f"({dims}); export takes one tensor or a dict of tensors: pass "
                              "input_signature={name: tf.TensorSpec(...)}")
        return tf.TensorSpec((None, *dims[1:]), dtype, name=name)

    if isinstance(shape, dict):
        return {k: spec(k, v) for k, v in shape.items()}, "dict"
    name = _call_argument(model)
    return {name: spec(name, shape)}, "tensor"


def _signature_inputs(input_signature: Any) -> tuple[dict[str, tf.TensorSpec], str]:
    """An explicit ``input_signature``: a TensorSpec, a list of them, or a dict of them."""
    if isinstance(input_signature, tf.TensorSpec):
        return {input_signature.name or "inputs": input_signature}, "tensor"
    if isinstance(input_signature, dict):
        specs, kind = dict(input_signature), "dict"
    elif isinstance(input_signature, list | tuple):
        specs = {s.name or f"input_{i}": s for i, s in enumerate(input_signature)}
        kind = "list" if len(specs) > 1 else "tensor"
    else:
        specs, kind = {}, ""
    if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs.values()):
        raise TfprodError(f"input_signature={input_signature!r}; expected a tf.TensorSpec, a "
                          "list of them, or a dict of input name -> tf.TensorSpec")
    return {k: tf.TensorSpec(s.shape, s.dtype, name=k) for k, s in specs.items()}, kind


def _model_inputs(model: keras.Model) -> tuple[Any, str]:
    struct = _structure(model, "input", "inputs")
    if struct is None:
        return _subclassed_inputs(model)
    if isinstance(struct, dict):
        return dict(struct), "dict"
    if isinstance(struct, list | tuple):
        return ({t.name: t for t in struct}, "list") if len(struct) > 1 else (
            {struct[0].name: struct[0]}, "tensor")
    return {struct.name: struct}, "tensor"


def check_batch_dimension(name: str, shape: Sequence[int | None]) -> None:
    """Refuses a shape whose first (batch) dimension is missing or fixed."""
    shape = tuple(shape)
    if not shape:
        raise TfprodError(f"input {name!r} is a scalar (shape ()), with no batch dimension; a "
                          "served model takes batches: give it shape (None, ...)")
    if shape[0] is not None:
        rest = tuple(shape[1:])
        raise TfprodError(
            f"input {name!r} has shape {shape}: the batch dimension is fixed at {shape[0]}; a "
            "served model needs None there so requests of any size can be batched; rebuild it "
            f"with keras.Input(shape={rest}) and no batch_size, then load the trained weights")


def serving_inputs(model: keras.Model, input_signature: Any = None) -> ServingInputs:
    """The named, batch-``None`` input specs of ``model``'s serving signature.

    Functional and Sequential models name their inputs with ``keras.Input``; a subclassed model
    that has been called or built once takes the shapes Keras recorded then (its input dtype,
    named after the dict keys or ``call``'s first argument). ``input_signature`` (a
    ``tf.TensorSpec``, a list, or a dict of name -> ``tf.TensorSpec``) overrides both.

    Raises:
        TfprodError: a subclassed model never called or built, an input whose batch dimension
            is fixed or missing, an input name a signature cannot carry.
    """
    tensors, kind = (_model_inputs(model) if input_signature is None
                     else _signature_inputs(input_signature))
    specs = []
    for name, t in tensors.items():
        _check_name(name, "input")
        check_batch_dimension(name, t.shape)
        specs.append(tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=name))
    return ServingInputs(tuple(tensors), tuple(specs), kind)


def traced_outputs(model: keras.Model, inputs: ServingInputs) -> Any:
    """The output structure of ``model`` on symbolic inputs: runs ``call`` once in a graph.

    Raises:
        TfprodError: ``call`` cannot be traced (Python control flow on tensor values,
            ``.numpy()``, a Python side effect that needs concrete values).
    """
    symbolic = [keras.KerasTensor(tuple(s.shape), dtype=s.dtype.name, name=n)
                for n, s in zip(inputs.names, inputs.specs, strict=True)]
    try:
        return model.compute_output_spec(inputs.structure(symbolic))
    except Exception as e:  # the user's call(): any failure, named in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TfprodError(
            f"model {model.name!r} cannot be traced into a serving graph: its call() raised "
            f"{type(e).__name__}: {first}; use keras.ops.cond / tf.cond instead of Python "
            "'if' on tensor values, keras.ops instead of .numpy(), and keep Python state out "
            "of call()") from None


def output_names(model: keras.Model, inputs: ServingInputs | None = None) -> list[str]:
    """The signature's output names: dict-output keys, else the output layers' names (for a
    subclassed model, given its ``inputs``: the keys of the dict it returns, else
    ``output_0``, ``output_1``...)."""
    struct = _structure(model, "output", "outputs")
    if struct is None and inputs is not None:
        struct = traced_outputs(model, inputs)
        if not isinstance(struct, dict):
            flat = struct if isinstance(struct, list | tuple) else [struct]
            declared = list(getattr(model, "output_names", None) or [])  # as Keras' compile
            names = declared if len(declared) == len(flat) else [
                f"output_{i}" for i in range(len(flat))]
            return [_check_name(n, "output") for n in names]
    if isinstance(struct, dict):
        names = list(struct)
    else:
        flat = struct if isinstance(struct, list | tuple) else [struct]
        names = list(getattr(model, "output_names", None) or [])
        if not names and len(flat) == 1 and model.layers:
            names = [model.layers[-1].name]  # a Sequential model: its last layer
        if len(names) != len(flat):
            names = [f"output_{i}" for i in range(len(flat))]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
    return [_check_name(n, "output") for n in unique]


def name_outputs(outputs: Any, names: Sequence[str]) -> dict[str, Any]:
    """A model's outputs (tensor, list or dict) as ``{name: tensor}`` in ``names`` order."""
    if isinstance(outputs, dict):
        return {n: outputs[n] for n in names}
    flat = outputs if isinstance(outputs, list | tuple) else [outputs]
    return dict(zip(names, flat, strict=True))


def describe(fn: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}`` of a loaded signature."""

    def spec(s: tf.TensorSpec) -> dict[str, Any]:
        shape = s.shape.as_list() if s.shape.rank is not None else None
        return {"dtype": s.dtype.name, "shape": shape}

    _, kwargs = fn.structured_input_signature
    # The signature's keys are the specs' names (``seen.values``); the Python keyword names
    # are sanitized copies (``seen_values``).
    named = {(v.name or k): v for k, v in kwargs.items()}
    return {"inputs": {k: spec(v) for k, v in sorted(named.items())},
            "outputs": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())}}


def read_signatures(version_dir: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Every signature of an exported version, described as by :func:`describe`."""
    loaded = tf.saved_model.load(version_dir)
    return {k: describe(f) for k, f in sorted(loaded.signatures.items())}
