"""``ReservoirBuffer``: a bounded replay memory of past examples.

Reservoir sampling (Vitter's algorithm R) keeps every example seen so far with the same
probability ``capacity / seen``, in fixed memory. The class-balanced variant (Chaudhry et al.
2019, "On tiny episodic memories") evicts from the largest class when a full buffer receives an
example of a smaller one, so rare classes keep their share. The whole state (examples, counters,
the generator) is a dict of arrays: saved with the learner, it resumes exactly.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tfprod.errors import TfprodError


class ReservoirBuffer:
    """Past examples, at most ``capacity`` of them.

    Args:
        capacity: examples kept.
        balanced: evict from the largest class first (class-balanced reservoir).
        seed: seeds the sampling (eviction and :meth:`sample`).

    Example:
        >>> buffer = ReservoirBuffer(500, balanced=True)
        >>> buffer.add({"pixels": x}, y)
        >>> x_old, y_old = buffer.sample(64)
    """

    def __init__(self, capacity: int, *, balanced: bool = False, seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise TfprodError(f"buffer capacity {capacity!r}; expected a positive number of "
                              "examples")
        self.capacity = capacity
        self.balanced = balanced
        self.rng = np.random.default_rng(seed)
        self.x: dict[str, np.ndarray] = {}
        self.y = np.zeros((0,), np.int64)
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.y)

    def add(self, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        """Offer each example of ``(x, y)`` to the buffer, in order."""
        y = np.asarray(y)
        if not self.x:
            self.x = {k: np.zeros((self.capacity, *np.shape(v)[1:]), np.asarray(v).dtype)
                      for k, v in x.items()}
            self.y = np.zeros((0,), y.dtype if y.dtype.kind in "iu" else np.int64)
            self._y = np.zeros((self.capacity,), self.y.dtype)
        elif set(x) != set(self.x):
            raise TfprodError(f"examples with inputs {sorted(x)}; the buffer holds "
                              f"{sorted(self.x)}")
        for i in range(len(y)):
            label = int(y[i])
            self.seen += 1
            self.seen_per_class[label] = self.seen_per_class.get(label, 0) + 1
            slot = self._slot(label)
            if slot is None:
                continue
            for k, v in x.items():
                self.x[k][slot] = v[i]
            self._y[slot] = label
            self.y = self._y[:max(len(self.y), slot + 1)]

    def _slot(self, label: int) -> int | None:
        n = len(self.y)
        if n < self.capacity:
            return n
        if not self.balanced:
            j = int(self.rng.integers(0, self.seen))
            return j if j < self.capacity else None
        counts = np.bincount(self.y, minlength=label + 1)
        largest = int(np.argmax(counts))
        if counts[label] < counts[largest]:
            return int(self.rng.choice(np.flatnonzero(self.y == largest)))
        # the label is (among) the largest: reservoir sampling within its own class
        j = int(self.rng.integers(0, self.seen_per_class[label]))
        if j >= counts[label]:
            return None
        return int(np.flatnonzero(self.y == label)[j])

    def sample(self, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``n`` stored examples drawn uniformly (with replacement when ``n`` > size)."""
        size = len(self.y)
        if size == 0 or n <= 0:
            return {k: v[:0] for k, v in self.x.items()}, self.y[:0]
        index = self.rng.choice(size, size=n, replace=n > size)
        return {k: v[index] for k, v in self.x.items()}, self.y[index]

    def contents(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every stored example."""
        size = len(self.y)
        return {k: v[:size] for k, v in self.x.items()}, self.y

    # ------------------------------------------------------------------------ state

    def state(self, prefix: str = "buffer/") -> dict[str, np.ndarray]:
        """The whole state as arrays (see :meth:`load_state`)."""
        meta = {"capacity": self.capacity, "balanced": self.balanced, "seen": self.seen,
                "seen_per_class": {str(k): v for k, v in self.seen_per_class.items()},
                "rng": self.rng.bit_generator.state}
        out = {f"{prefix}meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
               f"{prefix}y": self.y.copy()}
        size = len(self.y)
        out.update({f"{prefix}x/{k}": v[:size].copy() for k, v in self.x.items()})
        return out

    def load_state(self, arrays: dict[str, Any], prefix: str = "buffer/") -> None:
        meta = json.loads(bytes(np.asarray(arrays[f"{prefix}meta"], np.uint8)).decode())
        if meta["capacity"] != self.capacity:
            raise TfprodError(f"the saved buffer holds up to {meta['capacity']} examples; this "
                              f"one {self.capacity}: resume with the same --buffer_size")
        self.balanced = meta["balanced"]
        self.seen = meta["seen"]
        self.seen_per_class = {int(k): v for k, v in meta["seen_per_class"].items()}
        self.rng.bit_generator.state = meta["rng"]
        y = np.asarray(arrays[f"{prefix}y"])
        names = [k[len(prefix) + 2:] for k in arrays if k.startswith(f"{prefix}x/")]
        self.x = {}
        self._y = np.zeros((self.capacity,), y.dtype if y.dtype.kind in "iu" else np.int64)
        self._y[:len(y)] = y
        self.y = self._y[:len(y)]
        for name in names:
            v = np.asarray(arrays[f"{prefix}x/{name}"])
            self.x[name] = np.zeros((self.capacity, *v.shape[1:]), v.dtype)
            self.x[name][:len(v)] = v
