"""Reinforcement learning: a Keras 3 DQN for gymnasium environments, its evaluation and export.

- :class:`DQN`, :class:`DQNResult`: double DQN with a target network, replay (uniform or
  prioritized), n-step returns, a dueling head, vectorized collection, keep-best evaluation and
  exact resume from checkpoints.
- :class:`DQNConfig`, :data:`PRESETS`, :func:`preset`, :func:`resolve`,
  :func:`read_config_file`: hyperparameters, per-environment presets and overrides.
- :class:`ReplayBuffer`, :class:`PrioritizedReplayBuffer`, :class:`SumTree`,
  :class:`NStepCollector`, :class:`LinearSchedule`, :class:`RunningStats`: the pieces.
- :func:`build_q_network`, :func:`policy_model`, :class:`NumpyQ`, :class:`QLearner`,
  :class:`DuelingHead`, :class:`GreedyAction`: networks, acting and the training step.
- :func:`evaluate`, :func:`env_spec`, :func:`export_policy`, :class:`RunFolder`: greedy
  evaluation, environment checks, the served policy, run folders.

Names load on first use: ``import tfprod.rl`` does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DQN": "dqn",
    "DQNConfig": "config",
    "DQNResult": "dqn",
    "DuelingHead": "layers",
    "EnvSpec": "envs",
    "Evaluation": "evaluation",
    "GreedyAction": "layers",
    "LinearSchedule": "schedule",
    "NStepCollector": "nstep",
    "NumpyQ": "network",
    "PRESETS": "config",
    "PrioritizedReplayBuffer": "prioritized",
    "QLearner": "learner",
    "ReplayBuffer": "replay",
    "RunFolder": "run",
    "RunningStats": "statistics",
    "SumTree": "prioritized",
    "build_q_network": "network",
    "env_spec": "envs",
    "evaluate": "evaluation",
    "export_policy": "export",
    "policy_model": "network",
    "preset": "config",
    "read_config_file": "config",
    "resolve": "config",
})
