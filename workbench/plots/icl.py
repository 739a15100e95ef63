"""Figures for in-context learning by linear self-attention (`workbench.icl`)."""

from __future__ import annotations

import numpy as np

from workbench import icl

ALGORITHM_STYLE = {"trained": ("C3", "o"), "gd": ("C0", "s"), "gdpp": ("C2", "^"), "newton": ("C1", "D")}
LABELS = {"trained": "trained LSA", "gd": "GD (eta*)", "gdpp": "GD++ (fitted)", "newton": "Newton"}


def weight_heatmaps(trained, constructed, layer: int = 0):
    """Layer `layer`'s W_K^T W_Q and P W_V, trained (scale symmetry removed) beside the construction.

    Args:
        trained: the trained LSA parameters.
        constructed: the constructed parameters (e.g. `icl.gd_weights`).
        layer: the layer shown.

    Returns:
        The matplotlib figure (2 x 2 heat maps).
    """
    import matplotlib.pyplot as plt

    a = icl.canonical_scale(icl.effective_weights(trained))
    b = icl.canonical_scale(icl.effective_weights(constructed))
    fig, axes = plt.subplots(2, 2, figsize=(7.6, 6.6))
    panels = [(a.kq, "trained  $W_K^T W_Q$"), (a.pv, "trained  $P W_V$"),
              (b.kq, "construction  $W_K^T W_Q$"), (b.pv, "construction  $P W_V$")]
    for ax, (mat, title) in zip(axes.flat, panels):
        m = np.asarray(mat[layer])
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("last row/column = target entry y; others = input x", fontsize=9)
    fig.tight_layout()
    return fig


def interpolation(result: icl.Interpolation, trained_loss: float | None = None, gd_loss: float | None = None):
    """Test loss along the straight path from the trained weights (t=0) to the construction (t=1).

    Args:
        result: the `icl.Interpolation`.
        trained_loss: the trained model's loss, drawn as a reference line (default None: none).
        gd_loss: one GD step's loss, drawn as a reference line (default None: none).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.plot(result.t, result.losses, "o-", color="C3", ms=3, label="interpolated")
    if gd_loss is not None:
        ax.axhline(gd_loss, color="C0", ls="--", lw=1, label="one GD step (eta*)")
    ax.set_xlabel("t  (0 = trained, 1 = GD construction)")
    ax.set_ylabel("test loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def depth_losses(comparisons: dict):
    """Test loss against depth K, one panel per setting ({label: DepthComparison}).

    Args:
        comparisons: setting label -> `experiments.icl.DepthComparison`.

    Returns:
        The matplotlib figure (one axes per setting).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(comparisons), figsize=(5.2 * len(comparisons), 3.8), squeeze=False)
    for ax, (label, comp) in zip(axes[0], comparisons.items()):
        for name in ("trained", "gd", "gdpp", "newton"):
            color, marker = ALGORITHM_STYLE[name]
            ax.plot(comp.depths, getattr(comp, name), marker=marker, color=color, label=LABELS[name])
        ax.set_yscale("log")
        ax.set_xticks(comp.depths)
        ax.set_xlabel("layers K  /  steps K")
        ax.set_ylabel("test loss")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_tracking(tracks: dict):
    """Relative prediction error of each trained layer's read-out against GD step k and Newton
    iteration k ({label: LayerTracking}); the minimum marks the step the layer tracks.

    Args:
        tracks: setting label -> `experiments.icl.LayerTracking`.

    Returns:
        The matplotlib figure (one row per setting: GD, Newton).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tracks), 2, figsize=(10, 3.4 * len(tracks)), squeeze=False)
    for row, (label, tr) in enumerate(tracks.items()):
        for ax, (name, match, offset) in zip(axes[row], (("GD", tr.gd, 1), ("Newton", tr.newton, 0))):
            steps = np.arange(match.errors.shape[1]) + offset
            for layer, errs in enumerate(match.errors):
                ax.plot(steps, errs, label=f"layer {layer + 1}", color=f"C{layer}")
                ax.plot(match.best_step[layer] - 1 + offset, match.best_error[layer], "o", color=f"C{layer}")
            if name == "GD":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{name} {'step' if name == 'GD' else 'iteration'} k")
            ax.set_ylabel("relative prediction error")
            ax.set_title(f"{label}: layers vs {name}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def exploration(result):
    """The panel's figure: training curve with the algorithms' losses at depth K, and the loss of
    each layer / step for the trained model and every algorithm (`experiments.icl.Exploration`).

    Args:
        result: the `experiments.icl.Exploration`.

    Returns:
        The matplotlib figure (two axes).
    """
    import matplotlib.pyplot as plt

    from workbench.plots import smooth

    k = len(result.trained_layers)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    h = result.fit.result.history
    ax0.plot(h["step"], smooth(h["loss"], 25), color="C3", label="trained LSA (training loss)")
    for name in ("gd", "gdpp"):
        ax0.axhline(getattr(result, name)[-1], color=ALGORITHM_STYLE[name][0], ls="--", lw=1, label=f"{LABELS[name]}, K={k}")
    ax0.axhline(result.newton[k], color=ALGORITHM_STYLE["newton"][0], ls="--", lw=1, label=f"Newton, {k} iterations")
    ax0.set_yscale("log")
    ax0.set_xlabel("training step")
    ax0.set_ylabel("loss")
    ax0.grid(alpha=0.3)
    ax0.legend(fontsize=7)
    steps = np.arange(1, k + 1)
    for name, values, xs in (("trained", result.trained_layers, steps), ("gd", result.gd, steps),
                             ("gdpp", result.gdpp, steps), ("newton", result.newton, np.arange(k + 1))):
        color, marker = ALGORITHM_STYLE[name]
        ax1.plot(xs, values, marker=marker, color=color, label=LABELS[name])
    ax1.set_yscale("log")
    ax1.set_xlabel("layer / step k")
    ax1.set_ylabel("test loss")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig
