"""Schema validation of served data against the reference (TFDV's idea, without Beam).

:class:`Schema` is inferred from the reference (:meth:`Schema.infer`): per feature its dtype
kind, per-example shape, value range, whether NaN/Inf occurred, and its categories when the
reference saw all of them. :meth:`Schema.validate` checks a batch and returns issues, each a
dict ``{"feature", "check", "severity", "count", "share", "message", "examples"}`` with the row
indices (or request ids) of up to five offending examples.

Checks: ``missing_feature``, ``extra_feature``, ``dtype``, ``shape`` and ``nan`` are errors;
``out_of_range`` and ``unseen_category`` are errors when more than ``TOLERANCE`` of the rows
have them, warnings above ``NOTICE`` and not reported below it (new data of a continuous
feature always brushes the reference's range: about 2 rows in n + 1 fall outside the range of
n reference rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOLERANCE = 0.01
NOTICE = 0.001
MAX_CATEGORIES = 1000
_EXAMPLES = 5


def _kind(x: np.ndarray) -> str:
    k = x.dtype.kind
    return {"O": "string", "S": "string", "U": "string", "b": "bool", "i": "int", "u": "int",
            "f": "float", "c": "complex"}.get(k, k)


@dataclass
class FeatureSchema:
    kind: str
    shape: list[int]
    minimum: float | None = None
    maximum: float | None = None
    allow_nan: bool = False
    categories: list | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Schema:
    """What the reference looked like, feature by feature."""

    features: dict[str, FeatureSchema] = field(default_factory=dict)

    @classmethod
    def infer(cls, reference: Mapping[str, np.ndarray]) -> Schema:
        out = cls()
        for name, values in reference.items():
            x = np.asarray(values)
            s = FeatureSchema(_kind(x), list(x.shape[1:]))
            if s.kind in ("int", "float") and x.size:
                flat = x.reshape(-1)
                low, high = flat.min(), flat.max()  # NaN when any is: then the slow way
                if s.kind == "float" and not (np.isfinite(low) and np.isfinite(high)):
                    finite = flat[np.isfinite(flat)]
                    s.allow_nan = bool(finite.size < flat.size)
                    low, high = (finite.min(), finite.max()) if finite.size else (None, None)
                if low is not None:
                    s.minimum, s.maximum = float(low), float(high)
            if s.kind in ("string", "bool") or (s.kind == "int" and x.ndim <= 2 and
                                                 np.prod(x.shape[1:]) <= 1):
                values_seen = np.unique(_strings(x))
                if values_seen.size <= MAX_CATEGORIES and s.kind != "int":
                    s.categories = values_seen.tolist()
            out.features[name] = s
        return out

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.features.items()}

    def validate(self, batch: Mapping[str, np.ndarray], ids: Sequence[Any] | None = None
                 ) -> list[dict[str, Any]]:
        """The issues of ``batch`` (see the module docstring)."""
        n = len(next(iter(batch.values()))) if batch else 0
        issues: list[dict[str, Any]] = []

        def add(feature: str, check: str, rows: np.ndarray | None, message: str,
                error: bool = True) -> None:
            count = n if rows is None else int(rows.size)
            share = count / n if n else 0.0
            if check in ("out_of_range", "unseen_category"):
                if share <= NOTICE:
                    return
                error = share > TOLERANCE
            picked = [] if rows is None else rows[:_EXAMPLES].tolist()
            examples = [ids[i] for i in picked] if ids is not None else picked
            issues.append({"feature": feature, "check": check,
                           "severity": "error" if error else "warning", "count": count,
                           "share": round(share, 6), "message": message, "examples": examples})

        for name in sorted(set(self.features) - set(batch)):
            add(name, "missing_feature", None, f"feature {name!r} is missing; the model's "
                "reference has it")
        for name in sorted(set(batch) - set(self.features)):
            add(name, "extra_feature", None, f"feature {name!r} is not in the reference "
                f"(expected {', '.join(sorted(self.features))})")
        for name, s in self.features.items():
            if name not in batch:
                continue
            x = np.asarray(batch[name])
            kind = _kind(x)
            if kind != s.kind and not (s.kind == "float" and kind == "int"):
                add(name, "dtype", None, f"feature {name!r} is {kind}; the reference is {s.kind}")
                continue
            if list(x.shape[1:]) != s.shape:
                add(name, "shape", None, f"feature {name!r} has shape {list(x.shape[1:])} per "
                    f"example; the reference has {s.shape}")
                continue
            if kind in ("int", "float") and len(x):
                flat = x.reshape(len(x), -1)
                # Whole-column min and max first (no temporaries): rows are looked at only when
                # they say something is off, which on clean data they do not.
                low, high = flat.min(), flat.max()
                all_finite = kind != "float" or bool(np.isfinite(low) and np.isfinite(high))
                if not all_finite and not s.allow_nan:
                    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
                    if bad.size:
                        add(name, "nan", bad, f"feature {name!r} has NaN/Inf in {bad.size} rows; "
                            "the reference had none")
                if s.minimum is not None and not (all_finite and s.minimum <= low
                                                  and high <= s.maximum):
                    out = (flat < s.minimum) | (flat > s.maximum)  # NaN compares False
                    if not all_finite:
                        out &= np.isfinite(flat)  # +-Inf are not "out of range"
                    bad = np.flatnonzero(out.any(axis=1) if out.shape[1] > 1 else out[:, 0])
                    if bad.size:
                        add(name, "out_of_range", bad, f"feature {name!r} has {bad.size} rows "
                            f"outside the reference range [{s.minimum:g}, {s.maximum:g}]")
            if s.categories is not None and len(x):
                seen = np.isin(_strings(x), np.asarray(s.categories))
                bad = np.flatnonzero(~seen)
                if bad.size:
                    first = _strings(x[bad[:1]])[0]
                    add(name, "unseen_category", bad, f"feature {name!r} has {bad.size} rows with "
                        f"categories the reference never had (e.g. {first!r})")
        return issues


def _strings(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x).reshape(len(x))
    if flat.dtype.kind in "OS":
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in flat])
    return flat.astype(str)
