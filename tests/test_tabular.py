"""read_csv reads every row once with the right types, fails on bad rows by file and line, and
preprocessing() puts training-split statistics inside a model that survives a .keras round trip."""

import csv
import math
import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.data.sample import write_sample
from tfprod.data.skipped import SkippedRecordsWarning
from tfprod.data.tabular import TabularPreprocessing, preprocessing, read_csv
from tfprod.errors import TfprodError


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("tabular") / "csv", "csv")


def write(path, text):
    path.write_text(text)
    return str(path)


def csv_rows(path):
    """The data rows as Python's csv module reads them, numbers as ints."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [tuple(int(v) for v in row) for row in reader]


def epoch_rows(ds, header, label=None):
    """One epoch as row tuples in header order (the label in its own column)."""
    rows = []
    for element in ds:
        x, y = element if label is not None else (element, None)
        columns = {k: v.numpy() for k, v in x.items()}
        if label is not None:
            columns[label] = y.numpy()
        rows.extend(zip(*(columns[h].tolist() for h in header), strict=True))
    return rows


def as_text(values):
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


# ------------------------------------------------------------------------------------ contents


def test_every_row_once_per_epoch_shuffled_differently(digits):
    header, expected = csv_rows(digits["train"])
    ds = read_csv(digits["train"], label="label", batch_size=100, seed=1)
    first, second = epoch_rows(ds, header, "label"), epoch_rows(ds, header, "label")
    assert sorted(first) == sorted(expected)
    assert sorted(second) == sorted(expected)
    assert first != second  # reshuffled each epoch
    assert first != expected


def test_labels_and_features_stay_together(digits):
    header, expected = csv_rows(digits["test"])
    ds = read_csv(digits["test"], label="label", batch_size=64, shuffle=False)
    x, y = next(iter(ds))
    assert list(x) == header[:-1]  # the label is not a feature
    assert y.dtype == tf.int64 and x["pixel_10"].dtype == tf.int64
    assert epoch_rows(ds, header, "label") == expected  # file order without shuffle


def test_deterministic_repeats_the_order(digits):
    header, _ = csv_rows(digits["train"])
    runs = [read_csv(digits["train"], label="label", batch_size=50, seed=7, deterministic=True)
            for _ in range(2)]
    assert epoch_rows(runs[0], header, "label") == epoch_rows(runs[1], header, "label")
    assert epoch_rows(runs[0], header, "label") == epoch_rows(runs[1], header, "label")


def test_cache_keeps_contents(digits, tmp_path):
    header, expected = csv_rows(digits["test"])
    for cache in ("memory", str(tmp_path / "cache")):
        ds = read_csv(digits["test"], label="label", cache=cache)
        for _ in range(2):
            assert sorted(epoch_rows(ds, header, "label")) == sorted(expected)


def test_dtypes_inferred_and_empty_cells(tmp_path):
    path = write(tmp_path / "t.csv",
                 "i,f,s,i_gap,f_gap,s_gap\n"
                 "1,0.5,red,4,1.5,x\n"
                 "-2,1e3,blue,,,\n"
                 "3,7,green,6,2,z\n")
    ds = read_csv(path, batch_size=8, shuffle=False)
    spec = {k: v.dtype for k, v in ds.element_spec.items()}
    assert spec == {"i": tf.int64, "f": tf.float32, "s": tf.string,
                    "i_gap": tf.float32, "f_gap": tf.float32, "s_gap": tf.string}
    b = {k: v.numpy() for k, v in next(iter(ds)).items()}
    assert b["i"].tolist() == [1, -2, 3]
    assert b["f"].tolist() == [0.5, 1000.0, 7.0]
    assert as_text(b["s"]) == ["red", "blue", "green"]
    # Missing numbers are NaN, never a silent 0; missing text is "".
    assert b["i_gap"][0] == 4 and math.isnan(b["i_gap"][1]) and b["i_gap"][2] == 6
    assert math.isnan(b["f_gap"][1])
    assert as_text(b["s_gap"]) == ["x", "", "z"]


def test_dtypes_override_and_columns(tmp_path):
    path = write(tmp_path / "t.csv", "zip,f,y\n02139,0.5,1\n10001,1.5,0\n")
    ds = read_csv(path, label="y", columns=["zip"], dtypes={"zip": "string", "y": "int32"},
                  shuffle=False)
    x, y = next(iter(ds))
    assert list(x) == ["zip"]
    assert as_text(x["zip"].numpy()) == ["02139", "10001"]
    assert y.dtype == tf.int32 and y.numpy().tolist() == [1, 0]
    ds = read_csv(path, dtypes={"f": "float64"}, shuffle=False)
    assert ds.element_spec["f"].dtype == tf.float64


def test_many_files_by_glob_folder_and_list(tmp_path):
    a = write(tmp_path / "a.csv", "x,y\n1,10\n2,20\n")
    b = write(tmp_path / "b.csv", "x,y\n3,30\n4,40\n5,50\n")
    expected = [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]
    for path in (str(tmp_path / "*.csv"), tmp_path, [a, b]):
        ds = read_csv(path, batch_size=2, seed=0)
        assert sorted(epoch_rows(ds, ["x", "y"])) == expected
    assert epoch_rows(read_csv([b, a], shuffle=False), ["x", "y"]) == expected[2:] + expected[:2]


def test_quoted_values_and_blank_lines(tmp_path):
    path = write(tmp_path / "q.csv",
                 'n,text\n1,"a, b"\n\n2,"say ""hi"""\n3,plain\n\n')
    ds = read_csv(path, shuffle=False)
    rows = epoch_rows(ds, ["n", "text"])
    assert rows == [(1, b"a, b"), (2, b'say "hi"'), (3, b"plain")]
    multiline = write(tmp_path / "m.csv", 'n,text\n1,"two\nlines"\n2,one\n')
    assert epoch_rows(read_csv(multiline, shuffle=False), ["n", "text"]) == [
        (1, b"two\nlines"), (2, b"one")]


def test_tab_delimiter_and_crlf(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"a\tb\r\n1\tx\r\n2\ty\r\n")
    rows = epoch_rows(read_csv(path, delimiter="\t", shuffle=False), ["a", "b"])
    assert rows == [(1, b"x"), (2, b"y")]


# ------------------------------------------------------------------------------------ bad input


def bad_file(tmp_path, text):
    return write(tmp_path / "bad.csv", text)


GOOD = [f"{i},{i * 0.5},c{i % 3}\n" for i in range(30)]
TYPO = "a,b,c\n" + "".join(GOOD[:10]) + "7,abc,x\n" + "".join(GOOD[10:])  # on line 12


@pytest.mark.parametrize("text, kwargs, pattern", [
    ("", {}, r"bad\.csv: empty file; expected a header"),
    ("\n\n", {}, r"bad\.csv: empty file"),
    ("a,b,c\n", {}, r"bad\.csv: header only, no data rows"),
    ("a,b,c\n1,2,3\n4,5\n6,7,8\n", {},
     r"bad\.csv line 3: missing column: 2 fields, expected 3 .*ignore_errors=True"),
    ("a,b,c\n1,2,3\n4,5,6\n6,7,8,9\n", {},
     r"bad\.csv line 4: extra column: 4 fields, expected 3"),
    (TYPO, {}, r"bad\.csv line 12: column 'b' has 'abc', expected a number \(float32, inferred"),
    ("a,b,c\n1,2,x\n3,oops,y\n", {"dtypes": {"b": "float32"}},
     r"bad\.csv line 3: column 'b' has 'oops', expected a number .*dtypes=\{'b': 'string'\}"),
    ("a,b,c\n1,2,x\n3,,y\n", {"dtypes": {"b": "int64"}},
     r"bad\.csv line 3: column 'b' has an empty cell, expected an integer"),
    ("a,b,c\n1,2,x\n", {"label": "target"},
     r"label='target' is not a column of .*bad\.csv; columns: \['a', 'b', 'c'\]"),
    ("a,b,c\n1,2,x\n", {"columns": ["a", "d"]}, r"columns \['d'\] not in"),
    ("a,b,c\n1,2,x\n", {"dtypes": {"b": "float16"}}, r"dtypes\['b'\]='float16'; expected"),
    ("a,a,c\n1,2,x\n", {}, r"header repeats column name\(s\) \['a'\]"),
])
def test_bad_input_names_file_and_line(tmp_path, text, kwargs, pattern):
    path = bad_file(tmp_path, text)
    with pytest.raises(TfprodError, match=pattern) as e:
        read_csv(path, **kwargs)
    assert "\n" not in str(e.value)


def test_missing_path_and_mismatched_headers(tmp_path):
    with pytest.raises(TfprodError, match=r"nope\.csv: no such file"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(TfprodError, match=r"\*\.csv: no files match"):
        read_csv(str(tmp_path / "*.csv"))
    write(tmp_path / "a.csv", "x,y\n1,2\n")
    write(tmp_path / "b.csv", "x,z\n1,2\n")
    with pytest.raises(TfprodError, match=r"b\.csv: header \['x', 'z'\] differs from .*a\.csv"):
        read_csv(str(tmp_path / "*.csv"))


def test_bad_row_past_the_scan_fails_in_tf(tmp_path, monkeypatch):
    from tfprod.data import tabular

    monkeypatch.setattr(tabular, "SCAN_ROWS", 5)
    path = bad_file(tmp_path, "a,b\n" + "1,2\n" * 10 + "3\n")
    ds = read_csv(path, shuffle=False)  # the bad row is past the checked rows
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expect 2 fields"):
        list(ds)


def read_ignoring(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_csv(path, ignore_errors=True, shuffle=False, **kwargs)
    skipped = [w.message for w in caught if issubclass(w.category, SkippedRecordsWarning)]
    return ds, skipped


@pytest.mark.parametrize("multiline", [False, True])
def test_ignore_errors_skips_exactly_the_bad_rows(tmp_path, multiline):
    text = '"hello\nworld"' if multiline else "hello"
    good_a = [f"{i},{i}.5,{text if i == 3 else 'w'}" for i in range(40)]
    lines_a = good_a[:10] + ["99,1.5"] + good_a[10:20] + ["98,2.5,x,extra"] + good_a[20:] + [
        "97,abc,y", "96,,z"]  # a short, a long and a non-numeric row; an empty float is NaN
    a = write(tmp_path / "a.csv", "i,f,s\n" + "\n".join(lines_a) + "\n")
    b = write(tmp_path / "b.csv", "i,f,s\n1,2,x\n1.5,3,y\n")  # int column: '1.5' -> float
    c = write(tmp_path / "c.csv", "i,f,s\n5,6\n7,8,z\n")
    if multiline:  # CsvDataset cannot resume after a bad row: refuse instead of dropping more
        with pytest.raises(TfprodError, match=r"a\.csv line 13: missing column.*cannot be skip"):
            read_csv([a, b, c], dtypes={"i": "int64"}, ignore_errors=True)
        return
    ds, skipped = read_ignoring([a, b, c], dtypes={"i": "int64"})
    assert len(skipped) == 1
    assert skipped[0].skipped == {a: 3, b: 1, c: 1}
    assert "skipped 5 unreadable row(s): a.csv (3), b.csv (1), c.csv (1)" in str(skipped[0])
    rows = epoch_rows(ds, ["i", "f", "s"])
    expected = [(i, i + 0.5, (b"hello\nworld" if multiline else b"hello") if i == 3 else b"w")
                for i in range(40)] + [(96, None, b"z"), (1, 2.0, b"x"), (7, 8.0, b"z")]
    assert len(rows) == len(expected)
    clean = [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r)
             for r in rows]
    assert sorted(clean, key=str) == sorted(expected, key=str)


def test_ignore_errors_without_bad_rows_warns_nothing(digits):
    ds, skipped = read_ignoring(digits["test"], label="label")
    assert skipped == []
    assert sum(len(y) for _, y in ds) == len(csv_rows(digits["test"])[1])


# --------------------------------------------------------------------------------- preprocessing


def test_normalization_statistics_equal_numpy(digits):
    header, rows = csv_rows(digits["train"])
    data = np.array(rows, np.float64)
    prep = preprocessing(digits["train"], label="label")
    assert isinstance(prep, TabularPreprocessing)
    assert prep.numeric == tuple(header[:-1]) and prep.categorical == ()
    assert prep.inputs["pixel_0"].dtype == "int64" and prep.encoded.shape == (None, 64)
    for j, name in enumerate(header[:-1]):
        layer = prep.layers[name]
        assert isinstance(layer, keras.layers.Normalization)
        np.testing.assert_allclose(float(np.ravel(layer.mean)[0]), data[:, j].mean(), atol=1e-5)
        # Constant columns (pixel_0 is always 0) keep variance 1: centred, not divided by ~0.
        np.testing.assert_allclose(float(np.ravel(layer.variance)[0]), data[:, j].var() or 1.0,
                                   atol=1e-5)


def test_a_column_constant_in_training_stays_finite_on_new_values(tmp_path):
    # Regression: variance 0 made Normalization divide by Keras' epsilon, so a pixel that was
    # always 0 in training turned a later value of 16 into 1.6e8 and the loss into thousands.
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"0,{i},{i % 2}\n" for i in range(20)))
    prep = preprocessing(str(path), label="label")
    out = prep.model()({"a": np.array([[16]]), "b": np.array([[3]])})
    assert float(np.max(np.abs(out))) == pytest.approx(16.0)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 400
    color = rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])
    code = rng.choice([10, 20, 30], n)
    size = rng.normal(5.0, 2.0, n).round(3)
    y = ((color == "red") ^ (code == 20)).astype(int)
    path = tmp_path_factory.mktemp("mixed") / "mixed.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["color", "code", "size", "y"])
        w.writerows(zip(color, code, size, y, strict=True))
    return str(path), color, code, size


def test_lookups_map_unseen_values_to_oov(mixed):
    path, color, code, size = mixed
    prep = preprocessing(path, label="y", categorical=["color", "code"], categorical_mode="int")
    assert prep.numeric == ("size",) and prep.categorical == ("color", "code")
    assert isinstance(prep.layers["color"], keras.layers.StringLookup)
    assert isinstance(prep.layers["code"], keras.layers.IntegerLookup)
    assert prep.layers["color"].get_vocabulary()[1:] == ["red", "green", "blue"]  # by frequency
    model = keras.Model(prep.inputs, [prep.features["color"], prep.features["code"]])
    raw = {"color": np.array(["blue", "purple"], dtype=object), "code": np.array([30, 99]),
           "size": np.array([1.0, 2.0], np.float32)}
    color_idx, code_idx = model.predict(raw, verbose=0)
    assert color_idx.ravel().tolist() == [3, 0]  # 0 is out-of-vocabulary
    assert code_idx.ravel()[1] == 0 and code_idx.ravel()[0] > 0
    onehot = preprocessing(path, label="y", categorical=["color", "code"])
    width = 1 + len(onehot.layers["color"].get_vocabulary()) + 4
    assert onehot.encoded.shape == (None, width)
    out = onehot.model()(raw)
    np.testing.assert_array_equal(out.numpy()[1, 1:5], [1, 0, 0, 0])  # purple -> OOV slot


def test_model_with_preprocessing_inside_trains_and_round_trips(digits, tmp_path):
    keras.utils.set_random_seed(0)
    prep = preprocessing(digits["train"], label="label")
    hidden = keras.layers.Dense(32, activation="relu")(prep.encoded)
    model = keras.Model(prep.inputs, keras.layers.Dense(10)(hidden))
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(read_csv(digits["train"], label="label", seed=0), epochs=5, verbose=0)
    _, accuracy = model.evaluate(read_csv(digits["test"], label="label", shuffle=False),
                                 verbose=0)
    assert accuracy > 0.85

    header, rows = csv_rows(digits["test"])
    raw = {h: np.array([r[j] for r in rows[:50]], np.int64) for j, h in enumerate(header[:-1])}
    before = model(raw).numpy()  # a direct call: predict() would trace 64 inputs again
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(raw).numpy(), before)


def test_mixed_model_round_trips_with_string_inputs(mixed, tmp_path):
    path, *_ = mixed
    with pytest.raises(TfprodError, match=r"\['color'\] are in neither numeric nor categ"):
        preprocessing(path, label="y", categorical=["code"])
    prep = preprocessing(path, label="y", categorical=["code", "color"])
    model = keras.Model(prep.inputs, keras.layers.Dense(1)(prep.encoded))
    raw = {"color": np.array(["red", "teal"], dtype=object), "code": np.array([20, 5]),
           "size": np.array([4.0, 6.5], np.float32)}
    before = model.predict(raw, verbose=0)
    model.save(tmp_path / "mixed.keras")
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "mixed.keras").predict(raw, verbose=0), before)


def test_preprocessing_rejects_missing_numbers_and_bad_columns(tmp_path, mixed):
    path = write(tmp_path / "gap.csv", "a,b\n1,2\n,3\n4,5\n")
    with pytest.raises(TfprodError, match=re.escape("missing (NaN)") + r".*\{'a': 1\}"):
        preprocessing(path)
    with pytest.raises(TfprodError, match=r"numeric columns \['color'\] hold strings"):
        preprocessing(mixed[0], label="y", numeric=["color"])
    with pytest.raises(TfprodError, match=r"categorical names unknown column\(s\) \['nope'\]"):
        preprocessing(mixed[0], label="y", categorical=["nope"])
    assert os.path.exists(path)
