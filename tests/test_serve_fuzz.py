"""Fuzzing the REST API of a real ``tfprod serve`` (loopback only, bounded count and time):
malformed requests never get a 5xx, never crash the server, never change a valid answer."""

import json
import random
import time
from urllib.parse import quote

import pytest

from rest_serving import RawClient, shared_server

REQUESTS = 5000
TIME_BUDGET_S = 20.0
VALID = [("/v1/models/echo:predict", b'{"instances": [[0.1, 2, NaN]]}'),
         ("/v1/models/multi:predict", b'{"instances": [{"x": [1, 2, 3], "k": 2}]}'),
         ("/v1/models/strings:predict", b'{"inputs": [{"b64": "AP8="}, "abc"]}'),
         ("/v1/models/examples:classify", b'{"examples": [{"x": 1.5}]}')]
TEMPLATES = [
    {"instances": [[1.0, 2.0], [3.0, 4.0]]},
    {"inputs": {"x": [[1, 2, 3]], "k": [1]}},
    {"instances": [{"x": [1, 2, 3], "k": 2}, {"x": [4, 5, 6], "k": 3}]},
    {"signature_name": "serving_default", "inputs": ["a", {"b64": "aGk="}]},
    {"examples": [{"x": 1.0, "tags": ["a", "b"]}], "context": {"x": 2}},
    {"signature_name": "regress", "examples": [{"x": [1.0]}]},
]
ODD_VALUES = [None, True, False, 0, -1, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 30, 1e308,
              -1e-320, 0.5, "", "x" * 300, "\u00e9\u2603", {"b64": "!!"}, {"b64": 5},
              {"b64": "aGk=", "x": 1}, [], [[]], [[1], [2, 3]], {}, {"": []}, [None],
              [[[[[[[[1]]]]]]]], ["1", 2], {"instances": []}]
RAW_NUMBERS = [b"1e309", b"-1e400", b"123456789012345678901234567890", b"NaN", b"-Infinity",
               b"Infinity", b"1" * 5000, b"-0", b"0.0000000000000000000000000001e-400"]
NAMES = ["echo", "multi", "strings", "examples", "nope", "..", ".", "%2E%2E", "a%2Fb",
         "..%2F..%2Fetc%2Fpasswd", "%00", "%ff%fe", "%ED%A0%80", "e cho", "echo%20", "x" * 3000,
         "\u00e9", "ECHO", "echo;rm", "%", "%%", "%zz"]
ROUTE_TAILS = ["", "/versions/1", "/versions/0", "/versions/-1", "/versions/1e3",
               "/versions/18446744073709551616", "/labels/stable", "/labels/..", "/labels/%2F",
               "/labels/", "/versions/", "//", "/metadata", "/versions/2/metadata"]
VERBS = [":predict", ":classify", ":regress", ":PREDICT", ":explain", "", ":", "::predict"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


def mutate(rng, value, depth=0):
    """``value`` with one random node replaced by an odd value (or the whole value)."""
    if depth > 4 or rng.random() < 0.25:
        return rng.choice(ODD_VALUES)
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = mutate(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return value[:i] + [mutate(rng, value[i], depth + 1)] + value[i + 1:]
    return rng.choice(ODD_VALUES)


def random_body(rng):
    kind = rng.randrange(7)
    template = json.dumps(rng.choice(TEMPLATES)).encode()
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        return template[:rng.randrange(len(template))]
    if kind == 2:
        depth = rng.choice([10, 100, 1100, 5000, 50000])
        return b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if kind == 3:
        return b'{"instances": [[' + rng.choice(RAW_NUMBERS) + b", 1.0]]}"
    if kind == 4:
        pos = rng.randrange(len(template))
        return template[:pos] + rng.choice([b"{", b"]", b'"', b",", b"\\", b"\x00", b"\xff",
                                            b"NaN", b"}}"]) + template[pos:]
    return json.dumps(mutate(rng, rng.choice(TEMPLATES))).encode()


def random_path(rng):
    if rng.random() < 0.7:
        return "/v1/models/" + rng.choice(NAMES) + rng.choice(ROUTE_TAILS) + rng.choice(VERBS)
    parts = ["", rng.choice(["v1", "V1", "v2", "", "..", "monitoring", "v1/ready"])]
    parts += rng.choices(["models", "echo", "..", "%2e%2e", "metadata", "x:predict", ""],
                         k=rng.randrange(4))
    return "/".join(parts) or "/"


def test_fuzzed_requests_never_get_a_5xx_nor_change_valid_answers(server):
    client = RawClient(server.rest_port)
    try:
        before = [client.request("POST", path.encode(), body) for path, body in VALID]
        assert [r[0] for r in before] == [200] * len(VALID), before
        rng = random.Random(6)
        start = time.monotonic()
        sent, statuses = 0, {}
        while sent < REQUESTS and time.monotonic() - start < TIME_BUDGET_S:
            method = "POST" if rng.random() < 0.75 else rng.choice(METHODS)
            target = quote(random_path(rng), safe="/:%").encode()
            body = random_body(rng) if method in ("POST", "PUT", "PATCH") else None
            status, headers, data = client.request(method, target, body)
            sent += 1
            statuses[status] = statuses.get(status, 0) + 1
            context = (method, target[:200], body[:200] if body else None, data[:300])
            assert status < 500, context
            assert headers["content-type"] == "application/json", context
            if method != "HEAD" and status != 200:
                assert set(json.loads(data)) == {"error"}, context
        assert sent >= 1000, f"only {sent} requests in {TIME_BUDGET_S} s"
        after = [client.request("POST", path.encode(), body) for path, body in VALID]
        assert [r[2] for r in after] == [r[2] for r in before]
        assert client.request("GET", b"/v1/ready")[0] == 200
    finally:
        client.close()
    assert server.proc.poll() is None, server.output()
    assert statuses.get(400, 0) > sent // 2, statuses  # the fuzz reached the request checks
