"""``wait_until``: poll a condition with a bounded timeout (the server and cluster tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(fn: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.1) -> Any:
    """``fn()``'s first truthy value, polled every ``interval`` s; AssertionError after
    ``timeout`` s, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
