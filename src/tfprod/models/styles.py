"""One architecture in Keras' three styles: Sequential, Functional and subclassed.

The network is the same in all three (a small CNN for 8x8 digits): ``rescale -> conv ->
flatten -> dense -> dropout -> probabilities``, with the same layer names in the same order,
so weights move between them with ``set_weights`` and the outputs agree.

:func:`capabilities` probes what each style can and cannot do, by doing it: a summary before
any data, a symbolic layer graph, several inputs, a ``.keras`` round trip, Python control
flow in
``call``; ``tfprod models styles`` adds export without a hand-written input signature,
before and after the first call. :func:`share_weights` copies one model's weights into the
others.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from tfprod.errors import TfprodError

STYLES = ("sequential", "functional", "subclassed")
INPUT_SHAPE = (8, 8, 1)


def _layers(num_classes: int, filters: int, units: int, dropout: float) -> list:
    return [keras.layers.Rescaling(1.0 / 16, name="rescale"),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(units, activation="relu", name="dense"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(num_classes, activation="softmax", name="probabilities")]


def sequential_model(num_classes: int = 10, *, filters: int = 8, units: int = 32,
                     dropout: float = 0.1) -> keras.Model:
    """The network as a ``keras.Sequential`` (with an ``Input``, so it is built at once)."""
    return keras.Sequential([keras.Input(INPUT_SHAPE, name="image"),
                             *_layers(num_classes, filters, units, dropout)],
                            name="sequential")


def functional_model(num_classes: int = 10, *, filters: int = 8, units: int = 32,
                     dropout: float = 0.1) -> keras.Model:
    """The network as a functional ``keras.Model`` from ``keras.Input`` to its outputs."""
    x = inputs = keras.Input(INPUT_SHAPE, name="image")
    for layer in _layers(num_classes, filters, units, dropout):
        x = layer(x)
    return keras.Model(inputs, x, name="functional")


@keras.saving.register_keras_serializable(package="tfprod")
class SubclassedClassifier(keras.Model):
    """The network as a subclassed ``keras.Model``: layers in ``__init__``, the forward pass in
    ``call``, where Python runs (here: an optional test-time augmentation that averages the
    predictions of the image and its mirror, a loop the other styles cannot write).

    Args:
        num_classes, filters, units, dropout: as :func:`functional_model`.
        mirror_average: average over the image and its left-right mirror at inference.
    """

    def __init__(self, num_classes: int = 10, *, filters: int = 8, units: int = 32,
                 dropout: float = 0.1, mirror_average: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.filters, self.units, self.dropout = (
            num_classes, filters, units, dropout)
        self.mirror_average = mirror_average
        self.blocks = _layers(num_classes, filters, units, dropout)

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        for layer in self.blocks:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))

    def _forward(self, x, training):
        for layer in self.blocks:
            x = layer(x, training=training)
        return x

    def call(self, image, training=None):
        views = [image]
        if self.mirror_average and not training:  # Python control flow, decided per call
            views.append(ops.flip(image, axis=2))
        outputs = [self._forward(v, training) for v in views]
        return outputs[0] if len(outputs) == 1 else ops.mean(ops.stack(outputs), axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "filters": self.filters, "units": self.units, "dropout": self.dropout,
                "mirror_average": self.mirror_average}


def subclassed_model(num_classes: int = 10, *, filters: int = 8, units: int = 32,
                     dropout: float = 0.1) -> keras.Model:
    """The network as :class:`SubclassedClassifier` (not built until called or built)."""
    return SubclassedClassifier(num_classes, filters=filters, units=units, dropout=dropout,
                                name="subclassed")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "sequential": sequential_model, "functional": functional_model,
    "subclassed": subclassed_model}


def build_style(style: str, num_classes: int = 10, *, compile: bool = True) -> keras.Model:
    """The network in ``style`` (one of :data:`STYLES`), built, optionally compiled."""
    if style not in BUILDERS:
        raise TfprodError(f"style {style!r}; expected one of {list(STYLES)}")
    model = BUILDERS[style](num_classes)
    if not model.built:
        model.build((None, *INPUT_SHAPE))
    if compile:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model


def share_weights(source: keras.Model, *targets: keras.Model) -> None:
    """Copies ``source``'s weights into each target (same layers in the same order)."""
    weights = source.get_weights()
    for target in targets:
        if [w.shape for w in target.get_weights()] != [w.shape for w in weights]:
            raise TfprodError(f"model {target.name!r} has other weights than {source.name!r}; "
                              "share weights between the same architecture only")
        target.set_weights(weights)


# ---------------------------------------------------------------------------- capabilities


@dataclasses.dataclass(frozen=True)
class Probe:
    """The outcome of trying one capability with one style: ``ok`` and a note (the error's
    first line when it failed)."""

    ok: bool
    note: str = ""

    def __str__(self) -> str:
        return "yes" if self.ok else "no"


def _probe(fn: Callable[[], str | None]) -> Probe:
    try:
        return Probe(True, fn() or "")
    except Exception as e:  # a probe fails in its own words
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Probe(False, text[:160] + "..." if len(text) > 160 else text)


def _summary_before_data(style: str) -> str | None:
    model = BUILDERS[style]()
    lines: list[str] = []
    model.summary(print_fn=lambda line, **kw: lines.append(line))
    if not model.built:
        raise TfprodError("unbuilt until called on data (no shapes, 0 params)")
    return None


def _symbolic_graph(style: str) -> str | None:
    model = build_style(style, compile=False)
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise TfprodError("no model.inputs/outputs: the graph exists only per call")
    return f"{len(model.layers)} layers wired"


class _TwoInputs(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(ops.concatenate([inputs["a"], inputs["b"]], axis=-1))


def _several_inputs(style: str) -> str | None:
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    if style == "sequential":
        keras.Sequential([a, b, keras.layers.Dense(1)])
    elif style == "functional":
        keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    else:
        _TwoInputs()({"a": np.zeros((1, 4), "float32"), "b": np.zeros((1, 4), "float32")})
    return None


def _round_trip(style: str) -> str | None:
    model = build_style(style, compile=False)
    x = np.random.default_rng(0).uniform(0, 16, (4, *INPUT_SHAPE)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    if not np.allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6):
        raise TfprodError("reloaded outputs differ")
    return "registered class + get_config" if style == "subclassed" else None


def _python_control_flow(style: str) -> str | None:
    if style != "subclassed":
        raise TfprodError("only inside a layer; the model is a fixed graph of layers")
    model = SubclassedClassifier(mirror_average=True)
    model(np.zeros((1, *INPUT_SHAPE), "float32"))
    return "mirror averaging in call()"


#: capability -> probe(style): returns a note, raises when the style cannot do it. The
#: export probes live with the exporter (``tfprod models styles`` adds them).
CAPABILITIES: dict[str, Callable[[str], str | None]] = {
    "summary before any data": _summary_before_data,
    "symbolic layer graph (inputs/outputs)": _symbolic_graph,
    "several inputs / branches": _several_inputs,
    ".keras save + reload, same outputs": _round_trip,
    "Python control flow in call()": _python_control_flow,
}


def capabilities(probes: dict[str, Callable[[str], str | None]] | None = None
                 ) -> dict[str, dict[str, Probe]]:
    """capability -> style -> :class:`Probe`, each cell found by doing it.

    Args:
        probes: more capabilities to try (name -> probe(style)), after :data:`CAPABILITIES`.
    """
    return {name: {s: _probe(lambda s=s, fn=fn: fn(s)) for s in STYLES}
            for name, fn in {**CAPABILITIES, **(probes or {})}.items()}
