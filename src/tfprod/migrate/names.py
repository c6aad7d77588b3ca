"""Dotted TensorFlow names of the expressions in a module: ``tf.compat.v1.layers.dense``.

Import aliases are resolved (``import tensorflow.compat.v1 as tf`` makes ``tf.layers`` read
``tf.compat.v1.layers``; ``from tensorflow.contrib import slim`` makes ``slim.conv2d`` read
``tf.contrib.slim.conv2d``) so that the rules see one spelling of each API.
"""

from __future__ import annotations

import ast

#: Module prefixes rewritten to the ``tf.`` spelling the rules use.
_MODULES = {"tensorflow": "tf", "tensorflow_estimator": "tensorflow_estimator", "keras": "keras"}


def module_name(module: str) -> str | None:
    """``tensorflow.compat.v1`` -> ``tf.compat.v1``; None for modules the rules ignore."""
    head, _, rest = module.partition(".")
    if head not in _MODULES:
        return None
    name = _MODULES[head] + (f".{rest}" if rest else "")
    if name == "tf.compat.v2" or name.startswith("tf.compat.v2."):
        name = "tf" + name[len("tf.compat.v2"):]
    return name


def aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from the module's imports (at any depth)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                name = module_name(a.name)
                if name is None:
                    continue
                if a.asname:
                    out[a.asname] = name
                else:  # `import tensorflow.compat.v1` binds `tensorflow`
                    head = a.name.partition(".")[0]
                    out[head] = module_name(head) or head
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            base = module_name(node.module)
            if base is None:
                continue
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"{base}.{a.name}"
    return out


def chain(node: ast.AST) -> tuple[ast.Name, list[str]] | None:
    """``a.b.c`` -> (the Name ``a``, ["b", "c"]); None if the expression is not a plain chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return node, parts[::-1]


def dotted(node: ast.AST, imported: dict[str, str]) -> str | None:
    """The dotted name of ``node`` if it starts at an imported TensorFlow/Keras name."""
    found = chain(node)
    if found is None:
        return None
    root, parts = found
    base = imported.get(root.id)
    if base is None:
        return None
    name = ".".join([base, *parts])
    if name.startswith("tf.compat.v2."):
        name = "tf." + name[len("tf.compat.v2."):]
    return name
