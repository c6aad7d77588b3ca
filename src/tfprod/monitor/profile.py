"""Mergeable profiles: per-replica or per-shard statistics that combine exactly.

A :class:`Profile` of a table keeps, per feature, exact summaries that merge exactly (row and
value counts, NaN/Inf counts, mean and sum of squared deviations by Chan's parallel update,
minimum, maximum, and category counts for text and small-integer features), and, jointly for
all features, a bounded uniform sample of rows: the ``capacity`` rows with the smallest random
keys (bottom-k sampling). Merging two profiles keeps the bottom ``capacity`` keys of both, which
is a uniform sample of the union, as a sample of the whole would be. The drift tests run on the
samples; validation and the summaries use the exact parts.

``merge(profile(a), profile(b))`` equals ``profile(a + b)`` in every exact field (to float
rounding for the moments); :meth:`Profile.save` / :meth:`Profile.load` round-trip through one
``.profile.npz`` file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.monitor.table import Table, is_text, rows

CAPACITY = 10_000
MAX_CATEGORIES = 10_000
FORMAT = "tfprod.profile/1"


@dataclass
class FeatureSummary:
    """Exact, mergeable statistics of one feature (over all its values)."""

    dtype: str
    shape: list[int]
    count: int = 0          # finite values
    missing: int = 0        # NaN / Inf (numeric) or empty strings
    mean: float = 0.0
    m2: float = 0.0         # sum of squared deviations from the mean
    minimum: float | None = None
    maximum: float | None = None
    categories: dict[str, int] | None = None

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else float("nan")

    @classmethod
    def of(cls, values: np.ndarray) -> FeatureSummary:
        x = np.asarray(values)
        out = cls(x.dtype.name if not is_text(x) else "string", list(x.shape[1:]))
        if is_text(x):
            flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in x.ravel().tolist()]
            out.categories = dict(Counter(flat))
            out.count = len(flat)
            out.missing = out.categories.get("", 0)
            return out
        flat = x.astype(np.float64, copy=False).ravel()
        finite = flat[np.isfinite(flat)]
        out.count, out.missing = int(finite.size), int(flat.size - finite.size)
        if finite.size:
            out.mean = float(finite.mean())
            out.m2 = float(np.sum((finite - out.mean) ** 2))
            out.minimum, out.maximum = float(finite.min()), float(finite.max())
        if x.dtype.kind in "biu" and x.ndim <= 2 and int(np.prod(x.shape[1:])) <= 1:
            values_, counts = np.unique(x.ravel(), return_counts=True)
            if values_.size <= MAX_CATEGORIES:
                out.categories = {str(v): int(c) for v, c in zip(values_.tolist(),
                                                                 counts.tolist(), strict=True)}
        return out

    def merge(self, other: FeatureSummary) -> FeatureSummary:
        if (self.dtype, self.shape) != (other.dtype, other.shape):
            raise TfprodError(f"cannot merge a {other.dtype}{other.shape} feature into a "
                              f"{self.dtype}{self.shape} one; profiles must come from the same "
                              "features")
        n = self.count + other.count
        out = FeatureSummary(self.dtype, list(self.shape), n, self.missing + other.missing)
        if n:
            delta = other.mean - self.mean
            out.mean = self.mean + delta * other.count / n
            out.m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        lows = [v for v in (self.minimum, other.minimum) if v is not None]
        highs = [v for v in (self.maximum, other.maximum) if v is not None]
        out.minimum = min(lows) if lows else None
        out.maximum = max(highs) if highs else None
        if self.categories is not None and other.categories is not None:
            merged = Counter(self.categories)
            merged.update(other.categories)
            out.categories = dict(merged) if len(merged) <= MAX_CATEGORIES else None
        return out


@dataclass
class Profile:
    """Exact summaries plus a bounded uniform row sample of a table (see the module docstring).

    Example::

        a = Profile.of(shard_a)          # on replica / shard A
        b = Profile.of(shard_b)
        whole = a.merge(b)               # the same summaries as Profile.of(shard_a + shard_b)
        whole.save("reference.profile.npz")
    """

    rows: int
    summaries: dict[str, FeatureSummary]
    sample: Table
    keys: np.ndarray
    capacity: int = CAPACITY
    extras: Table = field(default_factory=dict)  # predictions/..., labels, embeddings per row

    @classmethod
    def of(cls, table: Mapping[str, np.ndarray], *, capacity: int = CAPACITY,
           extras: Mapping[str, np.ndarray] | None = None, seed: int | None = None) -> Profile:
        """Profile ``table``; ``extras`` (same rows) are sampled along with it."""
        n = rows(table)
        keys = np.random.default_rng(seed).random(n)
        keep = np.argsort(keys)[:capacity] if n > capacity else np.arange(n)
        keep = np.sort(keep)
        return cls(n, {k: FeatureSummary.of(v) for k, v in table.items()},
                   {k: np.asarray(v)[keep] for k, v in table.items()}, keys[keep], capacity,
                   {k: np.asarray(v)[keep] for k, v in (extras or {}).items()})

    def merge(self, other: Profile) -> Profile:
        """The profile of both tables' rows."""
        if set(self.summaries) != set(other.summaries):
            raise TfprodError(f"cannot merge profiles of different features: "
                              f"{sorted(self.summaries)} vs {sorted(other.summaries)}")
        capacity = min(self.capacity, other.capacity)
        keys = np.concatenate([self.keys, other.keys])
        keep = np.sort(np.argsort(keys, kind="stable")[:capacity])

        def joined(a: Table, b: Table) -> Table:
            return {k: np.concatenate([a[k], b[k]])[keep] for k in a if k in b}

        return Profile(self.rows + other.rows,
                       {k: v.merge(other.summaries[k]) for k, v in self.summaries.items()},
                       joined(self.sample, other.sample), keys[keep], capacity,
                       joined(self.extras, other.extras))

    def sample_dataset(self) -> Any:
        """The row sample as a :class:`~tfprod.monitor.datasets.Dataset`."""
        from tfprod.monitor.datasets import Dataset

        preds = {k.split("/", 1)[1]: v for k, v in self.extras.items()
                 if k.startswith("predictions/")}
        return Dataset(dict(self.sample), preds, self.extras.get("labels"),
                       self.extras.get("embeddings"), source="profile")

    # ------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> str:
        """Write one ``.profile.npz`` file (summaries as JSON inside)."""
        p = os.fspath(path)
        meta = {"format": FORMAT, "rows": self.rows, "capacity": self.capacity,
                "summaries": {k: vars(v) for k, v in self.summaries.items()}}
        arrays = {f"sample/{k}": _storable(v) for k, v in self.sample.items()}
        arrays.update({f"extras/{k}": _storable(v) for k, v in self.extras.items()})
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), keys=self.keys,
                     **arrays)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        p = os.fspath(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise TfprodError(f"{p}: not a readable profile ({e})") from None
        if meta.get("format") != FORMAT:
            raise TfprodError(f"{p}: format {meta.get('format')!r}; expected {FORMAT!r}")
        return cls(meta["rows"], {k: FeatureSummary(**v) for k, v in meta["summaries"].items()},
                   {k[7:]: _loaded(v) for k, v in arrays.items() if k.startswith("sample/")},
                   arrays["keys"], meta["capacity"],
                   {k[7:]: _loaded(v) for k, v in arrays.items() if k.startswith("extras/")})


def _storable(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "O":  # text: stored as fixed-width unicode (no pickles in the file)
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in x.ravel()]).reshape(x.shape)
    return x


def _loaded(x: np.ndarray) -> np.ndarray:
    return x.astype(object) if x.dtype.kind in "US" else x
