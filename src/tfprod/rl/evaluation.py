"""Greedy evaluation on its own environment, so that exploration never flatters the figure.

Each evaluation builds a fresh environment and plays ``episodes`` greedy episodes from seeds
that training never uses; the keep-best evaluations and the final one use disjoint seeds, so the
final figure is not the maximum of the noise that picked the kept weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import gymnasium as gym
import numpy as np

#: Seed offsets: training envs use ``seed + i``; keep-best evaluations and the final one
#: draw from these separate ranges.
EVAL_SEED_OFFSET = 1_000_000
FINAL_SEED_OFFSET = 2_000_000


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Returns and lengths of greedy episodes."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_json(self) -> dict:
        return {"mean_return": self.mean, "std_return": self.std, "episodes": len(self.returns),
                "returns": self.returns, "lengths": self.lengths}


def evaluate(q_values: Callable[[np.ndarray], np.ndarray], env_id: str, *, episodes: int,
             seed: int, action_start: int = 0, frames: list | None = None) -> Evaluation:
    """Plays ``episodes`` greedy episodes of ``env_id`` (seeds ``seed``, ``seed + 1``, ...).

    Args:
        q_values: observations ``(batch, ...)`` -> Q-values ``(batch, n_actions)``.
        env_id: a gymnasium id.
        episodes: how many.
        seed: seed of the first episode.
        action_start: the Discrete space's ``start``.
        frames: if given, RGB frames of the first episode are appended to it.
    """
    if frames is not None:
        # Off-screen rendering: pygame would otherwise look for a display and a sound server
        # and print an error line where there is none.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = gym.make(env_id, render_mode="rgb_array" if frames is not None else None)
    returns, lengths = [], []
    try:
        for e in range(episodes):
            obs, _ = env.reset(seed=seed + e)
            total, n, done = 0.0, 0, False
            while not done:
                if frames is not None and e == 0:
                    frames.append(env.render())
                action = int(np.argmax(q_values(obs[None])[0])) + action_start
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                n += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(n)
    finally:
        env.close()
    return Evaluation(returns, lengths)
