"""RunningMeanNormalization: exact running statistics, read-only inference, save/load, fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.models.layers import RunningMeanNormalization


def batches(seed=0, sizes=(7, 32, 1, 50), features=3):
    rng = np.random.default_rng(seed)
    return [rng.normal([3.0, -2.0, 100.0], [2.0, 0.5, 10.0], (n, features)).astype(np.float32)
            for n in sizes]


def stats(layer):
    return float(layer.count.numpy()), layer.mean.numpy(), layer.variance.numpy()


def test_running_statistics_equal_numpy_over_every_batch_seen():
    layer = RunningMeanNormalization()
    seen = batches()
    for x in seen:
        layer(x, training=True)
    data = np.concatenate(seen).astype(np.float64)
    count, mean, var = stats(layer)
    assert count == len(data)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, data.var(axis=0), rtol=1e-5, atol=1e-5)


def test_every_axis_but_the_last_counts_as_samples():
    layer = RunningMeanNormalization()
    x = np.random.default_rng(1).normal(size=(4, 5, 2)).astype(np.float32)
    layer(x, training=True)
    flat = x.reshape(-1, 2)
    assert float(layer.count.numpy()) == 20
    np.testing.assert_allclose(layer.variance.numpy(), flat.var(axis=0), rtol=1e-5, atol=1e-6)


def test_training_output_uses_the_statistics_including_the_batch():
    layer = RunningMeanNormalization(epsilon=0.0)
    x = batches()[1]
    y = np.asarray(layer(x, training=True))
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("training", [False, None])
def test_inference_reads_the_statistics_and_leaves_them_unchanged(training):
    layer = RunningMeanNormalization()
    first, *rest = batches()
    layer(first, training=True)
    count, mean, var = stats(layer)
    for x in rest:
        y = np.asarray(layer(x, training=training))
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + layer.epsilon), rtol=1e-5,
                                   atol=1e-5)
    assert stats(layer)[0] == count
    np.testing.assert_array_equal(stats(layer)[1], mean)
    np.testing.assert_array_equal(stats(layer)[2], var)


def test_untrained_layer_is_the_identity_up_to_epsilon():
    layer = RunningMeanNormalization(epsilon=0.0)
    x = batches()[0]
    np.testing.assert_allclose(np.asarray(layer(x)), x)


def test_statistics_are_state_not_trainable_weights():
    layer = RunningMeanNormalization()
    layer.build((None, 3))
    assert layer.trainable_weights == []
    assert {w.name for w in layer.non_trainable_weights} == {"count", "mean", "m2"}


def test_regression_state_persists_across_calls_of_one_tf_function():
    # The seed's bug: state kept as a tensor attribute and rebound in call() never moves.
    layer = RunningMeanNormalization()
    step = tf.function(lambda x: layer(x, training=True))
    for x in batches(sizes=(8, 8, 8)):
        step(tf.constant(x))
    assert float(layer.count.numpy()) == 24


def test_get_config_round_trip():
    layer = RunningMeanNormalization(epsilon=1e-5, name="norm")
    clone = RunningMeanNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.epsilon == 1e-5 and clone.name == "norm"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RunningMeanNormalization)
    assert keras.saving.get_registered_name(RunningMeanNormalization) == (
        "tfprod>RunningMeanNormalization")


def model_with_norm():
    inputs = keras.Input((3,))
    x = RunningMeanNormalization(name="norm")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_keras_save_load_round_trip_keeps_statistics_and_outputs(tmp_path):
    model = model_with_norm()
    for x in batches():
        model(x, training=True)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.get_layer("norm"), RunningMeanNormalization)
    for a, b in zip(stats(model.get_layer("norm")), stats(restored.get_layer("norm")),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    x = batches(seed=9)[3]
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(restored(x)))


def test_fit_one_epoch_updates_statistics_once_per_example():
    keras.utils.set_random_seed(0)
    x = np.concatenate(batches(sizes=(64, 64)))
    y = (x[:, :1] - 3.0) / 2.0
    model = model_with_norm()
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    count, mean, var = stats(model.get_layer("norm"))
    assert count == len(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-5, atol=1e-5)
    model.predict(x, verbose=0)
    assert stats(model.get_layer("norm"))[0] == len(x)


def test_unknown_feature_dimension_is_a_tfprod_error():
    from tfprod.errors import TfprodError

    with pytest.raises(TfprodError, match="last"):
        RunningMeanNormalization().build((None, None))
