"""What Keras 3 has: whether a ``tf.keras`` / ``keras`` name exists and which keywords it takes.

Under TF 2.21 ``tf.keras`` and ``tf.compat.v1.keras`` both resolve to Keras 3
(``keras._tf_keras.keras``), so a name that resolves here is the object user code will get.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

#: Prefixes of dotted names that are Keras 3 under TF 2.21.
KERAS_ROOTS = ("tf.compat.v1.keras", "tf.keras", "keras")
#: Keywords that ``keras.layers.Layer.__init__`` takes through ``**kwargs``.
_LAYER_KWARGS = {"input_dim", "input_shape"}


def keras_path(name: str) -> tuple[str, list[str]] | None:
    """``tf.compat.v1.keras.layers.Dense`` -> ("tf.compat.v1.keras", ["layers", "Dense"])."""
    for root in KERAS_ROOTS:
        if name == root or name.startswith(root + "."):
            rest = name[len(root) + 1:]
            return root, rest.split(".") if rest else []
    return None


@functools.cache
def lookup(name: str) -> tuple[Any, str | None]:
    """``(object, None)`` if the Keras name exists in Keras 3, else ``(None, reason)``."""
    found = keras_path(name)
    if found is None:
        return None, f"{name} is not a Keras name"
    root, parts = found
    import keras
    import tensorflow as tf

    obj: Any = keras if root == "keras" else tf.keras
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except Exception as e:  # AttributeError; ImportError from the legacy namespaces
            where = ".".join([root, *parts[:i]])
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, AttributeError):
                text = f"{where} has no attribute {part!r}"
            return None, text[:300]
    if getattr(obj, "__name__", "") == "LegacyOptimizerWarning":
        # Keras 3 keeps keras.optimizers.legacy.* as classes that raise ImportError when built.
        return None, "keras.optimizers.legacy is not supported in Keras 3 (ImportError)"
    return obj, None


def accepted_keywords(obj: Any) -> tuple[set[str], bool]:
    """``(names, closed)``: the keyword arguments a Keras callable takes, and whether every other
    keyword is rejected (False: an open ``**kwargs`` that nothing checks).

    Classes are followed up their MRO while ``__init__`` forwards ``**kwargs``; Keras' own bases
    (``Layer``, the optimizers) reject unknown keywords, so they close the set.
    """
    named: set[str] = set()
    targets = ([c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)]
               if inspect.isclass(obj) else [obj])
    for fn in targets:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            return named, False
        named.update(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return named, True
        owner = getattr(fn, "__qualname__", "").split(".")[0]
        if owner == "Layer":
            return named | _LAYER_KWARGS, True
        if owner == "BaseOptimizer":
            return named, True  # it warns about `decay` and ignores it; rejects the rest
    return named, False


def positional_count(obj: Any) -> int | None:
    """How many positional arguments a Keras callable takes (None: any number)."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
