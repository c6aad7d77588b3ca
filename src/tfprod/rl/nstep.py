"""``NStepCollector``: n-step transitions from each env's stream of steps."""

from __future__ import annotations

import numpy as np


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
