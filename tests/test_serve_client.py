"""``tfprod.serve.client.RestClient`` against a real ``tfprod serve`` process."""

import numpy as np
import pytest

from rest_serving import free_port, shared_server
from tfprod.errors import TfprodError
from tfprod.serve.client import RestClient


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


def test_predict_by_latest_and_by_version_on_one_connection(server):
    x = np.array([[1.5, -2.0], [0.25, 3.0]], np.float32)
    with RestClient("127.0.0.1", server.rest_port) as client:
        assert client.ready()
        np.testing.assert_array_equal(client.predict("echo", x), 2 * x)  # latest: v2, y = 2x
        np.testing.assert_array_equal(client.predict("echo", x, version=1), x)
        np.testing.assert_array_equal(
            client.predict("echo", np.array([3.0]), signature_name="double"), [1.0])
        conn = client._conn
        client.predict("echo", x)
        assert client._conn is conn, "a second request opened a new connection"


def test_server_errors_raise_with_status_and_message(server):
    with RestClient("127.0.0.1", server.rest_port) as client:
        with pytest.raises(TfprodError, match=r"answered 404: .*nope"):
            client.predict("nope", np.zeros((1, 2)))
        with pytest.raises(TfprodError, match=r"answered 400: "):
            client.predict("multi", np.zeros((1, 3)))
        # The connection survives an error answer.
        np.testing.assert_array_equal(client.predict("echo", np.ones((1, 1)), version=1), [[1]])


def test_no_server_is_not_ready_and_wait_ready_gives_up():
    client = RestClient("127.0.0.1", free_port(), timeout=1)
    assert not client.ready()
    with pytest.raises(TfprodError, match="was not ready after 0 s"):
        client.wait_ready(timeout=0.2)
