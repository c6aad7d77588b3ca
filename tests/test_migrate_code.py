"""`tfprod migrate code`: tf_upgrade_v2 + tfprod's Keras 3 rules on a corpus of TF1 source."""

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).parent / "data" / "tf1_corpus"
_EXPECT = re.compile(r"# expect: (.*)$")


def planted(root=CORPUS):
    """(file, line, rule, action) of every `# expect: rule=action` marker in the corpus."""
    out = set()
    for path in sorted(root.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            m = _EXPECT.search(line)
            if m:
                for item in m.group(1).split(","):
                    rule, action = item.strip().split("=")
                    out.add((path.relative_to(root).as_posix(), i, rule, action))
    return out


def tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    from tfprod.migrate import migrate_code

    before = tree_digest(CORPUS)
    out = tmp_path_factory.mktemp("migrated") / "corpus"
    report = migrate_code(CORPUS, out)
    assert tree_digest(CORPUS) == before  # SRC is never modified
    return out, report


# ------------------------------------------------------------------------ the corpus


def test_report_names_every_planted_breakage_with_its_line_and_nothing_else(migrated):
    _, report = migrated
    got = {(f.file, f.line, f.rule, f.action) for f in report.findings}
    want = planted()
    assert want - got == set(), "planted breakages the report misses"
    assert got - want == set(), "findings on lines without a marker"
    rules = {rule for _, _, rule, _ in want}
    assert rules >= {"layers", "rnn-cell", "contrib", "keras", "variables", "session",
                     "optimizer", "control-flow", "queues", "estimator", "tf_upgrade_v2"}


def test_each_finding_says_what_breaks_why_and_the_replacement(migrated):
    _, report = migrated
    for f in report.findings:
        assert f.what and f.why and f.replacement and f.action in ("auto", "manual", "advice")
    by_line = {(f.file, f.line, f.rule): f for f in report.findings}
    dense = by_line[("mlp_session.py", 11, "layers")]
    assert "not available with Keras 3" in dense.what
    assert "keras.layers.Dense" in dense.replacement
    assert by_line[("estimator_model.py", 6, "estimator")].what.endswith("removed in TF 2.16")
    placeholder = by_line[("mlp_session.py", 5, "session")]
    assert "input_signature" in placeholder.replacement
    decay = next(f for f in report.findings if f.symbol.endswith("(decay=...)"))
    assert "InverseTimeDecay" in decay.replacement and decay.action == "manual"


def test_tree_is_mirrored_and_non_python_files_are_copied(migrated):
    out, report = migrated
    assert (out / "README.md").read_bytes() == (CORPUS / "README.md").read_bytes()
    assert (out / "models" / "__init__.py").exists() and (out / "models" / "rnn.py").exists()
    assert report.copied == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.py")) == sorted(
        p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.py"))
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging left


def test_rewritten_lines_are_exactly_the_safe_rewrites(migrated):
    out, _ = migrated
    text = (out / "stateless_layers.py").read_text()
    assert 'tf.keras.layers.MaxPooling2D(2, 2, padding="same")(images)' in text
    assert "tf.keras.layers.AveragePooling1D(3, 1)(sequence)" in text
    assert "tf.keras.layers.Flatten()(images)" in text
    assert "tf.keras.layers.Dropout(0.5)(values, training=False)" in text
    assert "tf.layers.dropout(values, 0.5, training=is_training)" in text  # not safe: kept
    keras_ok = (out / "keras_ok.py").read_text()
    assert "tf.keras.layers.Dense(4" in keras_ok and "compat.v1.keras.layers" not in keras_ok
    assert "tf.keras.optimizers.Adam(learning_rate=0.01)" in keras_ok
    # tf_upgrade_v2's own renames are kept: tf.Session -> tf.compat.v1.Session
    assert "with tf.compat.v1.Session() as sess:" in (out / "mlp_session.py").read_text()
    # and its rewrite of contrib's l2_regularizer (a line with no finding, counted rewritten)
    assert "tf.keras.regularizers.l2(0.5 * (0.01))" in (out / "contrib_slim.py").read_text()


def test_summary_counts_lines(migrated):
    _, report = migrated
    t = report.totals()
    assert t["unchanged"] + t["rewritten"] + t["need_work"] == t["code_lines"]
    clean = next(r for r in report.files if r.path == "clean_tf2.py")
    assert (clean.rewritten, clean.need_work, clean.findings) == (0, 0, [])
    assert clean.unchanged == clean.code_lines == 8
    stateless = next(r for r in report.files if r.path == "stateless_layers.py")
    assert (stateless.rewritten, stateless.need_work) == (4, 1)
    assert re.fullmatch(r"12 Python files, \d+ code lines: \d+ run unchanged, \d+ rewritten, "
                        r"\d+ need work \(\d+ findings: \d+ auto, \d+ manual, 2 advice\)",
                        report.summary)


def test_markdown_and_json_reports(migrated):
    _, report = migrated
    md = report.to_markdown()
    assert md.count("\n| ") >= len(report.findings)
    assert "| mlp_session.py:11 | layers | manual |" in md
    assert "modern_syntax.py" in md and "could not process" in md
    data = json.loads(json.dumps(report.to_json()))
    assert data["totals"]["files"] == 12
    assert {(f["file"], f["line"], f["rule"], f["action"]) for f in data["findings"]} == planted()
    upgrade = next(f for f in data["files"] if f["path"] == "mlp_session.py")
    assert any("Renamed 'tf.Session'" in e["message"] for e in upgrade["tf_upgrade_v2_log"])


# ------------------------------------------------------------------------ equivalence


def test_stateless_rewrites_compute_what_tf_nn_computes(migrated):
    """The TF1 functions fail on TF 2.21 + Keras 3; the rewritten ones equal the raw ops."""
    import tensorflow as tf

    out, _ = migrated
    original = load_module(CORPUS / "stateless_layers.py", "tf1_stateless")
    with pytest.raises(AttributeError, match="not available with Keras 3|has no attribute"):
        original.flat(tf.zeros([1, 2, 2, 1]))
    new = load_module(out / "stateless_layers.py", "migrated_stateless")
    images = tf.random.normal([2, 5, 5, 3], seed=1)
    sequence = tf.random.normal([2, 7, 3], seed=2)
    np.testing.assert_array_equal(new.pool(images), tf.nn.max_pool2d(images, 2, 2, "SAME"))
    np.testing.assert_allclose(new.average(sequence),
                               tf.nn.avg_pool1d(sequence, 3, 1, "VALID"), rtol=1e-6)
    np.testing.assert_array_equal(new.flat(images), tf.reshape(images, [2, -1]))
    np.testing.assert_array_equal(new.no_dropout(images), images)


def test_keras_rewrites_run_where_the_original_raises(migrated):
    out, _ = migrated
    with pytest.raises(ValueError, match="lr"):
        load_module(CORPUS / "keras_ok.py", "tf1_keras_ok")
    module = load_module(out / "keras_ok.py", "migrated_keras_ok")
    assert float(module.optimizer.learning_rate) == pytest.approx(0.01)
    assert module.layer.units == 4 and module.init.seed == 1


# ------------------------------------------------------------------------ units


def test_rules_pick_the_most_specific_name():
    from tfprod.migrate.rules import rule_for

    assert rule_for("tf.contrib.rnn.LSTMCell").id == "rnn-cell"
    assert rule_for("tf.contrib.slim.conv2d").id == "contrib"
    assert rule_for("tf.compat.v1.keras.estimator.model_to_estimator").id == "estimator"
    assert rule_for("tf.compat.v1.get_variable").id == "variables"
    assert rule_for("tf.compat.v1.get_variable_scope").id == "variables"
    assert rule_for("tf.compat.v1.placeholder_with_default").id == "session"
    assert rule_for("tf.compat.v1.train.AdamOptimizer").id == "optimizer"
    assert rule_for("tf.compat.v1.layers.dense").replacement_for(
        "tf.compat.v1.layers.dense").startswith("keras.layers.Dense")
    assert rule_for("tf.nn.relu") is None and rule_for("tf.compat.v1.placeholders") is None


def test_import_aliases_resolve_to_one_spelling():
    import ast

    from tfprod.migrate.names import aliases, dotted

    tree = ast.parse("import tensorflow.compat.v1 as tf\nfrom tensorflow.contrib import slim\n"
                     "from tensorflow.compat.v2 import keras as k\nimport tensorflow\n"
                     "tf.layers.dense\nslim.conv2d\nk.layers.Dense\ntensorflow.compat.v1.Session")
    names = aliases(tree)
    exprs = [n.value for n in tree.body[4:]]
    assert [dotted(e, names) for e in exprs] == [
        "tf.compat.v1.layers.dense", "tf.contrib.slim.conv2d", "tf.keras.layers.Dense",
        "tf.compat.v1.Session"]


def test_keras_lookup_and_keywords():
    from tfprod.migrate import keras_api

    assert keras_api.lookup("tf.keras.layers.Dense")[0] is not None
    assert keras_api.lookup("tf.compat.v1.keras.layers.CuDNNLSTM")[0] is None
    obj, reason = keras_api.lookup("tf.keras.optimizers.legacy.Adam")
    assert obj is None and "legacy" in reason
    names, closed = keras_api.accepted_keywords(keras_api.lookup("tf.keras.layers.Dense")[0])
    assert closed and {"units", "activation", "name", "dtype", "input_shape"} <= names
    names, closed = keras_api.accepted_keywords(keras_api.lookup("keras.optimizers.Adam")[0])
    assert closed and "learning_rate" in names and "lr" not in names


def test_nested_edits_apply_inner_first():
    from tfprod.migrate.source import Edit, apply_edits

    text = "f(g(x))"
    out, left = apply_edits(text, [Edit(0, 7, "F"), Edit(2, 6, "G")])
    assert out == "f(G)" and left == [Edit(0, 7, "F")]


def test_unicode_columns_map_to_characters(tmp_path):
    from tfprod.migrate import migrate_code

    src = tmp_path / "u.py"
    src.write_text('import tensorflow as tf\ns = "é€"; y = tf.layers.flatten(tf.zeros([1, 2]))\n')
    migrate_code(src, tmp_path / "out.py")
    assert (tmp_path / "out.py").read_text().splitlines()[1] == (
        's = "é€"; y = tf.keras.layers.Flatten()(tf.zeros([1, 2]))')


# ------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_error_and_nothing_is_written(tmp_path):
    from tfprod.errors import TfprodError
    from tfprod.migrate import migrate_code

    src = tmp_path / "src"
    src.mkdir()
    (src / "good.py").write_text("import tensorflow as tf\nx = tf.Session()\n")
    (src / "notes.txt").write_text("not python")
    with pytest.raises(TfprodError, match=r"notes.txt is not a Python file"):
        migrate_code(src / "notes.txt", tmp_path / "a.py")
    with pytest.raises(TfprodError, match=r"DST .* is inside SRC"):
        migrate_code(src, src / "out")
    with pytest.raises(TfprodError, match=r"DST .* is inside SRC"):
        migrate_code(src / "good.py", src / "good.py")
    with pytest.raises(TfprodError, match=r"--report .* is inside SRC"):
        migrate_code(src, tmp_path / "out", report_path=src / "r.md")
    (tmp_path / "taken").mkdir()
    with pytest.raises(TfprodError, match="exists; pass --overwrite"):
        migrate_code(src, tmp_path / "taken")
    (src / "py2.py").write_text("import tensorflow as tf\n\nprint 'hello'\n")
    with pytest.raises(TfprodError, match=r"py2.py:3:\d+: does not parse as Python 3"):
        migrate_code(src, tmp_path / "out")
    (src / "py2.py").write_bytes(b"\x00\x01binary")
    with pytest.raises(TfprodError, match="py2.py is not Python source text"):
        migrate_code(src, tmp_path / "out")
    with pytest.raises(TfprodError, match="does not exist"):
        migrate_code(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "taken"]  # no staging left
    assert (src / "good.py").read_text() == "import tensorflow as tf\nx = tf.Session()\n"


def test_overwrite_replaces_the_whole_destination(tmp_path):
    from tfprod.migrate import migrate_code

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("import tensorflow as tf\nx = tf.layers.flatten(y)\n")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.py").write_text("old")
    migrate_code(src, dst, overwrite=True)
    assert sorted(os.listdir(dst)) == ["a.py"]
    assert "tf.keras.layers.Flatten()(y)" in (dst / "a.py").read_text()
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]
