"""SGD on convex problems: suboptimality quantiles across seeds of the last iterate and the
averages, and the Harvey et al. construction where the last iterate pays log T."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ITERATE_COLORS = {"last": "tab:blue", "uniform": "tab:orange", "suffix": "tab:green"}


def suboptimality_quantiles(results: Mapping[str, object], title: str,
                            qs: tuple[float, float, float] = (0.5, 0.9, 0.95), floor: float = 1e-16):
    """Grid of panels, one row per key of `results` (e.g. "lr x10") and one column per schedule
    (`convex.SGDResult`, suboptimality [seeds, K] at `.steps`): the median across seeds of the
    last iterate and both averages, with bands to the `qs[1]` and `qs[2]` quantiles (log-log).

    Args:
        results: row label -> a `convex.ScheduleComparison` (or any mapping with `.items()` of
            schedule name -> `SGDResult`); every row has the same schedules.
        title: the figure title.
        qs: the median's level and the two band levels.
        floor: suboptimalities are clipped below at this value for the log scale.

    Returns:
        The matplotlib figure (rows x schedules axes).
    """
    import matplotlib.pyplot as plt

    rows = {label: list(comparison.items()) for label, comparison in results.items()}
    cols = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), cols, figsize=(4.2 * cols, 3.4 * len(rows)), sharey="row", squeeze=False)
    for row, row_label in zip(axes, rows, strict=True):
        for ax, (name, res) in zip(row, rows[row_label], strict=True):
            for kind, color in ITERATE_COLORS.items():
                q = np.quantile(np.maximum(np.asarray(getattr(res, kind)), floor), np.asarray(qs), axis=0)
                ax.plot(res.steps, q[0], color=color, label=f"{kind} (median)")
                ax.fill_between(res.steps, q[0], q[1], color=color, alpha=0.3)
                ax.fill_between(res.steps, q[1], q[2], color=color, alpha=0.12)
            ax.set(xscale="log", yscale="log", xlabel="T", title=f"{name}, {row_label}")
        row[0].set_ylabel("f(x) - f*")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def harvey(result, lower_bound: float = 1 / 32):
    """The Harvey construction (`convex.HarveyResult`): left, suboptimality x sqrt(T) of the last
    iterate and both averages against T; right, the same divided by log T with the theorem's
    lower bound dotted.

    Args:
        result: a `convex.HarveyResult`.
        lower_bound: the theorem's constant for the last iterate (default 1/32).

    Returns:
        The matplotlib figure (two axes).
    """
    import matplotlib.pyplot as plt

    T = np.asarray(result.steps, dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind, color in ITERATE_COLORS.items():
        gap = np.asarray(getattr(result, kind))
        ax1.plot(T, gap * np.sqrt(T), "o-", color=color, label=kind)
        ax2.plot(T, result.over_rate(kind), "o-", color=color, label=kind)
    ax2.axhline(lower_bound, color="k", ls=":", label=f"lower bound 1/{1 / lower_bound:g}")
    ax1.set(xscale="log", xlabel="T", ylabel="(f(x) - f*) sqrt(T)", title="Harvey construction")
    ax2.set(xscale="log", xlabel="T", ylabel="(f(x) - f*) sqrt(T) / log T")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return fig
