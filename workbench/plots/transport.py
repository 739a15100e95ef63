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
    """The method x problem table of mean L2-UVP as a heatmap (log colour scale, each cell
    annotated with its value; blank where a method was not run on a problem).

    Args:
        rows: {(problem, method): {"mean": Row, ...}} (`experiments.transport.table`).
        problems: the problems, one column each.
        methods: the methods, one row each, top to bottom.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    values = np.array([[rows[(p, m)]["mean"].l2_uvp if (p, m) in rows else np.nan for p in problems]
                       for m in methods], np.float64)
    fig, ax = plt.subplots(figsize=(1.1 * len(problems) + 3.2, 0.32 * len(methods) + 1.6))
    image = ax.imshow(np.clip(values, 0.1, None), cmap="viridis_r", norm=LogNorm(vmin=0.5, vmax=150), aspect="auto")
    for i in range(len(methods)):
        for j in range(len(problems)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > 10 else "black")
    ax.set_xticks(range(len(problems)))
    ax.set_xticklabels(problems, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels(methods, fontsize=8)
    fig.colorbar(image, ax=ax, label="L2-UVP (%): 0 optimal, 100 the constant map at nu's mean")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
