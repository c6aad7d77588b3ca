"""The variants of one trained Keras model: each written to disk, loaded back, ready to run.

========================  ==========================================================  ==========
name                      what                                                        file
========================  ==========================================================  ==========
``keras``                 the model as given                                          .keras
``xla``                   a SavedModel whose serving function is XLA-compiled         folder
``keras-int8``            Keras' own ``model.quantize("int8")`` (Dense-like layers)   .keras
``float32``               LiteRT, float32                                             .tflite
``dynamic``               LiteRT, int8 weights, float activations                     .tflite
``float16``               LiteRT, float16 weights                                     .tflite
``int8``                  LiteRT, full integer (calibrated on training data)          .tflite
``int8-io``               ``int8`` with int8 input and output tensors                 .tflite
``prunedNN-<litert>``     magnitude-pruned to NN% sparsity, fine-tuned, then a        .tflite
                          LiteRT kind above, e.g. ``pruned80-int8``
========================  ==========================================================  ==========
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.export.keras_files import save_keras
from tfprod.export.litert import (
    LiteRTConverter,
    LiteRTModel,
    LiteRTUnsupported,
    input_shapes,
    write_atomic,
)
from tfprod.export.predict import KerasPredictor, Predictor, SavedModelPredictor

LITERT_VARIANTS = ("float32", "dynamic", "float16", "int8", "int8-io")
DEFAULT_VARIANTS: tuple[str, ...] = ("keras", "xla", "keras-int8", *LITERT_VARIANTS,
                                     "pruned50-int8", "pruned80-int8")
_PRUNED = re.compile(r"pruned(\d{1,2})-(" + "|".join(LITERT_VARIANTS) + ")")


class VariantRefused(TfprodError):
    """One variant cannot be built for this model (the others may be): the reason."""


@dataclasses.dataclass
class Variant:
    """One built variant: its artifact on disk and a predictor loaded back from it."""

    name: str
    format: str  # "keras", "savedmodel" or "litert"
    path: str
    predict: Predictor
    notes: list[str] = dataclasses.field(default_factory=list)
    unquantized_ops: list[str] | None = None  # LiteRT int8 kinds only
    sparsity: float | None = None  # pruned variants: the weights' overall sparsity


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The variant names, validated (one line naming the bad one and the choices)."""
    fixed = {"keras", "xla", "keras-int8", *LITERT_VARIANTS}
    for name in names:
        if name not in fixed and not _PRUNED.fullmatch(name):
            raise TfprodError(f"unknown variant {name!r}; expected some of {sorted(fixed)} or "
                              "prunedNN-<kind> (NN: sparsity in %, kind: float32, dynamic, "
                              "float16, int8, int8-io), e.g. pruned80-int8")
    if not names:
        raise TfprodError("no variants chosen; pass some of " + ",".join(DEFAULT_VARIANTS))
    return list(dict.fromkeys(names))


class VariantBuilder:
    """Builds variants of ``model`` into ``out_dir``, sharing intermediate work between them.

    Args:
        model: a trained Keras model with one input or several named ones (not modified).
        train: ``(x, y)`` training arrays (``x`` a dict by input name for several inputs):
            representative data for int8, fine-tuning for pruning.
        out_dir: where the artifacts go (``<variant>.keras`` / ``.tflite`` / ``<variant>/``).
        prune_epochs: fine-tuning epochs of each pruned model.
        num_samples: representative examples for int8 calibration.
    """

    def __init__(self, model, train: tuple[np.ndarray, np.ndarray], out_dir: str | os.PathLike,
                 *, prune_epochs: int = 8, num_samples: int = 200) -> None:
        self.model = model
        self.input_shapes = input_shapes(model)
        self.x_train, self.y_train = train
        self.out_dir = os.fspath(out_dir)
        self.prune_epochs = prune_epochs
        self.num_samples = num_samples
        os.makedirs(self.out_dir, exist_ok=True)
        self._converters: dict[int, LiteRTConverter] = {}
        self._keras_path: str | None = None

    def __enter__(self) -> VariantBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Removes intermediate SavedModels."""
        for converter in self._converters.values():
            converter.close()
        self._converters.clear()

    def build(self, name: str) -> Variant:
        """Writes variant ``name`` and loads it back."""
        check_names([name])
        if name == "keras":
            return self._keras()
        if name == "xla":
            return self._xla()
        if name == "keras-int8":
            return self._keras_int8()
        pruned = _PRUNED.fullmatch(name)
        if pruned:
            return self._litert(name, pruned.group(2), sparsity=int(pruned.group(1)))
        return self._litert(name, name, sparsity=0)

    def _path(self, name: str, ext: str = "") -> str:
        return os.path.join(self.out_dir, name + ext)

    def keras_path(self) -> str:
        """The model as given, saved once as ``keras.keras``."""
        if self._keras_path is None:
            path = self._path("keras", ".keras")
            save_keras(self.model, path, overwrite=True)
            self._keras_path = path
        return self._keras_path

    def _keras(self) -> Variant:
        import keras

        path = self.keras_path()
        notes = (["the file holds the optimizer state too (for continued training)"]
                 if getattr(self.model, "optimizer", None) is not None else [])
        return Variant("keras", "keras", path, KerasPredictor(keras.saving.load_model(path)),
                       notes=notes)

    def _xla(self) -> Variant:
        import keras
        import tensorflow as tf

        from tfprod.export.signature import serving_inputs

        model = self.model
        inputs = serving_inputs(model)
        text = [n for n, spec in zip(inputs.names, inputs.specs, strict=True)
                if spec.dtype == tf.string]
        if text:
            raise VariantRefused(f"XLA compiles no string ops, and the model takes the "
                                 f"string input(s) {text}; the keras and LiteRT variants "
                                 "run them")
        serve = tf.function(lambda *x: model(inputs.structure(x), training=False),
                            input_signature=list(inputs.specs), jit_compile=True)
        serve.get_concrete_function()
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve)
        path = self._path("xla")
        _replace_folder(path, lambda tmp: archive.write_out(tmp, verbose=False))
        return Variant("xla", "savedmodel", path, SavedModelPredictor(path),
                       notes=["serving_default compiled with XLA (jit_compile=True): the first "
                              "call per batch size compiles"])

    def _keras_int8(self) -> Variant:
        import keras

        # Without its optimizer: the float model's Adam slots do not fit the int8 weights.
        model = keras.saving.load_model(self.keras_path(), compile=False)
        with warnings.catch_warnings():
            # Layers without int8 support (e.g. Conv2D) warn one by one; they are listed below.
            warnings.simplefilter("ignore")
            model.quantize("int8")
        path = self._path("keras-int8", ".keras")
        save_keras(model, path, overwrite=True)
        skipped = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
                   if layer.weights and getattr(layer, "quantization_mode", None) != "int8"]
        notes = [f"left in float by keras quantize: {', '.join(skipped)}"] if skipped else []
        return Variant("keras-int8", "keras", path,
                       KerasPredictor(keras.saving.load_model(path)), notes=notes)

    def _litert(self, name: str, variant: str, *, sparsity: int) -> Variant:
        kind = "int8" if variant == "int8-io" else variant
        converter = self._converter(sparsity)
        try:
            content = converter.convert(kind, int8_io=variant == "int8-io")
        except LiteRTUnsupported as e:
            raise VariantRefused(str(e)) from None
        path = write_atomic(self._path(name, ".tflite"), content)
        runner = LiteRTModel.load(path)
        ops = runner.unquantized_ops() if kind == "int8" else None
        notes = [f"ops left in float: {', '.join(ops)}"] if ops else []
        actual = _sparsity(converter.model) if sparsity else None
        if actual is not None:
            notes.append(f"weights {100 * actual:.1f}% zeros after fine-tuning")
        return Variant(name, "litert", path, runner, notes=notes, unquantized_ops=ops,
                       sparsity=actual)

    def _converter(self, sparsity: int) -> LiteRTConverter:
        if sparsity not in self._converters:
            model = self.model if sparsity == 0 else self._pruned_model(sparsity)
            self._converters[sparsity] = LiteRTConverter(
                model, representative=self.x_train, num_samples=self.num_samples)
        return self._converters[sparsity]

    def _pruned_model(self, sparsity: int) -> Any:
        from tfprod.optimize.pruning import prune

        return prune(self.model, (self.x_train, self.y_train), target_sparsity=sparsity / 100,
                     epochs=self.prune_epochs).model


def _sparsity(model) -> float:
    """Fraction of zeros among the kernels (weights of rank >= 2) of ``model``."""
    kernels = [np.asarray(w) for w in model.weights if len(w.shape) >= 2]
    total = sum(k.size for k in kernels)
    return float(sum(np.count_nonzero(k == 0) for k in kernels) / total) if total else 0.0


def _replace_folder(path: str, write) -> None:
    """Writes a folder with ``write(tmp)`` beside ``path``, then swaps it into place."""
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=".tfprod-", dir=parent)
    staged = os.path.join(tmp, "out")
    try:
        write(staged)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
