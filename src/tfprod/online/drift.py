"""``PageHinkley``: a change detector on the stream of errors (Page 1954; as in River).

It accumulates how far each value sits above the running mean (minus a tolerance ``delta``)
and signals when that sum rises more than ``threshold`` above its minimum: a lasting increase
of the error rate, not a single unlucky batch. After a signal it starts over.
"""

from __future__ import annotations

from typing import Any


class PageHinkley:
    """Detects an increase of the mean of a stream (the error of a model: 1 wrong, 0 right).

    Args:
        delta: tolerated increase of the mean.
        threshold: lambda; larger: fewer, later alarms.
        min_instances: values seen before any alarm.

    Example:
        >>> ph = PageHinkley()
        >>> drifted = [ph.update(err) for err in errors]
    """

    def __init__(self, *, delta: float = 0.005, threshold: float = 25.0,
                 min_instances: int = 30):
        self.delta, self.threshold, self.min_instances = delta, threshold, min_instances
        self.reset()

    def reset(self) -> None:
        self.n, self.mean, self.sum, self.minimum = 0, 0.0, 0.0, 0.0

    def update(self, value: float) -> bool:
        """Adds one value; True when a change is detected (the detector then resets)."""
        self.n += 1
        self.mean += (value - self.mean) / self.n
        self.sum += value - self.mean - self.delta
        self.minimum = min(self.minimum, self.sum)
        if self.n >= self.min_instances and self.sum - self.minimum > self.threshold:
            self.reset()
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sum": self.sum, "minimum": self.minimum}

    def load_state(self, state: dict[str, Any]) -> None:
        self.n, self.mean = int(state["n"]), float(state["mean"])
        self.sum, self.minimum = float(state["sum"]), float(state["minimum"])
