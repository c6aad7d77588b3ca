"""``ReplayBuffer``: a preallocated numpy ring buffer of transitions, bounded in bytes.

Each transition is ``(obs, action, reward, next_obs, discount)`` in five preallocated arrays:
observations in the environment's dtype, actions in the smallest unsigned type that holds them,
rewards and discounts in float32. ``discount`` carries both end-of-episode cases: 0 when the
episode *terminated* (no future value), ``gamma ** k`` when it goes on or was *truncated* by a
time limit (the next state still has a value, so the target bootstraps from it). Nothing is a
Python object per transition, so the buffer's memory is the arrays' bytes (``nbytes``),
whatever it holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfprod.errors import TfprodError

FIELDS = ("obs", "action", "reward", "next_obs", "discount")


def action_dtype(n_actions: int) -> np.dtype:
    """The smallest unsigned integer type that holds ``n_actions`` indices."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_actions - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


class ReplayBuffer:
    """Uniform replay over the last ``capacity`` transitions.

    Args:
        capacity: transitions held; the oldest is overwritten first.
        observation_shape: one observation's shape.
        observation_dtype: its dtype (``uint8`` images stay bytes).
        n_actions: size of the action space.

    Example:
        >>> buf = ReplayBuffer(100_000, (4,), np.float32, 2)
        >>> buf.add(obs, actions, rewards, next_obs, discounts)   # a batch of transitions
        >>> batch = buf.sample(rng, (128, 64))                    # 128 gradient steps of 64
    """

    def __init__(self, capacity: int, observation_shape: tuple[int, ...],
                 observation_dtype: Any, n_actions: int) -> None:
        if capacity < 1:
            raise TfprodError(f"replay capacity={capacity}; expected >= 1")
        self.capacity = int(capacity)
        shape = (self.capacity, *observation_shape)
        # np.empty, then written once: the pages are touched as transitions arrive, and the
        # arrays are the whole cost (no per-transition objects).
        self.obs = np.empty(shape, observation_dtype)
        self.next_obs = np.empty(shape, observation_dtype)
        self.action = np.empty(self.capacity, action_dtype(n_actions))
        self.reward = np.empty(self.capacity, np.float32)
        self.discount = np.empty(self.capacity, np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated arrays: the buffer's memory when full."""
        return sum(getattr(self, f).nbytes for f in FIELDS)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            next_obs: np.ndarray, discount: np.ndarray) -> np.ndarray:
        """Appends a batch of transitions (first axis); returns the slots they went to."""
        n = len(action)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.action[idx] = action
        self.reward[idx] = reward
        self.next_obs[idx] = next_obs
        self.discount[idx] = discount
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return idx

    def sample_indices(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform slot indices of the given shape."""
        if self.size == 0:
            raise TfprodError("cannot sample from an empty replay buffer; collect first")
        return rng.integers(0, self.size, size=shape)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The transitions at ``idx`` (any shape), one array per field."""
        return {f: getattr(self, f)[idx] for f in FIELDS}

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """A uniform batch of the given shape, plus ``weights`` (ones) and ``indices``."""
        idx = self.sample_indices(rng, shape)
        batch = self.gather(idx)
        batch["weights"] = np.ones(idx.shape, np.float32)
        batch["indices"] = idx
        return batch

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (only the filled part)."""
        out = {f: getattr(self, f)[:self.size] for f in FIELDS}
        out["pos_size"] = np.array([self.pos, self.size], np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores :meth:`state`."""
        self.pos, self.size = (int(v) for v in state["pos_size"])
        for f in FIELDS:
            getattr(self, f)[:self.size] = state[f]
