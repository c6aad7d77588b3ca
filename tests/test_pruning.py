"""Keras 3 magnitude pruning: the schedule, zeros held through training under Adam (model.fit,
XLA and the Trainer), exact final sparsity, accuracy kept, a plain stripped model, bad input."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprod.errors import TfprodError
from tfprod.optimize.pruning import (
    PRUNABLE_LAYERS,
    MagnitudeMask,
    PolynomialDecay,
    magnitude_mask,
    prunable_weights,
    prune,
    prune_low_magnitude,
    sparsity_report,
    strip_pruning,
)
from tfprod.train import Trainer, equal_replica_weights, make_strategy


def _weights(model):
    return [np.array(v) for v in model.weights]


def _kernel_layers(model):
    """The digits CNN's second Conv2D and hidden Dense layer: by default, pruning spares the
    first Conv2D (144 weights) and the "probabilities" head (320), each < 1% of the kernels."""
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)]
    assert [layer.kernel.shape for layer in layers] == [
        (3, 3, 1, 16), (3, 3, 16, 32), (2048, 32), (32, 10)]
    return [layers[1].name, layers[2].name]


@pytest.fixture(scope="module")
def pruned(digits_cnn):
    """{sparsity: (PruneResult, seconds, test accuracy, input model, snapshot of the input before
    prune())}; 50% from arrays, 80% from a tf.data.Dataset with validation data."""
    out = {}
    arrays = (digits_cnn.x_train, digits_cnn.y_train)
    dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(2000, seed=0).batch(64)
    for target, data, validation in ((0.5, arrays, None),
                                     (0.8, dataset, (digits_cnn.x_test, digits_cnn.y_test))):
        model = digits_cnn.fresh()
        before = (_weights(model), int(model.optimizer.iterations),
                  [v.constraint for v in model.weights])
        keras.utils.set_random_seed(1)
        start = time.perf_counter()
        result = prune(model, data, target_sparsity=target, validation_data=validation)
        seconds = time.perf_counter() - start
        accuracy = result.model.evaluate(digits_cnn.x_test, digits_cnn.y_test, verbose=0)[1]
        print(f"\npruned to {target:.0%}: {seconds:.1f} s, test accuracy {accuracy:.4f} "
              f"(unpruned {digits_cnn.accuracy:.4f})")
        out[target] = (result, seconds, accuracy, model, before)
    return out


# -------------------------------------------------------------------------------- schedule

def test_polynomial_decay_values_and_pruning_steps():
    s = PolynomialDecay(0.2, 0.8, begin_step=10, end_step=110, frequency=25)
    values = {t: float(s(t)) for t in (0, 10, 35, 60, 85, 110, 500)}
    # s_t = 0.8 + (0.2 - 0.8) * (1 - (t - 10) / 100) ** 3
    assert values == pytest.approx({0: 0.2, 10: 0.2, 35: 0.8 - 0.6 * 0.75 ** 3,
                                    60: 0.8 - 0.6 * 0.125, 85: 0.8 - 0.6 * 0.25 ** 3,
                                    110: 0.8, 500: 0.8}, abs=1e-6)
    turns = [t for t in range(0, 200) if bool(s.should_prune(t))]
    # Every `frequency` steps from begin_step, plus end_step itself so 0.8 is always reached.
    assert turns == [10, 35, 60, 85, 110]
    assert [t for t in range(60) if PolynomialDecay(0, 0.5, 0, 25, frequency=10)
            .should_prune(t)] == [0, 10, 20, 25]


def test_magnitude_mask_zeroes_exactly_the_smallest_with_ties():
    w = tf.constant([[0.0, 0.0, 1.0, -2.0], [3.0, 0.0, -5.0, 0.5]])
    mask = magnitude_mask(w, 0.5).numpy()
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 0, 1, 0]])
    # round(0.3 * 8) = 2 zeros, the tie among three zeros broken by position.
    np.testing.assert_array_equal(magnitude_mask(w, 0.3).numpy(), [[0, 0, 1, 1], [1, 1, 1, 1]])
    assert magnitude_mask(w, 0.0).numpy().sum() == 8


# ------------------------------------------------------------------- zeros held in training

class ZeroWatch(keras.callbacks.Callback):
    """After every batch: masked entries are exactly zero, and every zero stays zero."""

    def __init__(self, pruned):
        super().__init__()
        self.pruned = pruned
        self.previous = None
        self.batches = 0
        self.max_zeros = 0

    def on_train_batch_end(self, batch, logs=None):
        zeros = [np.array(p.variable) == 0 for p in self.pruned]
        for z, p in zip(zeros, self.pruned, strict=True):
            masked = np.array(p.mask) == 0
            assert z[masked].all(), f"{p.layer}: a masked weight is not zero at batch {batch}"
        if self.previous is not None:
            for z, before, p in zip(zeros, self.previous, self.pruned, strict=True):
                assert z[before].all(), f"{p.layer}: a pruned weight came back at batch {batch}"
        self.previous = zeros
        self.batches += 1
        self.max_zeros = max(self.max_zeros, sum(int(z.sum()) for z in zeros))


def _adam_pruning(digits_cnn, *, jit_compile=False, sparsity=0.6):
    model = digits_cnn.fresh()
    # A fresh Adam (its step count starts at 0) at a high rate: momentum pushes zeroed weights.
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=model.loss,
                  metrics=["accuracy"], jit_compile=jit_compile)
    schedule = PolynomialDecay(0.0, sparsity, begin_step=0, end_step=12, frequency=4)
    return model, prune_low_magnitude(model, schedule)


def _digits_ds(digits_cnn, n=640):
    return tf.data.Dataset.from_tensor_slices(
        (digits_cnn.x_train[:n], digits_cnn.y_train[:n])).batch(64)


def _check_final(pruned, sparsity):
    for p in pruned:
        value = np.array(p.variable)
        assert np.count_nonzero(value == 0) == round(sparsity * value.size), p.layer


def test_zeros_stay_zero_under_adam_with_fit(digits_cnn):
    model, pruned = _adam_pruning(digits_cnn)
    assert [p.layer for p in pruned] == _kernel_layers(model)
    watch = ZeroWatch(pruned)
    model.fit(_digits_ds(digits_cnn), epochs=2, verbose=0, callbacks=[watch])
    assert watch.batches == 20 and int(model.optimizer.iterations) == 20
    _check_final(pruned, 0.6)
    masks = [np.array(p.mask) for p in pruned]
    # More training after the schedule has ended: same masks, zeros still zero.
    model.fit(_digits_ds(digits_cnn), epochs=1, verbose=0, callbacks=[watch])
    for p, mask in zip(pruned, masks, strict=True):
        np.testing.assert_array_equal(np.array(p.mask), mask)
    _check_final(pruned, 0.6)
    # Without the constraint, Adam's momentum moves the zeroed weights at once: the test above
    # would catch a mask that is not applied after every step.
    for p in pruned:
        p.variable.constraint = None
    model.make_train_function(force=True)
    model.fit(_digits_ds(digits_cnn, 64), epochs=1, verbose=0)
    revived = sum(int(np.count_nonzero(np.array(p.variable)[np.array(p.mask) == 0]))
                  for p in pruned)
    assert revived > 0.5 * watch.max_zeros


def test_zeros_stay_zero_under_xla_compiled_fit():
    # The whole train step, optimizer and mask update included, compiled by XLA (what
    # jit_compile="auto" does on a GPU). A small MLP keeps compile time short.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.5, 0, 6, frequency=2))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(320, 16)).astype("float32"), rng.integers(0, 4, 320)
    watch = ZeroWatch(pruned)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[watch])
    assert watch.batches == 20
    _check_final(pruned, 0.5)


def test_zeros_stay_zero_under_adam_with_trainer(digits_cnn):
    model, pruned = _adam_pruning(digits_cnn)
    watch = ZeroWatch(pruned)
    Trainer(model).fit(_digits_ds(digits_cnn), epochs=3, callbacks=[watch])
    assert watch.batches == 30 and int(model.optimizer.iterations) == 30
    _check_final(pruned, 0.6)


def test_zeros_stay_zero_under_mirrored_strategy_with_trainer():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.5, 0, 6, frequency=2))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(320, 16)).astype("float32"), rng.integers(0, 4, 320)
    watch = ZeroWatch(pruned)
    Trainer(model, strategy=strategy).fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=2, callbacks=[watch])
    assert watch.batches == 20
    _check_final(pruned, 0.5)
    assert equal_replica_weights(model)
    for p in pruned:  # the masks, too, are the same on both replicas
        first, second = (r.numpy() for r in p.mask.value.values)
        np.testing.assert_array_equal(first, second)


# --------------------------------------------------------------------------------- prune()

@pytest.mark.parametrize("target", [0.5, 0.8])
def test_prune_reaches_the_target_sparsity_in_every_weight(pruned, target):
    result = pruned[target][0]
    assert [(r.layer, r.weight) for r in result.report] == [
        (name, "kernel") for name in _kernel_layers(result.model)]
    for r in result.report:
        assert abs(r.zeros - target * r.total) <= 1, r
        assert r.sparsity == r.zeros / r.total
    assert len(result.history["loss"]) == 2
    assert set(result.history) == ({"loss", "accuracy"} if target == 0.5 else
                                   {"loss", "accuracy", "val_loss", "val_accuracy"})


def test_pruned_accuracy_stays_close(pruned, digits_cnn):
    assert pruned[0.5][2] >= digits_cnn.accuracy - 0.02
    assert pruned[0.8][2] >= digits_cnn.accuracy - 0.025
    # The last epoch's validation accuracy is the stripped model's test accuracy.
    assert pruned[0.8][0].history["val_accuracy"][-1] == pytest.approx(pruned[0.8][2], abs=1e-6)


def test_prune_leaves_its_input_unchanged(pruned):
    _, _, _, model, (weights, iterations, constraints) = pruned[0.5]
    for a, b in zip(weights, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == iterations
    assert [v.constraint for v in model.weights] == constraints


def test_stripped_model_is_plain_and_round_trips(pruned, digits_cnn, tmp_path):
    result, _, _, original, _ = pruned[0.5]
    model = result.model
    assert model.compiled and model.loss == original.loss
    assert not any(isinstance(v.constraint, MagnitudeMask) for v in model.weights)
    assert [v.path for v in model.weights] == [v.path for v in original.weights]
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom objects
    x = digits_cnn.x_test
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert sparsity_report(loaded) == result.report
    # Stripping a stripped model is a no-op on the values.
    for a, b in zip(_weights(strip_pruning(loaded)), _weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    tflite = tf.lite.TFLiteConverter.from_keras_model(loaded).convert()
    assert len(tflite) > 10_000


# ------------------------------------------------------------------------------- bad input

def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("target", [1.0, -0.1, 1.5])
def test_prune_rejects_a_sparsity_outside_0_1(digits_cnn, target):
    with pytest.raises(TfprodError) as e:
        prune(digits_cnn.model, (digits_cnn.x_train, digits_cnn.y_train),
              target_sparsity=target)
    _one_line(e, f"target_sparsity={target}", "[0, 1)")


def test_prune_rejects_a_model_without_prunable_layers():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
                              keras.layers.Activation("softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((8, 4), "float32"), np.zeros(8, "int64")
    with pytest.raises(TfprodError) as e:
        prune(model, (x, y), target_sparsity=0.5)
    _one_line(e, "no prunable layers")


def test_prune_rejects_an_uncompiled_model_and_bad_data(digits_cnn):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TfprodError) as e:
        prune(model, (np.zeros((8, 4)), np.zeros(8)), target_sparsity=0.5)
    _one_line(e, "not compiled")
    with pytest.raises(TfprodError) as e:
        prune(digits_cnn.model, digits_cnn.x_train, target_sparsity=0.5)
    _one_line(e, "tuple (x, y)")


@pytest.mark.parametrize("begin,end", [(10, 10), (10, 5)])
def test_schedule_rejects_begin_not_before_end(begin, end):
    with pytest.raises(TfprodError) as e:
        PolynomialDecay(0.0, 0.5, begin_step=begin, end_step=end)
    _one_line(e, f"begin_step={begin}", f"end_step={end}")


def test_a_weight_is_pruned_once_and_layers_are_chosen_by_name(digits_cnn):
    model = digits_cnn.fresh()
    every_kernel = prunable_weights(model, lambda layer: isinstance(layer, PRUNABLE_LAYERS))
    assert [v.shape for _, v in every_kernel] == [
        (3, 3, 1, 16), (3, 3, 16, 32), (2048, 32), (32, 10)]
    assert [layer.name for layer, _ in prunable_weights(model)] == _kernel_layers(model)
    schedule = PolynomialDecay(0.0, 0.5, 0, 10)
    # Keras numbers auto-named layers per process ("dense", "dense_183", ...): ask the model.
    (hidden,) = [layer.name for layer in model.layers
                 if isinstance(layer, keras.layers.Dense) and layer.name != "probabilities"]
    pruned = prune_low_magnitude(model, schedule, layers=[hidden])
    assert [(p.layer, p.variable.name) for p in pruned] == [(hidden, "kernel")]
    with pytest.raises(TfprodError) as e:
        prune_low_magnitude(model, schedule, layers=[hidden])
    _one_line(e, "already pruned")
    with pytest.raises(TfprodError) as e:
        prune_low_magnitude(model, schedule, layers=["nope"])
    _one_line(e, "['nope']", "conv2d")
