"""Where labelled examples come from: the request log, a folder of new files, an iterable.

Every stream has :meth:`poll`: the examples that became available since the last call, as
:class:`Examples` (``x`` by serving input name, integer-or-float labels ``y``), and a
:meth:`state` / :meth:`load_state` cursor so a restarted loop neither skips nor repeats
examples.

- :class:`LogStream`: requests logged by ``tfprod serve`` joined with the labels clients sent to
  ``POST /v1/models/NAME:feedback``. Labels arrive late: an example is released when its label
  arrives (the cursor is the feedback time), whenever its request was served.
- :class:`FolderStream`: CSV / ``.npz`` files and TFRecord folders appearing in a folder; each is
  read once, in name order (write a file elsewhere and rename it in, so a half-written one is
  never read).
- :class:`IterableStream`: any iterable of ``(x, y)`` batches; ``done`` once it is exhausted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfprod.errors import TfprodError


@dataclass
class Examples:
    """Labelled examples: inputs by name (batch first), labels, and where they came from."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    ids: list[str] = field(default_factory=list)
    versions: np.ndarray | None = None  # the version that served each (log streams)

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Examples({}, np.zeros((0,), np.int64))
        versions = None if any(p.versions is None for p in parts) else np.concatenate(
            [p.versions for p in parts])
        return Examples({k: np.concatenate([p.x[k] for p in parts]) for k in parts[0].x},
                        np.concatenate([p.y for p in parts]),
                        [i for p in parts for i in p.ids], versions)

    def take(self, index: Any) -> Examples:
        index = np.asarray(index)
        return Examples({k: v[index] for k, v in self.x.items()}, self.y[index],
                        [self.ids[i] for i in index] if self.ids else [],
                        None if self.versions is None else self.versions[index])


def _labels(values: list[Any], where: str) -> np.ndarray:
    try:
        y = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        bad = next((v for v in values if not isinstance(v, int | float)), values[0])
        raise TfprodError(f"{where}: label {bad!r} is not a number; the online loop learns "
                          "integer class labels (send them to :feedback as numbers)") from None
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


class LogStream:
    """Labelled requests from the request log of ``tfprod serve``.

    Args:
        url: the log (a SQLite path, ``sqlite:///...`` or ``postgresql://...``).
        model: the served model's name.
        after: feedback time (epoch seconds) to start after; None reads from the beginning.
    """

    def __init__(self, url: str, model: str, *, after: float | None = None):
        from tfprod.monitor.store import open_store

        self.url, self.model, self.after = url, model, after
        self.store = open_store(url, create=False)
        self.done = False

    def poll(self, limit: int | None = None) -> Examples:
        """Requests whose label arrived since the last poll (at most ``limit``), oldest label
        first; a request of several instances gives one example per instance."""
        found = self.store.read_labelled(self.model, after=self.after, limit=limit)
        if not found:
            return Examples({}, np.zeros((0,), np.int64))
        self.after = max(t for _, t in found)
        # A request a shadow version also answered is logged twice under one id: learn it once.
        seen: set[str] = set()
        records = [r for r, _ in found if not (r.request_id in seen or seen.add(r.request_id))]
        names = [k for k in records[0].inputs if all(k in r.inputs for r in records)]
        x = {k: np.concatenate([r.inputs[k] for r in records]) for k in names}
        values, ids, versions = [], [], []
        for r in records:
            label = r.label if isinstance(r.label, list) else [r.label] * r.rows
            if len(label) != r.rows:
                raise TfprodError(f"request {r.request_id!r} of model {self.model!r} has "
                                  f"{r.rows} instances and {len(label)} labels; send one label "
                                  "per instance (or one for all)")
            values.extend(label)
            ids.extend([r.request_id] * r.rows)
            versions.extend([r.version] * r.rows)
        y = _labels(values, f"request log {self.url}, model {self.model!r}")
        return Examples(x, y, ids, np.asarray(versions))

    def state(self) -> dict[str, Any]:
        return {"after": self.after}

    def load_state(self, state: dict[str, Any]) -> None:
        self.after = state.get("after")

    def close(self) -> None:
        self.store.close()


class FolderStream:
    """Files that appear in ``folder``: ``.csv`` (with a ``label`` column), ``.npz`` (input
    arrays plus ``labels``) or TFRecord folders written by ``tfprod.data.write_tfrecords``.

    Args:
        folder: where new files appear.
        label: the label column's name.
    """

    def __init__(self, folder: str | os.PathLike, *, label: str = "label"):
        self.folder, self.label = os.fspath(folder), label
        if not os.path.isdir(self.folder):
            raise TfprodError(f"{self.folder}: no such folder; give the folder new CSV, .npz or "
                              "TFRecord files arrive in")
        self.seen: set[str] = set()
        self.done = False

    def poll(self, limit: int | None = None) -> Examples:
        from tfprod.monitor.datasets import load_dataset

        parts = []
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            if name in self.seen or name.startswith(".") or not (
                    name.endswith((".csv", ".npz")) or os.path.isdir(path)):
                continue
            data = load_dataset(path, label=None if name.endswith(".npz") else self.label)
            labels = data.labels
            if labels is None and "labels" in data.features:
                labels = data.features.pop("labels")
            if labels is None:
                raise TfprodError(f"{path}: no labels; a .npz needs a 'labels' array, a CSV or "
                                  f"TFRecord folder a {self.label!r} column")
            parts.append(Examples(dict(data.features), _labels(list(labels), path)))
            self.seen.add(name)
            if limit is not None and sum(len(p) for p in parts) >= limit:
                break
        return Examples.concat(parts)

    def state(self) -> dict[str, Any]:
        return {"seen": sorted(self.seen)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seen = set(state.get("seen", ()))


class IterableStream:
    """Batches ``(x, y)`` from any iterable (``x``: a dict of arrays, or one array, which is
    named ``name``)."""

    def __init__(self, batches: Iterable[Any], *, name: str = "x"):
        self._it: Iterator[Any] = iter(batches)
        self.name = name
        self.done = False
        self.batches = 0

    def poll(self, limit: int | None = None) -> Examples:
        """The next batch; empty and ``done`` once the iterable stops."""
        try:
            item = next(self._it)
        except StopIteration:
            self.done = True
            return Examples({}, np.zeros((0,), np.int64))
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TfprodError(f"batch {self.batches} is a {type(item).__name__}; expected "
                              "(x, y) pairs")
        x, y = item
        x = {k: np.asarray(v) for k, v in x.items()} if isinstance(x, dict) else \
            {self.name: np.asarray(x)}
        self.batches += 1
        return Examples(x, _labels(list(np.asarray(y).reshape(-1)), f"batch {self.batches}"))

    def state(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state(self, state: dict[str, Any]) -> None:
        for _ in range(int(state.get("batches", 0)) - self.batches):  # skip what was learned
            self.poll()
