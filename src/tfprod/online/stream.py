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

Examples whose label cannot be learned (not a number; for the log, also a label for a request
it does not hold) are dropped where they are read, with one line each in the stream's ``notes``,
which the loop logs as ``dropped`` events; the stream goes on.
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


def _labels(values: list[Any], where: str, notes: list[dict[str, Any]]
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, kept)``: the labels that are numbers (integers when all are whole), and the
    index of those among ``values``; the others are dropped with a note (one line)."""
    values = list(values)
    array = np.asarray(values) if values else np.zeros((0,), np.int64)
    if array.dtype.kind in "iuf" and array.ndim == 1:
        y, kept = array.astype(np.float64), np.arange(len(values))
    else:
        ok = [isinstance(v, int | float | np.integer | np.floating)
              and not isinstance(v, bool | np.bool_) for v in values]
        kept = np.flatnonzero(ok)
        y = np.asarray([float(values[i]) for i in kept], np.float64)
        bad = [v.item() if isinstance(v, np.generic) else v for v, good in zip(
            values, ok, strict=True) if not good]
        notes.append({"examples": len(bad), "reason": f"{where}: label(s) "
                      f"{', '.join(repr(v) for v in bad[:3])}{' ...' if len(bad) > 3 else ''} "
                      "are not numbers; the online loop learns integer class labels (send them to "
                      ":feedback as numbers); those examples are not learned"})
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64), kept
    return y, kept


class LogStream:
    """Labelled requests from the request log of ``tfprod serve``.

    A label that is not a number, a request whose labels do not match its instances, and a
    label for a request id the log does not hold are dropped, each with one line in
    :attr:`notes` (the loop logs them as ``dropped`` events), and the stream goes on. The log
    never ends: when it stops growing, :meth:`poll` returns nothing and the loop waits.

    Args:
        url: the log (a SQLite path, ``sqlite:///...`` or ``postgresql://...``).
        model: the served model's name.
        after: feedback time (epoch seconds) to start after; None reads from the beginning.
    """

    def __init__(self, url: str, model: str, *, after: float | None = None):
        from tfprod.monitor.store import open_store, redact

        self.url, self.model, self.after = url, model, after
        self.after_row: int | None = None  # the log row of the last label, at time ``after``
        self.where = f"request log {redact(url)}, model {model!r}"
        self.store = open_store(url, create=False)
        self.done = False
        self.notes: list[dict[str, Any]] = []

    def poll(self, limit: int | None = None) -> Examples:
        """Requests whose label arrived since the last poll (at most ``limit``), oldest label
        first; a request of several instances gives one example per instance."""
        found = self.store.read_labelled(self.model, after=self.after,
                                         after_row=self.after_row, limit=limit)
        # labels for requests the log does not hold, up to the last label read (a label at
        # the same time as the cursor's was reported with it)
        orphans = self.store.unmatched_feedback(self.model, after=self.after,
                                                until=found[-1][1] if found else None)
        if orphans:
            ids = [rid for rid, _ in orphans]
            self.notes.append({"examples": len(ids), "reason": f"{self.where}: label(s) for "
                               f"request id(s) {', '.join(repr(i) for i in ids[:3])}"
                               f"{' ...' if len(ids) > 3 else ''} the log does not hold (not "
                               "served by this model, left out by sampling_rate, or deleted); "
                               "not learned"})
        if found:
            self.after, self.after_row = found[-1][1], found[-1][2]
        elif orphans:
            self.after, self.after_row = orphans[-1][1], None
        if not found:
            return Examples({}, np.zeros((0,), np.int64))
        # A request a shadow version also answered is logged twice under one id: learn it once.
        seen: set[str] = set()
        records = [r for r, _, _ in found if not (r.request_id in seen or seen.add(r.request_id))]
        names = [k for k in records[0].inputs if all(k in r.inputs for r in records)]
        values, ids, versions, rows = [], [], [], []
        for r in records:
            label = r.label if isinstance(r.label, list) else [r.label] * r.rows
            if len(label) != r.rows:
                self.notes.append({"examples": r.rows, "reason": f"{self.where}: request "
                                   f"{r.request_id!r} has {r.rows} instances and {len(label)} "
                                   "labels; send one label per instance (or one for all); "
                                   "not learned"})
                continue
            rows.append(r)
            values.extend(label)
            ids.extend([r.request_id] * r.rows)
            versions.extend([r.version] * r.rows)
        if not rows:
            return Examples({}, np.zeros((0,), np.int64))
        x = {k: np.concatenate([r.inputs[k] for r in rows]) for k in names}
        y, kept = _labels(values, self.where, self.notes)
        return Examples({k: v[kept] for k, v in x.items()}, y, [ids[i] for i in kept],
                        np.asarray(versions)[kept])

    def state(self) -> dict[str, Any]:
        return {"after": self.after, "after_row": self.after_row}

    def load_state(self, state: dict[str, Any]) -> None:
        self.after, self.after_row = state.get("after"), state.get("after_row")

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
        self.notes: list[dict[str, Any]] = []

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
            y, kept = _labels(list(labels), path, self.notes)
            parts.append(Examples({k: np.asarray(v)[kept] for k, v in data.features.items()},
                                  y))
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
        self.notes: list[dict[str, Any]] = []

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
        y, kept = _labels(list(np.asarray(y).reshape(-1)), f"batch {self.batches}", self.notes)
        return Examples({k: v[kept] for k, v in x.items()}, y)

    def state(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state(self, state: dict[str, Any]) -> None:
        for _ in range(int(state.get("batches", 0)) - self.batches):  # skip what was learned
            self.poll()
