"""Gymnasium environments for the DQN: checked at the boundary, vectorized for collection.

:func:`env_spec` checks an environment id once, before anything is built: an unknown id lists
close matches; a continuous action space, or image observations without ``torso="cnn"``, fail
with what to do instead. Collection steps ``n_envs`` copies through gymnasium's synchronous vector
env in ``SAME_STEP`` autoreset mode: when an episode ends, the step returns the first observation
of the next episode and the final observation in ``info["final_obs"]``, so every transition is
stored with its true next observation.
"""

from __future__ import annotations

import dataclasses
import difflib
import pickle
from typing import Any

import gymnasium as gym
import numpy as np

from tfprod.errors import TfprodError


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know about an environment.

    Attributes:
        env_id: the gymnasium id.
        observation_shape: one observation's shape.
        observation_dtype: its numpy dtype name.
        n_actions: size of the Discrete action space.
        action_start: the Discrete space's ``start`` (actions are ``start + index``).
        max_episode_steps: the time limit (truncation), or None.
        image: observations are HxWxC images.
    """

    env_id: str
    observation_shape: tuple[int, ...]
    observation_dtype: str
    n_actions: int
    action_start: int
    max_episode_steps: int | None
    image: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_image(space: gym.spaces.Box) -> bool:
    return len(space.shape) == 3 and space.dtype == np.uint8


def env_spec(env_id: str, *, torso: str = "mlp") -> EnvSpec:
    """Checks ``env_id`` for the DQN and describes it.

    Raises:
        TfprodError: an unknown id (with close matches), an action space that is not Discrete,
            an observation space that is not a Box, image observations with ``torso="mlp"``.
    """
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close
                else "the classic-control ids are CartPole-v1, Acrobot-v1, MountainCar-v0")
        raise TfprodError(f"unknown environment {env_id!r}; {hint}")
    try:
        env = gym.make(env_id)
    except Exception as e:  # missing extras (box2d, mujoco) and the like
        raise TfprodError(f"environment {env_id!r} cannot be created: "
                          f"{type(e).__name__}: {e}") from None
    try:
        obs, act = env.observation_space, env.action_space
        steps = env.spec.max_episode_steps if env.spec is not None else None
    finally:
        env.close()
    if not isinstance(act, gym.spaces.Discrete):
        raise TfprodError(f"DQN needs a Discrete action space; {env_id} has {act}; pick an "
                          "environment with discrete actions (e.g. CartPole-v1) or discretize "
                          "its actions with a wrapper")
    if not isinstance(obs, gym.spaces.Box):
        raise TfprodError(f"{env_id} has observations {obs}; the DQN takes a Box (an array); "
                          "flatten them with gymnasium.wrappers.FlattenObservation")
    image = _is_image(obs)
    if image and torso != "cnn":
        raise TfprodError(f"{env_id} has image observations {obs}; the MLP torso takes "
                          "vectors: set torso='cnn' (--torso cnn) for a convolutional torso")
    if torso == "cnn" and len(obs.shape) != 3:
        raise TfprodError(f"torso='cnn' needs HxWxC image observations; {env_id} has {obs}; "
                          "use torso='mlp'")
    return EnvSpec(env_id=env_id, observation_shape=tuple(obs.shape),
                   observation_dtype=np.dtype(obs.dtype).name, n_actions=int(act.n),
                   action_start=int(act.start), max_episode_steps=steps, image=image)


def make_vector_env(env_id: str, n_envs: int) -> gym.vector.SyncVectorEnv:
    """``n_envs`` copies of ``env_id`` stepped together, autoreset in the same step."""
    return gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})


def env_state(envs: gym.vector.SyncVectorEnv) -> bytes:
    """The vector env's sub-environments (physics state, time limit counters, RNGs), pickled.

    The vector env itself holds its factories (local functions) and cannot be pickled; with
    ``SAME_STEP`` autoreset it keeps no state of its own between steps.
    """
    return pickle.dumps(envs.envs)


def restore_env_state(envs: gym.vector.SyncVectorEnv, state: bytes) -> None:
    """Puts back the sub-environments saved by :func:`env_state`."""
    for env in envs.envs:
        env.close()
    envs.envs = pickle.loads(state)
