"""`tfprod train` end to end: each strategy path as a user runs it, real worker processes."""

import json
import os
import socket
from pathlib import Path

import pytest

from test_cli import run


def _train(tmp_path, digits_dirs, *extra, name="r", env=None):
    out = tmp_path / f"{name}.json"
    r = run("train", "--model", "cnn", "--data", digits_dirs["png"]["train"], "--epochs", "2",
            "--logdir", str(tmp_path / "runs"), "--json", str(out), *extra, timeout=400,
            env=env)
    return r, (json.loads(out.read_text()) if out.exists() else None)


def _scalars(logdir, tag):
    """{step: value} of one TensorBoard scalar under ``logdir`` (any subfolder)."""
    import tensorflow as tf

    values = {}
    for root, _, files in os.walk(logdir):
        for f in files:
            if f.startswith("events.out"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
                    for v in event.summary.value:
                        if v.tag == tag:
                            values[event.step] = float(tf.make_ndarray(v.tensor))
    return values


def test_train_default_strategy_saves_model_and_logs(tmp_path, digits_dirs):
    from tfprod.export import load_keras
    from tfprod.train.run import weights_digest

    r, result = _train(tmp_path, digits_dirs, "--save", str(tmp_path / "m.keras"))
    assert r.returncode == 0, r.stderr[-3000:]
    loss = result["history"]["loss"]
    assert loss[-1] < loss[0]
    assert set(result["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    # The saved model is the trained one (the best epoch's weights), and it still scores so.
    saved = load_keras(str(tmp_path / "m.keras"))
    assert weights_digest(saved) == result["weights_sha256"]
    # TensorBoard holds each epoch's training and validation loss, as the history has them.
    logged = _scalars(tmp_path / "runs" / "train", "epoch_loss")
    assert logged == {0: pytest.approx(loss[0], rel=1e-6), 1: pytest.approx(loss[1], rel=1e-6)}
    val = _scalars(tmp_path / "runs" / "validation", "epoch_loss")
    assert list(val.values()) == pytest.approx(result["history"]["val_loss"], rel=1e-6)


def test_train_resume_continues_from_the_checkpoint(tmp_path, digits_dirs):
    """Interrupted after epoch 1 and resumed to 2, against two epochs in one run."""
    ckpt = str(tmp_path / "ckpt")
    whole = ("--validation-split", "0")  # no best-epoch restore to tell the runs apart
    r, first = _train(tmp_path, digits_dirs, "--checkpoint-dir", ckpt, "--epochs", "1", *whole,
                      name="a")
    assert r.returncode == 0, r.stderr[-3000:]
    r, second = _train(tmp_path, digits_dirs, "--checkpoint-dir", ckpt, "--resume", *whole,
                       name="b")
    assert r.returncode == 0, r.stderr[-3000:]
    assert second["epochs"] == [2]  # epoch 1 was done: only epoch 2 ran
    r, straight = _train(tmp_path, digits_dirs, *whole, name="c")
    assert r.returncode == 0, r.stderr[-3000:]
    # Weights, optimizer state and step counter came back: epoch 2 picks up where epoch 1 left
    # (a fresh start would score epoch 1's loss, ~4x higher). Not to the bit: TF restores the
    # iterator of a memory-cached, reshuffled image folder at another point of the shuffle, so
    # epoch 2 sees other batches (tests/test_trainer.py has the exact resume).
    assert second["optimizer_steps"] == straight["optimizer_steps"] == 2 * first[
        "optimizer_steps"]
    assert second["history"]["loss"][0] == pytest.approx(straight["history"]["loss"][1],
                                                         rel=0.15)
    assert second["history"]["loss"][0] < 0.5 * first["history"]["loss"][0]


@pytest.mark.slow
def test_train_flags_reach_the_training_step(tmp_path, digits_dirs):
    """--strategy mirrored, --accumulate, --clip-norm, --mixed-precision and --jit at once,
    each checked by its effect."""
    from tfprod.export import load_keras

    dump = tmp_path / "xla"
    r, result = _train(tmp_path, digits_dirs, "--strategy", "mirrored", "--accumulate", "2",
                       "--clip-norm", "1e-9", "--mixed-precision", "mixed_float16", "--jit",
                       "--epochs", "1", "--validation-split", "0", "--save",
                       str(tmp_path / "m.keras"),
                       env={"XLA_FLAGS": f"--xla_dump_to={dump}"})
    assert r.returncode == 0, r.stderr[-3000:]
    # mirrored: two replicas (the CPU split in two).
    assert result["strategy"] == "MirroredStrategy" and result["replicas"] == 2
    # --accumulate 2: one update per two batches of 32.
    rows = result["split"]["training"]["rows"]
    assert result["optimizer_steps"] == rows // 64
    # --jit: XLA compiled the step (nothing is compiled by XLA without it on CPU).
    assert [p for p in dump.iterdir() if p.name.endswith(".txt")]
    # --mixed-precision: float16 compute (the loss scaling is tests/test_trainer.py's).
    saved = load_keras(str(tmp_path / "m.keras"))
    assert saved.layers[1].dtype_policy.name == "mixed_float16"
    # --clip-norm 1e-9: Adam's steps shrink to ~lr * 1e-9 / epsilon; the loss stays at chance,
    # ln 10 (an unclipped first epoch averages ~1.5).
    assert result["history"]["loss"] == [pytest.approx(2.30, abs=0.1)]


@pytest.mark.slow
def test_multi_worker_two_processes_hold_identical_weights(tmp_path, digits_dirs):
    r, chief = _train(tmp_path, digits_dirs, "--strategy", "multi-worker", "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    other = json.loads((tmp_path / "r.worker-1.json").read_text())
    assert chief["replicas"] == 2 and chief["task"] == "worker:0"
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert chief["history"]["loss"][-1] < chief["history"]["loss"][0]


@pytest.mark.slow
def test_parameter_server_two_workers_train(tmp_path, digits_dirs):
    r, chief = _train(tmp_path, digits_dirs, "--strategy", "ps", "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert chief["strategy"].startswith("ParameterServerStrategy")
    assert chief["history"]["loss"][-1] < chief["history"]["loss"][0]
    # Both workers ran steps, and every step's update reached the variables on the PS, which
    # the coordinator read back (its optimizer's step counter lives there too).
    steps = chief["worker_steps"]
    assert set(steps) == {"0", "1"} and min(steps.values()) > 0, steps
    rows = chief["split"]["training"]["rows"]
    assert sum(steps.values()) == chief["optimizer_steps"] == 2 * -(-rows // 32)


def test_workers_with_a_single_process_strategy_is_refused(tmp_path, digits_dirs):
    r, _ = _train(tmp_path, digits_dirs, "--strategy", "mirrored", "--workers", "2")
    assert r.returncode == 2
    assert "takes no workers" in r.stderr and "Traceback" not in r.stderr


def test_worker_that_never_comes_up_is_a_bounded_error(tmp_path, digits_dirs, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    config = {"cluster": {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]},
              "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    r, _ = _train(tmp_path, digits_dirs, "--strategy", "multi-worker", "--cluster-timeout", "3")
    assert r.returncode != 0
    assert "127.0.0.1:1 did not come up within 3 s" in r.stderr


def test_invalid_tf_config_is_one_line(tmp_path, digits_dirs, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{oops")
    r, _ = _train(tmp_path, digits_dirs, "--strategy", "multi-worker")
    assert r.returncode == 2
    assert "TF_CONFIG is not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_model_function_without_loss_is_refused(tmp_path, digits_dirs, monkeypatch):
    (tmp_path / "user_model.py").write_text(
        "import keras\n"
        "def build():\n"
        "    return keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(10)])\n")
    monkeypatch.chdir(tmp_path)
    r, _ = _train(tmp_path, digits_dirs, "--model", "user_model:build")
    assert r.returncode == 2
    assert "not compiled with a loss" in r.stderr


# ------------------------------------------------------------------------ the user's own data


def test_own_csv_trains_then_exports_predicts_and_serves_class_names(own_tables, tmp_path):
    """The path after the quickstart, as a user runs it: no flag says what the labels mean."""
    import urllib.request

    from tfprod.serve.process import ServerProcess

    data = own_tables["wine_names"]["csv"]
    model = str(tmp_path / "wine.keras")
    r = run("train", "--model", "mlp", "--data", data, "--epochs", "4", "--learning-rate",
            "0.003", "--early-stopping", "2", "--save", model, "--logdir",
            str(tmp_path / "runs"), "--json", str(tmp_path / "r.json"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("task: 3-class classification: label 'label' holds 3 names ('barbera', 'barolo', "
            "'grignolino')") in " ".join(r.stderr.split())
    assert "hashed split 0.2" in r.stderr
    for header in ("epoch", "loss", "val loss", "val acc", "val F1"):
        assert header in r.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    best = result["best_epoch"]
    assert f"saved {model} (the weights of epoch {best})" in " ".join(r.stdout.split())

    base = tmp_path / "models" / "wine"
    r = run("export", model, str(base), "--data", data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "classes" in r.stdout and "string" in r.stdout and "(None, 3)" in r.stdout

    r = run("predict", str(base), data, "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 178 and {row["class"] for row in rows} <= {"barbera", "barolo",
                                                                   "grignolino"}
    lines = Path(data).read_text().splitlines()
    labels = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert sum(row["class"] == y for row, y in zip(rows, labels, strict=True)) / 178 > 0.8

    # optimize tests on the rows training held out: the model knows which.
    r = run("optimize", model, "--data", data, "--variants", "float32", "--runs", "5",
            "--out", str(tmp_path / "variants"), "--json", str(tmp_path / "o.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["test_examples"] == result["split"]["held_out"]["rows"]
    assert report["reference"] == pytest.approx(  # the float model on the held-out rows
        100 * result["history"]["val_accuracy"][best - 1], abs=1e-3)

    header, first = lines[0].split(",")[:-1], lines[1].split(",")
    # Each column is an input of shape (None, 1), int64 where the CSV holds whole numbers.
    instance = {name: [json.loads(v)] for name, v in zip(header, first, strict=False)}
    with ServerProcess("wine", base, log=str(tmp_path / "serve.log")) as server:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/wine:predict",
            data=json.dumps({"instances": [instance, instance]}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    predictions = answer["predictions"]
    assert predictions[0]["classes"] == rows[0]["class"] == predictions[1]["classes"]
    assert len(predictions[0]["probabilities"]) == 3


def test_bad_labels_are_one_line_on_the_command_line(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("a,label\n" + "".join(f"{i % 3},{i}\n" for i in range(50)))
    r = run("train", "--model", "mlp", "--data", str(path), "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: label 'label' has a different value")
    assert "looks like an id" in lines[0]


def _split_of(path, subset):
    from tfprod.data import read_csv

    return read_csv(path, label="label", validation_split=0.2, subset=subset).split


@pytest.mark.slow
def test_multi_worker_workers_draw_the_same_split(own_tables, tmp_path):
    data = own_tables["wine"]["csv"]
    out = tmp_path / "r.json"
    r = run("train", "--model", "mlp", "--data", data, "--epochs", "2", "--strategy",
            "multi-worker", "--workers", "2", "--logdir", str(tmp_path / "runs"), "--json",
            str(out), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    chief = json.loads(out.read_text())
    other = json.loads((tmp_path / "r.worker-1.json").read_text())
    assert chief["replicas"] == 2 and chief["split"] == other["split"]
    assert chief["split"]["training"]["fingerprint"] == _split_of(data, "training").fingerprint
    assert chief["split"]["held_out"]["fingerprint"] == _split_of(data, "validation").fingerprint
    # Same validation scores and the same best epoch on both workers: they stop together.
    assert chief["history"]["val_loss"] == other["history"]["val_loss"]
    assert chief["best_epoch"] == other["best_epoch"]
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert len(chief["history"]["val_macro_f1"]) == 2


@pytest.mark.slow
def test_parameter_server_scores_the_held_out_split(own_tables, tmp_path):
    data = own_tables["cancer"]["csv"]
    out = tmp_path / "r.json"
    r = run("train", "--model", "mlp", "--data", data, "--epochs", "2", "--strategy", "ps",
            "--workers", "2", "--logdir", str(tmp_path / "runs"), "--json", str(out),
            timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["strategy"].startswith("ParameterServerStrategy")
    assert result["split"]["held_out"]["fingerprint"] == _split_of(data, "validation").fingerprint
    for name in ("val_loss", "val_accuracy", "val_auc", "accuracy"):
        assert len(result["history"][name]) == 2, name
    assert result["history"]["val_loss"][-1] < result["history"]["val_loss"][0]
    assert result["history"]["val_accuracy"][-1] > 0.8
