"""A model from what a user names on the command line: a ``.keras`` file or a
``module:function`` that builds one (``tfprod doctor``, ``export``, ``optimize``, ``train``)."""

from __future__ import annotations

import importlib
import os
import sys

import keras

from tfprod.errors import TfprodError


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def load_model_function(spec: str):
    """``package.module:function`` -> the function (a user's code, imported on purpose)."""
    if ":" not in spec:
        raise TfprodError(f"--model {spec!r}; expected module:function or a .keras file")
    module_name, func_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TfprodError(f"--model {spec!r}: cannot import {module_name!r} ({e})") from None
    finally:
        sys.path.pop(0)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise TfprodError(f"--model {spec!r}: {module_name} has no function {func_name!r}")
    return fn


def load_model(spec: str) -> keras.Model:
    """A model from a ``.keras`` file or a ``module:function`` that returns one.

    Raises:
        TfprodError: a missing or unreadable file, an import error, a function that fails or
            does not return a ``keras.Model``.
    """
    if spec.endswith((".keras", ".h5")):
        if not os.path.exists(spec):
            raise TfprodError(f"--model {spec}: no such file")
        try:
            model = keras.saving.load_model(spec)
        except Exception as e:  # a corrupt or foreign file: say so in one line
            raise TfprodError(f"--model {spec}: cannot load it as a Keras model "
                              f"({type(e).__name__}: {_first_line(e)}); custom layers must be "
                              "registered with keras.saving.register_keras_serializable") from None
    elif ":" in spec:
        fn = load_model_function(spec)
        try:
            model = fn()
        except TfprodError:
            raise
        except Exception as e:  # the user's builder failed: one line, not their traceback
            raise TfprodError(f"--model {spec}: calling it failed ({type(e).__name__}: "
                              f"{_first_line(e)})") from None
    else:
        raise TfprodError(f"--model {spec!r}; expected module:function or a .keras file")
    if not isinstance(model, keras.Model):
        raise TfprodError(f"--model {spec}: got a {type(model).__name__}; expected a keras.Model")
    return model
