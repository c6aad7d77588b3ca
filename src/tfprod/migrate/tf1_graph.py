"""TF1 models as TF1 ran them: a ``tf.Graph`` and a ``tf.compat.v1.Session``.

Three kinds of TF1 model are read:

- ``savedmodel``: a TF1 SavedModel folder (``simple_save`` / ``SavedModelBuilder``) whose
  ``signature_def``s name the input and output tensors;
- ``frozen``: a ``GraphDef`` file (``.pb`` binary or ``.pbtxt`` text) with variables folded
  into constants;
- ``checkpoint``: a TF1 checkpoint (``model.ckpt-N`` prefix, or its folder) plus the Python
  function that builds its graph (``module:function`` or ``file.py:function``), or the
  ``.meta`` MetaGraphDef that ``tf.compat.v1.train.Saver`` wrote beside it.

Everything here runs inside ``with tf.Graph().as_default()``: the calling process stays eager.
:mod:`tfprod.migrate.tf1_run` runs a TF1 model on given inputs in a Session.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tfprod.errors import TfprodError
from tfprod.migrate.tensors import signature_keys, tensor_name

SAVEDMODEL, FROZEN, CHECKPOINT = "savedmodel", "frozen", "checkpoint"
#: Op types that are never a model's input or output.
_NOT_OUTPUTS = {"NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "Assert", "SaveV2",
                "RestoreV2", "Save", "Restore", "MergeV2Checkpoints", "ShardedFilename",
                "VarHandleOp", "VariableV2", "Variable", "Assign", "AssignVariableOp",
                "AssignAdd", "AssignSub", "AssignAddVariableOp", "AssignSubVariableOp",
                "VarIsInitializedOp", "IsVariableInitialized", "StringJoin", "Print",
                "PrintV2", "MutableHashTableV2", "HashTableV2", "InitializeTableV2",
                "InitializeTableFromTextFileV2", "ApplyAdam", "ResourceApplyAdam",
                "ApplyGradientDescent", "ResourceApplyGradientDescent", "ScalarSummary",
                "HistogramSummary", "MergeSummary", "TensorSummary", "TensorSummaryV2"}
_MAX_DEFAULT_OUTPUTS = 8


@dataclasses.dataclass(frozen=True)
class Tf1Source:
    """Where a TF1 model is and how to read it.

    Attributes:
        kind: ``savedmodel``, ``frozen`` or ``checkpoint``.
        path: the SavedModel folder, the GraphDef file, or the checkpoint prefix.
        tags: the SavedModel's MetaGraph tags.
        graph_fn: ``module:function`` / ``file.py:function`` that builds a checkpoint's graph.
        meta: the ``.meta`` file of a checkpoint without ``graph_fn``.
    """

    kind: str
    path: str
    tags: tuple[str, ...] = ("serve",)
    graph_fn: str | None = None
    meta: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tags": list(self.tags)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tf1Source:
        return cls(data["kind"], data["path"], tuple(data.get("tags") or ("serve",)),
                   data.get("graph_fn"), data.get("meta"))

    def describe(self) -> str:
        extra = (f" built by {self.graph_fn}" if self.graph_fn
                 else f" with {os.path.basename(self.meta)}" if self.meta else "")
        return f"TF1 {self.kind} {self.path}{extra}"


def _checkpoint_prefix(path: str) -> str | None:
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint")):
        import tensorflow as tf

        return tf.train.latest_checkpoint(path)
    return None


def detect_source(path: str | os.PathLike, *, graph_fn: str | None = None,
                  tags: Iterable[str] = ("serve",)) -> Tf1Source:
    """Which kind of TF1 model ``path`` is.

    Raises:
        TfprodError: nothing at ``path``; a folder that is neither a SavedModel nor a
            checkpoint; a checkpoint with neither ``graph_fn`` nor a ``.meta`` file.
    """
    path = os.path.abspath(os.fspath(path))
    tags = tuple(tags)
    if graph_fn is not None:  # a file path in it must survive a change of directory (check)
        target, sep, name = graph_fn.rpartition(":")
        if sep and target.endswith(".py"):
            graph_fn = f"{os.path.abspath(target)}:{name}"
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise TfprodError(f"{path} does not exist; expected a TF1 SavedModel folder, a frozen "
                          "GraphDef (.pb) or a checkpoint prefix")
    prefix = _checkpoint_prefix(path)
    if prefix is not None:
        meta = prefix + ".meta"
        if graph_fn is None and not os.path.isfile(meta):
            raise TfprodError(f"checkpoint {prefix} has no {os.path.basename(meta)} beside it; "
                              "pass --graph module:function, the Python function that builds "
                              "its graph")
        return Tf1Source(CHECKPOINT, prefix, tags, graph_fn,
                         None if graph_fn else meta)
    if graph_fn is not None:
        raise TfprodError(f"--graph {graph_fn} goes with a TF1 checkpoint; {path} is not one "
                          "(no .index file)")
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, f))
               for f in ("saved_model.pb", "saved_model.pbtxt")):
            return Tf1Source(SAVEDMODEL, path, tags)
        raise TfprodError(f"{path} is a folder without saved_model.pb or a checkpoint; expected "
                          "a TF1 SavedModel folder, a frozen GraphDef (.pb) or a checkpoint")
    return Tf1Source(FROZEN, path, tags)


def read_graph_def(path: str) -> Any:
    """The ``GraphDef`` in a ``.pb`` (binary) or ``.pbtxt`` (text) file.

    Raises:
        TfprodError: the file is not a GraphDef (a SavedModel's saved_model.pb included).
    """
    import tensorflow as tf
    from google.protobuf import message, text_format

    with open(path, "rb") as f:
        data = f.read()
    graph_def = tf.compat.v1.GraphDef()
    hint = ("; a SavedModel's saved_model.pb: pass its folder instead"
            if os.path.basename(path) == "saved_model.pb" else "")
    try:
        if path.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else "cannot parse"
        raise TfprodError(f"{path} is not a GraphDef ({type(e).__name__}: {reason}){hint}; "
                          "expected a frozen graph written with tf.io.write_graph") from None
    if not graph_def.node or any(not n.op or not n.name for n in graph_def.node):
        raise TfprodError(f"{path} is not a GraphDef (it parses to "
                          f"{'no nodes' if not graph_def.node else 'nodes without ops'}){hint}; "
                          "expected a frozen graph written with tf.io.write_graph")
    return graph_def


def load_function(spec: str) -> Callable[[], Any]:
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise TfprodError(f"--graph {spec!r}; expected module:function or file.py:function")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise TfprodError(f"--graph {spec}: no file {target}")
        module_spec = importlib.util.spec_from_file_location(
            f"_tfprod_graph_{abs(hash(os.path.abspath(target)))}", target)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise TfprodError(f"--graph {spec}: importing {target} failed "
                              f"({type(e).__name__}: {e})") from None
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise TfprodError(f"--graph {spec}: cannot import {target!r} ({e})") from None
        finally:
            sys.path.pop(0)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TfprodError(f"--graph {spec}: {target} has no function {name!r}")
    return fn


# --------------------------------------------------------------------------- tensors by name


def sinks(graph: Any) -> list[str]:
    """Tensors nothing consumes, of ops that compute values: the likely outputs.

    An op some of whose outputs are consumed contributes none (a loop's counter beside the
    value it computed)."""
    consumed = {t.name for op in graph.get_operations() for t in op.inputs}
    out = []
    for op in graph.get_operations():
        if op.type in _NOT_OUTPUTS or op.type.startswith(("Apply", "ResourceApply")):
            continue
        if any(t.name in consumed for t in op.outputs):
            continue
        for t in op.outputs:
            if t.name not in consumed and t.dtype.name not in ("resource", "variant"):
                out.append(t.name)
    return out


def find_tensors(graph: Any, names: Iterable[str], what: str, where: str) -> list[Any]:
    """The tensors named ``names`` (``op`` means ``op:0``).

    Raises:
        TfprodError: a name that does not exist, with the candidates.
    """
    tensors = []
    for name in names:
        full = tensor_name(name)
        try:
            tensors.append(graph.get_tensor_by_name(full))
            continue
        except (KeyError, ValueError):
            pass
        ops = [op.name for op in graph.get_operations()]
        close = difflib.get_close_matches(full.partition(":")[0], ops, n=5)
        if what == "output":
            candidates = sinks(graph)[:10]
            listed = (f"candidates (tensors nothing consumes): {', '.join(candidates)}"
                      if candidates else "the graph has no unconsumed tensors")
        else:
            placeholders = [f"{op.name}:0" for op in graph.get_operations()
                            if op.type == "Placeholder"][:10]
            listed = f"placeholders: {', '.join(placeholders) or 'none'}"
        near = f"; close names: {', '.join(close)}" if close else ""
        raise TfprodError(f"{what} tensor {full!r} does not exist in {where}; {listed}{near}")
    return tensors


def placeholders_feeding(outputs: Iterable[Any]) -> list[Any]:
    """The Placeholder tensors that ``outputs`` depend on, in graph order."""
    seen: set[str] = set()
    found = []
    stack = [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type == "Placeholder":
            found.append(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    order = {op.name: i for i, op in enumerate(found[0].graph.get_operations())} if found else {}
    return [op.outputs[0] for op in sorted(found, key=lambda op: order[op.name])]


def choose_tensors(graph: Any, inputs: Iterable[str] | None, outputs: Iterable[str] | None,
                   where: str, returned: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({key: tensor}, {key: tensor})``: the signature's inputs and outputs, keyed after the
    tensors' names (or the keys of a dict the graph function returned).

    Defaults: outputs are what the graph function returned, else the tensors nothing consumes
    (at most 8); inputs are the placeholders the outputs depend on.
    """
    if outputs:
        out_tensors = find_tensors(graph, outputs, "output", where)
        out = {signature_keys([t.name for t in out_tensors])[t.name]: t for t in out_tensors}
    elif returned is not None:
        out = _returned_outputs(returned)
    else:
        names = sinks(graph)
        if not names:
            raise TfprodError(f"{where} has no tensor that nothing consumes; pass --outputs "
                              "with the output tensor names")
        if len(names) > _MAX_DEFAULT_OUTPUTS:
            raise TfprodError(f"{where} has {len(names)} tensors that nothing consumes (a "
                              "training graph?); pass --outputs with the ones to serve, e.g. "
                              f"{', '.join(names[:6])}")
        keys = signature_keys(names)
        out = {keys[n]: graph.get_tensor_by_name(n) for n in names}
    if inputs:
        in_tensors = find_tensors(graph, inputs, "input", where)
    else:
        in_tensors = placeholders_feeding(out.values())
    keys = signature_keys([t.name for t in in_tensors])
    return {keys[t.name]: t for t in in_tensors}, out


def _returned_outputs(returned: Any) -> dict[str, Any]:
    if isinstance(returned, Mapping):
        items = list(returned.items())
        keys = signature_keys([str(k) for k, _ in items])
        return {keys[str(k)]: t for k, t in items}
    flat = list(returned) if isinstance(returned, list | tuple) else [returned]
    if not flat or not all(hasattr(t, "graph") and hasattr(t, "op") for t in flat):
        raise TfprodError("the graph function must return its output tensors (a tensor, a "
                          f"list of them or a dict name -> tensor); it returned {returned!r}")
    keys = signature_keys([t.name for t in flat])
    return {keys[t.name]: t for t in flat}


# --------------------------------------------------------------------------- checkpoints


def check_checkpoint(graph: Any, prefix: str, where: str) -> list[Any]:
    """The graph's global variables, checked against the checkpoint's names and shapes.

    Raises:
        TfprodError: a variable the checkpoint lacks or holds with another shape.
    """
    import tensorflow as tf

    try:
        stored = dict(tf.train.list_variables(prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise TfprodError(f"cannot read checkpoint {prefix} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]})") from None
    with graph.as_default():
        variables = tf.compat.v1.global_variables()
    if not variables:
        raise TfprodError(f"{where} creates no variables, so checkpoint {prefix} cannot fill "
                          "it; pass the function that builds the checkpoint's graph")
    missing = [v.op.name for v in variables if v.op.name not in stored]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5
                                          else "")
        held = ", ".join(sorted(stored)[:8])
        raise TfprodError(f"checkpoint {prefix} does not match {where}: the graph's variables "
                          f"{shown} are not in it (it holds {held}); build the graph the "
                          "checkpoint was saved from (same variable_scope names)")
    for v in variables:
        want = stored[v.op.name]
        if list(v.shape.as_list()) != list(want):
            raise TfprodError(f"checkpoint {prefix} does not match {where}: variable "
                              f"{v.op.name} is {v.shape.as_list()} in the graph but {want} in "
                              "the checkpoint")
    return variables


def build_checkpoint_graph(source: Tf1Source, session: Any) -> tuple[Any, str]:
    """Builds a checkpoint's graph in the default graph and restores it into ``session``.
    Returns (what the graph function returned, a description)."""
    import tensorflow as tf

    if source.graph_fn:
        fn = load_function(source.graph_fn)
        where = f"the graph of {source.graph_fn}"
        try:
            returned = fn()
        except TfprodError:
            raise
        except Exception as e:
            raise TfprodError(f"--graph {source.graph_fn}: building the graph failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                              ) from None
        variables = check_checkpoint(session.graph, source.path, where)
        tf.compat.v1.train.Saver(variables).restore(session, source.path)
        return returned, where
    where = f"the graph of {os.path.basename(source.meta)}"
    try:
        saver = tf.compat.v1.train.import_meta_graph(source.meta, clear_devices=True)
    except Exception as e:
        raise TfprodError(f"cannot read {source.meta} as a MetaGraphDef ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    check_checkpoint(session.graph, source.path, where)
    saver.restore(session, source.path)
    return None, where


def savedmodel_meta_graph(path: str, tags: Iterable[str]) -> Any:
    """The MetaGraphDef of a SavedModel folder tagged exactly ``tags``.

    Raises:
        TfprodError: an unreadable saved_model.pb, or no MetaGraph with these tags.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    try:
        if os.path.isfile(pb):
            with open(pb, "rb") as f:
                model.ParseFromString(f.read())
        else:
            from google.protobuf import text_format

            with open(os.path.join(path, "saved_model.pbtxt")) as f:
                text_format.Parse(f.read(), model)
    except Exception as e:
        raise TfprodError(f"{path}: cannot read saved_model.pb ({type(e).__name__}); expected "
                          "a SavedModel written by TensorFlow") from None
    want = set(tags)
    for meta in model.meta_graphs:
        if set(meta.meta_info_def.tags) == want:
            return meta
    found = [sorted(m.meta_info_def.tags) for m in model.meta_graphs]
    raise TfprodError(f"{path} has no MetaGraph tagged {sorted(want)}; its tags are {found}: "
                      "pass --tags")


def signature_tensors(meta: Any) -> dict[str, dict[str, dict[str, str]]]:
    """A MetaGraphDef's SignatureDefs as ``{key: {"inputs": {name: tensor}, "outputs": ...}}``
    (dense tensors only; ``__saved_model_init_op`` and the like are left out)."""
    return {key: {"inputs": {k: v.name for k, v in sig.inputs.items()},
                  "outputs": {k: v.name for k, v in sig.outputs.items()}}
            for key, sig in meta.signature_def.items() if not key.startswith("__")}


def subgraph(graph_def: Any, tensor_names: Iterable[str]) -> Any:
    """The part of ``graph_def`` that computes ``tensor_names`` (data and control inputs)."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    keep: set[str] = set()
    stack = [t.partition(":")[0] for t in tensor_names]
    while stack:
        name = stack.pop()
        if name in keep or name not in nodes:
            continue
        keep.add(name)
        stack.extend(i.lstrip("^").partition(":")[0] for i in nodes[name].input)
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def checkpoint_to_saved_model(source: Tf1Source, out: str, *, inputs: Iterable[str] | None,
                              outputs: Iterable[str] | None) -> dict[str, dict[str, str]]:
    """Writes a checkpoint's graph with its restored variables as a TF1 SavedModel in ``out``
    (``serving_default`` over the chosen tensors). Returns the signature's tensor names."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        returned, where = build_checkpoint_graph(source, session)
        ins, outs = choose_tensors(graph, inputs, outputs, where, returned)
        builder = tf.compat.v1.saved_model.Builder(out)
        signature = tf.compat.v1.saved_model.predict_signature_def(ins, outs)
        builder.add_meta_graph_and_variables(
            session, list(source.tags), {"serving_default": signature},
            main_op=tf.compat.v1.tables_initializer(), strip_default_attrs=True)
        builder.save()
    return {"inputs": {k: t.name for k, t in ins.items()},
            "outputs": {k: t.name for k, t in outs.items()}}
