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


class NStepCollector:
    """Turns each env's stream of steps into n-step transitions.

    For each of ``n_envs`` envs it keeps the last ``n`` steps; a transition leaves once it has
    ``n`` rewards (``discount = gamma ** n``) or when its episode ends: on termination every
    pending step leaves with ``discount = 0``; on truncation with ``gamma ** k`` (k: rewards
    it has), bootstrapping from the final observation.
    """

    def __init__(self, n: int, gamma: float, n_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.pending: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(n_envs)]

    def _emit(self, steps, next_obs, terminated, out) -> None:
        ret, k = 0.0, len(steps)
        for j, (_, _, r) in enumerate(steps):
            ret += (self.gamma ** j) * r
        obs, action, _ = steps[0]
        out.append((obs, action, ret, next_obs, 0.0 if terminated else self.gamma ** k))

    def step(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
             next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
             ) -> tuple[np.ndarray, ...] | None:
        """One vector step; returns the transitions that completed (or None)."""
        out: list[tuple] = []
        for i, pending in enumerate(self.pending):
            pending.append((obs[i], int(action[i]), float(reward[i])))
            if terminated[i] or truncated[i]:
                while pending:
                    self._emit(pending, next_obs[i], bool(terminated[i]), out)
                    pending.pop(0)
            elif len(pending) == self.n:
                self._emit(pending, next_obs[i], False, out)
                pending.pop(0)
        if not out:
            return None
        o, a, r, no, d = zip(*out, strict=True)
        return (np.stack(o), np.array(a), np.array(r, np.float32), np.stack(no),
                np.array(d, np.float32))
