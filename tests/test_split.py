"""The hashed validation split of CSV and TFRecord data: disjoint, complete, stable, no leaks."""

import subprocess
import sys

import numpy as np
import pytest

from tfprod.data import read_csv, read_tfrecords, write_tfrecords
from tfprod.data.split import in_subset
from tfprod.errors import TfprodError


def _rows(ds):
    """Every example as a tuple of its values (as text), features then label."""
    parts = []
    for x, y in ds:
        n = len(y)
        columns = [x[k].numpy().reshape(n, -1) for k in sorted(x)] + [y.numpy().reshape(n, -1)]
        parts.append(np.concatenate([c.astype(str) for c in columns], axis=1))
    return [tuple(r) for r in np.concatenate(parts)]


def _sides(read, path, share=0.2):
    return [read(path, label="label", batch_size=16, validation_split=share, subset=s)
            for s in ("training", "validation")]


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_split_is_disjoint_complete_and_sized(own_tables, fmt):
    read = read_csv if fmt == "csv" else read_tfrecords
    path = own_tables["wine"][fmt]
    train, val = _sides(read, path)
    a, b = _rows(train), _rows(val)
    everything = _rows(read(path, label="label", batch_size=64, shuffle=False))
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(everything) and len(everything) == 178
    assert train.split.rows == len(a) and val.split.rows == len(b)
    assert 0.1 < len(b) / 178 < 0.3
    # Known lengths (progress bars, parameter-server epochs).
    assert int(train.cardinality()) == -(-len(a) // 16)


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_split_is_stable_across_reads_seeds_and_processes(own_tables, fmt):
    read = read_csv if fmt == "csv" else read_tfrecords
    path = own_tables["wine"][fmt]
    first = read(path, label="label", validation_split=0.2, subset="validation", seed=1)
    again = read(path, label="label", validation_split=0.2, subset="validation", seed=7,
                 batch_size=5)
    assert first.split.fingerprint == again.split.fingerprint
    assert sorted(_rows(first)) == sorted(_rows(again))
    if fmt == "tfrecord":
        return  # one process check is enough (the multi-worker test runs more)
    code = (f"from tfprod.data import {read.__name__}; ds = {read.__name__}({path!r}, "
            "label='label', validation_split=0.2, subset='validation'); "
            "print(ds.split.rows, ds.split.fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(first.split.rows), first.split.fingerprint]


def test_label_only_reads_draw_the_same_split(own_tables):
    # Task inference reads the label column alone; its rows must be the training side's.
    path = own_tables["wine"]["csv"]
    full = read_csv(path, label="label", validation_split=0.2, subset="validation",
                    shuffle=False)
    labels = read_csv(path, label="label", columns=[], validation_split=0.2,
                      subset="validation", shuffle=False)
    assert labels.split == full.split
    assert np.concatenate([y for _, y in labels]).tolist() == \
        np.concatenate([y for _, y in full]).tolist()


def test_duplicate_rows_land_on_the_same_side(tmp_path):
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b}" for a, b in zip(rng.normal(size=100), rng.integers(0, 2, 100),
                                           strict=True)]
    path = tmp_path / "dupes.csv"
    path.write_text("a,label\n" + "\n".join(rows + rows[:40]) + "\n")  # 40 rows twice
    train, val = _sides(read_csv, str(path), share=0.3)
    a, b = _rows(train), _rows(val)
    assert not set(a) & set(b)
    assert len(a) + len(b) == 140


def test_split_of_multiline_csv_and_tfrecord_shards(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text("text,label\n" + "".join(f'"line {i}\nmore",{i % 2}\n' for i in range(60)))
    train, val = _sides(read_csv, str(path), share=0.5)
    texts = [x["text"].numpy().tolist() for x, _ in train] + \
        [x["text"].numpy().tolist() for x, _ in val]
    flat = sorted(t for batch in texts for t in batch)
    assert flat == sorted(f"line {i}\nmore".encode() for i in range(60))
    write_tfrecords(tmp_path / "rec", {"x": np.arange(50, dtype=np.float32),
                                       "label": np.arange(50) % 2}, num_shards=3)
    train, val = _sides(read_tfrecords, str(tmp_path / "rec"), share=0.5)
    xs = sorted(np.concatenate([x["x"].numpy() for x, _ in train]).tolist() +
                np.concatenate([x["x"].numpy() for x, _ in val]).tolist())
    assert xs == list(range(50))


def test_in_subset_is_a_fixed_function_of_the_bytes():
    import tensorflow as tf

    keys = tf.constant([b"a,1", b"b,2", b"c,3", b"a,1"])
    val = in_subset(keys, 0.5, "validation").numpy()
    train = in_subset(keys, 0.5, "training").numpy()
    assert (val ^ train).all() and val[0] == val[3]


@pytest.mark.parametrize("kwargs, message", [
    ({"validation_split": 1.5, "subset": "training"}, "expected a value in (0, 1)"),
    ({"validation_split": 0.2, "subset": "test"}, "expected 'training' or 'validation'"),
    ({"subset": "training"}, "subset needs validation_split"),
])
def test_bad_split_arguments(own_tables, kwargs, message):
    with pytest.raises(TfprodError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_csv(own_tables["wine"]["csv"], label="label", **kwargs)
