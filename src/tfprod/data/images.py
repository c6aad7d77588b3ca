"""Image folders (one subfolder per class) -> fast batches of (image, label).

The pipeline decodes in parallel, decodes JPEGs at a reduced scale when the target is much
smaller than the source (``ratio`` 2/4/8: the IDCT does the downscaling almost for free), caches
the decoded images in memory or in a file, reshuffles every epoch and prefetches.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfprod.data.options import apply_options, cache_dataset
from tfprod.data.skipped import SkippedRecordsWarning
from tfprod.errors import TfprodError

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_CHANNELS = {"rgb": 3, "grayscale": 1, "rgba": 4}


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The files of an image folder, their labels and class names (sorted subfolder names)."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def _sniff(path: str) -> str | None:
    """The format of an image file from its first and last bytes, or None if it is not whole.

    Cheap (two small reads), so every file is checked before the pipeline starts and a broken
    file is reported by name instead of failing an epoch half way through.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 64))
            tail = f.read(64)
    except OSError:
        return None
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg" if b"\xff\xd9" in tail else None
    if head == b"\x89PNG\r\n\x1a\n":
        return "png" if b"IEND" in tail else None
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"GIF8",):
        return "gif"
    return None


def list_image_folder(
    path: str | os.PathLike,
    *,
    validation_split: float | None = None,
    subset: str | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageFolder:
    """Lists ``path/<class>/<image>`` files (sorted), with labels from the sorted class folders.

    ``validation_split`` with ``subset="training"|"validation"`` splits by a stable hash of each
    file's relative path: the split of a file never changes when files are added.

    Raises:
        TfprodError: a missing path, a folder with no class subfolders, a class folder with
            no images.
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        raise TfprodError(f"{root}: no such folder; expected an image folder (one subfolder "
                          "per class)")
    if not os.path.isdir(root):
        raise TfprodError(f"{root} is a file; expected a folder with one subfolder per class")
    found = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if class_names is None:
        class_names = found
    else:
        missing = [c for c in class_names if c not in found]
        if missing:
            raise TfprodError(f"{root}: class folder(s) {missing} not found; found {found}")
    if not class_names:
        raise TfprodError(f"{root} has no class subfolders; expected {root}/<class>/<image>")
    if validation_split is not None:
        if not 0 < validation_split < 1:
            raise TfprodError(f"validation_split={validation_split}; expected a value in (0, 1)")
        if subset not in ("training", "validation"):
            raise TfprodError(f"subset={subset!r}; expected 'training' or 'validation' with "
                              "validation_split")
    elif subset is not None:
        raise TfprodError("subset needs validation_split (e.g. validation_split=0.2)")
    files, labels = [], []
    for index, name in enumerate(class_names):
        folder = os.path.join(root, name)
        images = []
        for dirpath, _, names in sorted(os.walk(folder)):
            images += [os.path.join(dirpath, n) for n in sorted(names)
                       if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not images:
            kinds = ", ".join(IMAGE_EXTENSIONS)
            raise TfprodError(f"{folder}: class folder has no images ({kinds}); add images or "
                              "remove the folder")
        for f in images:
            if validation_split is not None:
                rel = os.path.relpath(f, root).encode()
                in_val = (zlib.crc32(rel) % 10_000) < validation_split * 10_000
                if in_val != (subset == "validation"):
                    continue
            files.append(f)
            labels.append(index)
    if not files:
        raise TfprodError(f"{root}: the {subset} split is empty; lower or raise validation_split")
    return ImageFolder(tuple(files), tuple(labels), tuple(class_names))


def decode_ratio(files: Sequence[str], image_size: tuple[int, int], sample: int = 16) -> int:
    """The largest JPEG decode ratio (1, 2, 4, 8) that still yields at least ``image_size``."""
    from PIL import Image

    smallest = None
    step = max(1, len(files) // sample)
    for f in files[::step][:sample]:
        try:
            with Image.open(f) as im:
                if im.format != "JPEG":
                    return 1
                w, h = im.size
        except Exception:
            continue
        smallest = (h, w) if smallest is None else (min(smallest[0], h), min(smallest[1], w))
    if smallest is None:
        return 1
    for ratio in (8, 4, 2):
        if smallest[0] // ratio >= image_size[0] and smallest[1] // ratio >= image_size[1]:
            return ratio
    return 1


def make_loader(image_size: tuple[int, int], channels: int, ratio: int, jpeg_only: bool,
                dtype: tf.DType = tf.float32):
    """The decode + resize function of one file: ``path -> [H, W, C]`` in [0, 255].

    ``dtype=tf.uint8`` rounds resized pixels to integers: a cache then holds a quarter of the
    bytes, which is what a file cache's epochs are bound by.
    """
    size = tf.constant(image_size, tf.int32)

    def to_dtype(img):
        if dtype == tf.uint8 and img.dtype != tf.uint8:
            return tf.saturate_cast(tf.round(img), tf.uint8)
        return tf.cast(img, dtype)

    def load(path):
        data = tf.io.read_file(path)
        if jpeg_only:
            img = tf.io.decode_jpeg(data, channels=channels, ratio=ratio)
        else:
            img = tf.io.decode_image(data, channels=channels, expand_animations=False)
        img.set_shape([None, None, channels])
        same = tf.reduce_all(tf.equal(tf.shape(img)[:2], size))
        img = tf.cond(same, lambda: to_dtype(img),
                      lambda: to_dtype(tf.image.resize(img, image_size)))
        return tf.ensure_shape(img, [*image_size, channels])

    return load


def _find_undecodable(files: Sequence[str], load) -> list[str]:
    """Files that fail to decode: one parallel decode pass, errors dropped, survivors counted."""
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.arange(len(files))))
    ds = ds.map(lambda f, i: (load(f), i), num_parallel_calls=AUTOTUNE).ignore_errors()
    ok = set()
    for _, idx in ds.map(lambda img, i: (0, i)).batch(1024):
        ok.update(idx.numpy().tolist())
    return [f for i, f in enumerate(files) if i not in ok]


def undecodable_message(files: Sequence[str], image_size: tuple[int, int]) -> str:
    """Names the file behind a decode error that surfaced mid-epoch (it costs one decode pass).

    A file can pass the cheap whole-file check yet hold corrupt data; TF's error then names no
    file, so the folder is decoded once more with errors dropped to find which one it was.
    """
    load = make_loader(image_size, 3, 1, jpeg_only=False)
    bad = _find_undecodable(files, load)
    if not bad:
        return f"decoding failed in one of {len(files)} images, but none fails on its own"
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (f"{bad[0]}: corrupt image data{more}; remove it, or pass ignore_errors=True "
            "(--ignore-errors) to skip and report")


def image_folder(
    path: str | os.PathLike,
    image_size: tuple[int, int] = (64, 64),
    *,
    batch_size: int = 32,
    color_mode: str = "rgb",
    label_mode: str | None = "int",
    validation_split: float | None = None,
    subset: str | None = None,
    shuffle: bool = True,
    cache: str | None = "memory",
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    deterministic: bool = False,
    ignore_errors: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(image, label)`` from ``path/<class>/<image>``.

    Images come out as float32 ``[batch, height, width, channels]`` in [0, 255] (put a
    ``keras.layers.Rescaling(1/255)`` inside the model, so serving scales the same way); labels
    as int32 class indices (``label_mode="int"``), one-hot (``"categorical"``) or not at all
    (``None``). The dataset has a ``class_names`` attribute.

    Args:
        path: the folder; classes are its sorted subfolders.
        image_size: (height, width) to resize to.
        batch_size: images per batch.
        color_mode: ``"rgb"``, ``"grayscale"`` or ``"rgba"``.
        label_mode: ``"int"``, ``"categorical"`` or ``None``.
        validation_split, subset: a stable hashed split (see :func:`list_image_folder`).
        shuffle: reshuffle every epoch.
        cache: ``"memory"`` (default), a file path prefix for data larger than RAM, or ``None``.
            A cache holds decoded images as uint8 (resized pixels rounded to integers), a
            quarter of float32's bytes.
        shuffle_buffer: decoded images held for shuffling after a cache (default: all of them
            with a memory cache, 1024 with a file cache).
        seed: shuffle seed.
        deterministic: the same order every run (seed 0 unless given) and ordered parallel maps.
        ignore_errors: skip files that cannot be decoded and report them (one extra decode
            pass over the folder) with a :class:`SkippedRecordsWarning`.

    Raises:
        TfprodError: a missing or empty folder, a class folder with no images, an empty, truncated
            or non-image file (named), bad arguments.
    """
    if color_mode not in _CHANNELS:
        raise TfprodError(f"color_mode={color_mode!r}; expected one of {list(_CHANNELS)}")
    if label_mode not in ("int", "categorical", None):
        raise TfprodError(f"label_mode={label_mode!r}; expected 'int', 'categorical' or None")
    if (len(image_size) != 2 or min(image_size) < 1):
        raise TfprodError(f"image_size={image_size}; expected (height, width), both positive")
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    image_size = (int(image_size[0]), int(image_size[1]))
    folder = list_image_folder(path, validation_split=validation_split, subset=subset)
    files, labels = list(folder.files), list(folder.labels)
    formats = [_sniff(f) for f in files]
    broken = [f for f, fmt in zip(files, formats, strict=True) if fmt is None]
    if broken and not ignore_errors:
        raise TfprodError(
            f"{broken[0]}: empty, truncated or not an image (JPEG/PNG/BMP/GIF expected)"
            + (f"; {len(broken) - 1} more such file(s)" if len(broken) > 1 else "")
            + "; remove it or pass ignore_errors=True (--ignore-errors) to skip and report")
    jpeg_only = all(fmt == "jpeg" for fmt in formats if fmt is not None)
    keep = [i for i, fmt in enumerate(formats) if fmt is not None]
    ratio = decode_ratio([files[i] for i in keep], image_size) if jpeg_only else 1
    channels = _CHANNELS[color_mode]
    # Cached images are held as uint8 and become float32 per batch, after the cache.
    load = make_loader(image_size, channels, ratio, jpeg_only,
                       tf.float32 if cache is None else tf.uint8)
    if ignore_errors:
        bad = set(broken) | set(_find_undecodable([files[i] for i in keep], load))
        if bad:
            warnings.warn(SkippedRecordsWarning({f: 1 for f in files if f in bad}, "image"),
                          stacklevel=2)
            keep = [i for i, f in enumerate(files) if f not in bad]
            if not keep:
                raise TfprodError(f"{path}: no readable images left after skipping {len(bad)}")
    files = [files[i] for i in keep]
    labels = [labels[i] for i in keep]
    if deterministic and seed is None:
        seed = 0

    ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
    if shuffle:
        # Shuffled file names feed the decoders; with a cache this only orders epoch 1 (which
        # then mixes classes even with a small post-cache buffer), later epochs shuffle below.
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda f, y: (load(f), y), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    ds = ds.batch(batch_size)
    if cache is not None:
        # Decoding stays fused with the batch (a cache between the parallel decode and the
        # batch made epoch 1 ~20% slower here); single images are cached, so that later epochs
        # shuffle images, not batches.
        if shuffle:
            buffer = shuffle_buffer or (len(files) if cache == "memory" else 1024)
            # unbatch() forgets the cardinality; the count is known (undecodable files are
            # found before this point), and a parameter-server epoch or a progress bar needs it.
            images = ds.unbatch().apply(tf.data.experimental.assert_cardinality(len(files)))
            ds = cache_dataset(images, cache)
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
        else:
            ds = cache_dataset(ds, cache)
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if label_mode == "categorical":
        depth = len(folder.class_names)
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)))
    elif label_mode is None:
        ds = ds.map(lambda x, y: x)
    ds = apply_options(ds.prefetch(AUTOTUNE), deterministic=deterministic)
    ds.class_names = list(folder.class_names)
    ds.file_paths = files
    return ds
