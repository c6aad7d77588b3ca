"""Prioritized replay (Schaul et al., 2016, proportional variant) on a numpy sum tree.

A transition is sampled with probability ``p_i ** alpha / sum_j p_j ** alpha`` where ``p_i`` is
its last absolute TD error (+ a small epsilon); new transitions get the largest priority so far,
so each is seen at least once. The bias this sampling adds is corrected by importance weights
``(N * P(i)) ** -beta / max``, with ``beta`` annealed to 1 over training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfprod.rl.replay import ReplayBuffer


class SumTree:
    """A binary tree over ``capacity`` leaves whose nodes hold the sum of their leaves.

    Updates and prefix-sum searches are vectorized over a batch of leaves: ``log2(capacity)``
    numpy operations each, no Python loop per transition.
    """

    def __init__(self, capacity: int) -> None:
        self.leaves = max(2, 1 << int(capacity - 1).bit_length())
        self.capacity = capacity
        self.nodes = np.zeros(2 * self.leaves, np.float64)  # nodes[1] is the root

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.nodes[self.leaves + np.asarray(idx)]

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Sets leaves ``idx`` to ``values`` (the last write wins for repeated indices)."""
        node = self.leaves + np.asarray(idx, np.int64).ravel()
        self.nodes[node] = np.asarray(values, np.float64).ravel()
        while True:  # every node of a level at once, up to the root
            node = np.unique(node // 2)
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]
            if node[0] == 1:
                break

    def find(self, mass: np.ndarray) -> np.ndarray:
        """For each value in ``mass`` (in [0, total)), the leaf where the prefix sum passes it."""
        mass = np.array(mass, np.float64)
        node = np.ones(mass.shape, np.int64)
        for _ in range(self.leaves.bit_length() - 1):  # one level per pass
            left = 2 * node
            go_right = mass >= self.nodes[left]
            mass = np.where(go_right, mass - self.nodes[left], mass)
            node = np.where(go_right, left + 1, left)
        # Rounding can step past the last filled leaf; clamp to the filled range.
        return np.minimum(node - self.leaves, self.capacity - 1)


class PrioritizedReplayBuffer(ReplayBuffer):
    """:class:`ReplayBuffer` that samples by priority (see the module docstring).

    Args:
        capacity, observation_shape, observation_dtype, n_actions: as :class:`ReplayBuffer`.
        alpha: priority exponent (0: uniform).
        epsilon: added to |TD error| so no transition gets probability 0.
    """

    def __init__(self, capacity: int, observation_shape: tuple[int, ...],
                 observation_dtype: Any, n_actions: int, *, alpha: float = 0.6,
                 epsilon: float = 1e-6) -> None:
        super().__init__(capacity, observation_shape, observation_dtype, n_actions)
        self.alpha, self.epsilon = alpha, epsilon
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.tree.nodes.nbytes

    def add(self, *arrays: np.ndarray) -> np.ndarray:
        idx = super().add(*arrays)
        self.tree.set(idx, np.full(len(idx), self.max_priority ** self.alpha))
        return idx

    def sample_indices(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Stratified: the total mass is cut into equal segments, one draw in each."""
        super().sample_indices(rng, (0,))  # the empty-buffer check
        n = int(np.prod(shape))
        bounds = np.arange(n) / n
        mass = (bounds + rng.random(n) / n) * self.tree.total
        idx = self.tree.find(mass)
        idx = np.minimum(idx, self.size - 1)
        return rng.permutation(idx).reshape(shape)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...], *,
               beta: float = 0.4) -> dict[str, np.ndarray]:
        idx = self.sample_indices(rng, shape)
        batch = self.gather(idx)
        p = self.tree.get(idx) / self.tree.total
        weights = (self.size * p) ** -beta
        batch["weights"] = (weights / weights.max()).astype(np.float32)
        batch["indices"] = idx
        return batch

    def update_priorities(self, idx: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities ``|td| + epsilon`` for the sampled slots."""
        p = np.abs(np.asarray(td_errors, np.float64)).ravel() + self.epsilon
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.set(np.asarray(idx).ravel(), p ** self.alpha)

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        out["tree"] = self.tree.nodes
        out["max_priority"] = np.array(self.max_priority)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        super().load_state(state)
        self.tree.nodes[:] = state["tree"]
        self.max_priority = float(state["max_priority"])
