"""The DCGAN and its custom loop: each tape moves only its own player; a short run's outputs."""

import glob
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from rich.console import Console

from tfprod.errors import TfprodError
from tfprod.models.gan import make_discriminator, make_generator
from tfprod.train.gan import (
    GRID_COLUMNS,
    GRID_PAD,
    GANTrainer,
    digits_classifier,
    sample_quality,
    save_grid,
    train_gan,
)


def quiet():
    return Console(file=io.StringIO(), width=120)


def snapshot(model):
    return [w.numpy().copy() for w in model.weights]


def changed(before, model):
    return [not np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True)]


def test_models_map_noise_to_images_to_logits_and_stay_tiny():
    g, d = make_generator(latent_dim=8, image_size=16), make_discriminator(16)
    images = g(np.zeros((3, 8), np.float32))
    assert images.shape == (3, 16, 16, 1)
    assert np.all(np.abs(np.asarray(images)) <= 1.0)
    assert d(images).shape == (3, 1)
    assert g.count_params() < 100_000 and d.count_params() < 100_000


@pytest.mark.parametrize("kwargs", [{"image_size": 18}, {"latent_dim": 0}, {"image_size": 4}])
def test_generator_rejects_bad_shapes(kwargs):
    with pytest.raises(TfprodError, match="expected"):
        make_generator(**kwargs)


@pytest.fixture
def trainer():
    keras.utils.set_random_seed(0)
    return GANTrainer(make_generator(8, 16), make_discriminator(16), seed=0)


@pytest.fixture
def real():
    return tf.constant(np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 1)), tf.float32)


def test_generator_step_moves_the_generator_only(trainer):
    g0, d0 = snapshot(trainer.generator), snapshot(trainer.discriminator)
    g_loss = trainer.generator_step(16)
    assert np.isfinite(float(g_loss))
    assert all(changed(g0, trainer.generator)[i] for i, w in enumerate(trainer.generator.weights)
               if w.trainable)
    assert not any(changed(d0, trainer.discriminator))


def test_discriminator_step_moves_the_discriminator_only(trainer, real):
    g0, d0 = snapshot(trainer.generator), snapshot(trainer.discriminator)
    d_loss = trainer.discriminator_step(real)
    assert np.isfinite(float(d_loss))
    assert all(changed(d0, trainer.discriminator))
    # Only batch-norm moving statistics (non-trainable state) move in the generator.
    assert not any(c for c, w in zip(changed(g0, trainer.generator), trainer.generator.weights,
                                     strict=True) if w.trainable)


def test_train_step_updates_both_players_with_finite_losses(trainer, real):
    g0, d0 = snapshot(trainer.generator), snapshot(trainer.discriminator)
    for _ in range(2):
        d_loss, g_loss = trainer.train_step(real)
    assert np.isfinite([float(d_loss), float(g_loss)]).all()
    assert any(changed(g0, trainer.generator)) and all(changed(d0, trainer.discriminator))
    assert trainer.d_optimizer.iterations.numpy() == trainer.g_optimizer.iterations.numpy() == 2


def test_save_grid_lays_images_out_in_rows_of_columns(tmp_path):
    from PIL import Image

    images = np.full((10, 16, 16, 1), -1.0, np.float32)
    images[3] = 1.0
    grid = save_grid(images, tmp_path / "g.png", columns=4, pad=2)
    with Image.open(tmp_path / "g.png") as png:
        assert png.size == (4 * 18 + 2, 3 * 18 + 2) and png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), grid)
    assert grid[2:18, 2 + 3 * 18:2 + 3 * 18 + 16].min() == 255  # image 3: row 0, column 3
    assert grid[0, 0] == 128 and grid[2, 2] == 0


class FakeClassifier:
    """Predicts class k with certainty for an image whose first pixel is k / 10 in [-1, 1]."""

    def __call__(self, pixels, training=False):
        k = np.round(pixels[:, 0, 0, 0] / 255 * 10).astype(int) % 10
        return np.eye(10, dtype=np.float32)[k]


def test_sample_quality_entropy_is_zero_for_one_class_and_log2_10_for_all():
    collapsed = np.full((50, 4, 4, 1), -1.0, np.float32)
    assert sample_quality(FakeClassifier(), collapsed) == {"confidence": 1.0,
                                                           "class_entropy": 0.0}
    diverse = np.repeat(collapsed, 2, axis=0)
    diverse[:, 0, 0, 0] = np.repeat(np.arange(10) / 10 * 2 - 1, 10)
    assert sample_quality(FakeClassifier(), diverse)["class_entropy"] == pytest.approx(
        np.log2(10))


@pytest.mark.parametrize("kwargs,match", [({"epochs": 0}, "epochs=0"),
                                          ({"latent_dim": 0}, "latent_dim=0"),
                                          ({"batch_size": 0}, "batch_size=0"),
                                          ({"num_images": 10}, "num_images=10")])
def test_train_gan_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(TfprodError, match=match):
        train_gan(tmp_path, console=quiet(), **kwargs)


def test_train_gan_rejects_an_output_folder_that_is_a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(TfprodError, match="is a file"):
        train_gan(path, epochs=1, console=quiet())


def event_tags(logdir):
    tags = set()
    for f in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.slow
def test_a_short_run_writes_samples_and_logs_and_beats_untrained_and_noise(tmp_path):
    from PIL import Image

    epochs = 10  # ~230 steps: the fewest here after which samples clearly beat the baselines
    history = train_gan(tmp_path, epochs=epochs, seed=0, console=quiet())

    assert history["epoch"] == list(range(1, epochs + 1))
    assert np.isfinite(history["d_loss"]).all() and np.isfinite(history["g_loss"]).all()
    assert 0.1 <= history["confidence"][-1] <= 1.0
    assert 0.0 <= history["class_entropy"][-1] <= np.log2(10) + 1e-9
    side = GRID_COLUMNS * (16 + GRID_PAD) + GRID_PAD
    assert [os.path.basename(p) for p in history["samples"]] == [
        f"samples_epoch_{e:03d}.png" for e in range(1, epochs + 1)]
    for path in history["samples"]:
        with Image.open(path) as png:
            png.verify()
        with Image.open(path) as png:
            assert png.size == (side, side) and png.mode == "L"
    assert {"d_loss", "g_loss", "confidence", "class_entropy", "samples",
            "hyperparameters"} <= event_tags(history["logdir"])

    # The judge is cached, and it recognises real digits: confident and all ten classes.
    cached = tmp_path / "digits_classifier_16.keras"
    assert cached.exists() and history["classifier_accuracy"] > 0.9
    from tfprod.data.sample import load_digits

    classifier, accuracy = digits_classifier(cached, 16)
    assert accuracy == pytest.approx(history["classifier_accuracy"])
    _, (x_test, _) = load_digits(16)
    real = sample_quality(classifier, x_test / 127.5 - 1.0)
    assert real["confidence"] > 0.9 and real["class_entropy"] > 3.2

    # Training beats the same generator untrained (which has collapsed onto one class) and
    # uniform noise: here 0.76 confidence vs 0.54 and 0.56; 2.9 bits of classes vs 0.
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1000, 32)).astype(np.float32)
    keras.utils.set_random_seed(0)
    untrained = sample_quality(classifier, make_generator(32, 16)(z, training=False))
    noise = sample_quality(classifier, rng.uniform(-1, 1, (1000, 16, 16, 1)))
    trained = {k: history[k][-1] for k in ("confidence", "class_entropy")}
    for baseline in (untrained, noise):
        assert trained["confidence"] > baseline["confidence"] + 0.1, (trained, baseline)
    assert trained["class_entropy"] > untrained["class_entropy"] + 1.5, (trained, untrained)
    assert trained["class_entropy"] > 2.0  # most of the ten digits come out
