"""``lazy_exports``: a package's published names, imported from their modules on first use.

Used by the subpackages whose modules import TensorFlow, so that ``import tfprod.serve`` (or
a process helper of ``tfprod.train``) does not pay for it until a name that needs it is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        where: each published name -> the submodule (relative to ``package``) that defines it.

    Example (in a package's ``__init__.py``)::

        __all__, __getattr__, __dir__ = lazy_exports(__name__, {"Trainer": "trainer"})
    """
    names = sorted(where)

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
