"""Figures of the distributed-minimisation paper: the transport plan, time per iteration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ot_plan(x: np.ndarray, y: np.ndarray, plan: np.ndarray, max_lines: int = 400):
    """Left: the two clouds with a line for each of the heaviest plan entries (opacity ~ mass).
    Right: the plan as an image, rows and columns sorted by angle around each cloud's centre.

    Args:
        x: the source points, shape (n, 2).
        y: the target points, shape (m, 2).
        plan: the transport plan, shape (n, m), nonnegative (e.g. `distributed.plan`); drawn
            scaled by n m, so 1 is the mass of the independent coupling.
        max_lines: how many of the heaviest entries get a line (default 400).

    Returns:
        A matplotlib figure with the two panels.
    """
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.25, 1]})
    flat = np.argsort(plan, axis=None)[::-1][:max_lines]
    rows, cols = np.unravel_index(flat, plan.shape)
    top = plan[rows, cols].max()
    for i, j in zip(rows, cols):
        ax.plot([x[i, 0], y[j, 0]], [x[i, 1], y[j, 1]], color="0.3", lw=0.6, alpha=float(0.1 + 0.8 * plan[i, j] / top))
    ax.scatter(*x.T, s=10, color="tab:blue", label="x (source)", zorder=3)
    ax.scatter(*y.T, s=10, color="tab:orange", label="y (target)", zorder=3)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"heaviest {len(rows)} plan entries")
    order = lambda p: np.argsort(np.arctan2(*(p - p.mean(0)).T[::-1]))
    im = bx.imshow(plan[order(x)][:, order(y)] * plan.size, aspect="auto", cmap="magma")
    bx.set_xlabel("y points (sorted by angle)")
    bx.set_ylabel("x points (sorted by angle)")
    bx.set_title("plan  n m P_ij")
    fig.colorbar(im, ax=bx, fraction=0.046)
    fig.tight_layout()
    return fig


def time_per_step(sizes: Sequence[int], seconds_per_step: dict[str, Sequence[float]]):
    """Milliseconds per L-BFGS step against the number of examples, one line per label.

    Args:
        sizes: the numbers of examples (all processes together), the x values, log scale.
        seconds_per_step: seconds per step by label (e.g. a number of processes), each one value
            per entry of `sizes`.

    Returns:
        A matplotlib figure (log-log).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for label, secs in seconds_per_step.items():
        ax.plot(sizes, 1000 * np.asarray(secs), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples (all processes together)")
    ax.set_ylabel("ms per L-BFGS step")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig
