"""The serving signature of a Keras model: stable input and output names, batch dimension None.

Keras' own export names a functional model's outputs ``output_0``, ``output_1``...; tfprod names
them after the output layers (``probabilities``) or the keys of a dict output, and the inputs
after the ``keras.Input`` names (``image``) or the keys of a dict input (a tabular model's
columns), so clients and ``tfprod serve`` address tensors by meaning, not by position.
"""

from __future__ import annotations

import dataclasses
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


def _model_inputs(model: keras.Model) -> tuple[Any, str]:
    struct = _structure(model, "input", "inputs")
    if struct is None:
        raise TfprodError(
            f"model {model.name!r} has no defined inputs (a subclassed model); build it with "
            "keras.Input (functional or Sequential) so its serving signature is known")
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


def serving_inputs(model: keras.Model) -> ServingInputs:
    """The named, batch-``None`` input specs of ``model``'s serving signature.

    Raises:
        TfprodError: a model without defined inputs, an input whose batch dimension is fixed
            or missing, an input name a signature cannot carry.
    """
    tensors, kind = _model_inputs(model)
    specs = []
    for name, t in tensors.items():
        _check_name(name, "input")
        check_batch_dimension(name, t.shape)
        specs.append(tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=name))
    return ServingInputs(tuple(tensors), tuple(specs), kind)


def output_names(model: keras.Model) -> list[str]:
    """The signature's output names: dict-output keys, else the output layers' names."""
    struct = _structure(model, "output", "outputs")
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
    return {"inputs": {k: spec(v) for k, v in sorted(kwargs.items())},
            "outputs": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())}}


def read_signatures(version_dir: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Every signature of an exported version, described as by :func:`describe`."""
    loaded = tf.saved_model.load(version_dir)
    return {k: describe(f) for k, f in sorted(loaded.signatures.items())}
