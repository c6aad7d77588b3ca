"""The learning-curve PNG: episode return vs env steps, with the evaluation points."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def plot_learning_curve(path: str | os.PathLike, episodes: Sequence[tuple[int, float, int]],
                        evaluations: Sequence[tuple[int, float, float]], *, best_step: int,
                        final: tuple[int, float, float] | None = None, title: str = "") -> str:
    """Writes the PNG: training episodes (dots and a moving mean), greedy evaluations (mean and
    std), the kept step and the final evaluation. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if episodes:
        steps = np.array([e[0] for e in episodes])
        returns = np.array([e[1] for e in episodes])
        ax.scatter(steps, returns, s=4, alpha=0.25, color="tab:blue", label="training episode")
        window = max(1, min(20, len(returns) // 5))
        moving = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], moving, color="tab:blue", lw=1.5,
                label=f"training, mean of {window}")
    if evaluations:
        s, m, sd = (np.array(v) for v in zip(*evaluations, strict=True))
        ax.errorbar(s, m, yerr=sd, fmt="o-", color="tab:orange", ms=4, capsize=2,
                    label="greedy evaluation (mean, std)")
    ax.axvline(best_step, color="tab:green", ls="--", lw=1, label=f"kept weights ({best_step})")
    if final is not None:
        ax.errorbar([final[0]], [final[1]], yerr=[final[2]], fmt="*", color="tab:red", ms=12,
                    capsize=3, label=f"final evaluation of kept weights ({final[1]:.1f})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return os.fspath(path)
