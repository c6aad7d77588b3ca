"""Mergeable profiles and the dataset loaders of tfprod.monitor."""

import numpy as np
import pytest

from tfprod.errors import TfprodError
from tfprod.monitor import Profile, load_dataset


def _table(rng, n):
    return {"x": rng.standard_normal(n) * 3 + 1, "k": rng.integers(0, 5, n),
            "img": rng.integers(0, 255, (n, 4, 4, 1)).astype(np.uint8),
            "t": rng.choice(["a", "b", ""], n).astype(object)}


def test_merged_profiles_equal_the_profile_of_the_whole():
    rng = np.random.default_rng(0)
    a, b, c = _table(rng, 3000), _table(rng, 1200), _table(rng, 50)
    whole = {k: np.concatenate([a[k], b[k], c[k]]) for k in a}
    merged = Profile.of(a, capacity=500).merge(Profile.of(b, capacity=500)).merge(
        Profile.of(c, capacity=500))
    direct = Profile.of(whole, capacity=500)
    assert merged.rows == direct.rows == 4250
    for name in whole:
        m, d = merged.summaries[name], direct.summaries[name]
        assert (m.count, m.missing, m.minimum, m.maximum, m.categories) == \
            (d.count, d.missing, d.minimum, d.maximum, d.categories)
        assert m.mean == pytest.approx(d.mean, rel=1e-12, abs=1e-12)
        assert m.m2 == pytest.approx(d.m2, rel=1e-10)
    assert merged.summaries["t"].missing == int(np.sum(whole["t"] == ""))
    assert merged.summaries["x"].std == pytest.approx(np.std(whole["x"]))
    assert len(merged.keys) == 500 and merged.sample["img"].shape == (500, 4, 4, 1)


def test_merged_sample_is_uniform_over_the_union():
    rng = np.random.default_rng(1)
    a = {"shard": np.zeros(9000)}
    b = {"shard": np.ones(1000)}
    shares = [Profile.of(a, capacity=1000, seed=s).merge(
        Profile.of(b, capacity=1000, seed=100 + s)).sample["shard"].mean() for s in range(20)]
    assert np.mean(shares) == pytest.approx(0.1, abs=0.01)
    assert rng is not None


def test_profile_file_round_trip_and_drift_on_it(tmp_path):
    from tfprod.monitor import detect_drift

    rng = np.random.default_rng(2)
    profile = Profile.of(_table(rng, 2000), extras={"labels": rng.integers(0, 2, 2000)})
    path = profile.save(tmp_path / "ref.profile.npz")
    back = Profile.load(path)
    assert back.summaries == profile.summaries and back.rows == 2000
    for k in profile.sample:
        assert np.array_equal(back.sample[k], profile.sample[k])
    data = load_dataset(path)
    assert data.labels is not None and len(data.labels) == 2000
    assert not detect_drift(data, _table(rng, 2000)).dataset_drift


def test_merging_different_features_gets_one_line():
    rng = np.random.default_rng(3)
    with pytest.raises(TfprodError, match="different features"):
        Profile.of({"x": rng.random(5)}).merge(Profile.of({"y": rng.random(5)}))


def test_loaders_read_every_format(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    got = load_dataset(tmp_path / "a.npy").features
    assert list(got) == ["c0", "c1", "c2"] and np.array_equal(got["c1"], x[:, 1])
    np.savez(tmp_path / "b.npz", image=np.zeros((5, 2, 2, 1)), label=np.arange(5))
    d = load_dataset(tmp_path / "b.npz", label="label")
    assert list(d.features) == ["image"] and d.labels.tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "c.csv").write_text("a,b,color\n1,2.5,red\n3,4.5,blue\n")
    c = load_dataset(tmp_path / "c.csv").features
    assert c["a"].tolist() == [1, 3] and c["b"].dtype.kind == "f"
    assert c["color"].tolist() == ["red", "blue"]


def test_a_tfrecord_folder_loads(tmp_path):
    from tfprod.data import write_tfrecords

    rng = np.random.default_rng(5)
    x = rng.standard_normal(40).astype(np.float32)
    write_tfrecords(tmp_path / "rec", {"x": x, "y": np.arange(40)})
    d = load_dataset(tmp_path / "rec", label="y")
    assert sorted(d.labels.tolist()) == list(range(40))
    assert np.allclose(np.sort(d.features["x"].ravel()), np.sort(x))


def test_bad_sources_get_one_line(tmp_path):
    with pytest.raises(TfprodError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(TfprodError, match="unknown format"):
        load_dataset(tmp_path / "x.txt")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(TfprodError, match="not a readable .npy"):
        load_dataset(tmp_path / "bad.npy")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(TfprodError, match="no reference sample"):
        load_dataset(tmp_path)


def test_parquet_and_a_version_folder_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfprod.export.reference import write_reference_sample

    pq.write_table(pa.table({"x": [1.5, 2.5, 3.5], "color": ["r", "g", "b"]}),
                   tmp_path / "t.parquet")
    d = load_dataset(tmp_path / "t.parquet").features
    assert d["x"].tolist() == [1.5, 2.5, 3.5] and d["color"].tolist() == ["r", "g", "b"]
    version = tmp_path / "base" / "3"
    rng = np.random.default_rng(6)
    x, p = rng.standard_normal((7000, 2)).astype(np.float32), rng.random((7000, 4))
    write_reference_sample(version, {"x": x}, {"probabilities": p}, np.arange(7000) % 4)
    (version / "saved_model.pb").write_bytes(b"")
    for path in (version, tmp_path / "base"):  # a version folder or its base path (newest)
        ref = load_dataset(path)
        assert ref.features["x"].shape == (5000, 2) and ref.predictions["probabilities"].shape \
            == (5000, 4) and ref.labels.shape == (5000,)
        rows = {tuple(r) for r in x.tolist()}
        assert all(tuple(r) in rows for r in ref.features["x"][:50].tolist())
