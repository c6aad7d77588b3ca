"""``migrate_model``: a TF1 model -> a TF2 SavedModel in TF Serving's layout.

The TF1 model (see :mod:`tfprod.migrate.tf1_graph`) becomes ``BASE/<version>/``:

- a checkpoint is first restored into its graph in a ``tf.compat.v1.Session`` (inside a
  ``tf.Graph``) and written as a TF1 SavedModel to a temporary folder;
- a SavedModel whose variables are resource variables is loaded with ``tf.saved_model.load``
  (variables, lookup tables and assets come back as TF2 objects) and saved again with TF2
  signatures;
- a SavedModel with TF1 reference variables (``VariableV2``, TF1's default) cannot take that
  path: the loader cannot lift them out of the graph, so a re-saved model would hold
  uninitialized variables (tensorflow/tensorflow#49156). Its signatures' subgraph is imported
  with ``tf.compat.v1.wrap_function`` instead, each variable mapped (``input_map``) onto a new
  ``tf.Variable`` holding the checkpoint's value;
- a frozen GraphDef goes the same way; it has no variables (its weights are constants).

Variables stay variables. ``serving_default`` takes and returns tensors named after the
original ones (``x:0`` -> ``x``; a SavedModel keeps its signature keys);
``assets.extra/tfprod/migration.json`` records which TF1 tensor each key came from, for
``tfprod migrate check``. Before publishing, the written SavedModel is loaded back and compared
with the in-memory function; the version is published atomically (:mod:`tfprod.export.publish`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export.publish import check_base, fsync_tree, publish, staging_dir, version_exists
from tfprod.export.savedmodel import folder_size
from tfprod.export.warmup import WARMUP_FILE, write_warmup_requests
from tfprod.migrate.tensors import sample_inputs, signature_key
from tfprod.migrate.tf1_graph import (
    CHECKPOINT,
    FROZEN,
    Tf1Source,
    checkpoint_to_saved_model,
    choose_tensors,
    detect_source,
    read_graph_def,
    savedmodel_meta_graph,
    signature_tensors,
    subgraph,
)

SERVING_DEFAULT = "serving_default"
#: Variable ops of TF1 graphs: reference variables (TF1's default) and resource variables.
REF_VARIABLES = {"VariableV2", "Variable"}
VARIABLE_OPS = REF_VARIABLES | {"VarHandleOp"}
#: Ops that need the SavedModel loader's initializers (tables, assets).
_TABLE_OPS = {"HashTableV2", "HashTable", "MutableHashTableV2", "MutableHashTableOfTensorsV2",
              "MutableDenseHashTableV2", "InitializeTableFromTextFileV2"}
#: Where the migration record goes in a version folder.
RECORD_FILE = os.path.join("assets.extra", "tfprod", "migration.json")


@dataclasses.dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_model` published.

    Attributes:
        path: the version folder ``base_path/<version>``.
        version: its number.
        base_path: the folder of versions (``--model_base_path`` of ``tfprod serve``).
        source: the TF1 model, as :meth:`Tf1Source.to_json`.
        signatures: key -> ``{"inputs"|"outputs": {name: {"tensor", "dtype", "shape"}}}``;
            ``tensor`` is the TF1 tensor the name stands for.
        variables: variables kept as variables (0 for a frozen graph: it has constants).
        size_bytes: bytes of the version folder.
        seconds: time the migration took.
    """

    path: str
    version: int
    base_path: str
    source: dict[str, Any]
    signatures: dict[str, dict[str, dict[str, dict[str, Any]]]]
    variables: int
    size_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MigratedModel(tf.Module):
    """The TF2 object that is saved: the TF1 model's objects and its serving functions."""


def _spec(spec: tf.TensorSpec, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(spec.shape, spec.dtype, name=name)


def _serving_function(call: Callable, names: list[tuple[str, str]],
                      specs: list[tf.TensorSpec], positional: bool) -> Any:
    """A ``tf.function`` over ``call`` whose arguments are named ``names[i][0]``
    (``names[i][1]``: the keyword ``call`` takes)."""

    def serve(*args):
        if positional:
            out = call(*args)
        else:
            out = call(**{kw: a for (_, kw), a in zip(names, args, strict=True)})
        return dict(out)

    return tf.function(serve, input_signature=[_spec(s, k) for (k, _), s in
                                               zip(names, specs, strict=True)])


def _describe(fn: Any, tensors: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    def spec(s: tf.TensorSpec, tensor: str) -> dict[str, Any]:
        shape = s.shape.as_list() if s.shape.rank is not None else None
        return {"tensor": tensor, "dtype": s.dtype.name, "shape": shape}

    _, kwargs = fn.structured_input_signature
    return {"inputs": {k: spec(v, tensors["inputs"].get(k, "")) for k, v in kwargs.items()},
            "outputs": {k: spec(v, tensors["outputs"].get(k, ""))
                        for k, v in fn.structured_outputs.items()}}


def _default_signature(keys: list[str], signature: str | None, where: str) -> str:
    if not keys:
        raise TfprodError(f"{where} has no signature_def to serve; re-export it with "
                          "simple_save or a SavedModelBuilder signature, or migrate its "
                          "checkpoint with --graph")
    if signature is not None and signature not in keys:
        raise TfprodError(f"--signature {signature!r} is not in {where}; its signatures are "
                          f"{keys}")
    default = signature or (SERVING_DEFAULT if SERVING_DEFAULT in keys else
                            keys[0] if len(keys) == 1 else None)
    if default is None:
        raise TfprodError(f"{where} has no {SERVING_DEFAULT!r} signature and several others "
                          f"({keys}); pass --signature KEY for the one to serve by default")
    return default


def _input_key(key: str) -> str:
    return key if key.isidentifier() else signature_key(key)


def _by_loader(path: str, tags: tuple[str, ...], default: str,
               tensors: Mapping[str, Mapping[str, Mapping[str, str]]]
               ) -> tuple[MigratedModel, dict[str, Any], dict[str, Any], int]:
    """Resource variables: ``tf.saved_model.load``, then TF2 signatures over its functions."""
    try:
        loaded = tf.saved_model.load(path, tags=list(tags))
    except Exception as e:
        raise TfprodError(f"{path}: tf.saved_model.load failed ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                          ) from None
    module = MigratedModel()
    module.source = loaded  # tracks the TF1 model's variables, tables and assets
    functions, names = {}, {}
    for key in sorted(loaded.signatures):
        fn = loaded.signatures[key]
        _, kwargs = fn.structured_input_signature
        pairs = [(_input_key(k), k) for k in kwargs]
        out_key = SERVING_DEFAULT if key == default else key
        functions[out_key] = _serving_function(fn, pairs, [kwargs[k] for _, k in pairs],
                                               positional=False)
        original = tensors.get(key, {"inputs": {}, "outputs": {}})
        names[out_key] = {"signature_def": key,
                          "inputs": {new: original["inputs"].get(old, "") for new, old in pairs},
                          "outputs": dict(original["outputs"])}
    return module, functions, names, len(getattr(loaded, "variables", []) or [])


def _by_import(graph_def: Any, tensors: Mapping[str, Mapping[str, Mapping[str, str]]],
               default: str, checkpoint: str | None, where: str
               ) -> tuple[MigratedModel, dict[str, Any], dict[str, Any], int]:
    """Reference variables or a frozen graph: the signatures' subgraph imported with
    ``wrap_function``, every variable mapped onto a ``tf.Variable`` with the checkpoint's value.
    """
    wanted = [t for sig in tensors.values() for part in ("inputs", "outputs")
              for t in sig[part].values()]
    sub = subgraph(graph_def, wanted)
    tables = sorted({n.op for n in sub.node} & _TABLE_OPS)
    if tables:
        raise TfprodError(f"{where} uses lookup tables ({', '.join(tables)}) together with TF1 "
                          "reference variables; tfprod cannot carry both over: rebuild the "
                          "graph with resource variables (tf.compat.v1.enable_resource_"
                          "variables()) and migrate its checkpoint with --graph")
    variable_nodes = [n for n in sub.node if n.op in VARIABLE_OPS]
    variables: dict[str, tf.Variable] = {}
    if variable_nodes:
        reader = tf.train.load_checkpoint(checkpoint)
        stored = reader.get_variable_to_shape_map()
        for n in variable_nodes:
            if n.name not in stored:
                raise TfprodError(f"variable {n.name} of {where} is not in its checkpoint "
                                  f"{checkpoint}; the SavedModel is incomplete")
            variables[n.name] = tf.Variable(reader.get_tensor(n.name), name=n.name)
    ref = {n.name for n in variable_nodes if n.op in REF_VARIABLES}

    def importer():
        input_map = {f"{k}:0": (tf.identity(v) if k in ref else v.handle)
                     for k, v in variables.items()}
        tf.compat.v1.import_graph_def(sub, input_map=input_map, name="")

    wrapped = tf.compat.v1.wrap_function(importer, [])
    module = MigratedModel()
    module.tf1_variables = list(variables.values())
    module.graph = wrapped
    functions, names = {}, {}
    for key, sig in sorted(tensors.items()):
        ins = [(_input_key(k), wrapped.graph.get_tensor_by_name(t))
               for k, t in sig["inputs"].items()]
        outs = {k: wrapped.graph.get_tensor_by_name(t) for k, t in sig["outputs"].items()}
        pruned = wrapped.prune(feeds=[t for _, t in ins], fetches=outs)
        out_key = SERVING_DEFAULT if key == default else key
        setattr(module, f"signature_{len(functions)}", pruned)
        functions[out_key] = _serving_function(
            pruned, [(k, k) for k, _ in ins], [tf.TensorSpec(t.shape, t.dtype) for _, t in ins],
            positional=True)
        names[out_key] = {"signature_def": key if key != SERVING_DEFAULT or checkpoint else None,
                          "inputs": {k: t.name for k, t in ins},
                          "outputs": dict(sig["outputs"])}
    return module, functions, names, len(variables)


def _from_saved_model(path: str, tags: tuple[str, ...], signature: str | None, where: str
                      ) -> tuple[MigratedModel, dict[str, Any], dict[str, Any], int]:
    meta = savedmodel_meta_graph(path, tags)
    tensors = signature_tensors(meta)
    default = _default_signature(sorted(tensors), signature, where)
    wanted = [t for sig in tensors.values() for part in ("inputs", "outputs")
              for t in sig[part].values()]
    if any(n.op in REF_VARIABLES for n in subgraph(meta.graph_def, wanted).node):
        return _by_import(meta.graph_def, tensors, default,
                          os.path.join(path, "variables", "variables"), where)
    return _by_loader(path, tags, default, tensors)


def _from_frozen(source: Tf1Source, inputs: Iterable[str] | None,
                 outputs: Iterable[str] | None
                 ) -> tuple[MigratedModel, dict[str, Any], dict[str, Any], int]:
    graph_def = read_graph_def(source.path)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    ins, outs = choose_tensors(graph, inputs, outputs, source.path)
    if not ins:
        raise TfprodError(f"the outputs of {source.path} depend on no placeholder; pass "
                          "--inputs with the input tensor names")
    tensors = {SERVING_DEFAULT: {"inputs": {k: t.name for k, t in ins.items()},
                                 "outputs": {k: t.name for k, t in outs.items()}}}
    return _by_import(graph_def, tensors, SERVING_DEFAULT, None, source.path)


def _verify(functions: Mapping[str, Any], loaded: Any) -> dict[str, dict[str, np.ndarray]]:
    """Each signature of the written SavedModel must compute what the in-memory one does.
    Returns the generated inputs per signature (for warmup requests)."""
    used = {}
    for key, fn in functions.items():
        specs = {s.name: s for s in fn.input_signature}
        try:
            feeds = sample_inputs(specs, batch=4)
        except TfprodError:
            continue  # string inputs: nothing to make up, nothing to compare
        want = fn(*[tf.constant(v) for v in feeds.values()])
        got = loaded.signatures[key](**{k: tf.constant(v) for k, v in feeds.items()})
        for name, value in want.items():
            a, b = np.asarray(got[name]), np.asarray(value)
            same = (a.shape == b.shape and (np.array_equal(a, b) if a.dtype.kind in "OSUb"
                                            else np.allclose(a, b, rtol=1e-6, atol=1e-6)))
            if not same:
                raise TfprodError(f"the written SavedModel's {key!r} output {name!r} differs "
                                  "from the wrapped TF1 graph; nothing was published")
        used[key] = feeds
    return used


def read_record(version_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The migration record of a version written by :func:`migrate_model`, or None."""
    path = os.path.join(os.fspath(version_dir), RECORD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def migrate_model(
    tf1_model: str | os.PathLike,
    base_path: str | os.PathLike,
    *,
    graph: str | None = None,
    inputs: Iterable[str] | None = None,
    outputs: Iterable[str] | None = None,
    tags: Iterable[str] = ("serve",),
    signature: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    warmup: int = 4,
    progress: Callable[[str], None] | None = None,
) -> MigrationResult:
    """Migrates a TF1 model to ``base_path/<version>/``, a TF2 SavedModel TF Serving loads.

    Args:
        tf1_model: a TF1 SavedModel folder, a frozen GraphDef (``.pb``/``.pbtxt``), or a
            checkpoint (prefix or folder).
        base_path: the folder of versions; created if missing.
        graph: for a checkpoint, ``module:function`` or ``file.py:function`` that builds its
            graph with ``tf.compat.v1`` (placeholders, ``get_variable``) and returns the output
            tensors (a tensor, a list, or a dict name -> tensor). Without it the checkpoint's
            ``.meta`` file is used.
        inputs: input tensor names of a frozen graph or checkpoint (default: the placeholders
            the outputs depend on).
        outputs: output tensor names (default: what ``graph`` returns, else the tensors nothing
            consumes).
        tags: the TF1 SavedModel's MetaGraph tags.
        signature: the TF1 signature to serve as ``serving_default`` when the SavedModel has
            none of that name.
        version: the number to publish as (default: the next free one).
        overwrite: replace an existing ``version``.
        warmup: TF Serving warmup requests to write (generated inputs; 0: none).
        progress: called with a short description of each stage.

    Returns:
        A :class:`MigrationResult`.

    Raises:
        TfprodError: an unreadable or unknown TF1 model, a ``.pb`` that is not a GraphDef,
            tensor names that do not exist (the candidates are listed), a checkpoint that does
            not match the graph, an existing version without ``overwrite``. Nothing is left in
            ``base_path`` then.

    Example:

    >>> result = migrate_model("legacy/frozen.pb", "models/legacy", outputs=["probs"])
    >>> result.path, list(result.signatures["serving_default"]["outputs"])
    ('models/legacy/1', ['probs'])
    """
    start = time.perf_counter()
    say = progress or (lambda stage: None)
    source = detect_source(tf1_model, graph_fn=graph, tags=tags)
    inputs, outputs = list(inputs or []), list(outputs or [])
    if source.kind not in (FROZEN, CHECKPOINT) and (inputs or outputs):
        raise TfprodError("--inputs/--outputs choose tensors of a frozen graph or a checkpoint; "
                          f"{source.path} is a SavedModel whose signatures name them")
    if version is not None and (isinstance(version, bool) or version < 0):
        raise TfprodError(f"version={version!r}; expected a non-negative integer")
    base = os.fspath(base_path)
    versions = check_base(base)
    if version is not None and version in versions and not overwrite:
        raise version_exists(base, version)
    with tempfile.TemporaryDirectory(prefix="tfprod-migrate-") as tmp:
        if source.kind == FROZEN:
            say("importing the GraphDef (wrap_function)")
            module, functions, names, variables = _from_frozen(source, inputs, outputs)
        else:
            path = source.path
            if source.kind == CHECKPOINT:
                say("restoring the checkpoint into its graph (tf.compat.v1.Session)")
                path = os.path.join(tmp, "tf1")
                checkpoint_to_saved_model(source, path, inputs=inputs or None,
                                          outputs=outputs or None)
            say("loading the TF1 SavedModel")
            module, functions, names, variables = _from_saved_model(
                path, source.tags, signature, source.describe())
        with staging_dir(base) as stage:
            say("writing the TF2 SavedModel")
            tf.saved_model.save(module, stage, signatures=functions)
            loaded = tf.saved_model.load(stage)
            say("loading it back to check it")
            feeds = _verify(functions, loaded)
            signatures = {k: _describe(loaded.signatures[k], names[k]) for k in functions}
            del loaded
            record = {"source": source.to_json(), "signatures": {
                k: {"inputs": {n: s["tensor"] for n, s in v["inputs"].items()},
                    "outputs": {n: s["tensor"] for n, s in v["outputs"].items()},
                    "signature_def": names[k].get("signature_def")}
                for k, v in signatures.items()}}
            os.makedirs(os.path.dirname(os.path.join(stage, RECORD_FILE)), exist_ok=True)
            with open(os.path.join(stage, RECORD_FILE), "w") as f:
                json.dump(record, f, indent=2)
            if warmup and SERVING_DEFAULT in feeds:
                write_warmup_requests(os.path.join(stage, WARMUP_FILE), feeds[SERVING_DEFAULT],
                                      model_name=os.path.basename(os.path.abspath(base)),
                                      count=warmup)
            say("publishing")
            fsync_tree(stage)
            path, version = publish(stage, base, version, overwrite=overwrite)
    return MigrationResult(path=path, version=version, base_path=base,
                           source=source.to_json(), signatures=signatures,
                           variables=variables, size_bytes=folder_size(path),
                           seconds=time.perf_counter() - start)
