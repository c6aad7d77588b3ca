"""Baseline: FastAPI calling a ``tf.function`` of the model once per request.

The usual "fast" hand-written server: uvicorn (uvloop + httptools), orjson, the model's forward
pass compiled with ``tf.function`` (traced per batch size once), each request run on its own in
Starlette's thread pool, no batching.

Usage: ``python fastapi_function.py --port 9000 --model model.keras``
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from common import (
    READY_PATH,
    instances,
    load_model,
    parse_args,
    predict_path,
    predictions,
    run_uvicorn,
)
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool


def make_app(model, model_name: str) -> FastAPI:
    """The FastAPI app answering predict and readiness."""
    app = FastAPI()
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    forward(np.zeros((1, *model.input_shape[1:]), np.float32))

    def infer(body: bytes) -> bytes:
        return predictions(forward(instances(body)).numpy())

    @app.post(predict_path(model_name))
    async def predict(request: Request) -> Response:
        body = await request.body()
        return Response(await run_in_threadpool(infer, body), media_type="application/json")

    @app.get(READY_PATH)
    async def ready() -> Response:
        return Response("ready")

    return app


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run_uvicorn(make_app(load_model(args.model), args.model_name), args.port)


if __name__ == "__main__":
    main()
