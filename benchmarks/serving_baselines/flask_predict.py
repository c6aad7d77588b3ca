"""Baseline: a naive Flask server calling ``model.predict`` once per request.

What a first deployment often looks like: Flask's threaded development server, the stdlib JSON
parser, one ``model.predict`` per request, no batching.

Usage: ``python flask_predict.py --port 9000 --model model.keras``
"""

from __future__ import annotations

import numpy as np
from common import READY_PATH, load_model, parse_args, predict_path
from flask import Flask, jsonify, request


def make_app(model, model_name: str) -> Flask:
    """The Flask app answering predict and readiness."""
    app = Flask(__name__)

    @app.post(predict_path(model_name))
    def predict():
        x = np.asarray(request.get_json()["instances"], dtype=np.float32)
        return jsonify({"predictions": model.predict(x, verbose=0).tolist()})

    @app.get(READY_PATH)
    def ready():
        return "ready"

    return app


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    make_app(load_model(args.model), args.model_name).run(host="127.0.0.1", port=args.port,
                                                          threaded=True)


if __name__ == "__main__":
    main()
