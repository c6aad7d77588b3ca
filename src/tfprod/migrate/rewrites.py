"""The automatic rewrites that are safe: same computation, only the spelling TF 2.21 needs.

- ``tf.compat.v1.keras.X`` -> ``tf.keras.X``: under TF 2.21 both are the same Keras 3 object;
  done only when X exists in Keras 3 and takes every keyword the call passes.
- ``tf.keras.optimizers.legacy.X`` (which ``tf_upgrade_v2`` writes, and Keras 3 refuses) ->
  ``tf.keras.optimizers.X`` with the same hyperparameters.
- ``lr=`` -> ``learning_rate=`` on Keras optimizers (Keras 2 took both; Keras 3 only the second).
- Stateless ``tf.compat.v1.layers`` functions (``flatten``, ``max_pooling*``,
  ``average_pooling*``, ``dropout`` with a constant ``training``) -> the Keras layer built and
  called in place. They own no variables, so a new layer object per call computes exactly what
  the TF1 function did. Layers with variables (``dense``, ``conv2d``, ...) are never rewritten
  in place: their variables must live in an object that outlives the call.
"""

from __future__ import annotations

import ast

from tfprod.migrate.source import Edit, Source

_POOL = ["inputs", "pool_size", "strides", "padding", "data_format", "name"]
#: TF1 function -> (its parameters in order, Keras class, constructor positionals, keywords).
STATELESS: dict[str, tuple[list[str], str, list[str], list[str]]] = {
    "flatten": (["inputs", "name", "data_format"], "Flatten", [], ["data_format", "name"]),
    "dropout": (["inputs", "rate", "noise_shape", "seed", "training", "name"], "Dropout",
                ["rate"], ["noise_shape", "seed", "name"]),
    **{f"{kind}_pooling{d}d": (_POOL, f"{cls}Pooling{d}D", ["pool_size", "strides"],
                               ["padding", "data_format", "name"])
       for kind, cls in (("max", "Max"), ("average", "Average")) for d in (1, 2, 3)},
}
_REQUIRED = {"inputs", "pool_size", "strides"}


def _bind(call: ast.Call, params: list[str]) -> dict[str, ast.expr] | str:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None
                                                                  for k in call.keywords):
        return "it passes *args or **kwargs, which cannot be mapped safely"
    if len(call.args) > len(params):
        return f"it passes {len(call.args)} positional arguments; the function takes " \
               f"{len(params)}"
    bound = dict(zip(params, call.args, strict=False))
    for k in call.keywords:
        if k.arg not in params:
            return f"keyword {k.arg!r} is not an argument of the TF1 function"
        bound[k.arg] = k.value
    return bound


def stateless_layer(src: Source, call: ast.Call, function: str, keras_root: str | None
                    ) -> tuple[Edit, str] | str:
    """The in-place rewrite of a stateless ``tf.compat.v1.layers`` call, or why it is unsafe.

    Args:
        function: the TF1 function's name (``max_pooling2d``).
        keras_root: the expression that reaches Keras 3 in this module (``tf.keras``), or None.

    Returns:
        ``(edit, new code)``, or the reason no safe rewrite exists.
    """
    if function not in STATELESS:
        return "this layer owns variables, which must live in an object that outlives the call"
    if keras_root is None:
        return "the module imports neither tensorflow nor keras under a name to reach Keras 3"
    params, cls, positional, keywords = STATELESS[function]
    bound = _bind(call, params)
    if isinstance(bound, str):
        return bound
    missing = [p for p in params if p in _REQUIRED and p not in bound]
    if missing:
        return f"required argument {missing[0]!r} is missing"
    seg = {k: src.segment(v) for k, v in bound.items()}
    ctor = []
    for p in positional:
        if p in seg:
            ctor.append(seg[p])
        elif p == "rate":
            ctor.append("0.5")  # TF1's default; Keras' Dropout requires it
    ctor += [f"{k}={seg[k]}" for k in keywords if k in seg]
    call_args = seg["inputs"]
    if function == "dropout":
        training = bound.get("training")
        if training is None:
            call_args += ", training=False"  # TF1's default: no dropout
        elif isinstance(training, ast.Constant) and isinstance(training.value, bool):
            call_args += f", training={training.value}"
        else:
            return ("`training` is an expression: Keras 3's Dropout decides with a Python bool "
                    "when called, not with a tensor; pass training as a Python argument")
    new = f"{keras_root}.layers.{cls}({', '.join(ctor)})({call_args})"
    return src.replace(call, new), new


def rename_keyword(src: Source, keyword: ast.keyword, new_name: str) -> Edit:
    """Renames ``old=value`` to ``new_name=value`` (the keyword's name only)."""
    start = src.offset(keyword.lineno, keyword.col_offset)
    return Edit(start, start + len(keyword.arg), new_name)


def drop_attribute(src: Source, node: ast.Attribute, keep: ast.expr, new_tail: str) -> Edit:
    """Replaces the chain ``node`` (e.g. ``tf.compat.v1.keras``) by ``keep`` + ``new_tail``."""
    return src.replace(node, src.segment(keep) + new_tail)
