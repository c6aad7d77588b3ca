"""Tiny gymnasium environments for the DQN tests, registered on import.

- ``tfprod_test/Corridor-v0``: position 0..4 as a float; action 1 steps right, 0 stays; reward 1
  and *termination* on reaching 4; a 6-step time limit *truncates* slower episodes.
- ``tfprod_test/Pixels-v0``: 16x16x1 uint8 image observations (for the CNN torso check).
"""

import gymnasium as gym
import numpy as np

CORRIDOR = "tfprod_test/Corridor-v0"
PIXELS = "tfprod_test/Pixels-v0"
END = 4


class Corridor(gym.Env):
    observation_space = gym.spaces.Box(0.0, float(END), (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return np.array([self.pos], np.float32), {}

    def step(self, action):
        self.pos += int(action)
        done = self.pos >= END
        return np.array([self.pos], np.float32), float(done), done, False, {}


class Pixels(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (16, 16, 1), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 1.0, self.t >= 5, False, {}


if CORRIDOR not in gym.registry:
    gym.register(CORRIDOR, entry_point=Corridor, max_episode_steps=6)
    gym.register(PIXELS, entry_point=Pixels, max_episode_steps=50)
