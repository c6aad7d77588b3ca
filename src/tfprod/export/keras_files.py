"""Keras files: ``.keras`` (architecture, weights and optimizer state) and ``.weights.h5``.

``.keras`` is for continued training: ``keras.saving.load_model`` brings back the optimizer
with its step count and moments, so training resumes where it stopped. ``.weights.h5`` holds
the weights only, for a model built in code. Both are written to a hidden file beside the target
and renamed into place: a failed save leaves the previous file (or nothing) behind.
"""

from __future__ import annotations

import os
import secrets

import keras

from tfprod.errors import TfprodError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _target(path: str | os.PathLike, suffix: str, what: str, overwrite: bool) -> str:
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise TfprodError(f"{path}: {what} must end in {suffix} (Keras 3 picks the format from "
                          f"the name); e.g. {os.path.splitext(path)[0] or 'model'}{suffix}")
    if os.path.isdir(path):
        raise TfprodError(f"{path} is a folder; expected a {suffix} file path")
    if os.path.exists(path) and not overwrite:
        raise TfprodError(f"{path} already exists; pass overwrite=True (--overwrite) to "
                          "replace it")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise TfprodError(f"cannot create the folder of {path} ({e.strerror}); choose a "
                          "writable path") from None
    if not os.access(parent, os.W_OK):
        raise TfprodError(f"{parent} is not writable; choose another path for {path}")
    return path


def _atomic_save(path: str, suffix: str, save, what: str) -> str:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".tmp-{secrets.token_hex(4)}{suffix}")
    try:
        save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except TfprodError:
        raise
    except Exception as e:  # Keras' serialization errors: one line, naming the file
        raise TfprodError(f"cannot save the model as {what} {path} ({type(e).__name__}: "
                          f"{_first_line(e)}); custom layers need get_config() and "
                          "keras.saving.register_keras_serializable") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_keras_path(path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Checks a ``.keras`` output path before anything is written; returns it as a string."""
    return _target(path, ".keras", "a .keras file", overwrite)


def check_weights_path(path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Checks a ``.weights.h5`` output path before anything is written."""
    return _target(path, ".weights.h5", "a weights file", overwrite)


def save_keras(model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Saves architecture, weights and optimizer state to a ``.keras`` file, atomically.

    Reload with ``keras.saving.load_model(path)`` (or :func:`load_keras`) and call ``fit`` to
    continue training: the optimizer resumes its iteration count and moments.

    Raises:
        TfprodError: a path not ending in ``.keras``, an existing file without ``overwrite``,
            an unwritable folder, a model Keras cannot serialize.
    """
    path = check_keras_path(path, overwrite=overwrite)
    return _atomic_save(path, ".keras", model.save, "a .keras file")


def save_weights(model: keras.Model, path: str | os.PathLike, *,
                 overwrite: bool = False) -> str:
    """Saves the weights only to a ``.weights.h5`` file, atomically.

    Load them into a model built by the same code: ``model.load_weights(path)``.

    Raises:
        TfprodError: a path not ending in ``.weights.h5``, an existing file without
            ``overwrite``, an unwritable folder.
    """
    path = check_weights_path(path, overwrite=overwrite)
    return _atomic_save(path, ".weights.h5", model.save_weights, "weights")


def load_keras(path: str | os.PathLike, *, compile: bool = True) -> keras.Model:
    """Loads a ``.keras`` file, with a one-line error for what is not one.

    Raises:
        TfprodError: a missing path, a SavedModel folder (not loadable as a Keras model), an
            unreadable or foreign file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        hint = (" (a SavedModel folder: Keras 3 cannot load those as a model; pass the .keras "
                "file it was exported from)") if os.path.exists(
                    os.path.join(path, "saved_model.pb")) else ""
        raise TfprodError(f"{path} is a folder{hint}; expected a .keras file")
    if not os.path.exists(path):
        raise TfprodError(f"{path}: no such file; expected a .keras model file")
    if not path.endswith((".keras", ".h5")) or path.endswith(".weights.h5"):
        raise TfprodError(f"{path}: not a .keras model file (weights-only files and other "
                          "formats hold no architecture); pass the .keras file")
    try:
        import tfprod.models  # noqa: F401 - registers tfprod's layers and models for loading

        model = keras.saving.load_model(path, compile=compile)
    except Exception as e:  # a corrupt or foreign file: say so in one line
        raise TfprodError(f"{path}: cannot load it as a Keras model ({type(e).__name__}: "
                          f"{_first_line(e)}); custom layers must be registered with "
                          "keras.saving.register_keras_serializable") from None
    if not isinstance(model, keras.Model):
        raise TfprodError(f"{path} holds a {type(model).__name__}; expected a keras.Model")
    return model
