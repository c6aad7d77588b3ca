"""``DQNConfig``: the DQN's hyperparameters, the presets for gymnasium's classic-control
environments, and reading overrides from JSON / TOML files or flags.

The presets are rl-baselines3-zoo's tuned DQN settings (``hyperparams/dqn.yml``) with double
DQN and keep-best evaluation on top; ``docs/rl.md`` has the table with where each came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from tfprod.errors import TfprodError


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of :class:`tfprod.rl.DQN`. Step counts are env steps (transitions, summed
    over the vector envs) unless the name says otherwise.

    Attributes:
        steps: env steps of a run (``learn`` and ``tfprod rl train --steps`` override).
        learning_rate: Adam's learning rate.
        batch_size: transitions per gradient step.
        buffer_size: transitions the replay buffer holds (preallocated; oldest overwritten).
        learning_starts: env steps of uniformly random actions before the first update.
        gamma: discount factor.
        train_freq: env steps between training phases.
        gradient_steps: gradient steps per training phase; -1: one per env step collected.
        target_update_interval: env steps between target-network updates.
        tau: 1.0 copies the online network (hard update); below 1, Polyak averaging
            ``target <- tau * online + (1 - tau) * target`` at each update.
        exploration_fraction: share of ``steps`` over which epsilon falls linearly.
        exploration_initial_eps: epsilon at the start.
        exploration_final_eps: epsilon after the fall.
        max_grad_norm: gradients are clipped to this global norm.
        hidden: widths of the fully connected layers.
        torso: ``"mlp"`` (vector observations) or ``"cnn"`` (image observations, HxWxC).
        dueling: a dueling head (value + advantage streams).
        double: double DQN targets (the online net picks the next action, the target net
            rates it); False: the max of the target net.
        n_step: returns over n steps (1: one-step TD).
        prioritized: prioritized replay (proportional, sum tree) instead of uniform.
        priority_alpha: how much priorities skew sampling (0: uniform).
        priority_beta: importance-sampling exponent at the start; annealed to 1.
        reward_scale: rewards are multiplied by this before they are stored.
        reward_clip: stored rewards are clipped to [-reward_clip, reward_clip] (None: no clip).
        normalize_observations: normalize observations with their running mean and variance
            (the statistics are part of the network, so the exported policy applies them).
        n_envs: environments stepped together (gymnasium's synchronous vector env).
        eval_interval: env steps between evaluations (keep-best).
        eval_episodes: greedy episodes per evaluation.
        final_eval_episodes: greedy episodes of the final evaluation (of the kept weights).
        checkpoint_interval: env steps between checkpoints (0: only at the end).
        jit_compile: compile the training step with XLA.
    """

    steps: int = 100_000
    learning_rate: float = 1e-4
    batch_size: int = 32
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    gamma: float = 0.99
    train_freq: int = 4
    gradient_steps: int = 1
    target_update_interval: int = 1_000
    tau: float = 1.0
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    max_grad_norm: float = 10.0
    hidden: tuple[int, ...] = (256, 256)
    torso: str = "mlp"
    dueling: bool = False
    double: bool = True
    n_step: int = 1
    prioritized: bool = False
    priority_alpha: float = 0.6
    priority_beta: float = 0.4
    reward_scale: float = 1.0
    reward_clip: float | None = None
    normalize_observations: bool = False
    n_envs: int = 1
    eval_interval: int = 5_000
    eval_episodes: int = 10
    final_eval_episodes: int = 20
    checkpoint_interval: int = 10_000
    jit_compile: bool = False

    def __post_init__(self) -> None:
        _check(self)

    def replace(self, **changes: Any) -> DQNConfig:
        """A copy with ``changes`` (unknown keys fail with close matches)."""
        return from_dict({**self.to_json(), **changes})

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(DQNConfig)}

#: rl-baselines3-zoo's DQN settings per environment (hyperparams/dqn.yml); each preset changes
#: only what is listed, the rest are :class:`DQNConfig`'s defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(
        steps=50_000, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
        learning_starts=1_000, gamma=0.99, target_update_interval=10, train_freq=256,
        gradient_steps=128, exploration_fraction=0.16, exploration_final_eps=0.04,
        hidden=(256, 256), eval_interval=2_500),
    "Acrobot-v1": dict(
        steps=100_000, learning_rate=6.3e-4, batch_size=128, buffer_size=50_000,
        learning_starts=0, gamma=0.99, target_update_interval=250, train_freq=4,
        gradient_steps=-1, exploration_fraction=0.12, exploration_final_eps=0.1,
        hidden=(256, 256)),
    "MountainCar-v0": dict(
        steps=120_000, learning_rate=4e-3, batch_size=128, buffer_size=10_000,
        learning_starts=1_000, gamma=0.98, target_update_interval=600, train_freq=16,
        gradient_steps=8, exploration_fraction=0.2, exploration_final_eps=0.07,
        hidden=(256, 256)),
}


def preset(env_id: str) -> DQNConfig:
    """The preset for ``env_id`` (:data:`PRESETS`), or the defaults for other environments."""
    return from_dict(PRESETS.get(env_id, {}))


def _unknown(key: str, where: str) -> TfprodError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; known keys: {', '.join(FIELDS)}")
    return TfprodError(f"{where}: unknown DQN config key {key!r}{hint}")


def _coerce(name: str, value: Any, where: str) -> Any:
    """``value`` (from JSON, TOML or a ``--set`` string) as the field's type."""
    default = FIELDS[name].default
    if name == "hidden":
        if isinstance(value, int | str) and not isinstance(value, bool):
            value = [v for v in str(value).strip("[]").split(",") if v.strip()]
        try:
            return tuple(_integer(v) for v in value)
        except (TypeError, ValueError):
            raise TfprodError(f"{where}: hidden={value!r}; expected a list of layer widths "
                              "such as [256, 256]") from None
    if name == "reward_clip" and value in (None, "none", "null"):
        return None
    kind = type(default) if default is not None else float
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise TfprodError(f"{where}: {name}={value!r}; expected true or false")
        return value
    try:
        if isinstance(value, bool):
            raise ValueError
        return _integer(value) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise TfprodError(f"{where}: {name}={value!r}; expected {kind.__name__}") from None


def _integer(value: Any) -> int:
    number = float(value)
    if not number.is_integer() or isinstance(value, bool):
        raise ValueError(value)
    return int(number)


def from_dict(values: Mapping[str, Any], *, where: str = "DQN config") -> DQNConfig:
    """A :class:`DQNConfig` from plain values (as in JSON/TOML); unknown keys fail."""
    out = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise _unknown(key, where)
        out[key] = _coerce(key, value, where)
    try:
        return DQNConfig(**out)
    except TfprodError as e:
        raise TfprodError(f"{where}: {e}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Overrides from a ``.json`` or ``.toml`` file: a flat table of :class:`DQNConfig` keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TfprodError(f"--config {path}: no such file; expected a .json or .toml file of "
                          "DQN settings")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                values = tomllib.load(f)
        else:
            with open(path) as f:
                values = json.load(f)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise TfprodError(f"--config {path}: not valid {kind} ({e}); expected a flat table of "
                          "DQN settings") from None
    if not isinstance(values, dict):
        raise TfprodError(f"--config {path}: holds a {type(values).__name__}; expected a table "
                          "of DQN settings such as {\"learning_rate\": 0.001}")
    for key in values:
        if key not in FIELDS:
            raise _unknown(key, path)
    return values


def resolve(env_id: str, *overrides: Mapping[str, Any]) -> DQNConfig:
    """The preset of ``env_id`` with each mapping of ``overrides`` applied in turn."""
    values = dict(PRESETS.get(env_id, {}))
    for o in overrides:
        values.update({k: v for k, v in o.items() if v is not None})
    return from_dict(values)


def _check(c: DQNConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TfprodError(what)

    need(c.steps > 0, f"steps={c.steps}; expected a positive number of env steps")
    need(c.learning_rate > 0, f"learning_rate={c.learning_rate}; expected > 0")
    need(c.batch_size > 0, f"batch_size={c.batch_size}; expected > 0")
    need(c.buffer_size >= c.batch_size,
         f"buffer_size={c.buffer_size}; expected at least batch_size={c.batch_size}")
    need(c.learning_starts >= 0, f"learning_starts={c.learning_starts}; expected >= 0")
    need(0 <= c.gamma <= 1, f"gamma={c.gamma}; expected a discount in [0, 1]")
    need(c.train_freq > 0, f"train_freq={c.train_freq}; expected > 0")
    need(c.gradient_steps > 0 or c.gradient_steps == -1,
         f"gradient_steps={c.gradient_steps}; expected > 0, or -1 (one per env step)")
    need(c.target_update_interval > 0,
         f"target_update_interval={c.target_update_interval}; expected > 0")
    need(0 < c.tau <= 1, f"tau={c.tau}; expected 0 < tau <= 1 (1: hard update)")
    need(0 <= c.exploration_fraction <= 1,
         f"exploration_fraction={c.exploration_fraction}; expected a share in [0, 1]")
    for name in ("exploration_initial_eps", "exploration_final_eps"):
        need(0 <= getattr(c, name) <= 1, f"{name}={getattr(c, name)}; expected in [0, 1]")
    need(c.max_grad_norm > 0, f"max_grad_norm={c.max_grad_norm}; expected > 0")
    need(len(c.hidden) > 0 and all(h > 0 for h in c.hidden),
         f"hidden={list(c.hidden)}; expected positive layer widths such as [256, 256]")
    need(c.torso in ("mlp", "cnn"), f"torso={c.torso!r}; expected 'mlp' or 'cnn'")
    need(c.n_step >= 1, f"n_step={c.n_step}; expected >= 1")
    need(0 <= c.priority_alpha <= 1, f"priority_alpha={c.priority_alpha}; expected in [0, 1]")
    need(0 <= c.priority_beta <= 1, f"priority_beta={c.priority_beta}; expected in [0, 1]")
    need(c.reward_scale > 0, f"reward_scale={c.reward_scale}; expected > 0")
    need(c.reward_clip is None or c.reward_clip > 0,
         f"reward_clip={c.reward_clip}; expected > 0 or null (no clipping)")
    need(c.n_envs >= 1, f"n_envs={c.n_envs}; expected >= 1")
    need(c.eval_interval > 0, f"eval_interval={c.eval_interval}; expected > 0")
    need(c.eval_episodes >= 1, f"eval_episodes={c.eval_episodes}; expected >= 1")
    need(c.final_eval_episodes >= 1,
         f"final_eval_episodes={c.final_eval_episodes}; expected >= 1")
    need(c.checkpoint_interval >= 0,
         f"checkpoint_interval={c.checkpoint_interval}; expected >= 0 (0: only at the end)")
