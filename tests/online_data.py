"""Shared data for the online tests: a tiny digits MLP served as version 1, and a shift."""

from __future__ import annotations

import numpy as np


def shifted(x: np.ndarray) -> np.ndarray:
    """The drifted inputs: mirrored digits with less contrast (the served model fails them)."""
    return np.clip(0.3 + 0.6 * x[:, ::-1], 0, 1).astype(np.float32)


def tiny_mlp(x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 15):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(64, activation="relu")(inputs)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def export_v1(model, base, x, y) -> None:
    """Version 1 with its .keras file inside (what the online loop continues from)."""
    import os
    import tempfile

    from tfprod.export import export_saved_model
    from tfprod.online.loop import MODEL_FILE

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            data = f.read()
    export_saved_model(model, base, version=1, reference_data=({"pixels": x}, y),
                       extra_files={MODEL_FILE: data})
