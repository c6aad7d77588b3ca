"""The gate: TFX's "blessing" made concrete, before anything is published.

A candidate is blessed only if, on a fixed labelled holdout,

- its accuracy is no worse than the serving version's by more than ``margin``,
- its accuracy reaches the absolute ``floor``,
- its outputs are finite (a candidate that produces NaN or inf is refused outright),

and, when a recent labelled window is given, it is not worse than the serving version there
either. The recent window is small (a share of one round's labels) and one example can move
its accuracy by more than the margin, so there the candidate is refused only when it is worse
by more than ``margin`` *and* the difference is beyond chance: an exact one-sided sign test
(McNemar's) on the examples where exactly one of the two is right, at level ``alpha``. The
decision, its figures and the baseline version go beside the version
(``assets.extra/tfprod/gate.json``) or, for a refused candidate, beside the candidate kept
for inspection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfprod.errors import TfprodError
from tfprod.online.stream import Examples

GATE_FILE = "assets.extra/tfprod/gate.json"
Predict = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclasses.dataclass
class GateDecision:
    """What the gate decided and why.

    Attributes:
        blessed: publish the candidate.
        reasons: one line per failed check (empty when blessed).
        candidate, baseline: holdout accuracy of each.
        recent_candidate, recent_baseline: accuracy on the recent labelled window (None: none).
        recent_p: on that window, the chance of the candidate losing at least as many of the
            examples where the two disagree if neither were better (McNemar's exact test).
        baseline_version: the serving version compared against.
        margin, floor: the thresholds used.
        holdout_examples, recent_examples: sizes of what was compared on.
        time: epoch seconds of the decision.
    """

    blessed: bool
    reasons: list[str]
    candidate: float
    baseline: float
    recent_candidate: float | None
    recent_baseline: float | None
    baseline_version: int | None
    margin: float
    floor: float
    holdout_examples: int
    recent_examples: int
    time: float
    recent_p: float | None = None
    alpha: float = 0.05

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    def write(self, folder: str | os.PathLike) -> str:
        path = os.path.join(os.fspath(folder), GATE_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(self.to_bytes())
        return path


def read_gate(version_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The gate decision written beside a version, or None."""
    path = os.path.join(os.fspath(version_dir), GATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_holdout(holdout: Examples, names: tuple[str, ...], shapes: dict[str, tuple],
                  where: str) -> None:
    """A clear error when the holdout does not match the model's serving signature."""
    missing = [n for n in names if n not in holdout.x]
    if missing:
        raise TfprodError(f"holdout {where} has inputs {sorted(holdout.x)}; the model's "
                          f"signature takes {list(names)} (missing {missing}); give a holdout "
                          "with those columns and a label")
    for name in names:
        got, want = tuple(holdout.x[name].shape[1:]), shapes[name]
        if len(got) != len(want) or any(w is not None and g != w
                                         for g, w in zip(got, want, strict=True)):
            raise TfprodError(f"holdout {where}: input {name!r} has examples of shape {got}; "
                              f"the model's signature takes {want}")
    if len(holdout) == 0:
        raise TfprodError(f"holdout {where} is empty; the gate needs labelled examples")


def _right(predict: Predict, data: Examples) -> tuple[np.ndarray, bool]:
    scores = np.asarray(predict(data.x))
    finite = bool(np.all(np.isfinite(scores)))
    return scores.argmax(-1) == data.y, finite


def sign_test(lost: int, won: int) -> float:
    """P(at least ``lost`` of ``lost + won`` disagreements go against the candidate) when
    each is a fair coin: McNemar's exact one-sided test (1.0 when they never disagree)."""
    from scipy.stats import binomtest

    if lost + won == 0:
        return 1.0
    return float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue)


def evaluate_gate(candidate: Predict, baseline: Predict, holdout: Examples, *,
                  recent: Examples | None = None, margin: float = 0.01, floor: float = 0.0,
                  alpha: float = 0.05, baseline_version: int | None = None) -> GateDecision:
    """Compare ``candidate`` with ``baseline`` (each: inputs by name -> class scores).

    Args:
        candidate, baseline: predict functions of the candidate and the serving version.
        holdout: the fixed labelled holdout.
        recent: the recent labelled window (the same margin, and McNemar's test), or None.
        margin: how much worse than the baseline (absolute accuracy) the candidate may be.
        floor: the accuracy the candidate must reach on the holdout.
        alpha: the recent window's test level (a smaller one refuses less often by chance).
        baseline_version: recorded in the decision.

    Returns:
        A :class:`GateDecision`.
    """
    if not 0 <= margin <= 1 or not 0 <= floor <= 1 or not 0 < alpha < 1:
        raise TfprodError(f"margin={margin}, floor={floor}, alpha={alpha}; expected accuracies "
                          "in [0, 1] and a test level in (0, 1)")
    reasons = []
    right, finite = _right(candidate, holdout)
    cand, base = float(right.mean()), float(_right(baseline, holdout)[0].mean())
    if not finite:
        reasons.append("the candidate produces NaN or inf on the holdout")
    if cand < base - margin:
        reasons.append(f"holdout accuracy {cand:.4f} is worse than the serving version's "
                       f"{base:.4f} by more than the margin {margin:g}")
    if cand < floor:
        reasons.append(f"holdout accuracy {cand:.4f} is below the floor {floor:g}")
    recent_cand = recent_base = recent_p = None
    if recent is not None and len(recent):
        mine, recent_finite = _right(candidate, recent)
        theirs, _ = _right(baseline, recent)
        recent_cand, recent_base = float(mine.mean()), float(theirs.mean())
        lost, won = int(np.sum(theirs & ~mine)), int(np.sum(mine & ~theirs))
        recent_p = sign_test(lost, won)
        if not recent_finite and finite:
            reasons.append("the candidate produces NaN or inf on the recent window")
        if recent_cand < recent_base - margin and recent_p < alpha:
            reasons.append(f"recent-window accuracy {recent_cand:.4f} is worse than the serving "
                           f"version's {recent_base:.4f} by more than the margin {margin:g} "
                           f"(it lost {lost} and won {won} of the {len(recent)} examples, "
                           f"p={recent_p:.2g} < {alpha:g})")
    return GateDecision(not reasons, reasons, cand, base, recent_cand, recent_base,
                        baseline_version, margin, floor, len(holdout),
                        0 if recent is None else len(recent), time.time(), recent_p, alpha)
