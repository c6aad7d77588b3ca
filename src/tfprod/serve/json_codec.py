"""JSON <-> numpy for TF Serving's REST API, with TF Serving's rules and error texts.

Requests (``tensorflow_serving/util/json_tensor.cc``): the row format ``{"instances": [...]}``
(one element per batch item; objects keyed by input name when a signature has several inputs)
and the columnar format ``{"inputs": ...}`` (one value per input, batch dimension included).
Binary strings travel as ``{"b64": "..."}``; ``NaN``, ``Infinity`` and ``-Infinity`` are accepted.
Numbers must fit the input's dtype exactly (no silent truncation, no float for an int input).

Responses: ``{"predictions": [...]}`` (row) or ``{"outputs": ...}`` (columnar); string outputs
whose names end in ``_bytes`` become ``{"b64": ...}``. Floats are printed as TF Serving prints
them: six significant digits when those round-trip, else 9 (float) or 17 (double), ``.0`` added
to whole numbers, ``NaN`` / ``Infinity`` / ``-Infinity`` for the others.

The hot path turns a regular numeric list into an array with C-level loops only (flatten, check
lengths, one numpy conversion); anything it cannot prove exact (strings, b64, ragged or mixed
lists, huge numbers) takes the careful path, which checks every value the way TF Serving does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from tfprod.serve.errors import ServingError, invalid_argument, unimplemented

ROW = "row"
COLUMNAR = "columnar"
MAX_RANK = 254  # tensorflow::TensorShape::MaxDimensions()
_ERROR_VALUE_CHARS = 200  # JSON values quoted in error messages are cut to this length
_BYTES_SUFFIX = "_bytes"
_chain = chain.from_iterable


# ------------------------------------------------------------------------------ dtypes


@dataclass(frozen=True)
class _Spec:
    """How JSON values become one tensor dtype."""

    np_dtype: np.dtype
    tf_name: str          # TF's DataTypeString, as TF Serving's messages print it
    kind: str             # "float", "int", "bool", "string"
    lo: int = 0           # int range accepted
    hi: int = 0
    max_int: int = 0      # float: the largest integer that converts without loss


def _int_spec(name: str) -> _Spec:
    info = np.iinfo(name)
    return _Spec(np.dtype(name), name, "int", int(info.min), int(info.max))


_SPECS: dict[str, _Spec] = {
    "float32": _Spec(np.dtype(np.float32), "float", "float", max_int=2 ** 24 - 1),
    "float64": _Spec(np.dtype(np.float64), "double", "float", max_int=2 ** 53 - 1),
    "bool": _Spec(np.dtype(bool), "bool", "bool"),
    "string": _Spec(np.dtype(object), "string", "string"),
    **{n: _int_spec(n) for n in ("int8", "int16", "int32", "int64", "uint8", "uint32",
                                 "uint64")},
}
_TF_NAMES = {"float16": "half", "float32": "float", "float64": "double"}
_FLOAT_MAX = {"float": float(np.finfo(np.float32).max), "double": float(np.finfo(np.float64).max)}


def _dtype_name(dtype: Any) -> str:
    """``tf.float32`` / ``np.float32`` / ``"float32"`` -> ``"float32"`` (``tf.string``:
    ``"string"``)."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else np.dtype(dtype).name


def _spec(dtype: Any, value: Any) -> _Spec:
    name = _dtype_name(dtype)
    spec = _SPECS.get(name)
    if spec is None:
        # TF Serving converts only these dtypes from JSON (AddValueToTensor).
        raise unimplemented(f"Conversion of JSON Value: {_text(_first_leaf(value))} to type: "
                            f"{_TF_NAMES.get(name, name)}")
    return spec


def _first_leaf(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


# ------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class JsonRequest:
    """A parsed request body.

    Attributes:
        doc: the top-level JSON object.
        bool_free: the body has no ``true`` / ``false`` literal, so a list that numpy turns
            into a numeric array held only numbers (numpy reads ``[1, true]`` as ``[1, 1]``).
    """

    doc: dict[str, Any]
    bool_free: bool = False


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"Number too big to be stored in double: {text[:40]}")
    return value


def parse_request(body: bytes) -> JsonRequest:
    """The JSON object of a request body (``NaN`` / ``Infinity`` / ``-Infinity`` accepted).

    Raises:
        ServingError: INVALID_ARGUMENT "JSON Parse error: ..." or "... Is not object".
    """
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson is strict RFC 8259; TF Serving (rapidjson kParseNanAndInfFlag) also takes NaN
        # and +-Infinity, which the standard library parser reads.
        try:
            doc = json.loads(body, parse_float=_finite_float)
        except json.JSONDecodeError as e:
            raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
        except RecursionError:
            raise invalid_argument("JSON Parse error: the document is nested too deeply") \
                from None
        except (ValueError, TypeError) as e:  # bad encoding, huge numbers
            raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from None
    if type(doc) is not dict:
        raise invalid_argument(f"JSON Value: {_text(doc)} Is not object")
    return JsonRequest(doc, b"true" not in body and b"false" not in body)


def signature_name(request: JsonRequest) -> str:
    """The request's ``signature_name`` ("" when absent).

    Raises:
        ServingError: INVALID_ARGUMENT when it is not a string.
    """
    name = request.doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {_text(request.doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return name


def decode_predict(request: JsonRequest, inputs: Mapping[str, Any]
                   ) -> tuple[dict[str, np.ndarray], str]:
    """A predict request's tensors, in the dtypes of the signature's ``inputs``.

    Args:
        request: from :func:`parse_request`.
        inputs: input name -> its info (anything with a ``dtype``: ``tf.DType``, numpy dtype
            or dtype name).

    Returns:
        (input name -> array, :data:`ROW` or :data:`COLUMNAR`).

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's text for malformed requests;
            UNIMPLEMENTED for an input dtype JSON cannot express (e.g. half).
    """
    doc = request.doc
    if not inputs:
        raise invalid_argument("Failed to get input map for signature: "
                               f"{signature_name(request) or 'DEFAULT'}")
    dtypes = {name: getattr(info, "dtype", info) for name, info in sorted(inputs.items())}
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(f"JSON Value: {_text(doc)} Not formatted correctly expecting "
                                   "only one of 'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_text(doc)} Excepting 'instances' to be an "
                                   "list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_text(doc)} No values in 'instances' array")
        return _decode_rows(instances, dtypes, request.bool_free), ROW
    if "inputs" in doc:
        return _decode_columns(doc["inputs"], dtypes, request.bool_free), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value: Any) -> bool:
    return type(value) is dict and not _is_b64(value)


def _decode_columns(value: Any, dtypes: dict[str, Any], bool_free: bool
                    ) -> dict[str, np.ndarray]:
    if not _is_object(value):
        if len(dtypes) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        name, dtype = next(iter(dtypes.items()))
        return {name: to_array(value, dtype, bool_free=bool_free)}
    arrays = {}
    for name, dtype in dtypes.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], dtype, bool_free=bool_free)
    return arrays


def _decode_rows(instances: list, dtypes: dict[str, Any], bool_free: bool
                 ) -> dict[str, np.ndarray]:
    first = instances[0]
    if type(first) is not dict and len(dtypes) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    if not _is_object(first):
        name, dtype = next(iter(dtypes.items()))
        fast = _fast_array(instances, _spec(dtype, instances), bool_free)
        if fast is not None:
            return {name: fast}
        return {name: _rows_careful(instances, dtype)}
    names = set(dtypes)
    if all(type(x) is dict and x.keys() == names for x in instances):
        arrays = {}
        for name, dtype in dtypes.items():
            column = [x[name] for x in instances]
            fast = _fast_array(column, _spec(dtype, column), bool_free)
            if fast is None:
                break
            arrays[name] = fast
        else:
            return arrays
    return _objects_careful(instances, dtypes)


# ------------------------------------------------------------------------------ fast path


def _fast_array(value: Any, spec: _Spec, bool_free: bool) -> np.ndarray | None:
    """``value`` as an array without a Python loop, or None when only the careful path can tell.

    The nested lists are flattened level by level with ``itertools.chain`` after checking, in C,
    that every list of a level has the length the first one has (a ragged list, or a string or
    object where a list belongs, shows up there or as non-numbers among the leaves); numpy then
    converts the flat leaves in one call. About twice as fast as ``np.asarray`` on nested lists.
    """
    if spec.kind == "string" or type(value) is not list:
        return None
    shape = _dense_shape_or_none(value)
    if shape is None:
        return None
    leaves = value
    try:
        for size in shape[1:]:
            if set(map(len, leaves)) != {size}:
                return None
            leaves = list(_chain(leaves))
        arr = np.array(leaves)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.ndim != 1 or arr.size != len(leaves):
        return None
    arr = arr.reshape(shape)
    kind = arr.dtype.kind
    if spec.kind == "bool":
        return arr if kind == "b" else None
    if kind not in "iuf" or not bool_free:
        return None
    if kind != "f":
        # Python's min/max over the leaves keep the GIL: numpy's reductions release and then
        # re-acquire it, which on a busy server waits behind the batch threads.
        lo, hi = min(leaves), max(leaves)
        if spec.kind == "int":
            ok = spec.lo <= lo and hi <= spec.hi
        else:  # integers to float must fit the mantissa
            ok = -spec.max_int <= lo and hi <= spec.max_int
        return arr.astype(spec.np_dtype, copy=False) if ok else None
    if spec.kind == "int":
        return None  # a JSON decimal for an integer input: the careful path names it
    # Doubles must fit the range; below max_int they do, beyond it (or for +-inf) the careful
    # path tells JSON integers (mantissa rule) from decimals (range rule).
    with np.errstate(invalid="ignore"):
        if (np.abs(arr) > spec.max_int).any():
            return None
    return arr.astype(spec.np_dtype, copy=False)


# ------------------------------------------------------------------------------ careful path


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _text(value: Any) -> str:
    """A JSON value as error messages quote it (cut to a readable length)."""
    if isinstance(value, float):
        return format_double(value)
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        text = f"<{_json_type(value)}>"
    return text if len(text) <= _ERROR_VALUE_CHARS else text[:_ERROR_VALUE_CHARS] + "..."


def _type_error(value: Any, spec: _Spec) -> ServingError:
    return invalid_argument(f"JSON Value: {_text(value)} Type: {_json_type(value)} is not of "
                            f"expected type: {spec.tf_name}")


def _b64_decode(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {_text(value)} not formatted correctly for base64 "
                               "data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _leaf(value: Any, spec: _Spec) -> Any:
    """One JSON value as a tensor element, checked the way TF Serving checks it."""
    kind = spec.kind
    if kind == "string":
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        if isinstance(value, dict):
            return _b64_decode(value)
        raise _type_error(value, spec)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _type_error(value, spec)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, spec)
    if kind == "int":
        if isinstance(value, float) or not spec.lo <= value <= spec.hi:
            raise _type_error(value, spec)
        return value
    lossless = (abs(value) <= spec.max_int if isinstance(value, int)
                else not math.isfinite(value) or abs(value) <= _FLOAT_MAX[spec.tf_name])
    if not lossless:
        raise invalid_argument(f"Cannot convert JSON value: {_text(value)} to {spec.tf_name} "
                               "without loss of precision.")
    return value


def _dense_shape_or_none(value: Any) -> list[int] | None:
    shape = []
    while type(value) is list:
        shape.append(len(value))
        if not value or len(shape) > MAX_RANK:
            return None
        value = value[0]
    return shape


def _dense_shape(value: Any) -> list[int]:
    """The shape implied by the first element at each level (TF Serving's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > MAX_RANK:
            raise invalid_argument(f"JSON Value: {_text(value)} is nested deeper than "
                                   f"{MAX_RANK} levels, the most a tensor can have")
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], spec: _Spec, out: list) -> None:
    """Append the leaves of ``value`` to ``out``, checking it is dense with ``shape``."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {_text(value)} found at incorrect level: "
                                   f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        out.append(_leaf(value, spec))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    if level == rank - 1:
        for v in value:
            if isinstance(v, list):
                raise invalid_argument(f"Encountered list at unexpected level: {level + 1} "
                                       f"expected < {rank}")
            out.append(_leaf(v, spec))
        return
    for v in value:
        _fill(v, level + 1, shape, spec, out)


def _array(values: list, shape: Sequence[int], spec: _Spec) -> np.ndarray:
    if spec.kind == "string":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    return np.array(values, dtype=spec.np_dtype).reshape(shape)


def to_array(value: Any, dtype: Any, *, bool_free: bool = False) -> np.ndarray:
    """One JSON value (scalar or nested lists) as a dense array of ``dtype``, as TF Serving
    converts it (b64 objects for strings; every level must be a list of the same size).

    Args:
        bool_free: the value holds no JSON ``true``/``false`` (enables the one-call fast path for
            numeric dtypes; see :class:`JsonRequest`).

    Raises:
        ServingError: INVALID_ARGUMENT for a value that does not fit, UNIMPLEMENTED for dtypes
            JSON cannot express.
    """
    spec = _spec(dtype, value)
    fast = _fast_array(value, spec, bool_free)
    return fast if fast is not None else _careful_array(value, spec)


def _careful_array(value: Any, spec: _Spec) -> np.ndarray:
    """``value`` checked element by element, as TF Serving's FillTensorProto checks it."""
    shape = _dense_shape(value)
    values: list = []
    _fill(value, 0, shape, spec, values)
    return _array(values, shape, spec)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class _Column:
    """One input's instances, checked one by one (TF Serving's AddInstanceItem)."""

    def __init__(self, dtype: Any, first: Any):
        self.spec = _spec(dtype, first)
        self.values: list = []
        self.shape: list[int] | None = None
        self.size = 0

    def add(self, item: Any) -> None:
        shape = _dense_shape(item)
        values: list = []
        _fill(item, 0, shape, self.spec, values)
        if self.shape is None:
            self.shape, self.size = shape, len(values)
        elif len(values) != self.size:
            raise invalid_argument(f"Expecting tensor size: {self.size} but got: {len(values)}")
        elif shape != self.shape:
            raise invalid_argument(f"Expecting shape {_shape_text(self.shape)} but got: "
                                   f"{_shape_text(shape)}")
        self.values.extend(values)

    def array(self, count: int) -> np.ndarray:
        return _array(self.values, [count, *(self.shape or [])], self.spec)


def _wrap(index: int, e: ServingError, key: str | None = None) -> ServingError:
    where = f"{index}" if key is None else f"{index} key: {key}"
    return ServingError(e.code, f"Failed to process element: {where} of 'instances' list. "
                                f"Error: {e.code.name}: {e.message}")


def _rows_careful(instances: list, dtype: Any) -> np.ndarray:
    column = _Column(dtype, instances)
    for i, item in enumerate(instances):
        if _is_object(item):
            raise invalid_argument(f"Expecting value/list but got object at item {i} of input "
                                   "list")
        try:
            column.add(item)
        except ServingError as e:
            raise _wrap(i, e) from None
    return column.array(len(instances))


def _objects_careful(instances: list, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    names = set(dtypes)
    columns: dict[str, _Column] = {}
    for i, item in enumerate(instances):
        if not _is_object(item):
            raise invalid_argument(f"Expecting object but got list at item {i} of input list")
        for key, value in item.items():
            try:
                if key not in dtypes:
                    raise invalid_argument(f"JSON object: does not have named input: {key}")
                if key not in columns:
                    columns[key] = _Column(dtypes[key], value)
                columns[key].add(value)
            except ServingError as e:
                raise _wrap(i, e, key) from None
        if item.keys() != names:
            raise invalid_argument(f"Failed to process element: {i} of 'instances' list. JSON "
                                   f"object: {_text(item)} must only have keys: "
                                   f"{','.join(sorted(names))}")
    return {name: columns[name].array(len(instances)) for name in sorted(columns)}


# ------------------------------------------------------------------------------ responses


def format_float(value: float) -> str:
    """A float32 as TF Serving prints it: ``%.6g`` if that round-trips, else ``%.9g``."""
    return _format(value, np.float32, ".9g")


def format_double(value: float) -> str:
    """A float64 as TF Serving prints it: ``%.6g`` if that round-trips, else ``%.17g``."""
    return _format(value, float, ".17g")


def _format(value: float, cast: Any, full: str) -> str:
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    text = format(value, ".6g")
    if cast(text) != cast(value):
        text = format(value, full)
    return text if "." in text or "e" in text else text + ".0"


_NONFINITE = {"nan": "NaN", "-nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_SMALL = 32  # below this many values, the array module's loops beat numpy's per-call cost


def _float_texts(flat: np.ndarray) -> list[str]:
    """TF Serving's text of every value of a flat float array, vectorized where it can be."""
    if flat.dtype != np.float64 and flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    values = flat.tolist()
    if not values:
        return []
    texts = (("%.6g\x00" * len(values)) % tuple(values)).split("\x00")[:-1]
    if len(values) <= _SMALL:
        return _small_float_texts(values, texts, "f" if flat.dtype == np.float32 else "d")
    finite = np.isfinite(flat)
    back = np.array(texts, dtype=flat.dtype)
    full = ".17g" if flat.dtype == np.float64 else ".9g"
    for i in np.flatnonzero((back != flat) & finite).tolist():
        texts[i] = format(values[i], full)
    texts = [t if "." in t or "e" in t else t + ".0" for t in texts]
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            texts[i] = _format(values[i], float, full)
    return texts


def _small_float_texts(values: list[float], texts: list[str], code: str) -> list[str]:
    """:func:`_float_texts` for a few values: the round-trip check with the array module
    (``code`` "f": float32, "d": float64) instead of numpy calls."""
    original = array(code, values)
    back = array(code, map(float, texts))
    if back != original:  # NaN never equals itself: its text is replaced below anyway
        full = "%.9g" if code == "f" else "%.17g"
        for i, (b, v) in enumerate(zip(back, original, strict=True)):
            if b != v:
                texts[i] = full % values[i]
    for i, t in enumerate(texts):
        if "." not in t and "e" not in t:
            texts[i] = _NONFINITE.get(t) or t + ".0"
    return texts


def _leaf_texts(name: str, arr: np.ndarray) -> list[str]:
    """The JSON text of each element of ``arr`` (flattened, C order)."""
    kind = arr.dtype.kind
    flat = arr.reshape(-1)
    if kind == "f":
        return _float_texts(flat)
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "OSU":
        if name.endswith(_BYTES_SUFFIX):
            return ['{"b64":"' + base64.b64encode(as_bytes(v)).decode("ascii") + '"}'
                    for v in flat.tolist()]
        return [orjson.dumps(as_bytes(v).decode("utf-8", "replace")).decode()
                for v in flat.tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {arr.dtype.name}")


def as_bytes(value: Any) -> bytes:
    """A string tensor element as bytes (str as UTF-8; bytes as they are)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def _group(items: list[str], shape: Sequence[int], first_dim: int) -> list[str]:
    """Nest flat element texts into JSON arrays over dims ``first_dim..``; returns one text per
    index of the dims before ``first_dim``."""
    for k in range(len(shape) - 1, first_dim - 1, -1):
        dim = shape[k]
        groups = math.prod(shape[:k])
        if dim == 0:
            items = ["[]"] * groups
        else:
            items = ["[" + ",".join(items[g * dim:(g + 1) * dim]) + "]" for g in range(groups)]
    return items


def _key(name: str) -> str:
    return orjson.dumps(name).decode()


def encode_predict(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """The JSON body for a predict response in the request's format.

    Row: ``{"predictions": [item, ...]}`` (each item an object keyed by output name when there
    are several outputs). Columnar: ``{"outputs": value}`` (an object keyed by output name when
    there are several).

    Raises:
        ServingError: INVALID_ARGUMENT (TF Serving's texts) for outputs the row format cannot
            express (no batch dimension, batch sizes that differ) or dtypes JSON cannot hold.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {n: np.asarray(outputs[n]) for n in names}
    if fmt == COLUMNAR:
        texts = {n: _group(_leaf_texts(n, a), a.shape, 0)[0] for n, a in arrays.items()}
        if len(names) == 1:
            body = texts[names[0]]
        else:
            body = "{" + ",".join(_key(n) + ":" + texts[n] for n in names) + "}"
        return ('{"outputs":' + body + "}").encode()
    if fmt != ROW:
        raise invalid_argument("Invalid request format")
    batch = _row_batch(arrays)
    rows = {n: _group(_leaf_texts(n, a), a.shape, 1) for n, a in arrays.items()}
    if len(names) == 1:
        items = rows[names[0]]
    else:
        keys = [_key(n) + ":" for n in names]
        items = ["{" + ",".join(k + rows[n][i] for k, n in zip(keys, names, strict=True)) + "}"
                 for i in range(batch)]
    return ('{"predictions":[' + ",".join(items) + "]}").encode()


def _row_batch(arrays: Mapping[str, np.ndarray]) -> int:
    """The batch size all outputs share (0 is allowed: ``{"predictions": []}``)."""
    batch = -1
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        size = arr.shape[0]
        if batch >= 0 and size != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {size} "
                                   f"expecting: {batch}")
        batch = size
    return batch


def encode_classification(result: Any) -> bytes:
    """REST's ``:classify`` body from a ``ClassificationResult``: ``{"results": [[[label,
    score], ...], ...]}``, one list of pairs per example (TF Serving's
    MakeJsonFromClassificationResult)."""
    if not len(result.classifications):
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    items = []
    for group in result.classifications:
        pairs = [f"[{_key(c.label)},{format_float(c.score)}]" for c in group.classes]
        items.append("[" + ",".join(pairs) + "]")
    return ('{"results":[' + ",".join(items) + "]}").encode()


def encode_regression(result: Any) -> bytes:
    """REST's ``:regress`` body from a ``RegressionResult``: ``{"results": [value, ...]}``."""
    if not len(result.regressions):
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return ('{"results":[' + ",".join(format_float(r.value) for r in result.regressions)
            + "]}").encode()


def error_body(message: str) -> bytes:
    """``{"error": message}``, TF Serving's error body."""
    try:
        return orjson.dumps({"error": message})
    except TypeError:  # lone surrogates from a request's escapes: keep them escaped
        return json.dumps({"error": message}).encode()
