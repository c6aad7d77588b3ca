"""``DQN``: double DQN with a target network and replay, on gymnasium environments.

The loop, top to bottom (one iteration per vector step of ``n_envs`` envs):

1. act: uniformly random before ``learning_starts``, then epsilon-greedy with the numpy copy of
   the Q-network (:class:`tfprod.rl.network.NumpyQ`);
2. store each transition with its true next observation (the final one when an episode ended)
   and its discount: 0 on termination, ``gamma ** k`` otherwise (truncation bootstraps);
3. every ``target_update_interval`` env steps, update the target network;
4. every ``train_freq`` env steps, a training phase of ``gradient_steps`` updates (one
   ``tf.function``), then refresh the numpy copy;
5. every ``eval_interval`` env steps, greedy episodes on a separate environment; the best
   weights are kept (a late collapse does not cost the run its best policy);
6. every ``checkpoint_interval`` env steps, a checkpoint from which ``resume`` continues the
   run exactly (same buffer, weights, optimizer, RNG and environment states).

Example:
    >>> agent = DQN("CartPole-v1", seed=0)              # the CartPole preset
    >>> result = agent.learn(run_dir="runs/cartpole")
    >>> result.eval_mean_return, result.best_step
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfprod.errors import TfprodError
from tfprod.models.layers import RunningMeanNormalization
from tfprod.rl import checkpoint as ckpt
from tfprod.rl.config import DQNConfig, preset
from tfprod.rl.envs import EnvSpec, env_spec, env_state, make_vector_env, restore_env_state
from tfprod.rl.evaluation import EVAL_SEED_OFFSET, FINAL_SEED_OFFSET, Evaluation, evaluate
from tfprod.rl.learner import QLearner
from tfprod.rl.network import build_q_network, make_actor
from tfprod.rl.nstep import NStepCollector
from tfprod.rl.prioritized import PrioritizedReplayBuffer
from tfprod.rl.replay import ReplayBuffer
from tfprod.rl.run import RunFolder
from tfprod.rl.schedule import LinearSchedule
from tfprod.rl.statistics import RunningStats

#: Env steps between TensorBoard training scalars and progress callbacks.
LOG_INTERVAL = 1_000


@dataclasses.dataclass
class DQNResult:
    """What a finished run reports (``tfprod rl train --json`` writes :meth:`to_json`).

    Attributes:
        env, steps, seed: the run.
        eval_mean_return, eval_std_return: the final evaluation of the kept weights.
        eval_episodes: its episode count.
        best_step: env step of the kept weights; best_eval_return: their keep-best mean.
        wall_seconds: training time (resumed pieces summed, the final evaluation excluded).
        steps_per_second: env steps / wall_seconds.
        episodes: training episodes finished; gradient_steps: updates made.
        replay_bytes: bytes of the replay buffer's arrays.
    """

    env: str
    steps: int
    seed: int
    eval_mean_return: float
    eval_std_return: float
    eval_episodes: int
    best_step: int
    best_eval_return: float
    wall_seconds: float
    steps_per_second: float
    episodes: int
    gradient_steps: int
    replay_bytes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DQN:
    """A DQN agent for one gymnasium environment with a Discrete action space.

    Args:
        env_id: a gymnasium id (checked: see :func:`tfprod.rl.envs.env_spec`).
        config: hyperparameters; default: the preset for ``env_id``
            (:data:`tfprod.rl.config.PRESETS`).
        seed: seeds the network's initial weights, exploration, replay sampling and the
            environments (env ``i`` starts from ``seed + i``).
    """

    def __init__(self, env_id: str, config: DQNConfig | None = None, *, seed: int = 0) -> None:
        self.config = c = config if config is not None else preset(env_id)
        if not isinstance(c, DQNConfig):
            raise TfprodError(f"config is a {type(c).__name__}; expected a DQNConfig")
        self.spec: EnvSpec = env_spec(env_id, torso=c.torso)
        self.env_id, self.seed = env_id, int(seed)
        keras.utils.set_random_seed(self.seed)
        self.q_network = build_q_network(
            self.spec, hidden=c.hidden, torso=c.torso, dueling=c.dueling,
            normalize_observations=c.normalize_observations)
        self.learner = QLearner(self.q_network, learning_rate=c.learning_rate,
                                max_grad_norm=c.max_grad_norm, double=c.double,
                                jit_compile=c.jit_compile)
        self.actor = make_actor(self.q_network)
        shape, dtype = self.spec.observation_shape, self.spec.observation_dtype
        if c.prioritized:
            self.replay: ReplayBuffer = PrioritizedReplayBuffer(
                c.buffer_size, shape, dtype, self.spec.n_actions, alpha=c.priority_alpha)
        else:
            self.replay = ReplayBuffer(c.buffer_size, shape, dtype, self.spec.n_actions)
        self.nstep = NStepCollector(c.n_step, c.gamma, c.n_envs) if c.n_step > 1 else None
        self.epsilon = LinearSchedule(c.exploration_initial_eps, c.exploration_final_eps,
                                      int(c.exploration_fraction * c.steps))
        self.obs_stats = RunningStats(int(np.prod(shape))) if c.normalize_observations else None
        self.envs = make_vector_env(env_id, c.n_envs)
        self.rng = np.random.default_rng(self.seed)
        self.obs, _ = self.envs.reset(seed=[self.seed + i for i in range(c.n_envs)])
        self.env_steps = 0
        self.gradient_steps = 0
        self.last_train = 0
        self.target_updates = 0
        self.target_stale = False
        self.next_eval = c.eval_interval
        self.next_checkpoint = c.checkpoint_interval or c.steps
        self.episode_return = np.zeros(c.n_envs)
        self.episode_length = np.zeros(c.n_envs, np.int64)
        self.episodes: list[tuple[int, float, int]] = []      # (env step, return, length)
        self.evaluations: list[tuple[int, float, float]] = []  # (env step, mean, std)
        self.best_mean = -np.inf
        self.best_step = 0
        self.best_weights = [np.array(w) for w in self.q_network.get_weights()]
        self.wall_seconds = 0.0
        self._log = {"loss": [], "q": []}

    # -- acting and storing ------------------------------------------------------------------

    def _act(self) -> np.ndarray:
        c, n = self.config, self.config.n_envs
        if self.env_steps < c.learning_starts:
            return self.rng.integers(0, self.spec.n_actions, n)
        actions = np.argmax(self.actor(self.obs), axis=1)
        explore = self.rng.random(n) < self.epsilon(self.env_steps)
        return np.where(explore, self.rng.integers(0, self.spec.n_actions, n), actions)

    def _store(self, action, reward, next_obs, terminated, truncated) -> None:
        c = self.config
        r = np.asarray(reward, np.float64) * c.reward_scale
        if c.reward_clip is not None:
            r = np.clip(r, -c.reward_clip, c.reward_clip)
        if self.nstep is None:
            discount = np.where(terminated, 0.0, c.gamma).astype(np.float32)
            self.replay.add(self.obs, action, r.astype(np.float32), next_obs, discount)
            return
        out = self.nstep.step(self.obs, action, r, next_obs, terminated, truncated)
        if out is not None:
            self.replay.add(*out)

    def _step(self) -> None:
        c = self.config
        action = self._act()
        obs, reward, terminated, truncated, info = self.envs.step(action + self.spec.action_start)
        next_obs = obs
        if "_final_obs" in info and info["_final_obs"].any():
            next_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
        if self.obs_stats is not None:
            self.obs_stats.update(self.obs)
        self._store(action, reward, next_obs, terminated, truncated)
        self.episode_return += reward
        self.episode_length += 1
        self.env_steps += c.n_envs
        for i in np.flatnonzero(terminated | truncated):
            self.episodes.append((self.env_steps, float(self.episode_return[i]),
                                  int(self.episode_length[i])))
            self.episode_return[i], self.episode_length[i] = 0.0, 0
        self.obs = obs

    # -- learning ----------------------------------------------------------------------------

    def _sync_normalization(self) -> None:
        if self.obs_stats is None or self.obs_stats.count == 0:
            return
        weights = self.obs_stats.weights()
        for model in (self.learner.online, self.learner.target):
            for layer in model.layers:
                if isinstance(layer, RunningMeanNormalization):
                    layer.set_weights(weights)

    def _train_phase(self, collected: int) -> None:
        c = self.config
        steps = collected if c.gradient_steps == -1 else c.gradient_steps
        self._sync_normalization()
        if isinstance(self.replay, PrioritizedReplayBuffer):
            beta = c.priority_beta + (1 - c.priority_beta) * min(1.0, self.env_steps / c.steps)
            for _ in range(steps):  # priorities change after every update
                batch = self.replay.sample(self.rng, (1, c.batch_size), beta=beta)
                loss, q, td = self.learner.train(batch)
                self.replay.update_priorities(batch["indices"], td)
                self._log["loss"].append(loss)
                self._log["q"].append(q)
        else:
            batch = self.replay.sample(self.rng, (steps, c.batch_size))
            loss, q, _ = self.learner.train(batch)
            self._log["loss"].append(loss)
            self._log["q"].append(q)
        self.gradient_steps += steps
        self.target_stale = True
        self.actor.refresh()

    def _maybe_update_target(self) -> None:
        c = self.config
        due = self.env_steps // c.target_update_interval
        if due > self.target_updates:
            self.target_updates = due
            # A hard copy of unchanged weights is a no-op: skip it (Polyak averaging still
            # moves the target towards the online network at every update).
            if self.target_stale or c.tau < 1.0:
                self.learner.update_target(c.tau)
                self.target_stale = False

    def evaluate(self, episodes: int, *, final: bool = False, weights: list | None = None,
                 frames: list | None = None) -> Evaluation:
        """Greedy episodes of the current (or the given) weights on a separate environment."""
        actor = self.actor
        if weights is not None:
            net = keras.models.clone_model(self.q_network)
            net.set_weights(weights)
            actor = make_actor(net)
        offset = FINAL_SEED_OFFSET if final else EVAL_SEED_OFFSET
        return evaluate(actor, self.env_id, episodes=episodes, seed=offset + 1000 * self.seed,
                        action_start=self.spec.action_start, frames=frames)

    def _keep_best(self, writer: Any) -> Evaluation:
        result = self.evaluate(self.config.eval_episodes)
        self.evaluations.append((self.env_steps, result.mean, result.std))
        if result.mean > self.best_mean:  # ties keep the earlier weights
            self.best_mean, self.best_step = result.mean, self.env_steps
            self.best_weights = [np.array(w) for w in self.q_network.get_weights()]
        if writer is not None:
            writer.scalar("eval/mean_return", result.mean, self.env_steps)
            writer.scalar("eval/best_mean_return", self.best_mean, self.env_steps)
        return result

    def learn(self, run_dir: str | os.PathLike | None = None, *, until: int | None = None,
              on_progress: Callable[[dict[str, Any]], None] | None = None) -> DQNResult | None:
        """Trains until ``config.steps`` env steps (or ``until``, to stop early and resume).

        Args:
            run_dir: a run folder (:class:`tfprod.rl.run.RunFolder`): checkpoints, TensorBoard
                scalars, kept weights, the learning curve and ``result.json``. None: nothing is
                written.
            until: stop at this env step (a checkpoint is written there when ``run_dir`` is
                given) and return None; :meth:`resume` continues.
            on_progress: called every ~1,000 env steps with ``step``, ``total``, ``epsilon``,
                ``mean_return`` (last 20 episodes), ``best``, ``steps_per_second``.

        Returns:
            A :class:`DQNResult` once ``config.steps`` are done (the kept weights evaluated
            over ``final_eval_episodes`` greedy episodes), else None.
        """
        c = self.config
        run = RunFolder(run_dir) if run_dir is not None else None
        if run is not None and not run.exists():
            self.save_meta(run.path)
        writer = run.writer() if run is not None else None
        stop = c.steps if until is None else min(until, c.steps)
        start, start_steps = time.perf_counter(), self.env_steps
        log_at = self.env_steps + LOG_INTERVAL
        log_time, log_steps = start, self.env_steps
        logged_episodes = len(self.episodes)
        while self.env_steps < stop:
            self._step()
            self._maybe_update_target()
            collected = self.env_steps - self.last_train
            if collected >= c.train_freq:
                self.last_train = self.env_steps
                if self.env_steps > c.learning_starts:
                    self._train_phase(collected)
            if self.env_steps >= self.next_eval:
                self.next_eval += c.eval_interval
                self._keep_best(writer)
            if self.env_steps >= log_at or self.env_steps >= stop:
                now = time.perf_counter()
                rate = (self.env_steps - log_steps) / max(now - log_time, 1e-9)
                log_time, log_steps, log_at = now, self.env_steps, self.env_steps + LOG_INTERVAL
                if writer is not None:
                    self._write_scalars(writer, rate, logged_episodes)
                logged_episodes = len(self.episodes)
                if on_progress is not None:
                    on_progress(self.progress(rate))
            if run is not None and self.env_steps >= self.next_checkpoint:
                self.next_checkpoint += c.checkpoint_interval or c.steps
                self.wall_seconds += time.perf_counter() - start
                start = time.perf_counter()
                self.save_checkpoint(run.checkpoints)
        self.wall_seconds += time.perf_counter() - start
        if self.env_steps < c.steps:
            if run is not None and self.env_steps > start_steps:
                self.save_checkpoint(run.checkpoints)
            if writer is not None:
                writer.flush()
            return None
        return self._finish(run, writer)

    def _finish(self, run: RunFolder | None, writer: Any) -> DQNResult:
        c = self.config
        if not self.evaluations or self.evaluations[-1][0] != self.env_steps:
            self._keep_best(writer)  # the last weights compete too
        final = self.evaluate(c.final_eval_episodes, final=True, weights=self.best_weights)
        result = DQNResult(
            env=self.env_id, steps=self.env_steps, seed=self.seed,
            eval_mean_return=final.mean, eval_std_return=final.std,
            eval_episodes=len(final.returns), best_step=self.best_step,
            best_eval_return=float(self.best_mean), wall_seconds=self.wall_seconds,
            steps_per_second=self.env_steps / max(self.wall_seconds, 1e-9),
            episodes=len(self.episodes), gradient_steps=self.gradient_steps,
            replay_bytes=self.replay.nbytes)
        if run is not None:
            if writer is not None:
                writer.scalar("eval/final_mean_return", final.mean, self.env_steps)
                writer.flush()
            run.write_models(self.q_network, self.best_weights)
            run.write_json("result.json", {**result.to_json(), "final_evaluation":
                                           final.to_json()})
            run.write_json("history.json", {"episodes": self.episodes,
                                            "evaluations": self.evaluations})
            from tfprod.rl.curve import plot_learning_curve

            plot_learning_curve(run.path / "learning_curve.png", self.episodes,
                                self.evaluations, best_step=self.best_step,
                                final=(self.env_steps, final.mean, final.std),
                                title=f"DQN {self.env_id}, seed {self.seed}")
        return result

    def progress(self, rate: float) -> dict[str, Any]:
        recent = [r for _, r, _ in self.episodes[-20:]]
        return {"step": self.env_steps, "total": self.config.steps,
                "epsilon": self.epsilon(self.env_steps),
                "mean_return": float(np.mean(recent)) if recent else float("nan"),
                "best": float(self.best_mean), "steps_per_second": rate}

    def _write_scalars(self, writer: Any, rate: float, since_episode: int) -> None:
        for step, ret, length in self.episodes[since_episode:]:
            writer.scalar("train/episode_return", ret, step)
            writer.scalar("train/episode_length", length, step)
        if self._log["loss"]:
            writer.scalar("train/loss", float(np.mean(np.concatenate(self._log["loss"]))),
                          self.env_steps)
            writer.scalar("train/mean_q", float(np.mean(np.concatenate(self._log["q"]))),
                          self.env_steps)
            self._log = {"loss": [], "q": []}
        writer.scalar("train/epsilon", self.epsilon(self.env_steps), self.env_steps)
        writer.scalar("train/steps_per_second", rate, self.env_steps)

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and Python state of a checkpoint (see :mod:`tfprod.rl.checkpoint`)."""
        arrays = {f"replay/{k}": v for k, v in self.replay.state().items()}
        learner = self.learner.state()
        for key in ("online", "target", "optimizer"):
            arrays.update({f"{key}/{i}": v for i, v in enumerate(learner[key])})
        arrays.update({f"best/{i}": v for i, v in enumerate(self.best_weights)})
        state = {
            "env_id": self.env_id, "seed": self.seed, "config": self.config.to_json(),
            "counters": {k: getattr(self, k) for k in (
                "env_steps", "gradient_steps", "last_train", "target_updates", "target_stale",
                "next_eval", "next_checkpoint", "best_mean", "best_step", "wall_seconds")},
            "rng": self.rng.bit_generator.state, "envs": env_state(self.envs),
            "obs": self.obs, "episode_return": self.episode_return,
            "episode_length": self.episode_length, "episodes": self.episodes,
            "evaluations": self.evaluations, "nstep": None if self.nstep is None
            else self.nstep.pending, "obs_stats": None if self.obs_stats is None
            else (self.obs_stats.count, self.obs_stats.mean, self.obs_stats.m2),
        }
        return arrays, state

    def save_checkpoint(self, folder: str | os.PathLike) -> str:
        arrays, state = self.state()
        return ckpt.save_checkpoint(folder, self.env_steps, arrays, state)

    def load_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        """Puts back a checkpoint's state (the inverse of :meth:`state`)."""
        self.replay.load_state({k.split("/", 1)[1]: v for k, v in arrays.items()
                                if k.startswith("replay/")})

        def listed(prefix: str) -> list[np.ndarray]:
            n = sum(1 for k in arrays if k.startswith(prefix + "/"))
            return [arrays[f"{prefix}/{i}"] for i in range(n)]

        self.learner.load_state({k: listed(k) for k in ("online", "target", "optimizer")})
        self.best_weights = listed("best")
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self.rng.bit_generator.state = state["rng"]
        restore_env_state(self.envs, state["envs"])
        self.obs = state["obs"]
        self.episode_return, self.episode_length = state["episode_return"], state[
            "episode_length"]
        self.episodes, self.evaluations = state["episodes"], state["evaluations"]
        if self.nstep is not None:
            self.nstep.pending = state["nstep"]
        if self.obs_stats is not None:
            self.obs_stats.count, self.obs_stats.mean, self.obs_stats.m2 = state["obs_stats"]
        self.actor.refresh()

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, *, env_id: str | None = None,
               steps: int | None = None) -> DQN:
        """The agent of ``run_dir``'s latest checkpoint, ready to ``learn`` on.

        Args:
            run_dir: a run folder with a checkpoint.
            env_id: if given, must be the run's environment.
            steps: a new total of env steps (default: the run's).

        Raises:
            TfprodError: no checkpoint; a run of another environment.
        """
        run = RunFolder(run_dir)
        meta = run.read_meta()
        if env_id is not None and env_id != meta["env"]:
            raise TfprodError(f"{run.path} is a run of {meta['env']}, not {env_id}; resume it "
                              f"with --env {meta['env']} or train {env_id} in a new folder")
        path = ckpt.latest_checkpoint(run.checkpoints)
        if path is None:
            raise TfprodError(f"{run.path} has no checkpoint to resume from (the run stopped "
                              "before its first one); delete the folder or train into a new one")
        arrays, state = ckpt.load_checkpoint(path)
        from tfprod.rl.config import from_dict

        config = from_dict(state["config"])
        if steps is not None and steps != config.steps:
            if steps < state["counters"]["env_steps"]:
                raise TfprodError(f"--steps {steps}; the run is already at "
                                  f"{state['counters']['env_steps']} env steps")
            config = config.replace(steps=steps)
        agent = cls(state["env_id"], config, seed=state["seed"])
        agent.load_state(arrays, state)
        return agent

    def save_meta(self, run_dir: str | os.PathLike) -> None:
        """Writes ``run.json`` (environment, seed, config, spec) into a run folder."""
        RunFolder(run_dir).write_json("run.json", {
            "env": self.env_id, "seed": self.seed, "config": self.config.to_json(),
            "spec": self.spec.to_json()})
