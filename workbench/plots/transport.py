"""Neural transport: where a learnt map sends the source next to the target, and the method x
problem table of L2 unexplained variance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def maps(panels: Mapping[str, tuple], title: str = "Where each map sends the source", num_arrows: int = 60):
    """One panel per map (first two coordinates): the target sample (grey), the mapped source
    (colour) and arrows from a few source points to their images.

    Args:
        panels: label -> (x [n, d], mapped [n, d], y [m, d]).
        title: the figure title.
        num_arrows: arrows drawn per panel.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, (x, mapped, y)) in zip(axes.flat, panels.items()):
        x, mapped, y = (np.asarray(a)[:, :2] for a in (x, mapped, y))
        ax.scatter(y[:, 0], y[:, 1], s=3, color="0.7", label="target")
        ax.scatter(mapped[:, 0], mapped[:, 1], s=3, color="C0", label="T(x)")
        k = min(num_arrows, len(x))
        ax.quiver(x[:k, 0], x[:k, 1], mapped[:k, 0] - x[:k, 0], mapped[:k, 1] - x[:k, 1], angles="xy",
                  scale_units="xy", scale=1.0, width=0.004, color="C3", alpha=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def uvp_table(rows: Mapping[tuple, object], problems: Sequence[str], methods: Sequence[str],
              title: str = "L2 unexplained variance (%) by method and problem"):
    """Horizontal bars of each method's mean L2-UVP per problem, on a log axis, with 5% and
    10% marked.

    Args:
        rows: {(problem, method): {"mean": Row, ...}} (`experiments.transport.table`).
        problems: the problems to show (one bar colour each).
        methods: the methods, top to bottom.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(methods) * max(1, len(problems)) * 0.6 + 1.5))
    height = 0.8 / max(1, len(problems))
    for j, problem in enumerate(problems):
        values = [rows[(problem, m)]["mean"].l2_uvp if (problem, m) in rows else np.nan for m in methods]
        pos = np.arange(len(methods)) + j * height
        ax.barh(pos, np.maximum(values, 1e-2), height=height, label=problem, color=f"C{j}")
    ax.set_yticks(np.arange(len(methods)) + 0.4 - height / 2)
    ax.set_yticklabels(methods, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for v in (5, 10, 100):
        ax.axvline(v, color="0.5", ls=":", lw=0.8)
    ax.set_xlabel("L2-UVP (%), log scale: 0 is the optimal map, 100 the constant map at the target mean")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
