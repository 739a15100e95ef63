"""Learning-rate schedules: their shapes, last-iterate bounds against T, refined schedules from
gradient norms, and training with each schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from workbench.plots.training import smooth


def schedule_shapes(curves: Mapping[str, np.ndarray], title: str):
    """Learning rate against step, one line per named schedule (values per step).

    Args:
        curves: schedule name -> its learning rates per step [T] (peak 1).
        title: the axes title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, values in curves.items():
        ax.plot(np.asarray(values), label=name)
    ax.set(xlabel="step", ylabel="learning rate (peak 1)", title=title)
    ax.legend(fontsize=8)
    return fig


def bound_curves(horizons: Sequence[int], curves: Mapping[str, np.ndarray], *, reference: float | None = 2.0,
                 ylabel: str = "bound x sqrt(T) / (D G)",
                 title: str = "Last-iterate bound at the best scale (constant gradient norms)"):
    """Bound x sqrt(T) against the horizon T (log x), one marked line per named schedule, and a
    dotted line at `reference` (2: linear decay's constant).

    Args:
        horizons: the horizons T [H].
        curves: schedule name -> its normalised bound at each horizon [H] (`schedules.bound_curve`).
        reference: the height of the dotted reference line (None: no line).
        ylabel: the y-axis label.
        title: the axes title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(horizons, curve, "o-", label=name)
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="T", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return fig


def refined_bound(norms: np.ndarray, refined: np.ndarray, baseline: np.ndarray, horizons: Sequence[int],
                  curves: Mapping[str, np.ndarray], baseline_label: str = "linear decay"):
    """Left: gradient norms per step, the schedule refined for them and a baseline schedule
    (dashed); right: bound x sqrt(T) / D against T for each named schedule under those norms.

    Args:
        norms: the gradient norms per step [T].
        refined: the refined schedule's values [T] (`schedules.refine(norms).values`).
        baseline: a baseline schedule's values [T], drawn dashed.
        horizons: the horizons T of the right panel [H].
        curves: schedule name -> its normalised bound at each horizon under these norms [H].
        baseline_label: the legend label of `baseline`.

    Returns:
        The matplotlib figure (two axes).
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(np.asarray(norms), label="gradient norm g_t")
    ax1.plot(np.asarray(refined), label="refined schedule")
    ax1.plot(np.asarray(baseline), "--", label=baseline_label)
    ax1.set(xlabel="step", title=f"Norms and the refined schedule (T = {len(np.asarray(norms))})")
    ax1.legend(fontsize=8)
    for name, curve in curves.items():
        ax2.plot(horizons, curve, "o-", label=name)
    ax2.set(xscale="log", xlabel="T", ylabel="bound x sqrt(T) / D (G = 1)", title="Bound with these norms")
    ax2.legend(fontsize=8)
    return fig


def norms_and_schedules(results: Mapping[str, object], tau: float):
    """One column per labelled `experiments.schedules.RefinementResult`: top, the estimated
    gradient norms and their median filter; bottom, the learning rate of each run's schedule.

    Args:
        results: label (e.g. the model) -> a `RefinementResult`.
        tau: the median-filter window fraction used, for the legend.

    Returns:
        The matplotlib figure (2 x len(results) axes).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 6.5), sharex=True, squeeze=False)
    for col, (label, res) in enumerate(results.items()):
        ax = axes[0, col]
        ax.plot(res.grad_norms, alpha=0.5, label="estimated ||g_t||")
        ax.plot(res.refined.smoothed_norms, label=f"median filter (tau={tau})")
        ax.set(yscale="log", title=label, ylabel="gradient norm")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for name, run in res.runs.items():
            ax.plot(run.lrs, label=name)
        ax.set(xlabel="step", ylabel="learning rate")
        ax.legend(fontsize=8)
    return fig


def schedule_losses(results: Mapping[str, object], window: int):
    """One panel per labelled `RefinementResult`: the minibatch loss of each schedule's run,
    smoothed by a `window`-step moving average (valid part only), log scale.

    Args:
        results: label (e.g. the model) -> a `RefinementResult`.
        window: the moving-average window in steps, >= 1.

    Returns:
        The matplotlib figure (one axes per label).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.6), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items(), strict=True):
        for name, run in res.runs.items():
            ax.plot(smooth(run.history["loss"], window)[window - 1:], label=name)  # full windows only
        ax.set(yscale="log", xlabel="step", ylabel="minibatch loss (smoothed)", title=label)
        ax.legend(fontsize=8)
    return fig


def schedule_and_bound(T: int, values: np.ndarray, horizons: Sequence[int], reference: np.ndarray, curve: np.ndarray,
                       reference_label: str = "linear decay"):
    """Left: a schedule's learning rate over a run of T steps (relative to its peak); right: its
    last-iterate bound against T beside a reference schedule's (dashed).

    Args:
        T: the horizon shown on the left.
        values: the schedule's learning rates over those T steps [T].
        horizons: the horizons of the right panel [H].
        reference: the reference schedule's normalised bound at each horizon [H].
        curve: this schedule's normalised bound at each horizon [H].
        reference_label: the legend label of `reference`.

    Returns:
        The matplotlib figure (two axes).
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.9, wspace=0.3)  # fixed: cheap for live panels
    ax1.plot(np.arange(len(values)), np.asarray(values) / max(float(np.max(values)), 1e-300))
    ax1.set(xlabel="step t", ylabel="learning rate / peak", title=f"your schedule, T = {T}")
    ax2.plot(horizons, reference, "k--", label=reference_label)
    ax2.plot(horizons, curve, "o-", label="yours")
    ax2.set(xscale="log", xlabel="horizon T", ylabel="bound x sqrt(T) / (D G)")
    ax2.legend()
    return fig
