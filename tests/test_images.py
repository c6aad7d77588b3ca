"""Image folders: labels match files, every image once per epoch, splits, caches, named errors."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from tfprod.data import SkippedRecordsWarning, image_folder, list_image_folder
from tfprod.data.images import decode_ratio
from tfprod.errors import TfprodError


def _epoch(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture()
def folder(tmp_path):
    index = make_image_folder(tmp_path / "imgs", [7, 5, 9])
    return tmp_path / "imgs", index


@pytest.mark.parametrize("cache", [None, "memory", "file"])
def test_every_image_once_per_epoch_with_its_label(folder, tmp_path, cache):
    root, index = folder
    cache_arg = str(tmp_path / "cache") if cache == "file" else cache
    ds = image_folder(root, (12, 10), batch_size=4, cache=cache_arg, seed=1)
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    by_value = {(i * 3) % 256: c for i, c in index.values()}
    orders = []
    for _ in range(3):
        x, y = _epoch(ds)
        values = x[:, 0, 0, 0].astype(int)
        # Each image is a constant; its value names the file, so the label must be that file's.
        assert np.all(x == x[:, :1, :1, :1])
        assert sorted(values.tolist()) == sorted(by_value)
        assert [by_value[v] for v in values] == y.tolist()
        orders.append(values.tolist())
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled every epoch
    # The number of batches is known up front (21 images, batches of 4): a parameter-server
    # epoch and the progress bar need it; the shuffled cache once lost it through unbatch().
    assert int(ds.cardinality()) == 6


def test_deterministic_mode_gives_the_same_order_every_run(folder):
    root, _ = folder
    runs = [_epoch(image_folder(root, (12, 10), batch_size=5, deterministic=True))[1].tolist()
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_resize_and_channels(folder):
    root, _ = folder
    x, _ = _epoch(image_folder(root, (6, 4), color_mode="grayscale", batch_size=32))
    assert x.shape == (21, 6, 4, 1) and x.dtype == np.float32
    x, y = _epoch(image_folder(root, (6, 4), label_mode="categorical", batch_size=32))
    assert x.shape == (21, 6, 4, 3) and y.shape == (21, 3)
    assert sorted(y.sum(axis=0).tolist()) == [5, 7, 9]


def test_validation_split_is_disjoint_complete_and_stable(folder):
    root, index = folder
    train = list_image_folder(root, validation_split=0.3, subset="training")
    val = list_image_folder(root, validation_split=0.3, subset="validation")
    assert not set(train.files) & set(val.files)
    assert sorted(train.files + val.files) == sorted(index)
    assert 2 <= len(val.files) <= 12
    # Adding files never moves an existing file to the other split.
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "class_0" / "new.png")
    assert set(val.files) <= set(list_image_folder(
        root, validation_split=0.3, subset="validation").files)


def test_jpeg_is_decoded_at_reduced_scale_when_much_larger(tmp_path):
    make_image_folder(tmp_path / "big", [3], size=(256, 256), fmt="jpeg")
    files = list_image_folder(tmp_path / "big").files
    assert decode_ratio(files, (64, 64)) == 4
    assert decode_ratio(files, (100, 100)) == 2
    assert decode_ratio(files, (200, 200)) == 1
    x, _ = _epoch(image_folder(tmp_path / "big", (64, 64)))
    assert x.shape == (3, 64, 64, 3)
    # Constant images stay constant (within JPEG error) through the reduced-scale decode.
    assert np.abs(x - x[:, :1, :1, :]).max() <= 2


def test_sample_digits_match_their_folders(digits_dirs):
    ds = image_folder(digits_dirs["png"]["test"], (32, 32), color_mode="grayscale",
                      shuffle=False, cache=None)
    x, y = _epoch(ds)
    expected = [int(os.path.basename(os.path.dirname(f))) for f in ds.file_paths]
    assert y.tolist() == expected
    assert len(y) == 359 and x.max() == 255.0


# ------------------------------------------------------------------------------------ bad input


def test_missing_path(tmp_path):
    with pytest.raises(TfprodError, match="nope: no such folder"):
        image_folder(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TfprodError, match="has no class subfolders"):
        image_folder(tmp_path / "empty")


def test_class_folder_without_images_is_named(folder):
    root, _ = folder
    (root / "class_3").mkdir()
    (root / "class_3" / "notes.txt").write_text("x")
    with pytest.raises(TfprodError, match="class_3: class folder has no images"):
        image_folder(root)


@pytest.mark.parametrize("damage", ["truncate", "empty", "text"])
def test_broken_image_is_named_before_the_epoch(folder, damage):
    root, index = folder
    victim = sorted(index)[4]
    data = Path(victim).read_bytes()
    Path(victim).write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                              "text": b"not an image at all"}[damage])
    with pytest.raises(TfprodError, match=f"{os.path.basename(victim)}: empty, truncated or "
                       "not an image.*ignore_errors=True"):
        image_folder(root)


def test_ignore_errors_skips_and_reports_each_file(folder):
    root, index = folder
    victims = sorted(index)[2:4]
    for v in victims:
        with open(v, "r+b") as f:
            f.truncate(30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = image_folder(root, (12, 10), ignore_errors=True)
    (report,) = [w.message for w in caught if issubclass(w.category, SkippedRecordsWarning)]
    assert set(report.skipped) == set(victims) and report.total == 2
    x, _ = _epoch(ds)
    assert len(x) == len(index) - 2
    assert int(ds.cardinality()) == -(-(len(index) - 2) // 32)


def test_corrupt_inside_a_whole_looking_file_is_skipped_when_asked(folder):
    root, index = folder
    victim = sorted(index)[0]
    data = bytearray(Path(victim).read_bytes())
    # Keep the PNG signature and IEND trailer (passes the cheap check), wreck the middle.
    data[16:-12] = b"\x00" * (len(data) - 28)
    Path(victim).write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = image_folder(root, (12, 10), ignore_errors=True)
    (report,) = [w.message for w in caught if issubclass(w.category, SkippedRecordsWarning)]
    assert list(report.skipped) == [victim]
    assert len(_epoch(ds)[0]) == len(index) - 1


@pytest.mark.parametrize("kwargs, message", [
    ({"color_mode": "cmyk"}, "color_mode='cmyk'"),
    ({"label_mode": "binary"}, "label_mode='binary'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"validation_split": 1.5, "subset": "training"}, "validation_split=1.5"),
    ({"validation_split": 0.2}, "subset=None"),
    ({"subset": "training"}, "subset needs validation_split"),
])
def test_bad_arguments(folder, kwargs, message):
    with pytest.raises(TfprodError, match=message):
        image_folder(folder[0], **kwargs)


def test_every_reader_runs_with_tf_data_autotuning_off(digits_dirs):
    """The per-epoch stall fix (tfprod.data.options.apply_options): the autotuner's thread is
    off in every pipeline tfprod builds, whatever else the options say."""
    from tfprod.data import read_csv, read_tfrecords

    pipelines = {
        "images": image_folder(digits_dirs["png"]["train"], (8, 8)),
        "images, deterministic": image_folder(digits_dirs["png"]["train"], (8, 8),
                                              deterministic=True),
        "csv": read_csv(digits_dirs["csv"]["train"], label="label"),
        "tfrecord": read_tfrecords(digits_dirs["tfrecord"]["train"], label="label"),
    }
    for name, ds in pipelines.items():
        options = ds.options()
        assert options.autotune.enabled is False, name
        assert options.experimental_optimization.map_parallelization is True, name
    assert pipelines["images"].options().deterministic is False
    assert pipelines["images, deterministic"].options().deterministic is True


def test_the_image_cache_holds_uint8_pixels(tmp_path):
    """Cached decoded images are uint8 (a quarter of float32's bytes) and become float32 per
    batch after the cache; the file cache's size shows which was stored."""
    make_image_folder(tmp_path / "imgs", [40, 40], size=(32, 32))
    ds = image_folder(tmp_path / "imgs", (32, 32), batch_size=16, cache=str(tmp_path / "c"),
                      shuffle=False)
    first = _epoch(ds)
    assert ds.element_spec[0].dtype.name == "float32"
    cached = sum(f.stat().st_size for f in tmp_path.glob("c*.data*"))
    pixels = 80 * 32 * 32 * 3
    assert pixels <= cached < 1.5 * pixels, cached  # float32 would be 4 * pixels
    again = _epoch(ds)  # the second epoch reads the cache: the same images and labels
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
