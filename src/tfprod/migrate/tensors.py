"""Signature keys named after TF1 tensors, and the inputs a check feeds.

``signature_key("dense/BiasAdd:0") == "dense_BiasAdd"``: a TF1 tensor ``op:0`` gives its op's
name, other outputs ``op_N``; characters a TF2 signature key cannot hold become ``_``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tfprod.errors import TfprodError

_BAD = re.compile(r"[^A-Za-z0-9_]")
#: Size of dimensions that a signature leaves free (the batch dimension gets ``batch``).
FREE_DIM = 4


def signature_key(tensor_name: str) -> str:
    """A signature key for a TF1 tensor name (``scope/x:0`` -> ``scope_x``)."""
    op, _, index = tensor_name.partition(":")
    key = op if index in ("", "0") else f"{op}_{index}"
    key = _BAD.sub("_", key)
    return key if key and not key[0].isdigit() else f"t_{key}"


def signature_keys(tensor_names: Iterable[str]) -> dict[str, str]:
    """tensor name -> a distinct signature key each."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in tensor_names:
        key, n = signature_key(name), 1
        while key in used:
            n += 1
            key = f"{signature_key(name)}_{n}"
        used.add(key)
        out[name] = key
    return out


def tensor_name(name: str) -> str:
    """``x`` -> ``x:0`` (an op name stands for its first output)."""
    return name if ":" in name else f"{name}:0"


def sample_inputs(specs: Mapping[str, Any], *, batch: int = 8, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Inputs generated from a signature: normal floats, small integers, random booleans.

    Args:
        specs: input key -> ``tf.TensorSpec`` (or anything with ``shape`` and ``dtype``).
        batch: size of the first dimension where the signature leaves it free.
        seed: the generator's seed.

    Raises:
        TfprodError: an input of unknown rank or of a type that cannot be made up (strings):
            pass inputs instead.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in specs.items():
        if spec.shape.rank is None:
            raise TfprodError(f"input {key!r} has an unknown rank, so no inputs can be made up "
                              "for it; pass --inputs FILE.npz with an array per input")
        shape = [(batch if i == 0 else FREE_DIM) if d is None else d
                 for i, d in enumerate(spec.shape.as_list())]
        dtype = spec.dtype
        if dtype.is_floating:
            out[key] = rng.standard_normal(shape).astype(dtype.as_numpy_dtype)
        elif dtype.is_integer:
            out[key] = rng.integers(0, 10, shape).astype(dtype.as_numpy_dtype)
        elif dtype.is_bool:
            out[key] = rng.random(shape) < 0.5
        else:
            raise TfprodError(f"input {key!r} is {dtype.name}; inputs of this type cannot be "
                              "made up: pass --inputs FILE.npz with an array per input")
    return out


def read_inputs(path: str | os.PathLike, specs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file with one array per signature input key.

    Raises:
        TfprodError: the file is missing or not an npz, or its keys differ from the inputs.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise TfprodError(f"--inputs {path}: cannot read it as a .npz file of arrays ({e}); "
                          "write it with numpy.savez(path, **{input_key: array})") from None
    if set(arrays) != set(specs):
        raise TfprodError(f"--inputs {path} holds {sorted(arrays)}; the signature's inputs are "
                          f"{sorted(specs)}: save one array per input key")
    return {k: arrays[k].astype(specs[k].dtype.as_numpy_dtype) for k in specs}
