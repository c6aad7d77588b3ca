"""`tfprod migrate model` / `migrate check`: TF1 models -> TF2 SavedModels that serve and
compute what the TF1 graph computed."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

GRAPHS = str(Path(__file__).parent / "tf1_graphs.py")

#: name -> (TF1 model relative to the fixture folder, migrate_model keywords, reference keys:
#: signature output -> key in reference.npz)
CASES = {
    "savedmodel": ("mlp_savedmodel", {}, {"probs": "mlp/probs", "logits": "mlp/logits"}),
    "builder_loop": ("loop_savedmodel", {}, {"state": "loop/state"}),
    "frozen": ("mlp_frozen.pb", {"outputs": ["probs", "mlp/logits"]},
               {"probs": "mlp/probs", "mlp_logits": "mlp/logits"}),
    "frozen_loop": ("loop_frozen.pb", {}, {"state": "loop/state"}),
    "checkpoint_graph": ("mlp_ckpt", {"graph": f"{GRAPHS}:mlp_graph"},
                         {"probs": "mlp/probs", "logits": "mlp/logits"}),
    "checkpoint_meta": ("mlp_ckpt", {"outputs": ["probs"]}, {"probs": "mlp/probs"}),
}


def versions_and_leftovers(base):
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


@pytest.fixture(scope="module")
def migrated(tf1_models, tmp_path_factory):
    from tfprod.migrate import migrate_model

    root = tmp_path_factory.mktemp("migrated")
    return root, {name: migrate_model(tf1_models / src, root / name, **kwargs)
                  for name, (src, kwargs, _) in CASES.items()}


def _post(port, name, body):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/v1/models/{name}:predict", json.dumps(body),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_every_fixture_serves_through_tfprod_serve_and_checks_equal(migrated, tf1_models,
                                                                    tmp_path):
    """The issue's bar: each TF1 fixture's migrated model answers `tfprod serve` requests with
    the TF1 graph's outputs, and `migrate check` finds max abs difference <= 1e-5."""
    from tfprod.migrate import check_migration
    from tfprod.serve.process import ServerProcess

    root, results = migrated
    reference = np.load(tf1_models / "reference.npz")
    for name, result in results.items():
        # The CLI's way (a child process) once; the same Session code in this process for the
        # others (the fixtures' graph functions leave global state alone).
        report = check_migration(result.path, in_subprocess=name == "checkpoint_graph")
        assert report.passed, (name, report.rows())
        assert all(o.max_abs is not None and o.max_abs <= 1e-5 for o in report.outputs)
        assert {o.name for o in report.outputs} == set(CASES[name][2])
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
        for name in results) + "}\n")
    server = ServerProcess("unused", root, log=tmp_path / "serve.log")
    server.command = [c for c in server.command if not c.startswith(
        ("--model_name=", "--model_base_path="))] + [f"--model_config_file={config}"]
    with server:
        for name in results:
            status, body = _post(server.rest_port, name, {"inputs": {"x": reference["x"].tolist()}})
            assert status == 200, (name, body)
            outputs = body["outputs"]
            if not isinstance(outputs, dict):  # one output: TF Serving returns it bare
                outputs = {next(iter(CASES[name][2])): outputs}
            assert set(outputs) == set(CASES[name][2]), name
            for key, ref_key in CASES[name][2].items():
                np.testing.assert_allclose(outputs[key], reference[ref_key], atol=1e-5,
                                           err_msg=f"{name}/{key}")


def test_variables_stay_variables_with_the_tf1_values(migrated, tf1_models):
    import tensorflow as tf

    _, results = migrated
    tf1 = tf.train.load_checkpoint(str(tf1_models / "mlp_savedmodel" / "variables" /
                                       "variables"))
    for name in ("savedmodel", "checkpoint_graph", "checkpoint_meta"):
        result = results[name]
        assert result.variables == 4, name
        reader = tf.train.load_checkpoint(os.path.join(result.path, "variables", "variables"))
        values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                  if k.endswith("VARIABLE_VALUE")]
        assert len(values) == 4
        for original in ("mlp/w1", "mlp/b1", "mlp/w2", "mlp/b2"):
            want = tf1.get_tensor(original)
            assert any(v.shape == want.shape and np.array_equal(v, want) for v in values)
    assert results["frozen"].variables == 0  # its weights are constants already


def test_signatures_are_named_after_the_original_tensors(migrated):
    _, results = migrated
    frozen = results["frozen"].signatures["serving_default"]
    assert {k: v["tensor"] for k, v in frozen["inputs"].items()} == {"x": "x:0"}
    assert {k: v["tensor"] for k, v in frozen["outputs"].items()} == {
        "probs": "probs:0", "mlp_logits": "mlp/logits:0"}
    assert frozen["outputs"]["probs"]["shape"] == [None, 3]
    loop = results["builder_loop"]
    assert list(loop.signatures) == ["serving_default"]  # its only signature, "loop"
    record = json.loads((Path(loop.path) / "assets.extra" / "tfprod" /
                         "migration.json").read_text())
    assert record["signatures"]["serving_default"]["signature_def"] == "loop"
    assert record["source"]["kind"] == "savedmodel"
    assert (Path(loop.path) / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert [p.name for p in Path(loop.base_path).iterdir()] == ["1"]


def test_check_fails_against_a_model_with_other_weights(migrated, tf1_models):
    from tfprod.migrate import check_migration

    _, results = migrated
    report = check_migration(results["frozen"].path, tf1_models / "mlp_other.pb",
                             in_subprocess=False)
    assert not report.passed and report.outputs[0].max_abs > 1e-3
    assert "FAIL" in report.summary and "beyond tolerance" in report.rows()[0][-1]


def test_check_takes_given_inputs_and_refuses_wrong_ones(migrated, tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.migrate import check_migration

    _, results = migrated
    x = np.linspace(-3, 3, 20, dtype=np.float32).reshape(5, 4)
    np.savez(tmp_path / "good.npz", x=x)
    report = check_migration(results["frozen_loop"].path, inputs=tmp_path / "good.npz",
                             in_subprocess=False)
    assert report.passed and report.examples == 5 and report.inputs_from.endswith("good.npz")
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(TfprodError, match=r"holds \['images'\]; the signature's inputs are "
                                          r"\['x'\]"):
        check_migration(results["frozen_loop"].path, inputs=tmp_path / "bad.npz")


def test_compare_tolerances():
    from tfprod.migrate.check import compare

    a = np.array([[1.0, 2.0], [0.0, -4.0]], np.float32)
    assert compare("y", "y:0", a + 5e-6, a, atol=1e-5, rtol=0).passed
    far = compare("y", "y:0", a + 2e-5, a, atol=1e-5, rtol=0)
    assert not far.passed and far.max_abs == pytest.approx(2e-5, rel=1e-2)
    assert far.max_rel == pytest.approx(2e-5, rel=1e-2)  # |diff| / |1.0|, zeros left out
    assert compare("y", "y:0", a * 1.001, a, atol=0, rtol=1e-2).passed
    assert not compare("y", "y:0", a[:1], a, atol=1, rtol=0).passed
    nan = np.array([np.nan, 1.0])
    assert compare("y", "y:0", nan, nan, atol=0, rtol=0).passed
    assert not compare("y", "y:0", np.array([0.0, 1.0]), nan, atol=1, rtol=0).passed
    ints = np.array([1, 2, 3])
    assert compare("k", "k:0", ints, ints, atol=0, rtol=0).passed
    assert not compare("k", "k:0", ints + 1, ints, atol=0, rtol=0).passed
    words = np.array([b"a", b"b"])
    assert compare("w", "w:0", words, words, atol=0, rtol=0).max_abs is None


def test_sample_inputs_follow_the_signature():
    import tensorflow as tf

    from tfprod.errors import TfprodError
    from tfprod.migrate.tensors import sample_inputs, signature_key, signature_keys

    feeds = sample_inputs({"x": tf.TensorSpec([None, 4], tf.float32),
                           "k": tf.TensorSpec([None, None], tf.int32),
                           "m": tf.TensorSpec([2], tf.bool)}, batch=3)
    assert feeds["x"].shape == (3, 4) and feeds["x"].dtype == np.float32
    assert feeds["k"].shape == (3, 4) and feeds["k"].min() >= 0 and feeds["k"].max() < 10
    assert feeds["m"].shape == (2,) and feeds["m"].dtype == bool
    with pytest.raises(TfprodError, match="pass --inputs"):
        sample_inputs({"s": tf.TensorSpec([None], tf.string)})
    assert signature_key("scope/dense/BiasAdd:0") == "scope_dense_BiasAdd"
    assert signature_key("split:1") == "split_1" and signature_key("0ops") == "t_0ops"
    assert signature_keys(["a/b:0", "a_b:0"]) == {"a/b:0": "a_b", "a_b:0": "a_b_2"}


# ------------------------------------------------------------------------ bad input


def test_bad_models_are_one_clear_error_and_leave_nothing(tf1_models, tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.migrate import migrate_model

    base = tmp_path / "base"
    junk = tmp_path / "junk.pb"
    junk.write_bytes(os.urandom(64) + b"\xff" * 32)
    cases = [
        (junk, {}, r"junk.pb is not a GraphDef"),
        (tf1_models / "mlp_savedmodel" / "saved_model.pb", {},
         r"saved_model.pb is not a GraphDef .*pass its folder instead"),
        (tf1_models / "mlp_frozen.pb", {"outputs": ["prob"]},
         r"output tensor 'prob:0' does not exist in .*mlp_frozen.pb; candidates \(tensors "
         r"nothing consumes\): probs:0.*close names: probs"),
        (tf1_models / "mlp_frozen.pb", {"inputs": ["images"], "outputs": ["probs"]},
         r"input tensor 'images:0' does not exist .*placeholders: x:0"),
        (tf1_models / "mlp_ckpt", {"graph": f"{GRAPHS}:mlp_graph_wrong_shape"},
         r"checkpoint .*model.ckpt-20 does not match the graph of .*: variable mlp/w1 is "
         r"\[4, 9\] in the graph but \[4, 8\] in the checkpoint"),
        (tf1_models / "mlp_ckpt", {"graph": f"{GRAPHS}:loop_graph"},
         r"does not match .*: the graph's variables loop/w are not in it \(it holds "),
        (tf1_models / "mlp_ckpt", {"graph": f"{GRAPHS}:no_such_function"},
         r"has no function 'no_such_function'"),
        (tf1_models / "mlp_savedmodel", {"outputs": ["probs"]},
         r"--inputs/--outputs choose tensors of a frozen graph or a checkpoint"),
        (tf1_models / "mlp_savedmodel", {"tags": ["train"]},
         r"has no MetaGraph tagged \['train'\]; its tags are \[\['serve'\]\]"),
        (tf1_models / "missing.pb", {}, r"does not exist"),
        (tmp_path, {}, r"is a folder without saved_model.pb or a checkpoint"),
    ]
    for path, kwargs, message in cases:
        with pytest.raises(TfprodError, match=message):
            migrate_model(path, base, **kwargs)
        assert versions_and_leftovers(base) == [], (path, kwargs)


def test_an_existing_version_is_kept_unless_overwrite(tf1_models, tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.migrate import migrate_model

    base = tmp_path / "m"
    first = migrate_model(tf1_models / "loop_frozen.pb", base, version=3)
    with pytest.raises(TfprodError, match="version 3 already exists"):
        migrate_model(tf1_models / "mlp_frozen.pb", base, version=3)
    assert "state" in first.signatures["serving_default"]["outputs"]
    again = migrate_model(tf1_models / "mlp_frozen.pb", base, version=3, overwrite=True)
    assert "probs" in again.signatures["serving_default"]["outputs"]
    assert versions_and_leftovers(base) == ["3"]
