"""Shared fixtures: TensorFlow quiet, sample data written once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

# Two logical CPUs for the whole session, set before TensorFlow initializes its devices, so
# that MirroredStrategy runs two real replicas in-process on this GPU-less machine.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory):
    """The sample digits in every format: {"png": {"train": ..., "test": ...}, ...}."""
    from tfprod.data import write_sample

    root = tmp_path_factory.mktemp("digits")
    return {fmt: write_sample(root / fmt, fmt) for fmt in ("png", "jpeg", "tfrecord", "csv")}


def make_image_folder(root, counts, *, size=(12, 10), fmt="png"):
    """Writes ``root/<class>/<i>.<ext>`` where every pixel of image i equals its global index.

    Returns {path: (index, class_index)} so tests can tie each decoded image to its file.
    """
    ext = {"png": "png", "jpeg": "jpg"}[fmt]
    index = {}
    i = 0
    for c, n in enumerate(counts):
        folder = os.path.join(root, f"class_{c}")
        os.makedirs(folder, exist_ok=True)
        for _ in range(n):
            value = (i * 3) % 256 if fmt == "png" else (i * 40) % 256
            img = np.full((*size, 3), value, np.uint8)
            path = os.path.join(folder, f"img_{i:04d}.{ext}")
            Image.fromarray(img).save(path, **({"quality": 100} if fmt == "jpeg" else {}))
            index[path] = (i, c)
            i += 1
    return index


class TrainedDigits:
    """A small CNN trained on the sample digits, shared by the whole session.

    ``model`` is shared: a test that changes weights or state must work on ``fresh()``, a copy
    loaded from ``keras_path`` (architecture, weights and optimizer state).
    """

    def __init__(self, model, keras_path, train, test, accuracy):
        self.model = model
        self.keras_path = keras_path
        (self.x_train, self.y_train), (self.x_test, self.y_test) = train, test
        self.accuracy = accuracy

    def fresh(self):
        import keras

        return keras.saving.load_model(self.keras_path)


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory):
    """``TrainedDigits``: tfprod's small_cnn, 32x32x1 uint8 digits in, 10 softmax outputs."""
    import keras

    from tfprod.data.sample import load_digits
    from tfprod.models import small_cnn

    keras.utils.set_random_seed(0)
    train, test = load_digits(32)
    model = small_cnn((32, 32, 1), 10, filters=16, dense=32)
    model.fit(train[0], train[1], batch_size=64, epochs=6, verbose=0)
    accuracy = float(model.evaluate(test[0], test[1], verbose=0)[1])
    assert accuracy > 0.9, f"the shared digits CNN reached only {accuracy:.3f} test accuracy"
    path = tmp_path_factory.mktemp("digits_cnn") / "digits_cnn.keras"
    model.save(path)
    return TrainedDigits(model, str(path), train, test, accuracy)


@pytest.fixture(scope="session")
def tf1_models(tmp_path_factory):
    """TF1 models written by TF1 code in a child process with TF1 behavior (reference
    variables, v1 control flow): see tests/scripts/make_tf1_models.py."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("tf1_models")
    script = os.path.join(os.path.dirname(__file__), "scripts", "make_tf1_models.py")
    done = subprocess.run([sys.executable, script, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def own_tables(tmp_path_factory):
    """The user's own tables (tests/tables.py): name -> {"csv": path, "tfrecord": folder}."""
    from tables import write_tables

    return write_tables(tmp_path_factory.mktemp("tables"))


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on a loopback port for this session (``tests/postgres_server``):
    yields the server (``.url``, ``.stop()``, ``.start()``); always stopped at the end."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
