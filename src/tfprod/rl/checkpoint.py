"""Checkpoints of a DQN run: everything needed to continue it exactly, written atomically.

A checkpoint is a folder ``checkpoints/step-<N>/`` with ``arrays.npz`` (replay buffer,
network and optimizer variables, kept-best weights) and ``state.pkl`` (counters, epsilon's
step, numpy RNG state, the environments' state, histories). It is written to a hidden folder,
fsynced and renamed; then ``checkpoints/latest`` (a one-line file) is replaced to name it, and
older checkpoints are removed. A process killed at any instant leaves the previous checkpoint
named by ``latest``, complete.
"""

from __future__ import annotations

import os
import pickle
import shutil
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export.publish import fsync_tree

LATEST = "latest"


def save_checkpoint(folder: str | os.PathLike, step: int, arrays: dict[str, np.ndarray],
                    state: dict[str, Any]) -> str:
    """Writes checkpoint ``step`` into ``folder`` and points ``latest`` at it; returns its path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    name = f"step-{step:012d}"
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
    with open(os.path.join(tmp, "state.pkl"), "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = os.path.join(folder, f".{LATEST}.tmp")
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(folder, LATEST))
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for entry in os.listdir(folder):  # older checkpoints and leftovers of killed writers
        if entry not in (name, LATEST):
            path = os.path.join(folder, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The folder ``latest`` names, or None when there is no checkpoint."""
    pointer = os.path.join(os.fspath(folder), LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(os.fspath(folder), f.read().strip())
    return path if os.path.isdir(path) else None


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the state of a checkpoint folder."""
    try:
        with np.load(os.path.join(path, "arrays.npz")) as z:
            arrays = {k: z[k] for k in z.files}
        with open(os.path.join(path, "state.pkl"), "rb") as f:
            state = pickle.load(f)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise TfprodError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                          "start a new run in another folder") from None
    return arrays, state
