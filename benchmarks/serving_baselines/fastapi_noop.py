"""Ceiling: FastAPI parsing the request into an array and returning a constant.

The HTTP + JSON cost of one request on this machine and nothing else: the same server stack as
``fastapi_function.py`` (uvicorn with uvloop + httptools, orjson, the instances turned into one
float32 array), then a precomputed ``{"predictions": ...}`` body of the right size (10 scores per
instance) instead of inference. No TensorFlow in the process.

Usage: ``python fastapi_noop.py --port 9000``
"""

from __future__ import annotations

import numpy as np
from common import READY_PATH, instances, parse_args, predict_path, predictions, run_uvicorn
from fastapi import FastAPI, Request, Response

CLASSES = 10


def make_app(model_name: str) -> FastAPI:
    """The FastAPI app answering predict (constant answers) and readiness."""
    app = FastAPI()
    answers: dict[int, bytes] = {}

    @app.post(predict_path(model_name))
    async def predict(request: Request) -> Response:
        n = len(instances(await request.body()))
        if n not in answers:
            answers[n] = predictions(np.full((n, CLASSES), 1.0 / CLASSES, np.float32))
        return Response(answers[n], media_type="application/json")

    @app.get(READY_PATH)
    async def ready() -> Response:
        return Response("ready")

    return app


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], model=False)
    run_uvicorn(make_app(args.model_name), args.port)


if __name__ == "__main__":
    main()
