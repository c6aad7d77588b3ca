"""``check_migration``: the TF1 graph and the migrated TF2 SavedModel on the same inputs.

The TF guide's "validate numerically" step, automated: the old model runs as TF1 ran it (a
``tf.compat.v1.Session`` in graph mode, in a child process, so the caller stays eager), the
migrated ``serving_default`` runs in this process, and every output is compared: maximum
absolute and relative difference, pass when ``|migrated - tf1| <= atol + rtol * |tf1|``
everywhere (shapes equal; non-float outputs equal exactly).

The inputs are given (an ``.npz`` with one array per signature input) or generated from the
signature (:func:`tfprod.migrate.tensors.sample_inputs`). Which TF1 tensor each signature key
stands for comes from the migration record that ``migrate_model`` wrote; a SavedModel migrated
by other means can be checked against a TF1 SavedModel with the same signature keys.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export.predict import resolve_saved_model
from tfprod.migrate.model import SERVING_DEFAULT, read_record
from tfprod.migrate.tensors import read_inputs, sample_inputs
from tfprod.migrate.tf1_graph import (
    SAVEDMODEL,
    Tf1Source,
    detect_source,
    savedmodel_meta_graph,
    signature_tensors,
)
from tfprod.migrate.tf1_run import run_in_subprocess, run_source


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """One output compared.

    Attributes:
        name: the signature output key.
        tensor: the TF1 tensor it stands for.
        shape: the TF1 output's shape.
        dtype: its dtype.
        max_abs: max ``|migrated - tf1|`` (None for non-numeric outputs).
        max_rel: max ``|migrated - tf1| / |tf1|`` over elements with ``|tf1| > atol`` (0.0
            when there are none).
        passed: within tolerance everywhere (and the same shape).
        note: why it failed, if it did.
    """

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float | None
    max_rel: float | None
    passed: bool
    note: str = ""


@dataclasses.dataclass
class CheckReport:
    """The result of :func:`check_migration`."""

    source: str
    migrated: str
    signature: str
    examples: int
    atol: float
    rtol: float
    inputs_from: str
    outputs: list[OutputCheck]
    seconds: float

    COLUMNS = ["output", "TF1 tensor", "shape", "max abs", "max rel", "result"]

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def rows(self) -> list[list[str]]:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.3g}"

        return [[o.name, o.tensor, str(o.shape), num(o.max_abs), num(o.max_rel),
                 ("pass" if o.passed else "FAIL") + (f" ({o.note})" if o.note else "")]
                for o in self.outputs]

    @property
    def summary(self) -> str:
        failed = [o.name for o in self.outputs if not o.passed]
        worst = max((o.max_abs for o in self.outputs if o.max_abs is not None), default=0.0)
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(failed)})"
        return (f"{verdict}: {len(self.outputs)} outputs on {self.examples} examples "
                f"({self.inputs_from}), max abs difference {worst:.3g}, tolerance "
                f"atol={self.atol:g} rtol={self.rtol:g}")

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "outputs"},
                "passed": self.passed, "summary": self.summary,
                "outputs": [dataclasses.asdict(o) for o in self.outputs]}


def compare(name: str, tensor: str, migrated: np.ndarray, tf1: np.ndarray, *, atol: float,
            rtol: float) -> OutputCheck:
    """One output of the migrated model against the TF1 one."""
    got, want = np.asarray(migrated), np.asarray(tf1)
    shape, dtype = tuple(int(d) for d in want.shape), str(want.dtype)
    if got.shape != want.shape:
        return OutputCheck(name, tensor, shape, dtype, None, None, False,
                           f"shape {got.shape} vs {want.shape}")
    if want.dtype.kind not in "fciub":
        same = bool(np.array_equal(got, want))
        return OutputCheck(name, tensor, shape, dtype, None, None, same,
                           "" if same else "values differ")
    g, w = got.astype(np.float64), want.astype(np.float64)
    if want.dtype.kind == "c":
        g, w = got.astype(np.complex128), want.astype(np.complex128)
    diff = np.abs(g - w)
    finite = np.isfinite(w) & np.isfinite(g)
    same_nonfinite = bool(np.all(finite | (np.isnan(w) & np.isnan(g)) | (g == w)))
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    big = finite & (np.abs(w) > atol)
    max_rel = float((diff[big] / np.abs(w[big])).max()) if big.any() else 0.0
    ok = same_nonfinite and bool(np.all(diff[finite] <= atol + rtol * np.abs(w[finite])))
    note = "" if ok else ("NaN/Inf differ" if not same_nonfinite else "beyond tolerance")
    return OutputCheck(name, tensor, shape, dtype, max_abs, max_rel, ok, note)


def _tensors(version: str, source: Tf1Source, signature: str,
             record: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    if record is not None:
        sigs = record.get("signatures", {})
        if signature not in sigs:
            raise TfprodError(f"{version} has no signature {signature!r}; it has "
                              f"{sorted(sigs)}")
        return {"inputs": dict(sigs[signature]["inputs"]),
                "outputs": dict(sigs[signature]["outputs"])}
    if source.kind != SAVEDMODEL:
        raise TfprodError(f"{version} has no migration record ({'assets.extra/tfprod/'}"
                          "migration.json), so which TF1 tensor each key stands for is unknown; "
                          "migrate it with `tfprod migrate model`, or check it against a TF1 "
                          "SavedModel with the same signature keys")
    sigs = signature_tensors(savedmodel_meta_graph(source.path, source.tags))
    if signature not in sigs:
        raise TfprodError(f"TF1 SavedModel {source.path} has no signature {signature!r}; it has "
                          f"{sorted(sigs)}")
    return sigs[signature]


def check_migration(
    migrated: str | os.PathLike,
    tf1_model: str | os.PathLike | None = None,
    *,
    graph: str | None = None,
    tags: tuple[str, ...] | None = None,
    signature: str = SERVING_DEFAULT,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    batch: int = 8,
    atol: float = 1e-5,
    rtol: float = 0.0,
    seed: int = 0,
    in_subprocess: bool = True,
) -> CheckReport:
    """Runs the TF1 model and the migrated one on the same inputs and compares every output.

    Args:
        migrated: the migrated version folder, or its base path (the newest version).
        tf1_model: the TF1 model (default: the one the migration record names).
        graph: for a checkpoint, the function that builds its graph (default: the record's).
        tags: the TF1 SavedModel's tags (default: the record's, else ``serve``).
        signature: the migrated signature to check.
        inputs: an ``.npz`` path or a dict, one array per signature input; default: generated
            from the signature (``batch`` examples, normal floats, small integers).
        batch: examples to generate.
        atol, rtol: the tolerance, ``|migrated - tf1| <= atol + rtol * |tf1|``.
        seed: seed of the generated inputs.
        in_subprocess: run the TF1 model in a child process (default), or in this process
            inside its own ``tf.Graph`` (faster; only for graph functions that do not change
            global TensorFlow state, e.g. by disabling eager execution when imported).

    Raises:
        TfprodError: a migrated model or TF1 model that cannot be read, inputs that do not fit
            the signature, tensor names missing from the TF1 graph.

    Example:

    >>> report = check_migration("models/legacy", "legacy/frozen.pb")
    >>> report.passed, report.summary
    """
    import tensorflow as tf

    start = time.perf_counter()
    if batch < 1:
        raise TfprodError(f"batch={batch}; expected a positive number of examples")
    if atol < 0 or rtol < 0:
        raise TfprodError(f"atol={atol}, rtol={rtol}; tolerances cannot be negative")
    version = resolve_saved_model(migrated)
    record = read_record(version)
    recorded = Tf1Source.from_json(record["source"]) if record else None
    if tf1_model is None:
        if recorded is None:
            raise TfprodError(f"{version} has no migration record naming its TF1 model; pass "
                              "the TF1 model (tfprod migrate check MIGRATED TF1_MODEL)")
        source = recorded
        if graph is not None or tags is not None:
            source = dataclasses.replace(source, graph_fn=graph or source.graph_fn,
                                         tags=tuple(tags or source.tags))
    else:
        source = detect_source(tf1_model, graph_fn=graph or (recorded.graph_fn if recorded
                                                             else None),
                               tags=tags or (recorded.tags if recorded else ("serve",)))
    tensors = _tensors(version, source, signature, record)
    loaded = tf.saved_model.load(version)
    if signature not in loaded.signatures:
        raise TfprodError(f"{version} has no signature {signature!r}; it has "
                          f"{sorted(loaded.signatures)}")
    fn = loaded.signatures[signature]
    _, specs = fn.structured_input_signature
    if set(specs) != set(tensors["inputs"]):
        raise TfprodError(f"the migration record's inputs {sorted(tensors['inputs'])} differ "
                          f"from {signature!r}'s {sorted(specs)}")
    if inputs is None:
        feeds, inputs_from = sample_inputs(specs, batch=batch, seed=seed), "generated"
    elif isinstance(inputs, Mapping):
        feeds, inputs_from = {k: np.asarray(inputs[k]) for k in specs}, "given"
    else:
        feeds, inputs_from = read_inputs(inputs, specs), os.fspath(inputs)
    got = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
    run = run_in_subprocess if in_subprocess else run_source
    want = run(source, tensors["inputs"], tensors["outputs"], feeds)
    outputs = [compare(k, tensors["outputs"][k], got[k], want[k], atol=atol, rtol=rtol)
               for k in tensors["outputs"]]
    examples = len(next(iter(feeds.values()))) if feeds and next(
        iter(feeds.values())).ndim else 1
    return CheckReport(source=source.describe(), migrated=version, signature=signature,
                       examples=examples, atol=atol, rtol=rtol, inputs_from=inputs_from,
                       outputs=outputs, seconds=time.perf_counter() - start)
