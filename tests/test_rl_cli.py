"""`tfprod rl train | eval | export` as users run them, and the policy served by `tfprod serve`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest

TFPROD = shutil.which("tfprod", path=os.path.dirname(sys.executable)) or "tfprod"
STEPS = 2_500
SETTINGS = ["--set", "checkpoint_interval=500", "--set", "eval_interval=1000",
            "--set", "hidden=[64,64]", "--set", "learning_starts=500"]


def _tfprod(*args, timeout=300):
    return subprocess.run([TFPROD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "120"})


def _train(out, *extra):
    return [TFPROD, "rl", "train", "--env", "CartPole-v1", "--steps", str(STEPS), "--seed", "1",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A run killed with SIGKILL after its first checkpoint, then resumed; and the same run
    uninterrupted."""
    root = tmp_path_factory.mktemp("rl_cli")
    killed = root / "killed"
    proc = subprocess.Popen(_train(killed, *SETTINGS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not (killed / "checkpoints" / "latest").exists():
            assert proc.poll() is None, "train exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert not (killed / "result.json").exists()  # it was killed mid-run
    resumed = _tfprod(*_train(killed, "--resume", "--json", str(root / "resumed.json"))[1:])
    assert resumed.returncode == 0, resumed.stderr
    whole = _tfprod(*_train(root / "whole", *SETTINGS, "--json", str(root / "whole.json"))[1:])
    assert whole.returncode == 0, whole.stderr
    return root, resumed


@pytest.mark.slow
def test_train_after_sigkill_resumes_the_same_run(killed_and_resumed):
    import keras

    root, resumed = killed_and_resumed
    assert "resuming" in resumed.stderr and "final eval (kept)" in resumed.stdout
    a, b = (json.loads((root / f"{n}.json").read_text()) for n in ("resumed", "whole"))
    for key in ("env", "steps", "seed", "eval_mean_return", "eval_std_return", "best_step",
                "wall_seconds", "steps_per_second"):
        assert key in a
    for key in ("steps", "eval_mean_return", "eval_std_return", "best_step", "episodes",
                "gradient_steps"):
        assert a[key] == b[key], key
    for name in ("final.keras", "best.keras"):
        wa = keras.saving.load_model(root / "killed" / name).get_weights()
        wb = keras.saving.load_model(root / "whole" / name).get_weights()
        assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), name


@pytest.mark.slow
def test_eval_reproduces_the_final_evaluation_and_renders_a_gif(killed_and_resumed):
    root, _ = killed_and_resumed
    out = _tfprod("rl", "eval", str(root / "killed"), "--episodes", "20", "--json",
                  str(root / "eval.json"), "--render-gif", str(root / "episode.gif"))
    assert out.returncode == 0, out.stderr
    result = json.loads((root / "killed" / "result.json").read_text())
    got = json.loads((root / "eval.json").read_text())
    assert got["mean_return"] == pytest.approx(result["eval_mean_return"])
    assert got["returns"] == result["final_evaluation"]["returns"]
    from PIL import Image

    with Image.open(root / "episode.gif") as gif:
        assert gif.n_frames > 5


@pytest.mark.slow
def test_exported_policy_plays_an_episode_through_tfprod_serve(killed_and_resumed):
    from tfprod.rl.network import make_actor
    from tfprod.rl.run import RunFolder
    from tfprod.serve import RestClient, ServerProcess

    root, _ = killed_and_resumed
    base = root / "models" / "cartpole"
    out = _tfprod("rl", "export", str(root / "killed"), str(base))
    assert out.returncode == 0, out.stderr
    assert "q_values" in out.stdout and (base / "1" / "saved_model.pb").is_file()
    actor = make_actor(RunFolder(root / "killed").load_model("best"))
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=123)
    served, own, total, done = [], [], 0.0, False
    with ServerProcess("cartpole", base, log=root / "serve.log") as server, \
            RestClient("127.0.0.1", server.rest_port) as client:
        while not done:
            status, body = client._request(
                "POST", "/v1/models/cartpole:predict",
                json.dumps({"instances": [obs.tolist()]}).encode())
            assert status == 200, body
            row = body["predictions"][0]
            served.append(row["action"])
            own.append(int(np.argmax(actor(obs[None])[0])))
            np.testing.assert_allclose(row["q_values"], actor(obs[None])[0], rtol=1e-4,
                                       atol=1e-4)
            obs, reward, terminated, truncated, _ = env.step(row["action"])
            total += reward
            done = terminated or truncated
        status, body = client._request("POST", "/v1/models/cartpole:predict",
                                       json.dumps({"instances": [[0.0, 1.0]]}).encode())
    assert served == own and total == len(served) > 20
    assert status == 400 and "observation" in body["error"]


def test_bad_input_gets_one_line_each(tmp_path):
    def fails(*args, match):
        out = _tfprod(*args)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
        assert match in lines[0], lines[0]

    run = tmp_path / "run"
    fails("rl", "train", "--env", "CartPol-v1", "--out", str(run),
          match="unknown environment 'CartPol-v1'; did you mean CartPole-v1")
    fails("rl", "train", "--env", "Pendulum-v1", "--out", str(run),
          match="DQN needs a Discrete action space; Pendulum-v1 has Box(")
    fails("rl", "train", "--out", str(run), "--set", "dueling_head=true",
          match="unknown DQN config key 'dueling_head'; did you mean dueling")
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"env": "CartPole-v1", "seed": 0}))
    fails("rl", "train", "--env", "Acrobot-v1", "--out", str(run), "--resume",
          match="is a run of CartPole-v1, not Acrobot-v1")
    fails("rl", "train", "--out", str(run),
          match="already holds a run (CartPole-v1, seed 0); add --resume")
    fails("rl", "eval", str(tmp_path / "missing"), match="no such run folder")


@pytest.mark.parametrize("verb", ["train", "eval", "export"])
def test_every_rl_verb_has_help_with_an_example(verb):
    out = _tfprod("rl", verb, "--help")
    assert out.returncode == 0 and "Example:" in out.stdout
