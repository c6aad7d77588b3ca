"""One architecture as Sequential, Functional and subclassed: capabilities found by doing,
identical outputs with shared weights, save/reload/export of each, and clear export errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.export import export_saved_model
from tfprod.models.styles import (
    INPUT_SHAPE,
    STYLES,
    SubclassedClassifier,
    build_style,
    capabilities,
    share_weights,
)

X = np.random.default_rng(0).uniform(0, 16, (32, *INPUT_SHAPE)).astype("float32")


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    built = {s: build_style(s, compile=s == "functional") for s in STYLES}
    y = np.random.default_rng(1).integers(0, 10, len(X))
    built["functional"].fit(X, y, epochs=1, verbose=0)
    share_weights(built["functional"], built["sequential"], built["subclassed"])
    return built


def test_the_capability_table_is_what_each_style_really_does():
    from tfprod.commands.models import EXPORT_PROBES

    table = capabilities(EXPORT_PROBES)
    cell = {(name, s): probe.ok for name, by in table.items() for s, probe in by.items()}
    for style in STYLES:
        assert cell[(".keras save + reload, same outputs", style)]
        assert cell[("export, no input signature, after 1 call", style)]
    for name in ("summary before any data", "symbolic layer graph (inputs/outputs)",
                 "export, no input signature, unbuilt"):
        assert [cell[(name, s)] for s in STYLES] == [True, True, False]
    assert [cell[("several inputs / branches", s)] for s in STYLES] == [False, True, True]
    assert [cell[("Python control flow in call()", s)] for s in STYLES] == [False, False, True]
    assert "never been called or built" in table["export, no input signature, unbuilt"][
        "subclassed"].note


def test_three_styles_with_shared_weights_give_identical_outputs(models):
    want = models["functional"].predict(X, verbose=0)
    for style in STYLES:
        np.testing.assert_array_equal(models[style].predict(X, verbose=0), want)
    # Python control flow in call(): mirror averaging changes the answer, as written.
    mirrored = SubclassedClassifier(mirror_average=True)
    mirrored(X[:1])
    mirrored.set_weights(models["functional"].get_weights())
    expected = (want + models["functional"].predict(X[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(mirrored.predict(X, verbose=0), expected, rtol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_each_style_saves_reloads_and_exports(models, style, tmp_path):
    model = models[style]
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(reloaded.predict(X, verbose=0), model.predict(X, verbose=0))
    result = export_saved_model(model, tmp_path / "base", reference_data=X)
    assert result.signature["inputs"] == {"image": {"dtype": "float32",
                                                    "shape": [None, *INPUT_SHAPE]}}
    name = "probabilities" if style != "subclassed" else "output_0"
    served = tf.saved_model.load(result.path).signatures["serving_default"](
        image=tf.constant(X))[name].numpy()
    np.testing.assert_allclose(served, model.predict(X, verbose=0), rtol=1e-5, atol=1e-6)


def test_unbuilt_subclassed_model_fails_export_with_one_clear_line(tmp_path):
    with pytest.raises(TfprodError, match="never been called or built, so its input shape is "
                                          "unknown; call it once on a batch"):
        export_saved_model(SubclassedClassifier(), tmp_path / "base")
    assert not (tmp_path / "base").exists() or not any((tmp_path / "base").iterdir())


class _Untraceable(keras.Model):
    """Works eagerly, but branches in Python on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        if float(keras.ops.sum(x)) > 0:
            return self.dense(x)
        return -self.dense(x)


def test_untraceable_subclassed_model_fails_export_with_one_clear_line(tmp_path):
    model = _Untraceable()
    model(np.ones((2, 3), "float32"))  # eager: works
    with pytest.raises(TfprodError, match="cannot be traced into a serving graph: its call\\(\\) "
                                          "raised") as e:
        export_saved_model(model, tmp_path / "base")
    assert "keras.ops.cond" in str(e.value) and "\n" not in str(e.value)
