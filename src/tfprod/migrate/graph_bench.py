"""Static vs dynamic graphs, measured: one computation as a TF1 graph in a Session, eagerly,
as a ``tf.function`` and as a ``tf.function(jit_compile=True)``.

Two workloads, each written once per style the way its users write it:

- ``mlp``: a training step of a 3-layer MLP (softmax cross-entropy, plain SGD). TF1: a graph
  with ``GradientDescentOptimizer.minimize`` run by ``Session.run``; TF2: ``tf.GradientTape``
  and ``assign_sub`` in a Python function.
- ``rnn``: a forward pass of a tanh recurrence over ``time`` steps. TF1: ``tf.while_loop``;
  TF2: a Python ``for t in tf.range(time)`` loop (a Python loop eagerly, a while loop once
  AutoGraph traces it).

All modes start from the same weights and get the same batch: the TF1 Session as fed arrays
(``feed_dict``, TF1's usual way) and as inputs held in the graph, the TF2 modes as tensors made
once. Graph building, tracing and XLA compilation happen in an untimed warm-up. Repeats take
turns across the modes, so a change in machine load hits all of them alike. The TF1 graph is
built in its own ``tf.Graph``: the process stays eager.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfprod.errors import TfprodError

#: mode id -> label, in table order.
MODES = {
    "session": "TF1 graph, Session.run + feed_dict",
    "session_nofeed": "TF1 graph, Session.run, inputs in the graph",
    "eager": "TF2 eager",
    "function": "TF2 tf.function",
    "xla": "TF2 tf.function(jit_compile=True)",
}
WORKLOADS = ("mlp", "rnn")
COLUMNS = ["mode", "steps/s", "min–max", "ms/step", "x TF1"]
_LR = 0.05


@dataclasses.dataclass(frozen=True)
class Problem:
    """Weights and a batch, shared by every mode."""

    workload: str
    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray | None

    @property
    def size(self) -> str:
        if self.workload == "mlp":
            return (f"MLP {self.x.shape[1]}-{self.weights['w1'].shape[1]}-"
                    f"{self.weights['w2'].shape[1]}-{self.weights['w3'].shape[1]} training "
                    f"step, batch {self.x.shape[0]}")
        return (f"tanh RNN forward, {self.x.shape[0]} steps, batch {self.x.shape[1]}, "
                f"{self.x.shape[2]}->{self.weights['u'].shape[0]} units")


def make_problem(workload: str = "mlp", *, batch: int = 32, hidden: int = 64,
                 features: int = 32, classes: int = 10, time_steps: int = 20,
                 seed: int = 0) -> Problem:
    """The weights and batch of a workload (``mlp`` or ``rnn``)."""
    if workload not in WORKLOADS:
        raise TfprodError(f"workload {workload!r}; expected one of {', '.join(WORKLOADS)}")
    for name, value in (("batch", batch), ("hidden", hidden), ("time_steps", time_steps)):
        if value < 1:
            raise TfprodError(f"{name}={value}; expected a positive integer")
    rng = np.random.default_rng(seed)

    def glorot(n_in: int, n_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (n_in + n_out))
        return rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)

    if workload == "mlp":
        weights = {"w1": glorot(features, hidden), "b1": np.zeros(hidden, np.float32),
                   "w2": glorot(hidden, hidden), "b2": np.zeros(hidden, np.float32),
                   "w3": glorot(hidden, classes), "b3": np.zeros(classes, np.float32)}
        x = rng.standard_normal((batch, features)).astype(np.float32)
        y = rng.integers(0, classes, batch).astype(np.int64)
        return Problem(workload, weights, x, y)
    weights = {"w": glorot(features, hidden), "u": glorot(hidden, hidden) * 0.5,
               "b": np.zeros(hidden, np.float32)}
    x = rng.standard_normal((time_steps, batch, features)).astype(np.float32)
    return Problem(workload, weights, x, None)


# ---------------------------------------------------------------------------- the math


def _mlp_loss(p: dict[str, Any], x: Any, y: Any) -> Any:
    h = tf.nn.relu(tf.matmul(x, p["w1"]) + p["b1"])
    h = tf.nn.relu(tf.matmul(h, p["w2"]) + p["b2"])
    logits = tf.matmul(h, p["w3"]) + p["b3"]
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                                        logits=logits))


def _rnn_cell(p: dict[str, Any], x_t: Any, h: Any) -> Any:
    return tf.tanh(tf.matmul(x_t, p["w"]) + tf.matmul(h, p["u"]) + p["b"])


def tf2_step(problem: Problem, variables: dict[str, tf.Variable]) -> Callable[..., Any]:
    """The TF2 step as users write it: plain Python over tensors (eager unless wrapped)."""
    if problem.workload == "mlp":
        order = sorted(variables)

        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = _mlp_loss(variables, x, y)
            grads = tape.gradient(loss, [variables[k] for k in order])
            for k, g in zip(order, grads, strict=True):
                variables[k].assign_sub(_LR * g)
            return loss

        return train_step

    def forward(x_seq):
        h = tf.zeros([tf.shape(x_seq)[1], tf.shape(variables["u"])[0]])
        for t in tf.range(tf.shape(x_seq)[0]):
            h = _rnn_cell(variables, x_seq[t], h)
        return h

    return forward


class Tf1Graph:
    """The TF1 version in its own ``tf.Graph`` and ``Session``: placeholders, ``get_variable``,
    ``GradientDescentOptimizer`` / ``tf.while_loop``."""

    def __init__(self, problem: Problem, *, feed: bool = True):
        self.problem, self.feed = problem, feed
        self.graph = tf.Graph()
        with self.graph.as_default():
            v1 = tf.compat.v1
            if feed:
                self.x = v1.placeholder(tf.float32, problem.x.shape, name="x")
                self.y = (v1.placeholder(tf.int64, problem.y.shape, name="y")
                          if problem.y is not None else None)
            else:
                self.x = tf.constant(problem.x)
                self.y = tf.constant(problem.y) if problem.y is not None else None
            with v1.variable_scope(problem.workload):
                params = {k: v1.get_variable(k, initializer=tf.constant(w))
                          for k, w in problem.weights.items()}
            if problem.workload == "mlp":
                self.loss = _mlp_loss(params, self.x, self.y)
                train = v1.train.GradientDescentOptimizer(_LR).minimize(self.loss)
                self.fetch = [train, self.loss]
            else:
                h0 = tf.zeros([problem.x.shape[1], problem.weights["u"].shape[0]])
                _, h = tf.while_loop(lambda t, h: t < problem.x.shape[0],
                                     lambda t, h: (t + 1, _rnn_cell(params, self.x[t], h)),
                                     [tf.constant(0), h0])
                self.fetch = [h]
            init = v1.global_variables_initializer()
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.session.run(init)
        self.feed_dict = ({self.x: problem.x, **({self.y: problem.y} if self.y is not None
                                                 else {})} if feed else None)

    def step(self) -> Any:
        return self.session.run(self.fetch, feed_dict=self.feed_dict)[-1]

    def close(self) -> None:
        self.session.close()


@dataclasses.dataclass
class _Mode:
    """One way of running the workload: ``run(n)`` does n steps and returns the last value."""

    name: str
    run: Callable[[int], Any]
    close: Callable[[], None] = lambda: None


def make_modes(problem: Problem, names: Sequence[str]) -> list[_Mode]:
    """Builds every mode (variables, graphs, sessions); nothing is timed yet."""
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise TfprodError(f"modes {list(names)}; expected a subset of {', '.join(MODES)}")
    modes = []
    for name in names:
        if name in ("session", "session_nofeed"):
            graph = Tf1Graph(problem, feed=name == "session")

            def run(n: int, graph: Tf1Graph = graph) -> Any:
                out = None
                for _ in range(n):
                    out = graph.step()
                return np.asarray(out)

            modes.append(_Mode(name, run, graph.close))
            continue
        variables = {k: tf.Variable(w, name=k) for k, w in problem.weights.items()}
        step = tf2_step(problem, variables)
        if name != "eager":
            step = tf.function(step, jit_compile=name == "xla")
        args = ((tf.constant(problem.x), tf.constant(problem.y)) if problem.y is not None
                else (tf.constant(problem.x),))

        def run(n: int, step: Callable = step, args: tuple = args) -> Any:
            out = None
            for _ in range(n):
                out = step(*args)
            return out.numpy()

        modes.append(_Mode(name, run))
    return modes


@dataclasses.dataclass
class GraphBenchReport:
    """Steps/s per mode (one figure per repeat), setup seconds and the machine's load."""

    title: str
    steps: int
    repeats: int
    rates: dict[str, list[float]]
    setup_seconds: dict[str, float]
    load_average: list[float]

    def rate(self, mode: str) -> float:
        return statistics.median(self.rates[mode])

    @property
    def baseline(self) -> str:
        return next(m for m in ("session", "session_nofeed", *self.rates) if m in self.rates)

    def rows(self) -> list[list[str]]:
        base = self.rate(self.baseline)
        return [[MODES[m], f"{self.rate(m):,.0f}", f"{min(r):,.0f}–{max(r):,.0f}",
                 f"{1000 / self.rate(m):.3f}", f"{self.rate(m) / base:.2f}x"]
                for m, r in self.rates.items()]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "baseline": self.baseline,
                "median_steps_per_s": {m: self.rate(m) for m in self.rates}}


def bench_graph(problem: Problem, *, steps: int = 200, repeats: int = 3,
                modes: Sequence[str] = tuple(MODES), warmup: int = 5,
                progress: Callable[[str, int, int], None] | None = None) -> GraphBenchReport:
    """Steps/s of ``problem`` in each mode, median over ``repeats`` runs of ``steps`` steps.

    Example:

    >>> report = bench_graph(make_problem("mlp", batch=32, hidden=64), steps=200)
    >>> report.rows()
    """
    import os

    if steps < 1 or repeats < 1:
        raise TfprodError(f"steps={steps}, repeats={repeats}; expected positive integers")
    built = []
    setup: dict[str, float] = {}
    for mode in make_modes(problem, modes):
        start = time.perf_counter()
        mode.run(warmup)  # traces, compiles, fills caches
        setup[mode.name] = time.perf_counter() - start
        built.append(mode)
    rates: dict[str, list[float]] = {m.name: [] for m in built}
    total, done = repeats * len(built), 0
    try:
        for _ in range(repeats):
            for mode in built:
                if progress:
                    progress(MODES[mode.name], done, total)
                start = time.perf_counter()
                mode.run(steps)
                rates[mode.name].append(steps / (time.perf_counter() - start))
                done += 1
    finally:
        for mode in built:
            mode.close()
    return GraphBenchReport(title=problem.size, steps=steps, repeats=repeats, rates=rates,
                            setup_seconds=setup, load_average=list(os.getloadavg()))
