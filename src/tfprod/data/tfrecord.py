"""Sharded TFRecord files with a schema: exact writes, and reads that batch before parsing.

Reading parses whole batches with the vectorized ``tf.io.parse_example`` instead of one
``parse_single_example`` per record: on small examples that is the difference between ~16k and
~185k examples/s on two cores (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfprod.data.options import apply_options, cache_dataset
from tfprod.data.schema import IMAGE_ENCODINGS, FeatureSpec, Schema, infer_spec
from tfprod.data.skipped import SkippedRecordsWarning
from tfprod.data.split import SplitInfo, check_split, summarize, take_subset
from tfprod.errors import TfprodError

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """A column of image files to store as they are (their encoded bytes, not re-encoded).

    Args:
        paths: one image file per example (JPEG or PNG).
        channels: channels to decode to when reading; 0 keeps the file's own.
    """

    paths: Sequence[str | os.PathLike]
    channels: int = 0


# --------------------------------------------------------------------------------------- write


def _column_spec(name: str, column, encoding: str | None) -> tuple[FeatureSpec, list]:
    """Returns the spec of a column and its values as a per-example list."""
    if isinstance(column, ImageFiles):
        from PIL import Image

        paths = [os.fspath(p) for p in column.paths]
        shapes = set()
        for p in paths:
            try:
                with Image.open(p) as im:
                    fmt, size, bands = im.format, im.size, len(im.getbands())
            except FileNotFoundError:
                raise TfprodError(f"{p}: no such image file") from None
            except Exception as e:
                raise TfprodError(f"{p}: not a readable image ({e})") from None
            if fmt not in ("JPEG", "PNG"):
                raise TfprodError(f"{p}: {fmt} image; expected JPEG or PNG files")
            shapes.add((size[1], size[0], column.channels or bands, fmt))
        fmts = {s[3] for s in shapes}
        if len(fmts) > 1:
            raise TfprodError(f"column {name!r} mixes JPEG and PNG files; store them separately")
        heights, widths, chans = ({s[i] for s in shapes} for i in range(3))
        shape = (
            heights.pop() if len(heights) == 1 else None,
            widths.pop() if len(widths) == 1 else None,
            chans.pop() if len(chans) == 1 else 3,
        )
        spec = FeatureSpec("uint8", shape, "jpeg" if fmts.pop() == "JPEG" else "png")
        return spec, paths
    if isinstance(column, list) and column and isinstance(column[0], np.ndarray):
        lengths = {len(v) for v in column}
        if len(lengths) > 1 or column[0].ndim != 1:
            base = infer_spec(name, np.asarray(column[0])[None])
            spec = FeatureSpec(base.dtype, (None,), encoding or base.encoding)
            return spec, column
    values = np.asarray(column)
    spec = infer_spec(name, values)
    if encoding is not None:
        spec = FeatureSpec(spec.dtype, spec.shape, encoding)
    return spec, list(values)


def _encode(spec: FeatureSpec, value) -> tf.train.Feature:
    if spec.encoding in IMAGE_ENCODINGS:
        if isinstance(value, str):
            with open(value, "rb") as f:
                data = f.read()
        else:
            img = np.asarray(value, dtype=spec.dtype)
            encoder = tf.io.encode_png if spec.encoding == "png" else tf.io.encode_jpeg
            data = encoder(img).numpy()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
    arr = np.asarray(value)
    if spec.encoding == "int64_list":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=arr.astype(np.int64).ravel()))
    if spec.encoding == "float_list":
        return tf.train.Feature(float_list=tf.train.FloatList(value=arr.astype(np.float32).ravel()))
    if spec.encoding == "raw":
        data = np.ascontiguousarray(arr, dtype=spec.dtype).tobytes()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
    items = arr.ravel().tolist()
    data = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in items]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=data))


def write_tfrecords(
    directory: str | os.PathLike,
    features: Mapping[str, object],
    *,
    encodings: Mapping[str, str] | None = None,
    num_shards: int = 1,
    compression: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Schema:
    """Writes examples to ``num_shards`` TFRecord files plus ``schema.json`` in ``directory``.

    Args:
        directory: output folder; it must not exist or be empty, unless ``overwrite=True``.
        features: feature name -> per-example values: a numpy array (first axis = examples),
            a list of 1-D arrays of varying length, strings/bytes, or :class:`ImageFiles`.
        encodings: override the inferred encoding per feature, e.g. ``{"image": "png"}`` to
            store a uint8 image array losslessly, ``{"x": "raw"}`` for float64 values.
        num_shards: files to spread the examples over (round-robin) for parallel reads.
        compression: ``None`` or ``"GZIP"``.
        overwrite: replace an existing non-empty ``directory``.
        progress: called with the number of examples written after each shard chunk.

    Returns:
        The :class:`Schema` that was saved.

    The folder appears complete or not at all: shards are written to a temporary folder beside
    it and renamed into place.
    """
    directory = os.fspath(directory)
    if not features:
        raise TfprodError("no features given; pass a dict of feature name -> values")
    if num_shards < 1:
        raise TfprodError(f"num_shards={num_shards}; expected a positive integer")
    if compression not in (None, "GZIP"):
        raise TfprodError(f"compression={compression!r}; expected None or 'GZIP'")
    if os.path.exists(directory) and os.listdir(directory) and not overwrite:
        raise TfprodError(
            f"{directory} already exists and is not empty; choose a new folder or pass "
            "overwrite=True (--overwrite)"
        )
    encodings = dict(encodings or {})
    unknown = set(encodings) - set(features)
    if unknown:
        raise TfprodError(f"encodings name unknown feature(s) {sorted(unknown)}")
    specs, columns = {}, {}
    for name, column in features.items():
        specs[name], columns[name] = _column_spec(name, column, encodings.get(name))
    counts = {name: len(col) for name, col in columns.items()}
    if len(set(counts.values())) != 1:
        raise TfprodError(f"features have different numbers of examples: {counts}")
    n = next(iter(counts.values()))
    if n == 0:
        raise TfprodError("no examples to write: every feature is empty")
    num_shards = min(num_shards, n)
    shards = tuple(f"data-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards))
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tfprod-", dir=parent)
    try:
        options = tf.io.TFRecordOptions(compression_type=compression or "")
        writers = [tf.io.TFRecordWriter(os.path.join(staging, s), options) for s in shards]
        for i in range(n):
            example = tf.train.Example(features=tf.train.Features(feature={
                name: _encode(specs[name], columns[name][i]) for name in specs
            }))
            writers[i % num_shards].write(example.SerializeToString())
            if progress is not None and (i + 1) % 1000 == 0:
                progress(i + 1)
        for w in writers:
            w.close()
        schema = Schema(specs, shards, n, compression)
        schema.save(staging)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if progress is not None:
        progress(n)
    return schema


# ---------------------------------------------------------------------------------------- read


def _parse_spec(spec: FeatureSpec):
    if spec.ragged:
        dtype = tf.int64 if spec.encoding == "int64_list" else tf.float32
        return tf.io.RaggedFeature(dtype=dtype, row_splits_dtype=tf.int64)
    if spec.encoding == "int64_list":
        return tf.io.FixedLenFeature(spec.shape, tf.int64)
    if spec.encoding == "float_list":
        return tf.io.FixedLenFeature(spec.shape, tf.float32)
    if spec.encoding in ("bytes", "string"):
        return tf.io.FixedLenFeature(spec.shape, tf.string)
    return tf.io.FixedLenFeature([], tf.string)  # raw tensor bytes or an encoded image


def _decode_image(spec: FeatureSpec, data: tf.Tensor) -> tf.Tensor:
    channels = spec.shape[2]
    if spec.encoding == "jpeg":
        img = tf.io.decode_jpeg(data, channels=channels)
    else:
        img = tf.io.decode_png(data, channels=channels, dtype=tf.as_dtype(spec.dtype))
    return tf.ensure_shape(img, spec.shape)


def _finish(spec: FeatureSpec, value, batched: bool):
    """Turns a parsed feature into its stored dtype and shape."""
    lead = [-1] if batched else []
    if spec.encoding in IMAGE_ENCODINGS:
        if not batched:
            return _decode_image(spec, value)
        return tf.map_fn(lambda d: _decode_image(spec, d), value,
                         fn_output_signature=tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype)))
    if spec.encoding == "raw":
        flat = tf.io.decode_raw(value, tf.as_dtype(spec.dtype))
        return tf.reshape(flat, lead + list(spec.shape))
    if spec.encoding in ("bytes", "string"):
        return value
    dtype = tf.as_dtype(spec.dtype)
    return tf.cast(value, dtype) if value.dtype != dtype else value


def _parser(schema: Schema, names: Sequence[str], batched: bool) -> Callable:
    description = {n: _parse_spec(schema.features[n]) for n in names}

    def parse(serialized):
        parsed = (tf.io.parse_example if batched else tf.io.parse_single_example)(
            serialized, description)
        return {n: _finish(schema.features[n], parsed[n], batched) for n in names}

    return parse


def _scan_shard(path: str) -> tuple[int, bool]:
    """Counts the records of an uncompressed shard from their length headers (no payload read).

    Returns (records, truncated).
    """
    size = os.path.getsize(path)
    count, offset = 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                return count, True
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4
            if offset > size:
                return count, True
            f.seek(offset)
            count += 1
    return count, False


def _check_shards(directory: str, schema: Schema, names: Sequence[str]) -> list[str]:
    """Fails fast, naming the file, when a shard is missing, truncated or off its schema."""
    files = []
    parse = _parser(schema, names, batched=False)
    for shard in schema.shards:
        path = os.path.join(directory, shard)
        if not os.path.exists(path):
            raise TfprodError(f"{path}: shard listed in schema.json is missing")
        if schema.compression is None:
            _, truncated = _scan_shard(path)
            if truncated:
                raise TfprodError(
                    f"{path}: TFRecord file is truncated (a record runs past the end of the "
                    "file); rewrite it, or pass ignore_errors=True to skip the broken tail"
                )
        for record in tf.data.TFRecordDataset(path, schema.compression or "").take(1):
            try:
                parse(record)
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
                detail = e.message.splitlines()[0][:200]
                raise TfprodError(
                    f"{path}: record 0 does not match {directory}/schema.json ({detail}); "
                    "rewrite the shard or fix the schema"
                ) from None
        files.append(path)
    return files


def _count_skipped(files: Sequence[str], schema: Schema, names: Sequence[str]) -> dict[str, int]:
    parse = _parser(schema, names, batched=False)
    skipped = {}
    for path in files:
        raw = tf.data.TFRecordDataset(path, schema.compression or "").ignore_errors()
        total = int(raw.reduce(np.int64(0), lambda n, _: n + 1))
        if schema.compression is None:
            total = max(total, _scan_shard(path)[0] + int(_scan_shard(path)[1]))
        good = raw.map(parse).ignore_errors().reduce(np.int64(0), lambda n, _: n + 1)
        if total - int(good):
            skipped[path] = total - int(good)
    return skipped


def read_tfrecords(
    directory: str | os.PathLike,
    *,
    batch_size: int = 32,
    label: str | None = None,
    features: Iterable[str] | None = None,
    shuffle: bool = True,
    shuffle_buffer: int = 10_000,
    cache: str | None = None,
    seed: int | None = None,
    deterministic: bool = False,
    drop_remainder: bool = False,
    ignore_errors: bool = False,
    parallel_reads: bool | None = None,
    validation_split: float | None = None,
    subset: str | None = None,
) -> tf.data.Dataset:
    """Reads a folder written by :func:`write_tfrecords` into batches.

    Shards are interleaved (read in parallel on remote filesystems), serialized records are
    shuffled and batched, and each batch is parsed at once with ``tf.io.parse_example``; then
    prefetched with AUTOTUNE.

    Args:
        directory: folder holding ``schema.json`` and its shards.
        batch_size: examples per batch.
        label: a feature to return separately, as ``(features, label)`` batches.
        features: the features to read (default: all).
        shuffle: reshuffle shards and records every epoch.
        shuffle_buffer: records held for shuffling.
        cache: ``"memory"``, a file path prefix (for data larger than RAM), or ``None``.
        seed: shuffle seed; with ``deterministic=True`` the order is the same every run.
        deterministic: keep a reproducible order (slower parallel reads).
        drop_remainder: drop the last partial batch.
        ignore_errors: skip unreadable or off-schema records instead of failing; a
            :class:`SkippedRecordsWarning` reports how many were skipped, and from which files.
        parallel_reads: read shards in parallel threads; default: only on a remote filesystem.
        validation_split, subset: read only the ``"training"`` or ``"validation"`` side of a
            hashed split of the serialized records (see :mod:`tfprod.data.split`); the
            dataset's ``split`` attribute then says how many records that side has and their
            fingerprint.

    Returns:
        A ``tf.data.Dataset`` of dicts (or ``(dict, label)`` tuples).

    Raises:
        TfprodError: missing folder, schema or shard; a truncated shard; a record that does not
            match the schema (each naming the file).
    """
    directory = os.fspath(directory)
    check_split(validation_split, subset)
    schema = Schema.load(directory)
    names = list(features) if features is not None else list(schema.features)
    unknown = [n for n in names + ([label] if label else []) if n not in schema.features]
    if unknown:
        raise TfprodError(
            f"unknown feature(s) {unknown}; {directory}/schema.json has {list(schema.features)}"
        )
    if label is not None and label not in names:
        names.append(label)
    if batch_size < 1:
        raise TfprodError(f"batch_size={batch_size}; expected a positive integer")
    if deterministic and seed is None:
        seed = 0
    if ignore_errors:
        files = [os.path.join(directory, s) for s in schema.shards if
                 os.path.exists(os.path.join(directory, s))]
        skipped = _count_skipped(files, schema, names)
        if skipped:
            warnings.warn(SkippedRecordsWarning(skipped), stacklevel=2)
    else:
        files = _check_shards(directory, schema, names)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = _interleave_shards(ds, schema, len(files), parallel_reads, directory, deterministic)
    split, rows = None, None if ignore_errors else schema.num_examples
    if validation_split is not None:
        # On the record as stored, before the cache and the shuffle.
        ds = take_subset(ds, validation_split, subset)
        rows = None
        # Counted eagerly; a dataset function traced for parameter-server workers skips it.
        if tf.executing_eagerly():
            count, fingerprint = summarize(ds)  # a sum: the order does not matter
            if count == 0:
                raise TfprodError(f"{directory}: the {subset} side of validation_split="
                                  f"{validation_split} holds no records; use more examples or "
                                  "another validation_split")
            split = SplitInfo(subset, validation_split, count, fingerprint)
            rows = None if ignore_errors else count
    variable = any(
        schema.features[n].ragged
        or (schema.features[n].encoding in IMAGE_ENCODINGS and None in schema.features[n].shape)
        for n in names
    )
    if ignore_errors or variable:
        # Per-record parsing: one bad record then costs one record, not its whole batch, and
        # examples of different lengths or image sizes batch as ragged tensors.
        if ignore_errors:
            ds = ds.ignore_errors()
        ds = ds.map(_parser(schema, names, batched=False), num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic)
        if ignore_errors:
            ds = ds.ignore_errors()
        ds = cache_dataset(ds, cache)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if variable:
            ds = ds.ragged_batch(batch_size, drop_remainder=drop_remainder)
        else:
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        ds = cache_dataset(ds, cache)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(_parser(schema, names, batched=True), num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic)
    if label is not None:
        ds = ds.map(lambda d: ({k: v for k, v in d.items() if k != label}, d[label]))
    if rows:
        # Known length: progress bars and parameter-server epochs need it; TF checks it.
        batches = rows // batch_size if drop_remainder else -(-rows // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    ds = apply_options(ds.prefetch(AUTOTUNE), deterministic=deterministic)
    ds.split = split
    return ds


def parse_single_pipeline(directory: str | os.PathLike, *, batch_size: int = 32) -> tf.data.Dataset:
    """The textbook pipeline: ``parse_single_example`` per record, then batch. A baseline."""
    directory = os.fspath(directory)
    schema = Schema.load(directory)
    files = [os.path.join(directory, s) for s in schema.shards]
    parse = _parser(schema, list(schema.features), batched=False)
    ds = tf.data.TFRecordDataset(files, schema.compression or "")
    return ds.map(parse, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)


def raw_records(directory: str | os.PathLike, *, batch_size: int = 32) -> tf.data.Dataset:
    """Batches of serialized records with no parsing: the read limit the parser is held to."""
    directory = os.fspath(directory)
    schema = Schema.load(directory)
    files = [os.path.join(directory, s) for s in schema.shards]
    ds = _interleave_shards(tf.data.Dataset.from_tensor_slices(files), schema, len(files),
                            None, directory, deterministic=False)
    return apply_options(ds.batch(batch_size).prefetch(AUTOTUNE))


def _interleave_shards(files: tf.data.Dataset, schema: Schema, num_files: int,
                       parallel_reads: bool | None, directory: str,
                       deterministic: bool) -> tf.data.Dataset:
    """Records of all shards, interleaved one record from each in turn.

    Reads run in parallel threads only when they wait on I/O: on a remote filesystem
    (``gs://``, ``s3://``, ``hdfs://``) by default. From a local disk the OS page cache answers
    at once, and on a small machine parallel readers only take cores from the parser: measured
    here, reading alone went from ~150k-256k records/s in parallel to ~270k-340k sequentially.
    """
    if parallel_reads is None:
        parallel_reads = "://" in directory
    return files.interleave(
        lambda f: tf.data.TFRecordDataset(f, schema.compression or ""),
        cycle_length=min(num_files, 8), block_length=1,
        num_parallel_calls=AUTOTUNE if parallel_reads else None,
        deterministic=deterministic if parallel_reads else None,
    )
