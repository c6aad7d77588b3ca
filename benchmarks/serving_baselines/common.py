"""What the baseline servers of ``benchmarks/serving.py`` share: flags, parsing, uvicorn.

Each baseline answers ``POST /v1/models/<name>:predict`` with TF Serving's row format
(``{"instances": [...]}`` in, ``{"predictions": [...]}`` out) and ``GET /ready`` with 200 once it
can answer, so the benchmark drives every server with the same requests.
"""

from __future__ import annotations

import argparse

import numpy as np
import orjson

READY_PATH = "/ready"


def parse_args(description: str, *, model: bool = True) -> argparse.Namespace:
    """``--port``, ``--model_name`` and (for servers that run it) ``--model``, a .keras file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--model_name", default="digits", help="the name in the predict path")
    if model:
        parser.add_argument("--model", required=True, help="a .keras file")
    return parser.parse_args()


def predict_path(model_name: str) -> str:
    """TF Serving's REST predict path for ``model_name``."""
    return f"/v1/models/{model_name}:predict"


def instances(body: bytes) -> np.ndarray:
    """The ``instances`` of a request body as one float32 array (orjson, then numpy)."""
    return np.asarray(orjson.loads(body)["instances"], dtype=np.float32)


def predictions(y: np.ndarray) -> bytes:
    """``{"predictions": y}`` as JSON bytes."""
    return orjson.dumps({"predictions": y}, option=orjson.OPT_SERIALIZE_NUMPY)


def load_model(path: str):
    """The Keras model of ``path`` with its predict call traced once (not on the first request)."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    model.predict(np.zeros((1, *model.input_shape[1:]), np.float32), verbose=0)
    return model


def run_uvicorn(app, port: int) -> None:
    """Serves ``app`` on 127.0.0.1:``port`` as ``tfprod serve`` runs its REST API (one process,
    uvloop + httptools, no access log)."""
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning", backlog=4096)
