"""Are the batches shuffled? The label mix of the first batches, against the same labels shuffled.

A file sorted by label and read in order (or through a shuffle buffer much smaller than the
data) gives batches of one class: each step pulls the model toward that class and the next batch
undoes it, so the loss swings and the model ends up predicting the last classes it saw. For
class labels the statistic is the batches' purity (the share of their most common class); for
continuous targets, the spread of the targets within a batch relative to their overall spread.
Both are compared with the same labels shuffled, which is what a shuffled data set would give.
"""

from __future__ import annotations

import numpy as np

from tfprod.doctor.finding import Finding
from tfprod.doctor.probe import Probe

MIN_BATCHES = 4
MAX_BATCHES = 64
#: purity above the shuffled expectation by this much (and by 5 standard errors) is sorted data.
PURITY_MARGIN = 0.25
#: within-batch spread of continuous targets below this fraction of the shuffled one.
SPREAD_RATIO = 0.5
_SHUFFLES = 20
_FIX = ("shuffle before batching, over the whole data set: dataset.shuffle(buffer_size=number of "
        "examples (or a few thousand when reading shuffled file shards), "
        "reshuffle_each_iteration=True).batch(...); a buffer much smaller than a sorted file only "
        "mixes neighbours")


def _batches(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *sizes])
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b - a >= 2]


def _purity(values: np.ndarray, sizes: list[int]) -> float:
    out = []
    for batch in _batches(values, sizes):
        _, counts = np.unique(batch, return_counts=True)
        out.append(counts.max() / len(batch))
    return float(np.mean(out))


def _spread(values: np.ndarray, sizes: list[int]) -> float:
    return float(np.mean([b.std() for b in _batches(values, sizes)]))


def check_batch_order(probe: Probe) -> tuple[list[Finding], bool]:
    """Findings, and whether the check ran (it needs labels and 4+ batches of 2+ examples)."""
    y = probe.read_y
    task = probe.task
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "biuf":
        return [], False
    sizes = [s for s in probe.batch_sizes[:MAX_BATCHES] if s > 0]
    n = min(int(sum(sizes)), len(y))
    if len([s for s in sizes if s >= 2]) < MIN_BATCHES:
        return [], False
    y = y[:n].reshape(n, -1)
    if task.labels in ("sparse", "onehot"):
        values = y[:, 0] if y.shape[1] == 1 else np.argmax(y, axis=1)
        stat, kind = _purity, "class"
    elif task.labels == "continuous" and y.shape[1] == 1 and np.all(np.isfinite(y)):
        values = y[:, 0].astype(np.float64)
        stat, kind = _spread, "target"
    else:
        return [], False
    if len(np.unique(values)) < 2:
        return [], False
    rng = np.random.default_rng(probe.seed)
    observed = stat(values, sizes)
    null = np.array([stat(rng.permutation(values), sizes) for _ in range(_SHUFFLES)])
    expected, noise = float(null.mean()), float(null.std()) + 1e-9
    values_out = {"batches": len(sizes), "observed": observed, "shuffled": expected}
    shown = f"the first {len(sizes)} batches ({n} examples)"
    if kind == "class":
        if observed - expected < max(PURITY_MARGIN, 5 * noise):
            return [], True
        single = sum(len(np.unique(b)) == 1 for b in _batches(values, sizes))
        evidence = (f"in {shown} the most common class makes up {observed:.0%} of a batch on "
                    f"average ({single} batches hold a single class); shuffled, the same labels "
                    f"give {expected:.0%}: the data set is ordered by label, so each step pulls "
                    "the model toward one class and the next undoes it")
        title = "batches are not shuffled (sorted by label)"
    else:
        if not (observed < SPREAD_RATIO * expected and expected - observed > 5 * noise):
            return [], True
        evidence = (f"in {shown} the targets' standard deviation within a batch is "
                    f"{observed:.3g} on average; shuffled, the same targets give {expected:.3g}: "
                    "the data set is ordered by its target, so each step sees one range of it")
        title = "batches are not shuffled (sorted by target)"
    return [Finding("batch_order", "error", title, evidence, _FIX, values_out)], True
