"""tfprod.rl.DQN: networks, the training step, truncation, resume, a short CartPole run."""

import keras
import numpy as np
import pytest

import rl_envs
from tfprod.errors import TfprodError
from tfprod.rl import DQN, DQNConfig, NumpyQ, QLearner, build_q_network, env_spec, preset
from tfprod.rl.network import policy_model


def _spec(env_id="CartPole-v1"):
    return env_spec(env_id)


@pytest.mark.parametrize("dueling,normalize", [(False, False), (True, True)])
def test_numpy_actor_equals_the_keras_model(dueling, normalize):
    keras.utils.set_random_seed(0)
    net = build_q_network(_spec(), hidden=(32, 16), dueling=dueling,
                          normalize_observations=normalize)
    if normalize:
        layer = net.get_layer("observation_norm")
        layer.set_weights([np.float32(50), np.array([0.1, -1, 2, 0.5], np.float32),
                           np.array([5, 60, 2, 10], np.float32)])
    obs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    actor = NumpyQ(net)
    np.testing.assert_allclose(actor(obs), net(obs).numpy(), rtol=1e-5, atol=1e-5)
    net.get_layer("hidden_0").kernel.assign(net.get_layer("hidden_0").kernel * 2)
    actor.refresh()  # reads the new weights
    np.testing.assert_allclose(actor(obs), net(obs).numpy(), rtol=1e-5, atol=1e-5)


def test_custom_layers_round_trip_through_keras_files(tmp_path):
    keras.utils.set_random_seed(0)
    spec = _spec()
    policy = policy_model(build_q_network(spec, hidden=(8,), dueling=True), spec)
    path = tmp_path / "policy.keras"
    policy.save(path)
    loaded = keras.saving.load_model(path)
    obs = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    want, got = policy(obs), loaded(obs)
    np.testing.assert_allclose(got["q_values"], want["q_values"], rtol=1e-6)
    assert got["action"].dtype == "int64"
    assert np.array_equal(got["action"], np.argmax(want["q_values"], axis=1))


@pytest.mark.parametrize("double", [True, False])
def test_training_step_loss_equals_the_obvious_dqn_target(double):
    keras.utils.set_random_seed(0)
    net = build_q_network(_spec(), hidden=(16,))
    learner = QLearner(net, learning_rate=1e-3, max_grad_norm=10.0, double=double)
    learner.online.get_layer("q").bias.assign([0.3, -0.2])  # online != target
    rng = np.random.default_rng(0)
    b = 32
    batch = {"obs": rng.normal(size=(1, b, 4)).astype(np.float32),
             "action": rng.integers(0, 2, (1, b)).astype(np.uint8),
             "reward": rng.normal(size=(1, b)).astype(np.float32),
             "next_obs": rng.normal(size=(1, b, 4)).astype(np.float32),
             # 0: terminated (no bootstrap); 0.99: going on or truncated (bootstrap)
             "discount": np.where(rng.random((1, b)) < 0.3, 0.0, 0.99).astype(np.float32),
             "weights": np.ones((1, b), np.float32)}
    q = learner.online(batch["obs"][0]).numpy()
    q_next_online = learner.online(batch["next_obs"][0]).numpy()
    q_next_target = learner.target(batch["next_obs"][0]).numpy()
    target_before = learner.target(batch["obs"][0]).numpy()
    if double:
        next_value = q_next_target[np.arange(b), q_next_online.argmax(1)]
    else:
        next_value = q_next_target.max(1)
    y = batch["reward"][0] + batch["discount"][0] * next_value
    td = q[np.arange(b), batch["action"][0]] - y
    huber = np.where(np.abs(td) <= 1, 0.5 * td ** 2, np.abs(td) - 0.5)
    loss, _, got_td = learner.train(batch)
    assert loss[0] == pytest.approx(huber.mean(), rel=1e-5)
    np.testing.assert_allclose(got_td[0], td, rtol=1e-4, atol=1e-5)
    after = learner.online(batch["obs"][0]).numpy()
    assert not np.allclose(after, q)                      # the step moved the online net
    assert np.array_equal(learner.target(batch["obs"][0]).numpy(), target_before)  # not this


def test_truncated_episodes_bootstrap_and_terminated_ones_do_not():
    config = DQNConfig(steps=60, learning_starts=1_000, buffer_size=100, batch_size=8,
                       hidden=(8,), eval_interval=10_000, gamma=0.9)
    agent = DQN(rl_envs.CORRIDOR, config, seed=0)
    agent.learn()
    buf = agent.replay
    obs, nxt, disc = buf.obs[:buf.size, 0], buf.next_obs[:buf.size, 0], buf.discount[:buf.size]
    reached = nxt == rl_envs.END
    assert reached.any() and (~reached).any()
    assert np.all(disc[reached] == 0.0)                   # terminated: no future value
    assert np.all(disc[~reached] == np.float32(0.9))      # going on or truncated: bootstrap
    # The time limit (6 steps) cut episodes short: the stored next observation is the final
    # one, not the first observation of the next episode.
    lengths = [length for _, _, length in agent.episodes]
    assert 6 in lengths and all(length <= 6 for length in lengths)
    assert np.all((nxt - obs == 0) | (nxt - obs == 1))


def test_vector_envs_collect_every_env():
    config = DQNConfig(steps=400, learning_starts=100, train_freq=8, gradient_steps=2,
                       batch_size=16, hidden=(8,), n_envs=4, eval_interval=10_000)
    agent = DQN("CartPole-v1", config, seed=3)
    agent.learn()
    assert agent.env_steps == 400 and len(agent.replay) == 400
    assert agent.gradient_steps > 0
    assert sum(length for _, _, length in agent.episodes) <= 400
    starts = agent.replay.obs[:4]
    assert len({tuple(s) for s in starts}) == 4  # four differently seeded envs


def _agent_state(agent):
    arrays, state = agent.state()
    return arrays, state["counters"], state["rng"], state["episodes"], state["obs"]


def _assert_same(a, b):
    arrays_a, *rest_a = _agent_state(a)
    arrays_b, *rest_b = _agent_state(b)
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        assert np.array_equal(arrays_a[k], arrays_b[k]), k
    counters_a, counters_b = rest_a[0], rest_b[0]
    counters_a.pop("wall_seconds"), counters_b.pop("wall_seconds")
    assert counters_a == counters_b
    assert rest_a[1:3] == rest_b[1:3]
    assert np.array_equal(rest_a[3], rest_b[3])


@pytest.mark.parametrize("variant", [
    {},
    {"prioritized": True, "n_step": 3, "normalize_observations": True, "n_envs": 2,
     "dueling": True, "tau": 0.5},
])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, variant):
    config = preset("CartPole-v1").replace(
        steps=2_000, learning_starts=300, train_freq=64, gradient_steps=8, hidden=(32, 32),
        eval_interval=500, eval_episodes=2, target_update_interval=100, **variant)
    whole = DQN("CartPole-v1", config, seed=5)
    whole.learn(until=1_600)
    first = DQN("CartPole-v1", config, seed=5)
    assert first.learn(tmp_path / "run", until=900) is None  # checkpoint at 900
    del first
    resumed = DQN.resume(tmp_path / "run")
    assert resumed.env_steps == 900
    resumed.learn(until=1_600)
    _assert_same(whole, resumed)


def test_a_short_cartpole_run_improves_the_greedy_return(tmp_path):
    config = preset("CartPole-v1").replace(steps=5_000, eval_interval=1_000, eval_episodes=5,
                                           final_eval_episodes=20)
    agent = DQN("CartPole-v1", config, seed=0)
    untrained = agent.evaluate(20, final=True).mean
    result = agent.learn(tmp_path / "run")
    assert untrained < 30
    assert result.eval_mean_return > 3 * untrained, (untrained, result)
    assert result.eval_episodes == 20 and result.steps == 5_000
    # Keep-best: the kept weights are those of the best evaluation.
    best = max(agent.evaluations, key=lambda e: e[1])
    assert (result.best_step, result.best_eval_return) == (best[0], best[1])
    run = tmp_path / "run"
    for name in ("best.keras", "final.keras", "result.json", "learning_curve.png"):
        assert (run / name).is_file(), name
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    tags = _scalar_tags(events[0])
    assert {"train/episode_return", "train/loss", "train/mean_q", "train/epsilon",
            "train/steps_per_second", "eval/mean_return"} <= tags


def _scalar_tags(path):
    import tensorflow as tf

    tags = set()
    for raw in tf.data.TFRecordDataset(str(path)):
        event = tf.compat.v1.Event.FromString(raw.numpy())
        tags |= {v.tag for v in event.summary.value}
    return tags


def test_bad_environments_fail_with_one_clear_line():
    with pytest.raises(TfprodError, match=r"unknown environment 'CartPol-v1'; did you mean "
                                          r"CartPole-v1"):
        env_spec("CartPol-v1")
    with pytest.raises(TfprodError, match=r"DQN needs a Discrete action space; Pendulum-v1 has "
                                          r"Box\("):
        env_spec("Pendulum-v1")
    with pytest.raises(TfprodError, match=r"image observations .* set torso='cnn'"):
        DQN(rl_envs.PIXELS, DQNConfig(steps=10))
    agent = DQN(rl_envs.PIXELS, DQNConfig(steps=40, torso="cnn", hidden=(16,),
                                          learning_starts=8, train_freq=8, batch_size=4,
                                          buffer_size=64, eval_interval=10_000,
                                          final_eval_episodes=1))
    result = agent.learn()
    assert agent.replay.obs.dtype == np.uint8 and result.gradient_steps > 0
