"""What drift compares: :class:`Dataset` (features, predictions, labels, embeddings) and
:func:`load_dataset` for every source ``tfprod monitor drift`` takes.

Sources: a CSV file, a Parquet file (needs pyarrow), a TFRecord folder written by
``tfprod.data.write_tfrecords``, a ``.npy`` file (a 2-D array: columns ``c0, c1, ...``; a
structured array: its fields; anything else: one feature ``x``), an ``.npz`` file (one feature
per array), an exported version folder or its base path (the reference sample that ``tfprod
export`` keeps in ``assets.extra/tfprod/reference_sample.npz``, with the model's predictions and
the labels), or a :class:`~tfprod.monitor.profile.Profile` file (``.profile.npz``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.monitor.table import Table, rows

SAMPLE_FILE = os.path.join("assets.extra", "tfprod", "reference_sample.npz")


@dataclass
class Dataset:
    """A table of model inputs, with what is known about the model on it.

    Attributes:
        features: input name -> ``[n, ...]``.
        predictions: output name -> ``[n, ...]`` (the model's outputs on these rows).
        labels: ``[n]`` true labels, where known (NaN / -1 rows are unknown in logs).
        embeddings: ``[n, d]``, the model's embedding of each row (penultimate layer).
        times: ``[n]`` epoch seconds (request logs).
        ids: request ids (request logs).
        source: where it came from, for messages.
    """

    features: Table
    predictions: Table = field(default_factory=dict)
    labels: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    times: np.ndarray | None = None
    ids: list[str] | None = None
    source: str = "data"

    def __post_init__(self) -> None:
        self.rows = rows(self.features) if self.features else 0

    def take(self, index: np.ndarray) -> Dataset:
        """The rows at ``index``."""
        def pick(x: Any) -> Any:
            return None if x is None else np.asarray(x)[index]
        return Dataset({k: v[index] for k, v in self.features.items()},
                       {k: v[index] for k, v in self.predictions.items()}, pick(self.labels),
                       pick(self.embeddings), pick(self.times),
                       None if self.ids is None else [self.ids[i] for i in np.asarray(index)],
                       self.source)


def as_dataset(data: Any, source: str = "data") -> Dataset:
    """A Dataset from a Dataset, a dict of arrays, a 2-D array or a path."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data)
    if isinstance(data, dict):
        return Dataset({k: np.asarray(v) for k, v in data.items()}, source=source)
    return Dataset(_array_table(np.asarray(data)), source=source)


def _array_table(a: np.ndarray) -> Table:
    if a.dtype.names:
        return {n: np.asarray(a[n]) for n in a.dtype.names}
    if a.ndim == 2:
        return {f"c{i}": a[:, i] for i in range(a.shape[1])}
    return {"x": a}


def load_dataset(path: str | os.PathLike, *, label: str | None = None) -> Dataset:
    """Read a dataset from ``path`` (see the module docstring for the formats).

    Args:
        path: the file or folder.
        label: a column to take out of the features as the labels.

    Raises:
        TfprodError: a missing path, an unknown format or an unreadable file.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise TfprodError(f"{p}: no such file or folder; give a CSV, Parquet, .npy/.npz file, a "
                          "TFRecord folder or an exported version folder")
    if os.path.isdir(p):
        data = _load_folder(p)
    elif p.endswith(".profile.npz"):
        from tfprod.monitor.profile import Profile

        data = Profile.load(p).sample_dataset()
    elif p.endswith(".npz"):
        data = _load_npz(p)
    elif p.endswith(".npy"):
        try:
            data = Dataset(_array_table(np.load(p, allow_pickle=False)), source=p)
        except (OSError, ValueError) as e:
            raise TfprodError(f"{p}: not a readable .npy array ({e})") from None
    elif p.endswith((".csv", ".csv.gz", ".tsv")):
        data = Dataset(_read_csv(p), source=p)
    elif p.endswith((".parquet", ".pq")):
        data = Dataset(_read_parquet(p), source=p)
    else:
        raise TfprodError(f"{p}: unknown format; expected .csv, .parquet, .npy, .npz, a TFRecord "
                          "folder or an exported version folder")
    data.source = p
    if label is not None:
        if label not in data.features:
            raise TfprodError(f"{p}: no column {label!r} to use as the label; columns: "
                              f"{', '.join(sorted(data.features))}")
        data.labels = data.features.pop(label)
    return data


def _load_folder(p: str) -> Dataset:
    if os.path.exists(os.path.join(p, SAMPLE_FILE)):
        return _load_npz(os.path.join(p, SAMPLE_FILE))
    versions = sorted(int(d) for d in os.listdir(p) if d.isdigit())
    if versions and os.path.exists(os.path.join(p, str(versions[-1]), SAMPLE_FILE)):
        return _load_npz(os.path.join(p, str(versions[-1]), SAMPLE_FILE))
    if os.path.exists(os.path.join(p, "schema.json")):
        return Dataset(_read_tfrecords(p), source=p)
    if versions:
        raise TfprodError(f"{p}/{versions[-1]}: no reference sample ({SAMPLE_FILE}); export "
                          "the model with reference data (tfprod export MODEL BASE --data PATH)")
    raise TfprodError(f"{p}: a folder that is neither an exported version (no {SAMPLE_FILE}) "
                      "nor a TFRecord folder (no schema.json)")


def _load_npz(p: str) -> Dataset:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise TfprodError(f"{p}: not a readable .npz file ({e})") from None
    features = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("inputs/")}
    if not features:  # a plain .npz: one feature per array
        return Dataset(arrays, source=p)
    return Dataset(
        features,
        {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("predictions/")},
        arrays.get("labels"), arrays.get("embeddings"), source=p)


def _read_csv(p: str) -> Table:
    try:
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(p)
        return {name: _arrow_column(table.column(name)) for name in table.column_names}
    except ImportError:
        pass
    except Exception as e:  # pyarrow.lib.ArrowInvalid and friends
        raise TfprodError(f"{p}: not a readable CSV file ({e})") from None
    import gzip

    opener = gzip.open if p.endswith(".gz") else open
    with opener(p, "rt", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if p.endswith(".tsv") else ",")
        header = next(reader, None)
        if not header:
            raise TfprodError(f"{p}: empty CSV file; expected a header row and data rows")
        cols: list[list[str]] = [[] for _ in header]
        for i, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise TfprodError(f"{p}:{i}: {len(row)} fields; the header has {len(header)}")
            for c, v in zip(cols, row, strict=True):
                c.append(v)
    return {h: _typed(c) for h, c in zip(header, cols, strict=True)}


def _typed(values: list[str]) -> np.ndarray:
    for dtype in (np.int64, np.float64):
        try:
            return np.array(values, dtype=dtype)
        except ValueError:
            continue
    return np.array(values, dtype=object)


def _arrow_column(column: Any) -> np.ndarray:
    a = column.to_numpy()
    return a.astype(object) if a.dtype.kind in "OU" else a


def _read_parquet(p: str) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TfprodError(f"{p}: reading Parquet needs pyarrow; pip install pyarrow") from None
    try:
        table = pq.read_table(p)
    except Exception as e:
        raise TfprodError(f"{p}: not a readable Parquet file ({e})") from None
    return {name: _arrow_column(table.column(name)) for name in table.column_names}


def _read_tfrecords(p: str) -> Table:
    from tfprod.data import read_tfrecords

    parts: dict[str, list[np.ndarray]] = {}
    for batch in read_tfrecords(p, batch_size=4096, shuffle=False).as_numpy_iterator():
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}
