"""``lazy_exports``: a package's published names, imported from their modules on first use.

Every stage's face (``tfprod/<stage>/__init__.py``) follows this one rule, so that ``import
tfprod.serve`` (or a process helper of ``tfprod.train``) does not pay for TensorFlow until a
name that needs it is used. The one exception is :mod:`tfprod.models`: importing it registers
tfprod's Keras classes (so ``.keras`` files that use them load), which needs Keras.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


class _Face(types.ModuleType):
    """A package whose published names may share a submodule's name (``tfprod.doctor.diagnose``
    the function, in ``tfprod/doctor/diagnose.py``).

    Importing a submodule sets it as an attribute of its package, which would hide the
    function of the same name; an eager ``from .diagnose import diagnose`` rebinds it, and this
    does the same for a lazy face.
    """

    _lazy_where: dict[str, str]

    def __setattr__(self, name: str, value: Any) -> None:
        where = self.__dict__.get("_lazy_where", {})
        if isinstance(value, types.ModuleType) and name in where \
                and value.__name__ == f"{self.__name__}.{where[name]}":
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, where: dict[str, str]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        where: each published name -> the submodule (relative to ``package``) that defines it,
            or a module's full name (``"tfprod.models"``) for a name re-published from another
            stage.

    Example (in a package's ``__init__.py``)::

        __all__, __getattr__, __dir__ = lazy_exports(__name__, {"Trainer": "trainer"})
    """
    names = sorted(where)
    module = sys.modules[package]
    module._lazy_where = dict(where)
    module.__class__ = _Face

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        source = where[name] if where[name].startswith("tfprod.") else f"{package}.{where[name]}"
        value = getattr(importlib.import_module(source), name)
        setattr(module, name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
