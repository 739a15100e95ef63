"""Curvature spectra: SLQ densities against exact eigenvalues, top eigenvalues, trace estimates,
and sharpness against the edge-of-stability threshold 2/lr."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def spectral_densities(densities: Mapping[str, object], eigenvalues: Mapping[str, np.ndarray | None] | None = None,
                       *, bins: int = 120, floor: float = 1e-8, ymin: float = 1e-5):
    """One panel per named `spectrum.Density` (log-scale SLQ density, clipped below at `floor`),
    over the histogram of the exact eigenvalues `eigenvalues[name]` when given (not None).

    Args:
        densities: `spectrum.Density` results by panel title (each with `grid` and `density`).
        eigenvalues: exact eigenvalues, shape (n,), by the same titles; a missing or None entry
            draws no histogram; None for none at all.
        bins: histogram bins of the exact eigenvalues (default 120).
        floor: the density is clipped below at this value so the log scale shows it (default 1e-8).
        ymin: the lower limit of the density axis (default 1e-5).

    Returns:
        A matplotlib figure, one panel per density side by side, sharing the density axis.
    """
    import matplotlib.pyplot as plt

    eigenvalues = eigenvalues or {}
    n = len(densities)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4) if n > 1 else (6, 3.5), sharey=True, squeeze=False)
    for ax, (name, dens) in zip(axes[0], densities.items(), strict=True):
        ax.semilogy(np.asarray(dens.grid), np.maximum(np.asarray(dens.density), floor), label="SLQ density")
        eigs = eigenvalues.get(name)
        if eigs is not None:
            ax.hist(np.asarray(eigs), bins=bins, density=True, color="0.6", alpha=0.5, label="exact eigenvalues")
        ax.set_ylim(ymin, None)
        ax.set_xlabel("eigenvalue")
        ax.set_title(name)
        ax.legend()
    axes[0, 0].set_ylabel("density")
    fig.tight_layout()
    return fig


def eigenvalues_by_rank(curves: Mapping[str, np.ndarray], reference: np.ndarray | None = None,
                    reference_label: str = "dense eigh"):
    """Eigenvalue against rank (1 = largest) on a log scale, one marked line per named estimate,
    and black dots for `reference` (e.g. the largest eigenvalues of the dense matrix).

    Args:
        curves: estimated eigenvalues by label, each shape (k,) in decreasing order.
        reference: reference eigenvalues, shape (k,), drawn as black dots; None for none.
        reference_label: the legend entry of `reference` (default "dense eigh").

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (label, values), style in zip(curves.items(), ("o-", "s--", "^:", "v-."), strict=False):
        values = np.asarray(values)
        ax.plot(range(1, len(values) + 1), values, style, label=label)
    if reference is not None:
        reference = np.asarray(reference)
        ax.plot(range(1, len(reference) + 1), reference, "k.", label=reference_label)
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def outliers_and_gradient(spectra: Mapping[str, np.ndarray], ranks: Sequence[int], gradient_fractions: Sequence[float],
                          dim: int, num_outliers: int):
    """Left: the largest eigenvalues by rank (log scale) of each named spectrum, the outlier count
    marked. Right: the fraction of ||g||^2 in the top-i eigenspace against i, next to i / dim (a
    random i-dimensional subspace's expected share).

    Args:
        spectra: eigenvalues by label (any order; the largest 3 * num_outliers are drawn).
        ranks: the subspace dimensions i of `gradient_fractions`.
        gradient_fractions: the fraction of ||g||^2 in the span of the top-i eigenvectors, per rank.
        dim: the number of parameters p.
        num_outliers: the rank marked by a dotted line.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    shown = 3 * num_outliers
    for (label, values), style in zip(spectra.items(), ("o-", "s--", "^:"), strict=False):
        values = np.sort(np.asarray(values))[::-1][:shown]
        left.plot(range(1, len(values) + 1), np.maximum(values, 1e-12), style, ms=3, label=label)
    for ax in (left, right):
        ax.axvline(num_outliers, color="k", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.set_xlabel("rank" if ax is left else "subspace dimension i")
    left.set_yscale("log")
    left.set_ylabel("eigenvalue")
    left.legend()
    ranks = np.asarray(ranks)
    right.plot(ranks, gradient_fractions, "o-", ms=3, label="top-i eigenvectors")
    right.plot(ranks, ranks / dim, "k--", label="random subspace (i / p)")
    right.set_ylim(0, 1)
    right.set_ylabel("fraction of ||g||^2")
    right.legend()
    fig.tight_layout()
    return fig


def trace_estimates(estimates: Mapping[str, object], exact: float | None = None):
    """Each named `spectrum.TraceEstimate` with +- 2 standard errors, and the exact trace dashed.

    Args:
        estimates: `spectrum.TraceEstimate` results (with `estimate` and `std_error`) by method name,
            one point each along the x axis.
        exact: the exact trace, drawn as a dashed line; None for none.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(estimates)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(range(len(names)), [float(estimates[m].estimate) for m in names],
                yerr=[2 * float(estimates[m].std_error) for m in names], fmt="o", capsize=4)
    if exact is not None:
        ax.axhline(exact, color="k", ls="--", label="exact trace")
        ax.legend()
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("trace (+- 2 standard errors)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sharpness_vs_threshold(runs: Sequence[object]):
    """Left: the sharpness of each `experiments.spectra.SharpnessRun` (history "callback_step",
    "sharpness") with its threshold 2/lr dashed in the same colour; right: its training loss.

    Args:
        runs: `experiments.spectra.SharpnessRun`s, each with `learning_rate` and a `history` holding
            "callback_step" and "sharpness" (measured steps) and "step" and "loss" (every step).

    Returns:
        A matplotlib figure with the two panels.
    """
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        h = run.history
        (line,) = ax_s.plot(h["callback_step"], h["sharpness"], label=f"lr={run.learning_rate:g}")
        ax_s.axhline(2 / run.learning_rate, color=line.get_color(), ls="--", lw=1)
        ax_l.plot(h["step"], h["loss"], color=line.get_color(), label=f"lr={run.learning_rate:g}")
    ax_s.set_xlabel("step")
    ax_s.set_ylabel("sharpness (top Hessian eigenvalue)")
    ax_s.set_title("sharpness vs 2/lr (dashed)")
    ax_s.legend()
    ax_l.set_yscale("log")
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("training loss (full batch)")
    ax_l.legend()
    for ax in (ax_s, ax_l):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sharpness_run(run) -> object:
    """One `SharpnessRun` alone: its sharpness against step and the threshold 2/lr.

    Args:
        run: an `experiments.spectra.SharpnessRun` (its `learning_rate` and `history`'s
            "callback_step" and "sharpness").

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(run.history["callback_step"], run.history["sharpness"])
    ax.axhline(2 / run.learning_rate, ls="--", color="k")
    ax.set(xlabel="step", ylabel="sharpness (top Hessian eigenvalue)", title=f"lr={run.learning_rate:g}")
    fig.tight_layout()
    return fig
