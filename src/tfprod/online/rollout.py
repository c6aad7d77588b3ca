"""The canary's verdict and the label moves, through TF Serving's own models.config.

The online loop owns one ``models.config`` (a text ``ModelServerConfig``) that ``tfprod serve
--model_config_file=... --model_config_file_poll_wait_seconds=N`` re-reads: while a canary is
out it serves the versions ``{stable, canary}`` with both labels, and ``tfprod serve
--canary_percent=P`` splits unversioned traffic between them; promotion serves the canary alone
as ``stable``; rollback serves the old stable alone. The file is replaced atomically.

The verdict compares the accuracy of each arm on the labelled requests it served (same
traffic, same time window) with a two-proportion z-test.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from typing import Any

from tfprod.errors import TfprodError


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z and the one-sided p-value of "proportion 1 < proportion 2" (pooled z-test).

    Example:
        >>> z, p = two_proportion_test(canary_right, canary_n, stable_right, stable_n)
        >>> p < 0.05   # the canary is worse
    """
    if n1 <= 0 or n2 <= 0:
        raise TfprodError(f"two-proportion test on n1={n1}, n2={n2}; both need examples")
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 0.5 if p1 == p2 else (0.0 if p1 < p2 else 1.0)
    z = (p1 - p2) / se
    return z, 0.5 * math.erfc(-z / math.sqrt(2))  # Phi(z)


@dataclass(frozen=True)
class Verdict:
    """The canary vs stable comparison on the labelled traffic each served."""

    action: str  # "promote", "rollback" or "wait"
    canary_accuracy: float | None
    stable_accuracy: float | None
    canary_n: int
    stable_n: int
    z: float | None
    p_worse: float | None
    reason: str


def verdict(canary: tuple[int, int], stable: tuple[int, int], *, min_requests: int = 100,
            alpha: float = 0.05, margin: float = 0.0, expired: bool = False) -> Verdict:
    """Promote, roll back or wait, from ``(right, labelled)`` counts of each arm.

    Rolls back when the canary is worse at significance ``alpha`` (one-sided) or its accuracy
    trails stable's by more than ``margin``; promotes otherwise once the canary has
    ``min_requests`` labelled requests (or the window ``expired``); else waits.
    """
    (kc, nc), (ks, ns) = canary, stable
    if nc < min_requests and not expired:
        return Verdict("wait", kc / nc if nc else None, ks / ns if ns else None, nc, ns,
                       None, None, f"{nc} of {min_requests} labelled canary requests")
    if nc == 0:
        return Verdict("rollback", None, ks / ns if ns else None, 0, ns, None, None,
                       "the window ended without a labelled canary request")
    if ns == 0:
        return Verdict("promote", kc / nc, None, nc, 0, None, None,
                       "no labelled stable requests to compare with")
    z, p = two_proportion_test(kc, nc, ks, ns)
    acc_c, acc_s = kc / nc, ks / ns
    if p < alpha or acc_c < acc_s - margin - 1e-12 and margin > 0:
        return Verdict("rollback", acc_c, acc_s, nc, ns, z, p,
                       f"canary {acc_c:.4f} vs stable {acc_s:.4f}: worse (p={p:.3g})")
    return Verdict("promote", acc_c, acc_s, nc, ns, z, p,
                   f"canary {acc_c:.4f} vs stable {acc_s:.4f}: not worse (p={p:.3g})")


def version_accuracy(store: Any, model: str, *, since: float | None = None,
                     output: str | None = None) -> dict[int, tuple[int, int]]:
    """``(right, labelled)`` per served version among the logged requests with a feedback
    label (since ``since``): the per-version figures of an A/B split or a canary. The class
    is the argmax of ``output`` (default: the first output with one score per class)."""
    import numpy as np

    counts: dict[int, list[int]] = {}
    for r in store.read(model, since=since):
        if r.label is None:
            continue
        name = output or next((k for k, v in r.outputs.items() if np.ndim(v) == 2), None)
        if name is None or name not in r.outputs:
            continue
        labels = np.asarray(r.label if isinstance(r.label, list) else [r.label] * r.rows)
        right = int(np.sum(np.asarray(r.outputs[name]).argmax(-1) == labels))
        cell = counts.setdefault(r.version, [0, 0])
        cell[0] += right
        cell[1] += r.rows
    return {v: (k, n) for v, (k, n) in sorted(counts.items())}


def models_config_text(name: str, base_path: str, stable: int, canary: int | None = None,
                       *, label: str = "canary") -> str:
    """The ``ModelServerConfig`` serving ``stable`` (and the candidate ``canary``, labelled
    ``label``: "canary" takes a share of traffic, "shadow" a copy of it) with their labels."""
    if label not in ("canary", "shadow"):
        raise TfprodError(f"rollout {label!r}; expected canary or shadow")
    versions = [stable] if canary is None else sorted({stable, canary})
    labels = [("stable", stable)] + ([] if canary is None else [(label, canary)])
    lines = ["model_config_list {", "  config {", f"    name: \"{name}\"",
             f"    base_path: \"{os.path.abspath(base_path)}\"",
             "    model_platform: \"tensorflow\"",
             "    model_version_policy { specific { " + " ".join(
                 f"versions: {v}" for v in versions) + " } }"]
    lines += [f"    version_labels {{ key: \"{k}\" value: {v} }}" for k, v in labels]
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def write_models_config(path: str | os.PathLike, name: str, base_path: str, stable: int,
                        canary: int | None = None, *, label: str = "canary") -> str:
    """Atomically replace ``path`` with :func:`models_config_text`; returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(4)}-{os.path.basename(path)}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(models_config_text(name, base_path, stable, canary, label=label))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
