"""``Prequential``: progressive validation, predict first and learn after (Dawid 1984).

Each chunk of the stream is scored by the model as it is *before* it learns that chunk, so the
accuracy is measured on data the model has never trained on, without a separate test set. The
accuracy over a sliding window of the last ``window`` examples follows the stream; the error
stream feeds a :class:`~tfprod.online.drift.PageHinkley` detector. An alarm starts a larger
update: for the next ``boost_examples`` examples each chunk is learned ``boost_epochs`` times
instead of once, so the model catches up with the new inputs faster than one pass allows (the
learner's own safeguards, such as replay, apply to every pass); the loop also consolidates.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.online.drift import PageHinkley
from tfprod.online.learner import Learner
from tfprod.online.stream import Examples


class Prequential:
    """Predict-then-learn over chunks, with a sliding-window accuracy and a drift detector.

    Args:
        learner: what predicts and learns.
        window: examples in the sliding window.
        chunk: examples scored, then learned, at a time.
        detector: the drift detector on the error stream (default :class:`PageHinkley` with
            threshold 10).
        boost_epochs: passes over each chunk after a drift alarm (1: no larger update).
        boost_examples: how many examples after an alarm get those passes.
        keep_outcomes: also keep every example's outcome (1 right, 0 wrong) in ``outcomes``
            (for curves; the window alone is bounded).
    """

    def __init__(self, learner: Learner, *, window: int = 500, chunk: int = 32,
                 detector: PageHinkley | None = None, boost_epochs: int = 8,
                 boost_examples: int = 2000, keep_outcomes: bool = False):
        if boost_epochs < 1 or boost_examples < 0:
            raise TfprodError(f"boost_epochs={boost_epochs}, boost_examples={boost_examples}; "
                              "expected >= 1 and >= 0")
        self.learner, self.chunk = learner, chunk
        self.boost_epochs, self.boost_examples = boost_epochs, boost_examples
        self.boost_left = 0  # examples still learned with boost_epochs passes
        self.recent: deque[int] = deque(maxlen=window)
        # More sensitive than PageHinkley's default: an alarm here costs only extra passes.
        self.detector = detector or PageHinkley(threshold=10.0)
        self.seen = 0
        self.correct = 0
        self.drifts: list[int] = []  # example counts at which a change was detected
        self.outcomes: list[int] | None = [] if keep_outcomes else None

    @property
    def window_accuracy(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")

    def run(self, examples: Examples, *, on_drift: Any = None) -> list[float]:
        """Score then learn every chunk of ``examples``; returns the window accuracy after each
        chunk. ``on_drift(seen)`` is called at each detected change."""
        curve = []
        y_all = self.learner.check(examples.x, examples.y)
        for start in range(0, len(y_all), self.chunk):
            x = {k: v[start:start + self.chunk] for k, v in examples.x.items()}
            y = y_all[start:start + self.chunk]
            right = (self.learner.predict(x).argmax(-1) == y).astype(int)
            drifted = False
            for r in right:
                self.recent.append(int(r))
                self.seen += 1
                self.correct += int(r)
                if self.outcomes is not None:
                    self.outcomes.append(int(r))
                drifted = self.detector.update(1 - int(r)) or drifted
            if drifted:
                self.drifts.append(self.seen)
                self.boost_left = self.boost_examples
                if on_drift is not None:
                    on_drift(self.seen)
            boosted = self.boost_left > 0
            self.learner.learn(x, y, epochs=self.boost_epochs if boosted else None)
            self.boost_left = max(0, self.boost_left - len(y)) if boosted else 0
            curve.append(self.window_accuracy)
        return curve

    def state(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "seen": self.seen, "correct": self.correct,
                "drifts": self.drifts, "detector": self.detector.state(),
                "boost_left": self.boost_left}

    def load_state(self, state: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.seen, self.correct = int(state["seen"]), int(state["correct"])
        self.drifts = list(state["drifts"])
        self.detector.load_state(state["detector"])
        self.boost_left = int(state.get("boost_left", 0))
