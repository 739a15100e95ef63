"""Figures of the `sketching` paper: Theorem 3.1 histograms, Table 6/7 curves with error bars,
QK's per-factor spread, Table 1's restriction, time against D."""

from __future__ import annotations

import numpy as np


def norm_ratio_table(table, qk_table=None):
    """P(ratio < 0.1) and P(|ratio - 1| > 0.5) against D per kind, with chi-square(1) lines.

    Args:
        table: a `NormRatioTable` (`experiments.sketching.theorem_3_1_table`).
        qk_table: a `FactorTable` for a third panel (None: two panels).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    ncols = 3 if qk_table is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6))
    for ax, values, ref, title in ((axes[0], table.p_below, 0.248, "P(ratio < 0.1)"),
                                   (axes[1], table.p_far, 0.741, "P(|ratio - 1| > 0.5)")):
        for kind, row in zip(table.kinds, values):
            ax.plot(np.log2(table.dims), row, "o-", label=kind)
        ax.axhline(ref, color="k", ls="--", lw=0.8, label=f"chi-square(1): {ref}")
        ax.set(xlabel="log2 D", ylabel="probability", title=f"{title}, {table.num_draws} draws")
    axes[0].legend(fontsize=8)
    if qk_table is not None:
        labels = [" x ".join(map(str, s)) for s in qk_table.dims_out]
        pos = np.arange(len(labels))
        axes[2].bar(pos - 0.2, qk_table.variance, 0.4, label="measured")
        axes[2].bar(pos + 0.2, qk_table.predicted, 0.4, label="Beta-product formula")
        axes[2].set_xticks(pos, labels)
        axes[2].set(xlabel="QK per-factor sizes D_1 x D_2 (same D)", ylabel="Var(ratio), one-hot input",
                    title="QK needs every D_i large (Thm 3.3)")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def correlation_curves(tables: dict, thresholds=(0.95, 0.98, 0.99)):
    """Mean Pearson r (error bars: std over draws) against log2 D, one panel per model.

    Args:
        tables: panel title -> `quality.CorrelationTable`.
        thresholds: the r drawn as dashed lines.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        for kind, mean, std in zip(t.kinds, t.mean, t.std):
            ax.errorbar(t.log2_dims, mean, yerr=std, marker="o", capsize=3, label=kind)
        for th in thresholds:
            ax.axhline(th, color="gray", ls="--", lw=0.8)
        ax.set(xlabel="log2 D", ylabel="Pearson r, sketched vs exact dot products", ylim=(0.5, 1.0), title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def eigen_error_curves(table, title="Top-10 eigenvalues of Phi H Phi^T"):
    """Mean relative error of the top eigenvalues of Phi H Phi^T against log2 D per kind (error bars: std over draws), with dashed lines at 0.2 / 0.1 / 0.05.

    Args:
        table: a `quality.EigenTable`.
        title: the panel title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    mean, std = np.nanmean(table.rel_error, -1), np.nanstd(table.rel_error, -1)
    for kind, m, s in zip(table.kinds, mean, std):
        ax.errorbar(table.log2_dims, m, yerr=s, marker="o", capsize=3, label=kind)
    for th in (0.2, 0.1, 0.05):
        ax.axhline(th, color="gray", ls="--", lw=0.8)
    ax.set(xlabel="log2 D", ylabel="mean relative error", yscale="log", title=title)
    ax.legend(fontsize=8)
    return fig


def restriction_bars(result):
    """Table 1 as bars: one layer's gradients against a whole-model sketch, for dot products (Pearson r) and top-10 Hessian eigenvalues (relative error).

    Args:
        result: a `RestrictionResult` (`experiments.sketching.layer_restriction`).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    d = 1 << result.log2_dim
    labels = [f"one layer\n{result.layer} ({result.layer_size})", f"whole-model affd\nD = {d}"]
    axes[0].bar(labels, [result.pearson_layer, np.mean(result.pearson_sketch)],
                yerr=[0, np.std(result.pearson_sketch)], capsize=4)
    axes[0].set(ylabel="Pearson r of dot products", ylim=(0, 1), title="Dot products")
    axes[1].bar(labels, [result.eig_error_layer, np.mean(result.eig_error_sketch)],
                yerr=[0, np.std(result.eig_error_sketch)], capsize=4)
    axes[1].set(ylabel="mean relative error, top-10 eigenvalues", yscale="log", title="Hessian eigenvalues")
    fig.tight_layout()
    return fig


def timing_curves(table):
    """Milliseconds per apply against log2 D per kind (log scale): the slopes are the finding.

    Args:
        table: a `TimingTable` (`experiments.sketching.time_against_dim`).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, row in zip(table.kinds, table.seconds):
        ax.plot(table.log2_dims, row * 1e3, "o-", label=kind + (" (on the fly)" if kind == "dense" else ""))
    ax.set(xlabel="log2 D", ylabel="ms per apply", yscale="log",
           title=f"Time against D, N = 2^{int(np.log2(table.dim_in))}, batch {table.batch}")
    ax.legend(fontsize=8)
    return fig


def search_trace(results: dict):
    """Metric and d against step for the doubling search, one line per model.

    Args:
        results: model name -> `workbench.sketch.IntrinsicSearchResult`.

    Returns:
        The matplotlib figure (metric and d against step).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        line, = axes[0].plot(r.history_steps, r.history_metric, "o-", ms=3, label=f"{name}: D* = {r.d_star}")
        axes[0].axhline(r.threshold, color=line.get_color(), ls="--", lw=0.8)
        axes[1].step(r.history_steps, r.history_dims, where="pre", color=line.get_color(), label=name)
    axes[0].set(xlabel="step", ylabel="test accuracy", title="One run, doubling d when it stalls")
    axes[1].set(xlabel="step", ylabel="subspace dimension d", yscale="log")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def dots_scatter(exact: np.ndarray, sketched: np.ndarray, ratios: np.ndarray, title: str):
    """Left: sketched against exact inner products <g_i, g_j> of per-example gradients (the line
    y = x dashed); right: the distortion ||Phi g_i||^2 / ||g_i||^2 of each gradient.

    Args:
        exact: [pairs] exact inner products.
        sketched: [pairs] the same pairs after the sketch.
        ratios: [examples] squared-norm ratios.
        title: the left panel's title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax1.scatter(exact, sketched, s=3, alpha=0.5)
    lim = [min(exact.min(), sketched.min()), max(exact.max(), sketched.max())]
    ax1.plot(lim, lim, "k--", lw=0.8)
    ax1.set(xlabel="exact <g_i, g_j>", ylabel="sketched <Phi g_i, Phi g_j>", title=title)
    ax2.hist(ratios, bins=30)
    ax2.axvline(1.0, color="k", ls="--", lw=0.8)
    ax2.set(xlabel="||Phi g||^2 / ||g||^2 (1 = no distortion)", ylabel="examples")
    fig.tight_layout()
    return fig


def accuracy_vs_dim(dims: np.ndarray, accuracy: np.ndarray, full_accuracy: float, threshold: float, title: str):
    """Test accuracy after training in random subspaces of dimension d, with the full model's
    accuracy and the 90% threshold as horizontal lines.

    Args:
        dims: [m] subspace dimensions tried (any order).
        accuracy: [m] test accuracy at each.
        full_accuracy: the full model's accuracy.
        threshold: the d_int90 threshold.
        title: the panel title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    order = np.argsort(dims)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(np.asarray(dims)[order], np.asarray(accuracy)[order], "o-", label="subspace training")
    ax.axhline(full_accuracy, color="k", lw=0.8, label="full model")
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label="90% of full")
    ax.set(xscale="log", xlabel="subspace dimension d", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_curves(sweeps: dict):
    """Test accuracy against subspace dimension d, one curve per model, each with its dashed
    threshold (90% of the full model's accuracy): where a curve crosses its line is d_int90.

    Args:
        sweeps: model name -> its `workbench.sketch.IntrinsicSweepResult`.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, r), color in zip(sweeps.items(), ("C0", "C1", "C2", "C3")):
        ax.plot(r.dims, r.accuracy, "o-", color=color, label=f"{name} (n={r.num_params}), d_int90={r.d_int90}")
        ax.axhline(r.threshold, color=color, ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="subspace dimension d", ylabel="test accuracy", title="Intrinsic dimension on digits")
    ax.legend()
    return fig
