"""``RestClient``: TF Serving's REST predict API from Python, on one kept-alive connection.

Works against ``tfprod serve`` and ``tensorflow_model_server`` alike; the standard library's
``http.client`` is all it needs.

Example::

    client = RestClient("127.0.0.1", 8501)
    probabilities = client.predict("digits", images[:64])   # one request, 64 rows
    client.close()
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import numpy as np

from tfprod.errors import TfprodError


class RestClient:
    """Row-format ``:predict`` requests over one HTTP/1.1 connection.

    Args:
        host: the server's address.
        port: its REST port (``--rest_api_port``).
        timeout: seconds a request may take.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None
                 ) -> tuple[int, dict[str, Any]]:
        for attempt in (0, 1):  # one retry: the server may have closed an idle connection
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, {"error": payload.decode("utf-8", "replace")}

    def ready(self) -> bool:
        """True once the server answers ``GET /v1/ready`` with 200."""
        try:
            return self._request("GET", "/v1/ready")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Polls readiness; raises TfprodError if the server is not ready within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TfprodError(f"the server at {self.host}:{self.port} was not ready after "
                                  f"{timeout:.0f} s; check its log")
            time.sleep(0.05)

    def predict(self, model: str, instances: np.ndarray, *, version: int | None = None,
                signature_name: str | None = None) -> np.ndarray:
        """POSTs ``{"instances": ...}`` and returns ``predictions`` as an array.

        Raises:
            TfprodError: the server answered with an error (its status and message).
        """
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
        request: dict[str, Any] = {"instances": np.asarray(instances).tolist()}
        if signature_name is not None:
            request["signature_name"] = signature_name
        status, body = self._request("POST", path + ":predict", json.dumps(request).encode())
        if status != 200:
            raise TfprodError(f"{path}:predict answered {status}: "
                              f"{body.get('error', body)}")
        return np.asarray(body["predictions"])

    def rollout(self, model: str) -> dict[str, Any]:
        """``GET /v1/models/MODEL/rollout``: the model's canary or A/B split, each arm's share,
        requests, errors and mean latency, and its shadow.

        Raises:
            TfprodError: the server answered with an error (its status and message).
        """
        path = f"/v1/models/{model}/rollout"
        status, body = self._request("GET", path)
        if status != 200:
            raise TfprodError(f"{path} answered {status}: {body.get('error', body)}")
        return body

    def close(self) -> None:
        """Closes the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
