"""The DQN's numpy pieces: replay ring buffer, n-step returns, sum tree, schedules, config."""

import json
import tracemalloc

import numpy as np
import pytest

from tfprod.errors import TfprodError
from tfprod.rl.config import PRESETS, read_config_file, resolve
from tfprod.rl.nstep import NStepCollector
from tfprod.rl.prioritized import PrioritizedReplayBuffer, SumTree
from tfprod.rl.replay import ReplayBuffer, action_dtype
from tfprod.rl.schedule import LinearSchedule
from tfprod.rl.statistics import RunningStats


def _transitions(start, n, obs_dim=4):
    i = np.arange(start, start + n)
    obs = np.repeat(i[:, None], obs_dim, axis=1).astype(np.float32)
    return obs, i % 2, i.astype(np.float32), obs + 0.5, np.full(n, 0.99, np.float32)


def test_ring_buffer_overwrites_the_oldest_and_keeps_exact_contents():
    buf = ReplayBuffer(10, (4,), np.float32, 2)
    buf.add(*_transitions(0, 7))
    buf.add(*_transitions(7, 6))  # 13 added: slots 0..2 now hold 10..12
    assert len(buf) == 10 and buf.pos == 3
    got = buf.gather(np.arange(10))
    assert got["reward"].tolist() == [10, 11, 12, 3, 4, 5, 6, 7, 8, 9]
    assert np.array_equal(got["next_obs"][:, 0], got["reward"] + 0.5)
    assert got["action"].dtype == np.uint8 and got["action"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1,
                                                                          0, 1]
    batch = buf.sample(np.random.default_rng(0), (3, 5))
    assert batch["obs"].shape == (3, 5, 4) and batch["weights"].shape == (3, 5)
    assert np.array_equal(batch["reward"], buf.reward[batch["indices"]])


def test_buffer_state_round_trips_exactly():
    buf = ReplayBuffer(8, (4,), np.float32, 2)
    buf.add(*_transitions(0, 11))
    copy = ReplayBuffer(8, (4,), np.float32, 2)
    copy.load_state(buf.state())
    for f in ("obs", "action", "reward", "next_obs", "discount"):
        assert np.array_equal(getattr(copy, f), getattr(buf, f))
    assert (copy.pos, copy.size) == (buf.pos, buf.size)


def test_replay_of_100k_transitions_costs_its_array_bytes():
    """Issue target: 100k CartPole transitions within 1.2x of the raw array size."""
    n = 100_000
    tracemalloc.start()
    try:
        buf = ReplayBuffer(n, (4,), np.float32, 2)
        for start in range(0, n, 1000):
            buf.add(*_transitions(start, 1000))
        before_del = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # obs + next_obs (2 x 4 float32) + action (uint8) + reward + discount (float32) = 41 B.
    assert buf.nbytes == n * 41
    # What gymnasium hands over per transition: two float32[4] observations, an int64 action,
    # a float64 reward, two bools.
    raw = n * (16 + 16 + 8 + 8 + 1 + 1)
    assert buf.nbytes <= raw
    assert before_del <= 1.2 * buf.nbytes, (before_del, buf.nbytes)


def test_action_dtype_is_the_smallest_that_fits():
    assert action_dtype(2) == np.uint8 and action_dtype(256) == np.uint8
    assert action_dtype(257) == np.uint16


def _obvious_nstep(steps, n, gamma):
    """Per episode: the n-step return from each step, cut at the end of the episode."""
    out = []
    for t in range(len(steps)):
        ret, k = 0.0, 0
        for j in range(t, min(t + n, len(steps))):
            ret += gamma ** (j - t) * steps[j]["r"]
            k += 1
            if steps[j]["term"] or steps[j]["trunc"]:
                break
        last = steps[t + k - 1]
        discount = 0.0 if last["term"] else gamma ** k
        out.append((steps[t]["obs"], steps[t]["a"], ret, last["next"], discount))
    return out


@pytest.mark.parametrize("ending", ["terminated", "truncated"])
def test_nstep_collector_equals_the_obvious_returns(ending):
    gamma, n = 0.9, 3
    rng = np.random.default_rng(1)
    steps = [{"obs": float(t), "a": t % 2, "r": float(rng.normal()), "next": t + 1.0,
              "term": False, "trunc": False} for t in range(7)]
    steps[-1]["term" if ending == "terminated" else "trunc"] = True
    col = NStepCollector(n, gamma, n_envs=1)
    got = []
    for s in steps:
        out = col.step(np.array([[s["obs"]]]), np.array([s["a"]]), np.array([s["r"]]),
                       np.array([[s["next"]]]), np.array([s["term"]]), np.array([s["trunc"]]))
        if out is not None:
            got += list(zip(*out, strict=True))
    want = _obvious_nstep(steps, n, gamma)
    assert len(got) == len(want) == 7
    for (o, a, r, no, d), (wo, wa, wr, wno, wd) in zip(got, want, strict=True):
        assert (o[0], a, no[0]) == (wo, wa, wno)
        assert r == pytest.approx(wr, rel=1e-5) and d == pytest.approx(wd, rel=1e-6)
    # Truncation bootstraps from the final observation, termination does not.
    assert (want[-1][4] == 0.0) == (ending == "terminated")
    assert col.pending == [[]]


def test_sum_tree_find_equals_a_cumulative_sum_search():
    rng = np.random.default_rng(0)
    tree = SumTree(37)  # not a power of two
    p = rng.random(37)
    tree.set(np.arange(37), p)
    tree.set(np.array([5, 5]), np.array([0.0, 2.5]))  # repeated index: the last write wins
    p[5] = 2.5
    assert tree.total == pytest.approx(p.sum())
    mass = rng.random(1000) * p.sum()
    want = np.searchsorted(np.cumsum(p), mass, side="right")
    assert np.array_equal(tree.find(mass), want)


def test_prioritized_sampling_follows_priorities_and_weights_correct_it():
    buf = PrioritizedReplayBuffer(4, (4,), np.float32, 2, alpha=1.0, epsilon=0.0)
    buf.add(*_transitions(0, 4))
    buf.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    rng = np.random.default_rng(0)
    idx = buf.sample_indices(rng, (100, 100))
    freq = np.bincount(idx.ravel(), minlength=4) / idx.size
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)
    batch = buf.sample(rng, (1, 64), beta=1.0)
    p = np.array([0.1, 0.2, 0.3, 0.4])[batch["indices"]]
    want = (4 * p) ** -1.0
    assert np.allclose(batch["weights"], want / want.max())
    buf.add(*_transitions(4, 1))  # a new transition gets the largest priority seen
    assert buf.tree.get(np.array([0]))[0] == pytest.approx(4.0)


def test_linear_schedule():
    eps = LinearSchedule(1.0, 0.04, 8_000)
    assert (eps(0), eps(4_000), eps(8_000), eps(50_000)) == (1.0, pytest.approx(0.52), 0.04,
                                                             0.04)


def test_running_stats_equal_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, (500, 3))
    stats = RunningStats(3)
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    assert np.allclose(stats.mean, data.mean(0)) and np.allclose(stats.m2 / stats.count,
                                                                 data.var(0))


def test_presets_resolve_and_overrides_apply(tmp_path):
    cfg = resolve("CartPole-v1")
    assert (cfg.learning_rate, cfg.train_freq, cfg.gradient_steps, cfg.steps) == (
        2.3e-3, 256, 128, 50_000)
    assert set(PRESETS) == {"CartPole-v1", "Acrobot-v1", "MountainCar-v0"}
    toml = tmp_path / "c.toml"
    toml.write_text("dueling = true\nhidden = [64, 64]\nn_step = 3\n")
    cfg = resolve("CartPole-v1", read_config_file(toml), {"learning_rate": "1e-3"})
    assert (cfg.dueling, cfg.hidden, cfg.n_step, cfg.learning_rate) == (True, (64, 64), 3,
                                                                        1e-3)


def test_config_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(TfprodError, match=r"unknown DQN config key 'learnig_rate'; did you "
                                          r"mean learning_rate"):
        resolve("CartPole-v1", {"learnig_rate": 1e-3})
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"gama": 0.9}))
    with pytest.raises(TfprodError, match=r"c.json: unknown DQN config key 'gama'; did you "
                                          r"mean gamma"):
        read_config_file(bad)
    with pytest.raises(TfprodError, match=r"gamma=1.5; expected a discount in \[0, 1\]"):
        resolve("CartPole-v1", {"gamma": 1.5})
    with pytest.raises(TfprodError, match=r"steps='many'; expected int"):
        resolve("CartPole-v1", {"steps": "many"})
