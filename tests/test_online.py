"""tfprod.online: learners, buffer, drift, gate, rollout and the loop on a real tfprod serve."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import numpy as np
import pytest

from online_data import export_v1, shifted, tiny_mlp
from tfprod.errors import TfprodError


@pytest.fixture(scope="module")
def digits():
    from tfprod.online.bench import split_digits

    return split_digits(0)


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits):
    """Version 1 of a tiny MLP (trained on 600 digits) in a base path, and a holdout."""
    x_tr, y_tr, x_te, y_te = digits
    root = tmp_path_factory.mktemp("online")
    model = tiny_mlp(x_tr[:600], y_tr[:600])
    base = root / "models" / "digits"
    export_v1(model, base, x_tr[:500], y_tr[:500])
    holdout = root / "holdout.npz"
    np.savez(holdout, pixels=x_te[:300], labels=y_te[:300])
    return root, base, holdout, model


# ---------------------------------------------------------------------------- unit


def test_reservoir_keeps_a_uniform_sample_and_resumes_exactly():
    from tfprod.online import ReservoirBuffer

    buffer = ReservoirBuffer(100, seed=1)
    x = np.arange(5000, dtype=np.float32)[:, None]
    buffer.add({"x": x[:2500]}, np.arange(2500) % 10)
    saved = buffer.state()
    buffer.add({"x": x[2500:]}, np.arange(2500, 5000) % 10)
    kept = buffer.contents()[0]["x"][:, 0]
    assert len(buffer) == 100 and buffer.seen == 5000
    # a uniform sample of 0..4999: about half from each half (99.9% binomial bound)
    assert 30 <= int(np.sum(kept < 2500)) <= 70
    other = ReservoirBuffer(100, seed=99)
    other.load_state(saved)
    other.add({"x": x[2500:]}, np.arange(2500, 5000) % 10)
    np.testing.assert_array_equal(other.contents()[0]["x"], buffer.contents()[0]["x"])
    np.testing.assert_array_equal(other.y, buffer.y)


def test_class_balanced_reservoir_keeps_rare_classes():
    from tfprod.online import ReservoirBuffer

    y = np.r_[np.zeros(2000, int), np.ones(50, int), np.full(50, 2)]
    plain, balanced = ReservoirBuffer(90, seed=0), ReservoirBuffer(90, balanced=True, seed=0)
    for b in (plain, balanced):
        b.add({"x": np.zeros((len(y), 1))}, y)
    assert np.bincount(balanced.y, minlength=3).tolist() == [30, 30, 30]
    assert np.bincount(plain.y, minlength=3)[0] > 70


def test_page_hinkley_fires_after_the_error_rate_rises_not_before():
    from tfprod.online import PageHinkley

    rng = np.random.default_rng(0)
    ph = PageHinkley()
    before = [ph.update(float(e)) for e in rng.random(1000) < 0.1]
    after = [ph.update(float(e)) for e in rng.random(400) < 0.6]
    assert not any(before)
    assert any(after) and after.index(True) < 150


def test_two_proportion_test_matches_scipy():
    from scipy.stats import norm

    from tfprod.online import two_proportion_test

    z, p = two_proportion_test(70, 100, 85, 100)
    pooled = 155 / 200
    want = (0.7 - 0.85) / math.sqrt(pooled * (1 - pooled) * 0.02)
    assert z == pytest.approx(want)
    assert p == pytest.approx(norm.cdf(want))
    with pytest.raises(TfprodError, match="both need examples"):
        two_proportion_test(1, 0, 1, 1)


def test_verdict_waits_then_promotes_or_rolls_back():
    from tfprod.online.rollout import verdict

    assert verdict((40, 50), (80, 100), min_requests=100).action == "wait"
    assert verdict((70, 100), (90, 100), min_requests=100).action == "rollback"
    assert verdict((91, 100), (88, 100), min_requests=100).action == "promote"


def test_canary_share_is_sticky_and_matches_the_percentage():
    from tfprod.serve.registry import canary_share

    keys = [f"req-{i}" for i in range(20000)]
    share = np.mean([canary_share(k, 10) for k in keys])
    assert abs(share - 0.10) < 2.576 * math.sqrt(0.1 * 0.9 / len(keys))
    assert all(canary_share(k, 10) == canary_share(k, 10) for k in keys[:100])


def test_learner_rejects_labels_outside_the_classes(served):
    from tfprod.online import make_learner

    _, _, _, model = served

    learner = make_learner("finetune", model)
    x = {"pixels": np.zeros((2, 64), np.float32)}
    with pytest.raises(TfprodError, match=r"label 12 is out of the class range 0\.\.9"):
        learner.check(x, np.array([1, 12]))
    with pytest.raises(TfprodError, match="not class indices"):
        learner.check(x, np.array([0.5, 1.0]))
    with pytest.raises(TfprodError, match=r"input 'pixels' has examples of shape \(8,\)"):
        learner.check({"pixels": np.zeros((2, 8), np.float32)}, np.array([1, 2]))


def test_ewc_anchor_holds_the_weights_that_mattered(digits):
    """After consolidation, EWC keeps task-1 accuracy that plain fine-tuning loses."""
    from tfprod.online import make_learner
    from tfprod.online.bench import mlp

    x_tr, y_tr, x_te, y_te = digits
    first, second = y_tr < 5, y_tr >= 5
    scores = {}
    for kind, args in (("finetune", {}), ("ewc", {"strength": 5000.0})):
        learner = make_learner(kind, mlp(0), batch_size=32, **args)
        learner.learn({"pixels": x_tr[first]}, y_tr[first], epochs=5)
        learner.consolidate({"pixels": x_tr[first]}, y_tr[first])
        learner.learn({"pixels": x_tr[second]}, y_tr[second], epochs=3)
        old = y_te < 5
        scores[kind] = np.mean(learner.predict({"pixels": x_te[old]}).argmax(-1) == y_te[old])
    assert scores["ewc"] > scores["finetune"] + 0.1, scores


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path):
    """A request log on SQLite, then on a real PostgreSQL server (tests/postgres_server.py;
    its tables are shared by the session, so each test's ids carry a unique prefix)."""
    if request.param == "sqlite":
        return str(tmp_path / "log.db")
    return request.getfixturevalue("postgres").url


def test_log_stream_releases_an_example_when_its_label_arrives(log_url):
    """Delayed labels, ties of feedback time cut by a limit, resume from the cursor (no repeat,
    no skip), and the labels the loop cannot learn: dropped with one line each."""
    import uuid

    from tfprod.monitor.records import LogRecord
    from tfprod.monitor.store import open_store
    from tfprod.online import LogStream

    p, model = uuid.uuid4().hex[:8], f"m-{uuid.uuid4().hex[:8]}"
    store = open_store(log_url)
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    store.write(LogRecord(f"{p}r{i}", 100.0 + i, model, 1, "serving_default",
                          {"x": x[i:i + 1]}, {"p": np.zeros((1, 3))}, 1.0) for i in range(10))
    store.write([LogRecord(f"{p}pair", 106.0, model, 1, "serving_default", {"x": x[10:12]},
                           {"p": np.zeros((2, 3))}, 1.0)])
    stream = LogStream(log_url, model)
    assert len(stream.poll()) == 0  # served, not labelled yet
    store.add_feedback(model, [(f"{p}r3", 2), (f"{p}r1", 0)], time=200.0)
    got = stream.poll()
    assert got.ids == [f"{p}r1", f"{p}r3"] and got.y.tolist() == [0, 2]
    np.testing.assert_array_equal(got.x["x"], x[[1, 3]])
    assert len(stream.poll()) == 0  # each label is learned once
    # late labels: r0 served first, labelled last; a two-instance request with two labels
    store.add_feedback(model, [(f"{p}r0", 1), (f"{p}pair", [1, 2])], time=300.0)
    late = stream.poll()
    assert late.ids == [f"{p}r0", f"{p}pair", f"{p}pair"] and late.y.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(late.x["x"], x[[0, 10, 11]])
    # six labels sent together share one time; a limit of 4 cuts among them
    store.add_feedback(model, [(f"{p}r{i}", i) for i in (4, 5, 6, 7, 8, 9)], time=400.0)
    first = stream.poll(limit=4)
    cursor = stream.state()
    resumed = LogStream(log_url, model)
    resumed.load_state(cursor)
    rest = resumed.poll()
    assert first.ids + rest.ids == [f"{p}r{i}" for i in (4, 5, 6, 7, 8, 9)]
    assert (first.y.tolist(), rest.y.tolist()) == ([4, 5, 6, 7], [8, 9])
    np.testing.assert_array_equal(np.concatenate([first.x["x"], rest.x["x"]]), x[4:10])
    assert len(stream.poll(limit=4)) == 2 and len(resumed.poll()) == 0
    # what cannot be learned is dropped with one line each; the stream goes on
    store.add_feedback(model, [(f"{p}r2", "seven"), (f"{p}ghost", 3)], time=500.0)
    store.add_feedback(model, [(f"{p}r1", 4)], time=600.0)  # a corrected label: learned again
    kept = stream.poll()
    assert kept.ids == [f"{p}r1"] and kept.y.tolist() == [4]
    reasons = [n["reason"] for n in stream.notes]
    assert len(reasons) == 2, reasons
    assert any(f"request id(s) '{p}ghost' the log does not hold" in r for r in reasons)
    assert any("label(s) 'seven' are not numbers" in r for r in reasons)
    assert len(stream.poll()) == 0 and len(stream.notes) == 2  # each reported once
    for s in (stream, resumed):
        s.close()
    store.close()


def test_folder_stream_reads_each_new_file_once(tmp_path):
    from tfprod.online import FolderStream

    stream = FolderStream(tmp_path)
    (tmp_path / "a.csv").write_text("x1,x2,label\n1,2,0\n3,4,1\n")
    (tmp_path / ".partial.csv").write_text("x1,x2,label\n9,9,9\n")
    got = stream.poll()
    assert got.y.tolist() == [0, 1] and got.x["x2"].tolist() == [2, 4]
    assert len(stream.poll()) == 0
    np.savez(tmp_path / "b.npz", x1=np.array([5.0]), x2=np.array([6.0]), labels=np.array([2]))
    assert stream.poll().y.tolist() == [2]
    with pytest.raises(TfprodError, match="no such folder"):
        FolderStream(tmp_path / "missing")


# ---------------------------------------------------------------------------- gate


def test_gate_refuses_nan_and_a_worse_candidate(served):
    from tfprod.online import evaluate_gate
    from tfprod.online.loop import load_holdout

    _, _, holdout, model = served
    data = load_holdout(holdout)

    def good(x):
        return model.predict(x["pixels"], verbose=0)

    def nan(x):
        return np.full((len(x["pixels"]), 10), np.nan, np.float32)

    def shuffled(x):
        return np.random.default_rng(0).permutation(good(x))

    assert evaluate_gate(good, good, data).blessed
    refused = evaluate_gate(nan, good, data)
    assert not refused.blessed and "NaN" in refused.reasons[0]
    worse = evaluate_gate(shuffled, good, data, margin=0.05, floor=0.5)
    assert not worse.blessed and len(worse.reasons) == 2
    assert "worse than the serving version's" in worse.reasons[0]


def test_gate_recent_window_refuses_a_real_loss_not_one_unlucky_example():
    """The quickstart's case: better on the holdout, one example worse of 18 recent ones (5.6
    points, over the 3-point margin by chance): blessed. A candidate losing 30 and winning 5 of
    200 recent examples is refused, and the reason gives the counts and the test."""
    from tfprod.online import evaluate_gate
    from tfprod.online.stream import Examples

    def data(n):
        return Examples({"i": np.arange(n)}, np.zeros(n, np.int64))

    def model(on_holdout, on_recent):  # predicts the label (0) where marked right, else 1
        def predict(x):
            right = on_holdout if len(x["i"]) == 300 else on_recent
            return np.eye(2)[(~right[x["i"]]).astype(int)]
        return predict

    holdout = data(300)
    better, worse = np.arange(300) >= 5, np.arange(300) >= 10  # 0.983 vs 0.967
    recent_c, recent_b = np.arange(18) >= 3, np.arange(18) >= 2  # 15/18 vs 16/18
    lucky = evaluate_gate(model(better, recent_c), model(worse, recent_b), holdout,
                          recent=data(18), margin=0.03)
    assert lucky.blessed, lucky.reasons
    assert (round(lucky.recent_candidate, 4), round(lucky.recent_baseline, 4)) == (0.8333, 0.8889)
    assert lucky.recent_p == pytest.approx(0.5)  # lost 1, won 0: a coin flip
    cand = np.r_[np.zeros(30, bool), np.ones(5, bool), np.ones(165, bool)]
    base = np.r_[np.ones(30, bool), np.zeros(5, bool), np.ones(165, bool)]
    refused = evaluate_gate(model(better, cand), model(worse, base), holdout,
                            recent=data(200), margin=0.03)
    assert not refused.blessed and len(refused.reasons) == 1
    assert refused.reasons[0].startswith("recent-window accuracy 0.8500 is worse than the "
                                         "serving version's 0.9750 by more than the margin 0.03 "
                                         "(it lost 30 and won 5 of the 200 examples, p=")
    assert refused.recent_p < 1e-4


def test_a_holdout_that_does_not_match_the_signature_is_one_clear_line(served, tmp_path):
    from tfprod.online import IterableStream, OnlineLoop

    root, base, _, _ = served
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((5, 8), np.float32), labels=np.zeros(5))
    with pytest.raises(TfprodError, match=r"input 'pixels' has examples of shape \(8,\); the "
                                          r"model's signature takes \(64,\)"):
        OnlineLoop(base, str(bad), model_config_file=tmp_path / "models.config",
                   stream=IterableStream(()), state_dir=tmp_path / "state")
    assert not os.path.exists(tmp_path / "models.config")


def test_a_base_path_another_process_writes_is_refused(served, tmp_path):
    from tfprod.export.publish import TEMP_PREFIX, _host
    from tfprod.online.loop import check_base_free

    _, base, _, _ = served
    busy = tmp_path / "busy"
    (busy / "1").mkdir(parents=True)
    (busy / f"{TEMP_PREFIX}{_host()}-{os.getppid()}-abcd").mkdir()
    with pytest.raises(TfprodError, match=f"being written by process {os.getppid()}"):
        check_base_free(str(busy))
    check_base_free(str(base))


# ---------------------------------------------------------------------------- end to end


def _requests(client, x, prefix):
    ids = []
    for i, row in enumerate(x):
        rid = f"{prefix}-{i}"
        r = client.post("/v1/models/digits:predict", json={"instances": [row.tolist()]},
                        headers={"X-Request-Id": rid})
        assert r.status_code == 200, r.text
        ids.append(rid)
    return ids


def _feedback(client, ids, labels):
    r = client.post("/v1/models/digits:feedback", json={"feedback": [
        {"request_id": i, "label": int(v)} for i, v in zip(ids, labels, strict=True)]})
    assert r.status_code == 200, r.text


def _wait_labels(client, want, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/monitoring/prometheus/metrics")
        got = {}
        for line in r.text.splitlines():
            if line.startswith(":tfprod:rollout:version{"):
                label = line.split('label="')[1].split('"')[0]
                got[label] = int(float(line.rsplit(" ", 1)[1]))
        if got == want and all(_available(client, v) for v in want.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"labels {got}, expected {want}")


def _available(client, version):
    r = client.get(f"/v1/models/digits/versions/{version}")
    return r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE"


def _arm_counts(client):
    counts = {"stable": 0.0, "canary": 0.0}
    for line in client.get("/monitoring/prometheus/metrics").text.splitlines():
        if line.startswith(":tfprod:rollout:requests"):
            arm = line.split('arm="')[1].split('"')[0]
            counts[arm] += float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.slow
def test_feedback_update_gate_canary_promote_and_rollback_on_a_real_server(served, digits,
                                                                           tmp_path):
    """One tfprod serve process; the loop refuses a poisoned update, rolls back a canary
    worse than stable, promotes a better one; traffic shares match --canary_percent; no
    request fails while the labels move; a shadow answers copies of the same requests."""
    import shutil

    import httpx

    from tfprod.online import OnlineLoop
    from tfprod.online.rollout import write_models_config
    from tfprod.serve.process import ServerProcess

    root, served_base, holdout, _ = served
    base = tmp_path / "digits"  # versions are published here: not in the shared fixture
    shutil.copytree(served_base, base)
    x_tr, y_tr, x_te, y_te = digits
    log, config = tmp_path / "log.db", tmp_path / "models.config"
    (tmp_path / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    write_models_config(config, "digits", str(base), 1)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2",
             f"--request_log={log}", "--monitoring_interval_seconds=0",
             "--file_system_poll_wait_seconds=0", "--canary_percent=50",
             f"--monitoring_config_file={tmp_path / 'monitoring.config'}"]
    rng = np.random.default_rng(0)
    with ServerProcess("digits", None, log=tmp_path / "serve.log", flags=flags) as server, \
            httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}", timeout=30) as client:
        loop = OnlineLoop(base, str(holdout), model_config_file=config, log_url=str(log),
                          model_name="digits", state_dir=tmp_path / "state",
                          learner_args={"epochs": 4, "replay_ratio": 3.0}, min_examples=200,
                          margin=0.05, canary_min_requests=60)
        # 1. poisoned feedback (labels shuffled) is refused; nothing is published
        poison_x = x_tr[600:900]
        ids = _requests(client, poison_x, "poison")
        _feedback(client, ids, rng.permutation(y_tr[600:900]))
        step = loop.step()
        assert step["action"] == "rejected", step
        assert "worse than the serving version's" in step["decision"].reasons[0]
        from tfprod.export import list_versions

        assert list_versions(base) == [1]
        assert os.path.exists(tmp_path / "state" / "rejected" / "1" / "assets.extra" /
                              "tfprod" / "gate.json")
        assert "versions: 1 }" in config.read_text() and "canary" not in config.read_text()

        # 2. a gate left open (margin 1) lets a poisoned canary out: its live traffic rolls it
        loop.margin = 1.0
        ids = _requests(client, x_tr[900:1150], "poison2")
        _feedback(client, ids, rng.permutation(y_tr[900:1150]))
        step = loop.step()
        assert step["action"] == "canary" and step["version"] == 2, step
        gate = json.loads((base / "2" / "assets.extra" / "tfprod" / "gate.json").read_text())
        assert gate["baseline_version"] == 1 and gate["blessed"]
        _wait_labels(client, {"stable": 1, "canary": 2})
        before = _arm_counts(client)
        for _ in range(400):  # no X-Request-Id: each goes to the canary with p = 0.5
            assert client.post("/v1/models/digits:predict",
                               json={"instances": [x_te[0].tolist()]}).status_code == 200
        after = _arm_counts(client)
        share = (after["canary"] - before["canary"]) / 400
        assert abs(share - 0.5) < 2.576 * math.sqrt(0.25 / 400), share
        live = x_te[300:500]
        ids = _requests(client, live, "live")
        _feedback(client, ids, y_te[300:500])
        step = loop.step()
        assert step["action"] == "rollback", step
        assert step["canary_accuracy"] < step["stable_accuracy"] - 0.1
        _wait_labels(client, {"stable": 1})
        assert client.get("/v1/models/digits/versions/2").status_code == 404 or \
            client.get("/v1/models/digits/versions/2").json()[
                "model_version_status"][0]["state"] != "AVAILABLE"

        # 3. drifted traffic with true labels: a better canary, promoted with no failed request
        loop.margin = 0.05
        drift_x, drift_y = shifted(x_tr[1150:]), y_tr[1150:]
        ids = _requests(client, drift_x, "drift")
        _feedback(client, ids, drift_y)
        step = loop.step()
        assert step["action"] == "canary" and step["version"] == 3, step
        assert step["candidate"] >= step["baseline"] - 0.05
        _wait_labels(client, {"stable": 1, "canary": 3})
        ids = _requests(client, shifted(x_te[300:]), "drift-live")
        _feedback(client, ids, y_te[300:])
        failures, sent, stop = [], [0], threading.Event()

        def traffic():
            with httpx.Client(base_url=f"http://127.0.0.1:{server.rest_port}") as c:
                while not stop.is_set():
                    r = c.post("/v1/models/digits:predict",
                               json={"instances": [x_te[1].tolist()]})
                    sent[0] += 1
                    if r.status_code != 200:
                        failures.append(r.text)

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            step = loop.step()
            assert step["action"] == "promote", json.dumps(step, default=str)
            _wait_labels(client, {"stable": 3})
            time.sleep(1.0)  # version 1 unloads
        finally:
            stop.set()
            thread.join(30)
        assert not failures and sent[0] > 10, (failures[:3], sent)
        assert loop.state["stable"] == 3 and "versions: 3 }" in config.read_text()

        # 4. shadow: the next candidate answers a copy of every request, logged, never returned
        loop.rollout, loop.margin = "shadow", 1.0
        ids = _requests(client, shifted(x_te[:300]), "more")
        _feedback(client, ids, y_te[:300])
        step = loop.step()
        assert step["action"] == "canary" and step["version"] == 4, step
        _wait_labels(client, {"stable": 3})
        while not _available(client, 4):
            time.sleep(0.1)
        ids = _requests(client, shifted(x_tr[:80]), "shadowed")
        _feedback(client, ids, y_tr[:80])
        by_id = {}
        for r in loop.store.read("digits", since=loop.state["canary_since"]):
            by_id.setdefault(r.request_id, []).append(r.version)
        assert all(sorted(by_id[i]) == [3, 4] for i in ids)  # both answered each request
        step = loop.step()
        assert step["action"] in ("promote", "rollback"), step
        assert step["canary_n"] == step["stable_n"] == 80  # judged on the very same requests
        loop.close()

    from tfprod.online import online_status

    status = online_status(base, tmp_path / "state")
    fates = {v["version"]: v["fate"] for v in status["versions"]}
    assert {v: fates[v] for v in (1, 2, 3)} == {1: "", 2: "rolled back", 3: "promoted"}
    assert status["rejected_rounds"] == [1]
    events = [e["event"] for e in status["events"]]
    assert events[-7:-2] == ["rejected", "canary", "rollback", "canary", "promote"]


@pytest.mark.slow
def test_resume_after_sigkill_mid_round_gives_the_same_buffer_and_weights(served, digits,
                                                                          tmp_path):
    """A round from a folder stream: uninterrupted, and killed (SIGKILL) in the middle of the
    round then restarted from the last commit; the committed learner state is the same."""
    import shutil
    import subprocess
    import sys

    from tfprod.online import FolderStream, OnlineLoop

    _, base, holdout, _ = served
    x_tr, y_tr, _, _ = digits
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, part in enumerate((slice(600, 700), slice(700, 800))):
        np.savez(folder / f"part-{i}.npz", pixels=shifted(x_tr[part]), labels=y_tr[part])
    runs = {}
    for name in ("straight", "killed"):
        copy = tmp_path / name / "digits"
        shutil.copytree(base, copy)
        runs[name] = (copy, tmp_path / name / "state")
        runs[name][1].mkdir()
    script = os.path.join(os.path.dirname(__file__), "scripts", "online_rounds.py")
    copy, state = runs["killed"]
    args = [sys.executable, script, str(copy), str(holdout), str(folder), str(state)]
    # the first run commits its start, then its 2nd update (inside round 1) kills it
    died = subprocess.run([*args, "--kill_after", "2"], capture_output=True, text=True,
                          timeout=300)
    assert died.returncode == -9, died.stderr[-2000:]
    current = (state / "CURRENT").read_text().strip()
    assert json.loads((state / current / "state.json").read_text())["round"] == 0
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "round 1 stable 2" in resumed.stdout, \
        resumed.stderr[-2000:]

    copy, state = runs["straight"]
    loop = OnlineLoop(copy, str(holdout), model_config_file=state / "m.config",
                      stream=FolderStream(folder), state_dir=state, min_examples=50,
                      max_examples=100,
                      margin=1.0, learner_args={"buffer_size": 300})
    while loop.state["round"] < 1:
        loop.step()
    loop.close()

    def committed(state):
        name = (state / "CURRENT").read_text().strip()
        with np.load(state / name / "stable" / "learner.npz") as z:
            arrays = {k: z[k] for k in z.files}
        import keras

        weights = keras.saving.load_model(state / name / "stable" / "model.keras").get_weights()
        return arrays, weights

    (a_arrays, a_weights), (b_arrays, b_weights) = committed(runs["straight"][1]), \
        committed(runs["killed"][1])
    assert sorted(a_arrays) == sorted(b_arrays)
    for k in a_arrays:
        np.testing.assert_array_equal(a_arrays[k], b_arrays[k], err_msg=k)
    assert int(a_arrays["buffer/y"].size) == 300  # 500 reference examples seen, then 80 new
    assert json.loads(a_arrays["buffer/meta"].tobytes())["seen"] == 580
    for a, b in zip(a_weights, b_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _events(state):
    return [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]


def test_a_stream_that_stops_ends_the_loop_without_publishing(served, tmp_path):
    from tfprod.export import list_versions
    from tfprod.online import IterableStream, OnlineLoop

    _, base, holdout, _ = served
    x = np.zeros((10, 64), np.float32)
    loop = OnlineLoop(base, str(holdout), model_config_file=tmp_path / "models.config",
                      stream=IterableStream([({"pixels": x}, np.arange(10))]),
                      state_dir=tmp_path / "state", min_examples=50)
    assert loop.run(interval=0.01) == 0  # 10 examples, then the iterable stops
    assert loop.stream.done and list_versions(base) == [1]
    assert 'key: "stable" value: 1' in (tmp_path / "models.config").read_text()
    end = [e for e in _events(tmp_path / "state") if e["event"] == "stream_end"]
    assert len(end) == 1 and end[0]["examples"] == 10
    assert "the stream ended with 10 labelled example(s) waiting, fewer than " \
           "min_examples=50" in end[0]["reason"]
    loop.close()


def test_labels_the_loop_cannot_learn_are_dropped_one_line_each(served, digits, tmp_path):
    """Through the request log: a label that is not a number, one outside the classes, one for
    a request id the log does not hold; each a ``dropped`` line, none learned, the round runs.
    A log that stops growing: one ``idle`` line, and the loop waits."""
    from tfprod.monitor.records import LogRecord
    from tfprod.monitor.store import open_store
    from tfprod.online import LogStream, OnlineLoop

    _, base, holdout, _ = served
    x_tr, y_tr, _, _ = digits
    url = str(tmp_path / "log.db")
    store = open_store(url)
    store.write(LogRecord(f"r{i}", 100.0 + i, "digits", 1, "serving_default",
                          {"pixels": x_tr[i:i + 1]}, {"probabilities": np.zeros((1, 10))}, 1.0)
                for i in range(40))
    state = tmp_path / "state"
    lines = []
    loop = OnlineLoop(base, str(holdout), model_config_file=tmp_path / "models.config",
                      stream=LogStream(url, "digits"), state_dir=state, min_examples=30,
                      recent_every=0, floor=1.0, log=lines.append)  # floor 1: refused, kept
    assert loop.step()["action"] == "wait" and loop.step()["action"] == "wait"
    idle = [e for e in _events(state) if e["event"] == "idle"]
    assert len(idle) == 1 and "no new labelled examples; 0 of the 30" in idle[0]["reason"]
    store.add_feedback("digits", [(f"r{i}", int(y_tr[i])) for i in range(37)], time=200.0)
    store.add_feedback("digits", [("r37", "seven"), ("r38", 12), ("ghost", 3)], time=201.0)
    result = loop.step()
    assert result["action"] == "rejected" and result["examples"] == 37
    dropped = [e for e in _events(state) if e["event"] == "dropped"]
    assert len(dropped) == 3 and all(e["examples"] == 1 for e in dropped)
    reasons = " | ".join(e["reason"] for e in dropped)
    assert "label(s) 'seven' are not numbers" in reasons
    assert "label(s) [12] are not class indices 0..9" in reasons
    assert "request id(s) 'ghost' the log does not hold" in reasons
    assert sum("event=dropped" in line for line in lines) == 3
    assert loop.step()["action"] == "wait"  # and it goes on
    loop.close()
    store.close()


def test_extra_files_stay_under_assets_extra(tmp_path):
    from tfprod.export.savedmodel import _write_extra_file

    path = _write_extra_file(str(tmp_path), "assets.extra/tfprod/gate.json", b"{}")
    assert (tmp_path / "assets.extra" / "tfprod" / "gate.json").read_bytes() == b"{}"
    assert path.endswith("gate.json")
    for bad in ("../gate.json", "assets.extra/../x", "variables/x", "assets.extra"):
        with pytest.raises(TfprodError, match="expected a relative path under assets.extra/"):
            _write_extra_file(str(tmp_path), bad, b"")
