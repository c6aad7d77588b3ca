"""CSV files -> checked tf.data batches, and Keras preprocessing layers that live in the model.

Reading batches lines before decoding them: ``TextLineDataset`` -> ``batch`` -> one vectorized
``tf.io.decode_csv`` per batch, 2-4x the rows/s of ``CsvDataset`` -> ``batch`` on two cores.
Before that, rows are checked once in Python with the ``csv`` module (field count, numbers where
the column holds numbers; about 100k rows/s at 20 columns), so a bad row fails with its file and
line number instead of a TF error at step 10,000.

:func:`preprocessing` turns the training split into ``Normalization`` / ``StringLookup`` /
``IntegerLookup`` layers behind one ``keras.Input`` per column, so the exported model takes raw
CSV columns and serving applies exactly the training preprocessing.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfprod.data.options import apply_options, cache_dataset
from tfprod.data.skipped import SkippedRecordsWarning
from tfprod.data.split import SplitInfo, check_split, summarize, take_subset
from tfprod.errors import TfprodError

AUTOTUNE = tf.data.AUTOTUNE

DTYPES = ("int32", "int64", "float32", "float64", "string")
#: Rows checked in Python per file; past this, TF checks rows as it reads them.
SCAN_ROWS = 250_000
#: A column is numeric when at least this share of its non-empty cells are numbers; the rest are
#: then reported as bad rows rather than silently turning the column into text.
NUMERIC_SHARE = 0.95
_SHUFFLE_BUFFER = 10_000
# What both Python and TF's decode_csv read as numbers; 18 digits always fit an int64.
_INT = re.compile(r"\s*[+-]?\d{1,18}\s*").fullmatch
_FLOAT = re.compile(
    r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf(?:inity)?)\s*",
    re.IGNORECASE,
).fullmatch
_INT_KIND, _FLOAT_KIND, _STRING_KIND = "int64", "float32", "string"


# ---------------------------------------------------------------------------------------- scan


class _BadRow(NamedTuple):
    record: int  # 0-based index among the file's data records
    line: int  # 1-based line the record starts on
    reason: str
    fix: str = "fix the row"


@dataclasses.dataclass
class _FileScan:
    path: str
    header_line: int
    records: int = 0
    complete: bool = True
    blank_lines: bool = False
    multiline: bool = False
    bad: list[_BadRow] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Column:
    """What the scan learned about one column."""

    name: str
    kind: str  # int64 | float32 | string, or the user's dtype
    fixed: bool  # the user chose the dtype
    nonempty: int = 0
    # (file index, record, line, value) of cells that are not numbers
    non_numeric: list[tuple[int, int, int, str]] = dataclasses.field(default_factory=list)
    # ... and of empty or fractional cells in a column the user made an integer
    invalid: list[tuple[int, int, int, str]] = dataclasses.field(default_factory=list)


def _resolve(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A file, a glob pattern, a folder of ``*.csv`` files, or a list of those -> file paths."""
    items = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not items:
        raise TfprodError("no CSV path given; pass a file, a glob pattern or a folder")
    files: list[str] = []
    for item in items:
        p = os.fspath(item)
        if any(c in p for c in "*?["):
            matches = sorted(m for m in glob.glob(p) if os.path.isfile(m))
            if not matches:
                raise TfprodError(f"{p}: no files match this pattern; check the path")
            files.extend(matches)
        elif os.path.isdir(p):
            matches = sorted(glob.glob(os.path.join(p, "*.csv")))
            if not matches:
                raise TfprodError(f"{p}: folder holds no *.csv files; pass a CSV file or pattern")
            files.extend(matches)
        elif not os.path.exists(p):
            raise TfprodError(f"{p}: no such file; expected a CSV file, a glob pattern or a "
                              "folder of *.csv files")
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def _read_header(path: str, delimiter: str) -> tuple[list[str], int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                if row:
                    return row, reader.line_num
    except UnicodeDecodeError as e:
        raise TfprodError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                          "file as UTF-8") from None
    raise TfprodError(f"{path}: empty file; expected a header line of column names, then rows")


def _check_header(path: str, header: list[str], first: list[str] | None, first_path: str) -> None:
    if first is not None:
        if header != first:
            raise TfprodError(
                f"{path}: header {header[:8]} differs from {first_path} ({first[:8]}); every "
                "file must have the same columns in the same order"
            )
        return
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes:
        raise TfprodError(f"{path}: header repeats column name(s) {dupes}; rename them")
    if any(not h.strip() for h in header):
        raise TfprodError(f"{path} line 1: header has an empty column name; name every column")


def _field_count_reason(n: int, expected: int, delimiter: str) -> str:
    if n < expected:
        return f"missing column: {n} fields, expected {expected} as in the header"
    return (f"extra column: {n} fields, expected {expected} as in the header (an unquoted "
            f"{delimiter!r} inside a value?)")


def _scan_file(
    fi: int, path: str, header: list[str], columns: list[_Column], delimiter: str,
    limit: int | None, fail_fast: bool,
) -> _FileScan:
    """Checks every row (up to ``limit``) of one file and updates the column kinds."""
    _, header_line = _read_header(path, delimiter)
    scan = _FileScan(path, header_line)
    width = len(header)
    active = [i for i, c in enumerate(columns) if c.kind != _STRING_KIND]
    record, end = 0, header_line
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for _ in range(header_line):
                next(reader)
            for row in reader:
                line, end = end + 1, reader.line_num
                if end > line:
                    scan.multiline = True
                if not row:
                    scan.blank_lines = True
                    continue
                if limit is not None and record >= limit:
                    scan.complete = False
                    break
                if len(row) != width:
                    bad = _BadRow(record, line, _field_count_reason(len(row), width, delimiter))
                    if fail_fast:
                        _raise_bad_row(path, bad, None)
                    scan.bad.append(bad)
                    record += 1
                    continue
                drop = None
                for i in active:
                    v, col = row[i], columns[i]
                    if not v:
                        if col.kind in ("int32", "int64"):
                            if col.fixed:
                                col.invalid.append((fi, record, line, v))
                            else:
                                col.kind = _FLOAT_KIND  # missing integers read as NaN floats
                        continue
                    col.nonempty += 1
                    if col.kind in ("int32", "int64"):
                        if _INT(v):
                            continue
                        if _FLOAT(v):
                            if col.fixed:
                                col.invalid.append((fi, record, line, v))
                            else:
                                col.kind = _FLOAT_KIND
                            continue
                    elif _FLOAT(v):
                        continue
                    col.non_numeric.append((fi, record, line, v))
                    n = len(col.non_numeric)
                    if not col.fixed and n > 20 and n > (1 - NUMERIC_SHARE) * col.nonempty:
                        col.kind = _STRING_KIND  # clearly text, not a numeric column with typos
                        col.non_numeric.clear()
                        drop = [*(drop or []), i]
                if drop:
                    active = [i for i in active if i not in drop]
                record += 1
    except UnicodeDecodeError as e:
        raise TfprodError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                          "file as UTF-8") from None
    except csv.Error as e:
        raise TfprodError(f"{path} line {end + 1}: unreadable CSV ({e}); fix the row") from None
    scan.records = record
    if record == 0 and not scan.bad and scan.complete:
        raise TfprodError(f"{path}: header only, no data rows; expected at least one row "
                          "after the header")
    return scan


def _finish_columns(columns: list[_Column], scans: list[_FileScan]) -> None:
    """Decides the kinds of inferred columns and turns bad cells into bad rows of their file."""
    for col in columns:
        if not col.fixed and len(col.non_numeric) > (1 - NUMERIC_SHARE) * col.nonempty:
            col.kind = _STRING_KIND
            col.non_numeric.clear()
        how = "chosen in dtypes" if col.fixed else "inferred from its other values"
        for fi, record, line, value in col.non_numeric:
            scans[fi].bad.append(_BadRow(
                record, line,
                f"column {col.name!r} has {value!r}, expected a number ({col.kind}, {how})",
                f"fix the value, or read the column as text with dtypes={{{col.name!r}: "
                "'string'}"))
        for fi, record, line, value in col.invalid:
            got = "an empty cell" if not value else repr(value)
            scans[fi].bad.append(_BadRow(
                record, line, f"column {col.name!r} has {got}, expected an integer ({how})",
                f"fix the value, or use dtypes={{{col.name!r}: 'float32'}} (empty cells read "
                "as NaN)"))
    for scan in scans:
        first = {}
        for bad in sorted(scan.bad):
            first.setdefault(bad.record, bad)
        scan.bad = list(first.values())


def _raise_bad_row(path: str, bad: _BadRow, total: int | None) -> None:
    more = f" ({total} bad rows in all)" if total and total > 1 else ""
    raise TfprodError(f"{path} line {bad.line}: {bad.reason}{more}; {bad.fix}, or pass "
                      "ignore_errors=True to skip bad rows")


def _scan(files: list[str], dtypes: Mapping[str, str], delimiter: str, ignore_errors: bool
          ) -> tuple[list[str], list[_Column], list[_FileScan]]:
    header, _ = _read_header(files[0], delimiter)
    for path in files:
        _check_header(path, _read_header(path, delimiter)[0], None if path == files[0] else header,
                      files[0])
    unknown = sorted(set(dtypes) - set(header))
    if unknown:
        raise TfprodError(f"dtypes names unknown column(s) {unknown}; {files[0]} has {header}")
    columns = []
    for name in header:
        dtype = dtypes.get(name)
        if dtype is not None and dtype not in DTYPES:
            raise TfprodError(f"dtypes[{name!r}]={dtype!r}; expected one of {list(DTYPES)}")
        columns.append(_Column(name, dtype or _INT_KIND, dtype is not None))
    limit = None if ignore_errors else SCAN_ROWS
    scans = [_scan_file(fi, p, header, columns, delimiter, limit, not ignore_errors)
             for fi, p in enumerate(files)]
    _finish_columns(columns, scans)
    multiline = next((s.path for s in scans if s.multiline), None)
    blank = next((s.path for s in scans if s.blank_lines or s.header_line > 1), None)
    if multiline and blank:
        raise TfprodError(
            f"{blank}: blank lines, while quoted values span lines in {multiline} (read with "
            "CsvDataset, which fails on blank lines); remove the blank lines"
        )
    if not ignore_errors:
        bad = [(s.path, b) for s in scans for b in s.bad]
        if bad:
            _raise_bad_row(*bad[0], len(bad))
    return header, columns, scans


# ---------------------------------------------------------------------------------------- read


def _default(dtype: str) -> tf.Tensor:
    if dtype == "string":
        return tf.constant([""])
    if dtype.startswith("float"):
        return tf.constant([np.nan], tf.as_dtype(dtype))
    return tf.constant([], tf.as_dtype(dtype))  # required: an empty integer cell is an error


def read_csv(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    label: str | None = None,
    columns: Sequence[str] | None = None,
    dtypes: Mapping[str, str] | None = None,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    cache: str | None = None,
    deterministic: bool = False,
    ignore_errors: bool = False,
    delimiter: str = ",",
    validation_split: float | None = None,
    subset: str | None = None,
) -> tf.data.Dataset:
    """Reads CSV files with a header line into batches of ``{column: tensor}``.

    Every row is checked once in Python first (the first ``SCAN_ROWS`` rows of each file, or
    all of them with ``ignore_errors=True``): the number of fields against the header, and
    numbers in numeric columns. Column types are inferred from those rows: ``int64`` when every
    cell is an integer, ``float32`` when every cell is a number (at least ``NUMERIC_SHARE`` of
    them; the others are bad rows), otherwise ``string``.

    Empty cells: in a float column they read as NaN (so :func:`tfprod.data.inspect_dataset`
    reports them); an integer column with empty cells is read as ``float32`` for that reason; in
    a string column they read as ``""``. Blank lines are skipped. Quoted values may contain the
    delimiter, quotes (``""``) and line breaks.

    Args:
        path: a CSV file, a glob pattern, a folder of ``*.csv`` files, or a list of those. All
            files must have the same header.
        label: a column to return separately, as ``(features, label)`` batches.
        columns: the feature columns to read (default: all but ``label``).
        dtypes: column -> ``"int64"``, ``"int32"``, ``"float32"``, ``"float64"`` or
            ``"string"``, overriding the inferred type, e.g. ``{"zip": "string"}``.
        batch_size: rows per batch.
        shuffle: reshuffle files and rows (buffer of 10,000 rows) every epoch; ``False``
            reads the files one after the other, rows in file order.
        seed: shuffle seed; with ``deterministic=True`` the order is the same every run.
        cache: ``"memory"``, a file path prefix (for data larger than RAM), or ``None``.
        deterministic: keep a reproducible order across files (slower parallel reads).
        ignore_errors: skip bad rows instead of failing; a :class:`SkippedRecordsWarning`
            reports how many rows were skipped in which files. Every row is checked first.
            Not possible in files whose quoted values span lines.
        delimiter: the field separator, e.g. ``"\\t"`` for TSV.
        validation_split, subset: read only the ``"training"`` or ``"validation"`` side of a
            hashed split of the rows (see :mod:`tfprod.data.split`); the dataset's ``split``
            attribute then says how many rows that side has and their fingerprint.

    Returns:
        A ``tf.data.Dataset`` of ``{column: [batch] tensor}`` dicts, or ``(dict, label)``
        tuples when ``label`` is given.

    Raises:
        TfprodError: a missing path; an empty or header-only file; files with different
            headers; a row with a missing or extra field or a non-number in a numeric column
            (naming the file and line); an unknown ``label``, column or dtype.

    Example:

    >>> ds = read_csv("train.csv", label="label", batch_size=64)
    >>> features, labels = next(iter(ds))
    >>> features["pixel_0"].dtype
    tf.int64
    """
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
        raise TfprodError(f"delimiter={delimiter!r}; expected one character such as ',' or '\\t'")
    check_split(validation_split, subset)
    files = _resolve(path)
    header, cols, scans = _scan(files, dict(dtypes or {}), delimiter, ignore_errors)
    if label is not None and label not in header:
        raise TfprodError(f"label={label!r} is not a column of {files[0]}; columns: {header}")
    names = [h for h in header if h != label] if columns is None else list(columns)
    unknown = [n for n in names if n not in header]
    if unknown:
        raise TfprodError(f"columns {unknown} not in {files[0]}; columns: {header}")
    if label is not None and label in names:
        raise TfprodError(f"column {label!r} is both the label and a feature; drop it from "
                          "columns")
    if not names and label is None:
        raise TfprodError("columns=[] and no label: nothing to read; name at least one column")
    wanted = set(names) | ({label} if label is not None else set())
    select = [i for i, h in enumerate(header) if h in wanted]
    kinds = [cols[i].kind for i in select]
    defaults = [_default(k) for k in kinds]
    selected = [header[i] for i in select]
    deterministic = deterministic or not shuffle  # shuffle=False reads rows in file order
    if deterministic and seed is None:
        seed = 0
    multiline = any(s.multiline for s in scans)
    skipped = {s.path: len(s.bad) for s in scans if s.bad}
    if skipped and multiline:
        # CsvDataset (needed for quoted line breaks) cannot resume reliably after a bad row:
        # ignore_errors() on it also drops good rows that follow, so refuse rather than guess.
        path, bad = next((s.path, s.bad[0]) for s in scans if s.bad)
        raise TfprodError(
            f"{path} line {bad.line}: {bad.reason}; rows cannot be skipped when quoted values "
            f"span lines (as in {next(s.path for s in scans if s.multiline)}); {bad.fix}"
        )
    if skipped:
        warnings.warn(SkippedRecordsWarning(skipped, "row"), stacklevel=2)

    ds = tf.data.Dataset.from_tensor_slices((files, np.arange(len(files), dtype=np.int64)))
    if shuffle and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = min(len(files), 8) if shuffle else 1  # unshuffled: one file after the other
    if multiline:
        # Quoted line breaks: CsvDataset parses records, not lines (and has no bad rows here).
        def records(f, _):
            if validation_split is not None:  # the split key is the whole record
                return tf.data.experimental.CsvDataset(
                    f, [_default(c.kind) for c in cols], header=True, field_delim=delimiter)
            return tf.data.experimental.CsvDataset(
                f, defaults, header=True, field_delim=delimiter, select_cols=select)

        ds = ds.interleave(records, cycle_length=cycle)
    else:
        # Sequential on purpose: a parallel interleave of single lines halves the rows/s.
        ds = ds.interleave(_lines_reader(scans), cycle_length=cycle)
    split = None
    if validation_split is not None:
        # Taken before the cache and the shuffle, by the row as written in the file.
        key = _record_key(delimiter) if multiline else None
        ds = take_subset(ds, validation_split, subset, key=key)
        # Counted eagerly; a dataset function traced for parameter-server workers skips it.
        if all(s.complete for s in scans) and tf.executing_eagerly():
            rows, fingerprint = summarize(ds, key=key)  # a sum: the order does not matter
            split = SplitInfo(subset, validation_split, rows, fingerprint)
            if rows == 0:
                raise TfprodError(f"{files[0]}: the {subset} side of validation_split="
                                  f"{validation_split} holds no rows; use more rows or another "
                                  "validation_split")
        if multiline:
            ds = ds.map(lambda *row: tuple(row[i] for i in select))
    ds = cache_dataset(ds, cache)
    if shuffle:
        ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if not multiline:
        def decode(lines):
            return tuple(tf.io.decode_csv(lines, defaults, field_delim=delimiter,
                                          select_cols=select))

        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)

    def to_dict(*values):
        row = dict(zip(selected, values, strict=True))
        if label is None:
            return row
        y = row.pop(label)
        return {n: row[n] for n in names}, y

    ds = ds.map(to_dict, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if all(s.complete for s in scans) and (split or validation_split is None):
        # Known length: Keras shows progress and knows an epoch's steps; TF checks the count.
        rows = split.rows if split else sum(s.records - len(s.bad) for s in scans)
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
    ds = apply_options(ds.prefetch(AUTOTUNE), deterministic=deterministic)
    ds.split = split
    return ds


def _record_key(delimiter: str):
    """The split key of records parsed by ``CsvDataset`` (a batch of each field): their fields
    joined again."""
    def key(*fields):
        text = [f if f.dtype == tf.string else tf.strings.as_string(f) for f in fields]
        return tf.strings.reduce_join(tf.stack(text, axis=1), axis=1, separator=delimiter)

    return key


def _lines_reader(scans: list[_FileScan]):
    """The per-file line dataset: data lines only, without the header, blanks or bad rows."""
    header_lines = tf.constant([s.header_line for s in scans], tf.int64)
    keys = [(fi << 40) | b.line for fi, s in enumerate(scans) for b in s.bad]
    blank = any(s.blank_lines for s in scans)
    if not keys and not blank and all(s.header_line == 1 for s in scans):
        def data_lines(f, _):
            return tf.data.TextLineDataset(f).skip(1)

        return data_lines
    table = None
    if keys:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.int64), tf.ones([len(keys)], tf.int64)),
            default_value=0)

    def lines(f, fi):
        def keep(n, line):
            ok = tf.logical_and(n > header_lines[fi], tf.strings.length(line) > 0)
            if table is not None:
                ok = tf.logical_and(ok, table.lookup(tf.bitwise.left_shift(fi, 40) + n) == 0)
            return ok

        def drop_number(_, line):
            return line

        return tf.data.TextLineDataset(f).enumerate(start=1).filter(keep).map(drop_number)

    return lines


# ------------------------------------------------------------------------------- preprocessing


@dataclasses.dataclass(frozen=True)
class TabularPreprocessing:
    """Keras inputs for raw columns and preprocessing layers adapted on the training split.

    Attributes:
        inputs: column -> ``keras.Input`` of shape ``(1,)`` with the column's dtype.
        features: column -> its preprocessed tensor: normalized ``(batch, 1)`` floats, one-hot
            ``(batch, categories + 1)`` floats, or ``(batch, 1)`` int indices with
            ``categorical_mode="int"`` (index 0 is out-of-vocabulary).
        encoded: the float features concatenated, ``(batch, width)``; ``None`` when there are
            none (every column categorical with ``categorical_mode="int"``).
        layers: column -> its ``Normalization``, ``StringLookup`` or ``IntegerLookup`` layer.
        numeric: the normalized columns.
        categorical: the looked-up columns.

    Feed the model a dict of every column in ``inputs``: Keras 3 maps a dict with extra or
    missing keys onto the inputs by position, with only a warning. Give string columns as numpy
    ``object`` arrays or string tensors; Keras rejects numpy ``<U`` arrays ("Invalid dtype:
    str64").

    Example:

    >>> model = keras.Model(prep.inputs, keras.layers.Dense(1)(prep.encoded))
    >>> model.predict({"color": np.array(["red"], dtype=object), "size": np.array([1.5])})
    """

    inputs: dict[str, Any]
    features: dict[str, Any]
    encoded: Any
    layers: dict[str, keras.layers.Layer]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    def model(self, name: str = "preprocessing") -> keras.Model:
        """The preprocessing alone: raw column dict -> ``encoded``, e.g. to map over a dataset."""
        if self.encoded is None:
            raise TfprodError("no float features to encode (categorical_mode='int' for every "
                              "column); build the model from .features instead")
        return keras.Model(self.inputs, self.encoded, name=name)


def _layer_name(column: str, suffix: str) -> str:
    return column.replace("/", "_") + suffix  # Keras 3 refuses "/" in layer names


class _Moments:
    """Mean and variance in float64, shifted by the first batch's mean for stability."""

    def __init__(self) -> None:
        self.n, self.shift, self.s1, self.s2, self.bad = 0, None, 0.0, 0.0, 0

    def update(self, x: np.ndarray) -> None:
        x = x.astype(np.float64).ravel()
        finite = np.isfinite(x)
        self.bad += int(x.size - finite.sum())
        x = x[finite]
        if not x.size:
            return
        if self.shift is None:
            self.shift = float(x.mean())
        d = x - self.shift
        self.n, self.s1, self.s2 = self.n + x.size, self.s1 + d.sum(), self.s2 + (d * d).sum()

    def result(self) -> tuple[float, float]:
        mean = self.s1 / self.n
        return self.shift + mean, max(self.s2 / self.n - mean * mean, 0.0)


def preprocessing(
    data: tf.data.Dataset | str | os.PathLike | Sequence[str | os.PathLike],
    *,
    label: str | None = None,
    numeric: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    categorical_mode: str = "one_hot",
    max_categories: int | None = None,
) -> TabularPreprocessing:
    """Builds Keras inputs and preprocessing layers from the training split, in one pass.

    Numeric columns get a ``keras.layers.Normalization`` with the training mean and (population)
    variance; string columns a ``StringLookup`` and integer categorical columns an
    ``IntegerLookup``, each with the training values ordered by frequency and one
    out-of-vocabulary index (0) for values never seen in training. The layers are built from
    statistics gathered in a single pass instead of one ``adapt()`` pass per column; the result
    is the same.

    Args:
        data: the training split: a CSV path for :func:`read_csv`, or a dataset of dicts or
            ``(dict, label)`` batches such as :func:`read_csv` returns.
        label: the label column, left out of the inputs.
        numeric: columns to normalize (default: every int or float column not in
            ``categorical``).
        categorical: columns to look up (default: every string column not in ``numeric``).
            List integer codes here to one-hot them instead of normalizing them. Every column
            of ``data`` but the label must end up in one of the two lists: the model then takes
            exactly the columns :func:`read_csv` yields.
        categorical_mode: ``"one_hot"`` (part of ``encoded``) or ``"int"`` (indices in
            ``features``, e.g. for a ``keras.layers.Embedding``).
        max_categories: keep at most this many of the most frequent values per column; the
            rest share the out-of-vocabulary index.

    Returns:
        A :class:`TabularPreprocessing`.

    Raises:
        TfprodError: an unknown or string column in ``numeric``; a column in both lists or in
            neither; a numeric column with NaN/Inf (missing values) in the training data; empty
            data.

    Example:

    >>> prep = preprocessing("train.csv", label="label")
    >>> x = keras.layers.Dense(64, activation="relu")(prep.encoded)
    >>> model = keras.Model(prep.inputs, keras.layers.Dense(10)(x))
    >>> model.fit(read_csv("train.csv", label="label"), epochs=5)
    """
    if categorical_mode not in ("one_hot", "int"):
        raise TfprodError(f"categorical_mode={categorical_mode!r}; expected 'one_hot' or 'int'")
    if max_categories is not None and max_categories < 1:
        raise TfprodError(f"max_categories={max_categories}; expected a positive integer")
    if not isinstance(data, tf.data.Dataset):
        data = read_csv(data, label=label, batch_size=4096, shuffle=False)
    spec = data.element_spec
    if isinstance(spec, tuple):
        spec = spec[0]
    if not isinstance(spec, dict):
        raise TfprodError(f"dataset elements are {type(spec).__name__}; expected dicts of "
                          "columns or (dict, label) batches, as read_csv returns")
    spec = {k: s for k, s in spec.items() if k != label}
    known = sorted(spec)
    for what, given in (("numeric", numeric), ("categorical", categorical)):
        unknown = [c for c in given or () if c not in spec]
        if unknown:
            raise TfprodError(f"{what} names unknown column(s) {unknown}; columns: {known}")
    both = sorted(set(numeric or ()) & set(categorical or ()))
    if both:
        raise TfprodError(f"column(s) {both} are in both numeric and categorical; pick one")
    numeric = list(numeric) if numeric is not None else [
        c for c, s in spec.items() if s.dtype != tf.string and c not in (categorical or ())]
    categorical = list(categorical) if categorical is not None else [
        c for c, s in spec.items() if s.dtype == tf.string and c not in numeric]
    text = [c for c in numeric if spec[c].dtype == tf.string]
    if text:
        raise TfprodError(f"numeric columns {text} hold strings; list them in categorical, or "
                          "read them with dtypes={...: 'float32'}")
    # Keras 3 maps a dict with extra keys onto a model's inputs by position (with only a
    # warning), so the model must take exactly the columns the data holds.
    left_out = [c for c in spec if c not in numeric and c not in categorical]
    if left_out:
        raise TfprodError(
            f"column(s) {left_out} are in neither numeric nor categorical; list them, or read "
            "the data without them (read_csv(..., columns=[...]))"
        )
    if not numeric and not categorical:
        raise TfprodError("no columns to preprocess; name some in numeric or categorical")

    moments = {c: _Moments() for c in numeric}
    counts: dict[str, Counter] = {c: Counter() for c in categorical}
    rows = 0
    for element in data:
        x = element[0] if isinstance(element, tuple) else element
        rows += int(next(iter(x.values())).shape[0])
        for c in numeric:
            moments[c].update(x[c].numpy())
        for c in categorical:
            values, n = np.unique(x[c].numpy().ravel(), return_counts=True)
            counts[c].update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    if rows == 0:
        raise TfprodError("the training data is empty; expected at least one row")
    nonfinite = {c: m.bad for c, m in moments.items() if m.bad}
    if nonfinite:
        raise TfprodError(
            f"numeric column(s) with missing (NaN) or infinite values in the training data: "
            f"{nonfinite}; fill or drop those rows first, or leave the columns out of numeric"
        )

    inputs, features, layers = {}, {}, {}
    for c in numeric + categorical:
        dtype = "string" if spec[c].dtype == tf.string else spec[c].dtype.name
        inputs[c] = keras.Input(shape=(1,), dtype=dtype, name=_layer_name(c, ""))
    for c in numeric:
        mean, variance = moments[c].result()
        # A column constant in training (a pixel that is always 0) would be divided by
        # Keras' epsilon: a value seen later becomes ~1e7. Centred only, as scikit-learn does.
        variance = variance if variance > 0 else 1.0
        layers[c] = keras.layers.Normalization(mean=mean, variance=variance,
                                               name=_layer_name(c, "_normalization"))
        features[c] = layers[c](inputs[c])
    for c in categorical:
        ordered = sorted(counts[c].items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = [v for v, _ in ordered][:max_categories]
        if spec[c].dtype == tf.string:
            vocab = [v.decode("utf-8", "replace") for v in vocab]
            vocab = [v for v in vocab if v != "[UNK]"]  # the OOV token itself
            layer = keras.layers.StringLookup(vocabulary=vocab, output_mode=categorical_mode,
                                              name=_layer_name(c, "_lookup"))
        else:
            vocab = np.array([v for v in vocab if v != -1], np.int64)  # -1 is the OOV token
            layer = keras.layers.IntegerLookup(vocabulary=vocab, output_mode=categorical_mode,
                                               name=_layer_name(c, "_lookup"))
        layers[c] = layer
        features[c] = layer(inputs[c])
    floats = [features[c] for c in numeric]
    if categorical_mode == "one_hot":
        floats += [features[c] for c in categorical]
    if len(floats) > 1:
        encoded = keras.layers.Concatenate(name="encoded")(floats)
    else:
        encoded = floats[0] if floats else None
    return TabularPreprocessing(inputs, features, encoded, layers, tuple(numeric),
                                tuple(categorical))
