"""``export_policy``: a run's policy as a SavedModel in TF Serving's layout.

``serving_default`` takes ``observation`` (batch of observations, the environment's dtype) and
returns ``q_values`` (float32, one per action) and ``action`` (int64, the greedy action). The
version is written and published by :func:`tfprod.export.export_saved_model` (atomic, checked
against the Keras model, with warmup requests and reference statistics of observations the
policy itself visits).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from tfprod.export import ExportResult, export_saved_model
from tfprod.rl.envs import EnvSpec
from tfprod.rl.evaluation import FINAL_SEED_OFFSET
from tfprod.rl.network import make_actor, policy_model
from tfprod.rl.run import RunFolder

#: Observations collected from the policy's own episodes for the reference statistics.
REFERENCE_OBSERVATIONS = 512


def visited_observations(q_network, spec: EnvSpec, count: int = REFERENCE_OBSERVATIONS,
                         seed: int = FINAL_SEED_OFFSET) -> np.ndarray:
    """Observations of greedy episodes of ``q_network`` (the inputs a served policy meets)."""
    actor = make_actor(q_network)
    env = gym.make(spec.env_id)
    seen = []
    try:
        episode = 0
        while len(seen) < count:
            obs, _ = env.reset(seed=seed + episode)
            done = False
            while not done and len(seen) < count:
                seen.append(obs)
                action = int(np.argmax(actor(obs[None])[0])) + spec.action_start
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
            episode += 1
    finally:
        env.close()
    return np.stack(seen).astype(spec.observation_dtype)


def export_policy(run_dir: str | os.PathLike, base_path: str | os.PathLike, *,
                  which: str = "best", version: int | None = None, overwrite: bool = False,
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Exports the ``best`` (kept) or ``final`` Q-network of a run as ``base_path/<version>/``.

    Raises:
        TfprodError: not a finished run folder; the errors of ``export_saved_model``.

    Example:
        >>> export_policy("runs/cartpole", "models/cartpole").path
        'models/cartpole/1'
    """
    run = RunFolder(run_dir)
    meta = run.read_meta()
    spec = EnvSpec(**{**meta["spec"], "observation_shape": tuple(
        meta["spec"]["observation_shape"])})
    q_network = run.load_model(which)
    reference = visited_observations(q_network, spec)
    return export_saved_model(policy_model(q_network, spec), base_path, version=version,
                              overwrite=overwrite, reference_data=reference, progress=progress)
