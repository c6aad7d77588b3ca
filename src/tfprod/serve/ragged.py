"""Variable-length lists in requests, for signatures with ragged inputs.

A signature exported with a ragged input ``NAME`` (see :mod:`tfprod.export.ragged`) takes
``NAME.values`` and ``NAME.row_lengths``. TF Serving clients may send those two tensors (gRPC,
or REST columnar); REST clients of ``tfprod serve`` may also send the lists themselves, in
either format::

    {"instances": [{"tokens": [3, 9, 4]}, {"tokens": [7]}]}
    {"instances": [[3, 9, 4], [7]]}                  (the signature's only input)
    {"inputs": {"tokens": [[3, 9, 4], [7]]}}

Here the lists are split into the two tensors, so the rest of the server sees ordinary
signature inputs; the batch size of such a request is the number of lists
(``len(NAME.row_lengths)``), and :func:`check_components` rejects components that do not
describe lists (before a request can join a batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import numpy as np

from tfprod.export.ragged import VALUES, component_names, ragged_pairs
from tfprod.serve import json_codec
from tfprod.serve.errors import ServingError, invalid_argument

__all__ = ["check_components", "decode_predict", "ragged_pairs"]


def _dtype(info: Any) -> Any:
    return getattr(info, "dtype", info)


def _np_dtype(dtype: Any) -> np.dtype:
    name = json_codec._dtype_name(dtype)
    return np.dtype(object) if name == "string" else np.dtype(name)


def decode_predict(request: json_codec.JsonRequest, inputs: Mapping[str, Any]
                   ) -> tuple[dict[str, np.ndarray], str]:
    """A predict request's tensors for a signature that may have ragged inputs.

    Requests that name only the signature's own inputs go to :func:`json_codec.decode_predict`
    unchanged; requests that send a ragged input as lists have them split.

    Raises:
        ServingError: INVALID_ARGUMENT for lists that are not lists of values, a ragged input
            sent both as lists and as its two tensors, variable-length lists for a dense input.
    """
    if not any(k.endswith(VALUES) for k in inputs):  # the common case, at no cost
        return json_codec.decode_predict(request, inputs)
    pairs = ragged_pairs(inputs)
    doc = request.doc
    sent = _sent_names(doc)
    as_lists = [n for n in pairs if n in sent] if sent is not None else list(pairs)
    if not pairs or (sent is not None and not as_lists):
        return json_codec.decode_predict(request, inputs)
    for name in as_lists:
        both = [c for c in component_names(name) if sent is not None and c in sent]
        if both:
            raise invalid_argument(f"input {name!r} was sent both as lists and as {both[0]}; "
                                   f"send either the lists ({name!r}) or both "
                                   f"{' and '.join(component_names(name))}")
    logical: dict[str, Any] = {}
    for key, info in inputs.items():
        owner = next((n for n, parts in pairs.items() if key in parts), None)
        if owner is None:
            logical[key] = _dtype(info)
        elif owner not in logical:
            logical[owner] = None if owner in as_lists else "components"
    if any(v == "components" for v in logical.values()):
        missing = [n for n, v in logical.items() if v == "components"]
        raise invalid_argument(f"ragged input(s) {missing} missing: this request sends other "
                               "inputs as lists, so send these as lists too")
    if "instances" in doc:
        columns, fmt = _row_columns(doc, logical), json_codec.ROW
    elif "inputs" in doc:
        columns, fmt = _columnar_columns(doc, logical), json_codec.COLUMNAR
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    arrays: dict[str, np.ndarray] = {}
    ragged_names = sorted(pairs)
    for name, value in columns.items():
        if name in pairs:
            values_key, lengths_key = pairs[name]
            arrays[values_key], arrays[lengths_key] = _split_lists(
                name, value, inputs[values_key], request.bool_free)
        else:
            arrays[name] = _dense(name, value, logical[name], request.bool_free, ragged_names)
    return arrays, fmt


def _sent_names(doc: dict) -> set[str] | None:
    """The input names a request uses (None when it names none: plain lists)."""
    if "instances" in doc and isinstance(doc["instances"], list) and doc["instances"]:
        first = doc["instances"][0]
        return set(first) if type(first) is dict and "b64" not in first else None
    if "inputs" in doc and type(doc["inputs"]) is dict and "b64" not in doc["inputs"]:
        return set(doc["inputs"])
    return None


def _row_columns(doc: dict, logical: dict[str, Any]) -> dict[str, list]:
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise invalid_argument(f"JSON Value: {json_codec._text(doc)} 'instances' must be a "
                               "non-empty list")
    names = set(logical)
    if type(instances[0]) is not dict:
        if len(names) > 1:
            raise invalid_argument("instances is a plain list, but expecting list of objects as "
                                   "multiple input tensors required as per tensorinfo_map")
        return {next(iter(names)): instances}
    for i, item in enumerate(instances):
        if type(item) is not dict or item.keys() != names:
            keys = sorted(item) if type(item) is dict else json_codec._json_type(item)
            raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                                   f"It has {keys}; expected an object with keys: "
                                   f"{','.join(sorted(names))}")
    return {name: [item[name] for item in instances] for name in logical}


def _columnar_columns(doc: dict, logical: dict[str, Any]) -> dict[str, Any]:
    value = doc["inputs"]
    if type(value) is not dict:
        if len(logical) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        return {next(iter(logical)): value}
    missing = [n for n in logical if n not in value]
    if missing:
        raise invalid_argument(f"Missing named input: {missing[0]} in 'inputs' object.")
    extra = sorted(set(value) - set(logical))
    if extra:
        raise invalid_argument(f"'inputs' object has unexpected input(s) {extra}; the "
                               f"signature takes {sorted(logical)}")
    return {name: value[name] for name in logical}


def _split_lists(name: str, lists: Any, info: Any, bool_free: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    if type(lists) is not list:
        raise invalid_argument(f"input {name!r} takes one list of values per example; got "
                               f"{json_codec._text(lists)}")
    for i, row in enumerate(lists):
        if type(row) is not list:
            raise invalid_argument(f"input {name!r}: example {i} is "
                                   f"{json_codec._json_type(row).lower()} "
                                   f"{json_codec._text(row)}; expected a list of values "
                                   "(an empty list is [])")
    lengths = np.fromiter(map(len, lists), np.int64, count=len(lists))
    flat = list(chain.from_iterable(lists))
    dtype = _dtype(info)
    if not flat:
        return np.zeros(0, _np_dtype(dtype)), lengths
    try:
        values = json_codec.to_array(flat, dtype, bool_free=bool_free)
    except ServingError as e:
        raise ServingError(e.code, f"input {name!r}: {e.message}") from None
    if values.ndim != 1:
        raise invalid_argument(f"input {name!r} holds nested lists; expected one flat list of "
                               "values per example")
    return values, lengths


def _dense(name: str, value: Any, dtype: Any, bool_free: bool, ragged: list[str]) -> np.ndarray:
    try:
        return json_codec.to_array(value, dtype, bool_free=bool_free)
    except ServingError as e:
        if _is_ragged(value):
            raise invalid_argument(
                f"input {name!r} takes a dense tensor, but its lists have different lengths; "
                f"variable-length lists go only to {', '.join(map(repr, ragged))}") from None
        raise ServingError(e.code, f"input {name!r}: {e.message}") from None


def _is_ragged(value: Any) -> bool:
    return type(value) is list and len({len(v) if type(v) is list else -1 for v in value}) > 1


def check_components(arrays: Mapping[str, np.ndarray], pairs: Mapping[str, tuple[str, str]],
                     signature: str) -> int | None:
    """Checks each ragged input's two tensors and returns the batch size (None: no ragged
    input).

    Raises:
        ServingError: INVALID_ARGUMENT for row lengths that are not a 1-D list of
            non-negative counts summing to the number of values, or ragged inputs whose
            numbers of lists differ.
    """
    size = None
    for name, (values_key, lengths_key) in pairs.items():
        values, lengths = arrays[values_key], arrays[lengths_key]
        if lengths.ndim != 1 or values.ndim != 1:
            raise invalid_argument(f"input {name!r} of signature \"{signature}\": "
                                   f"{values_key} and {lengths_key} must be 1-D; got shapes "
                                   f"{list(values.shape)} and {list(lengths.shape)}")
        if lengths.size and lengths.min() < 0:
            raise invalid_argument(f"input {name!r}: {lengths_key} holds a negative length "
                                   f"({int(lengths.min())})")
        total = int(lengths.sum())
        if total != len(values):
            raise invalid_argument(f"input {name!r}: {lengths_key} sums to {total} but "
                                   f"{values_key} has {len(values)} values; send one length "
                                   "per list")
        if size is not None and len(lengths) != size:
            raise invalid_argument(f"ragged inputs of signature \"{signature}\" have "
                                   f"different numbers of lists ({size} and {len(lengths)})")
        size = len(lengths)
    return size
