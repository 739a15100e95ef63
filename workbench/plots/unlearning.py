"""Figures and printed tables for the unlearning papers: method tables as bars and text, the
gradient-ascent cliff, the SSD sweep, and diffusion sample grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def method_bars(rows: Sequence, title: str = ""):
    """Accuracies (forget / retain / held-out) and KLoM 95th percentiles per method, two panels.

    Args:
      rows: `experiments.unlearning.MethodRow`s, one bar group per method.
      title: the figure's title; "" for none.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = [r.method for r in rows]
    x = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (field, label) in enumerate([("forget_accuracy", "forget"), ("retain_accuracy", "retain"),
                                        ("test_accuracy", "held-out")]):
        a1.bar(x + (i - 1) * 0.27, [getattr(r, field) for r in rows], 0.27, label=label)
    a1.set_ylabel("accuracy")
    a1.set_ylim(0, 1.05)
    for i, (field, label) in enumerate([("klom_forget_p95", "forget"), ("klom_retain_p95", "retain"),
                                        ("klom_test_p95", "held-out")]):
        a2.bar(x + (i - 1) * 0.27, [max(getattr(r, field), 1e-3) for r in rows], 0.27, label=label)
    a2.set_yscale("log")
    a2.set_ylabel("KLoM, 95th percentile (log)")
    for a in (a1, a2):
        a.set_xticks(x, names, rotation=30, ha="right")
        a.grid(alpha=0.3, axis="y")
    a1.legend(fontsize=8, loc="lower left", framealpha=0.9)
    a2.legend(fontsize=8, loc="upper right", framealpha=0.9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def cliff(result, title: str = "gradient ascent: forget vs retain accuracy"):
    """Two heat maps over learning rate x steps: forget accuracy and retain accuracy.

    Args:
      result: an `experiments.unlearning_sweeps.Cliff` ("div" marks diverged cells).
      title: the figure's title.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), constrained_layout=True)
    for ax, field, label in zip(axes, ("forget_accuracy", "retain_accuracy"), ("forget accuracy", "retain accuracy")):
        values = getattr(result, field)
        im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "div" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(v) and v < 0.6 else "black")
        ax.set_xticks(range(len(result.steps)), [str(s) for s in result.steps])
        ax.set_yticks(range(len(result.learning_rates)), [f"{lr:g}" for lr in result.learning_rates])
        ax.set_xlabel("steps")
        ax.set_title(label)
    axes[0].set_ylabel("learning rate (SGD)")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return fig


def ssd_sweep(result, oracle_retain: float | None = None):
    """Forget and retain accuracy and the dampened fraction against alpha, per lambda.

    The red line is the bound |D|/|D_f| above which nothing can be selected.

    Args:
      result: an `experiments.unlearning_sweeps.AlphaSweep`.
      oracle_retain: the oracles' retain accuracy, drawn as a dotted line; None for none.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, lam in enumerate(result.lams):
        a1.plot(result.alphas, result.forget_accuracy[:, j], "o-", label=f"forget, lambda={lam:g}")
        a1.plot(result.alphas, result.retain_accuracy[:, j], "s--", color=a1.lines[-1].get_color(),
                label=f"retain, lambda={lam:g}")
    if oracle_retain is not None:
        a1.axhline(oracle_retain, color="k", lw=0.8, ls=":", label="oracle retain")
    a2.plot(result.alphas, np.maximum(result.selected, 1e-6), "o-")
    for a in (a1, a2):
        a.axvline(result.bound, color="r", lw=1, ls="--", label="|D|/|D_f|")
        a.set_xscale("log")
        a.set_xlabel("alpha")
        a.grid(alpha=0.3)
    a1.set_ylabel("accuracy")
    a1.legend(fontsize=7)
    a2.set_yscale("log")
    a2.set_ylabel("fraction of weights dampened")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sample_grid(images: np.ndarray, names: Sequence[str], title: str = ""):
    """Rows = models, columns = samples (shared noise down each column).

    Args:
      images: [models, samples, h, w] in [0, 1].
      names: one name per model (row labels).
      title: the figure's title; "" for none.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.55 + 1.4, rows * 0.6 + 0.4), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(images[i, j], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(names[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.14)
    return fig


def integrity_bars(rows: Sequence):
    """Per forgetting method: integrity distance (pixel, feature) as a fraction of the noise floor,
    beside retain-class accuracy and the Frechet distance.

    Args:
      rows: `experiments.diffusion_unlearning.DiffusionRow`s.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = [r.method for r in rows]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].bar(x - 0.2, [r.integrity_pixel / r.floor_pixel for r in rows], 0.4, label="pixel")
    axes[0].bar(x + 0.2, [r.integrity_feature / r.floor_feature for r in rows], 0.4, label="classifier features")
    axes[0].axhline(1.0, color="k", ls=":", lw=1, label="noise floor")
    axes[0].set_ylabel("integrity distance / noise floor")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [r.retain_accuracy for r in rows])
    axes[1].set_ylabel("retain-class accuracy of samples")
    axes[1].set_ylim(0, 1.05)
    axes[2].bar(x, [r.frechet for r in rows])
    axes[2].set_yscale("log")
    axes[2].set_ylabel("Frechet distance (features, log)")
    for a in axes:
        a.set_xticks(x, names, rotation=25, ha="right")
        a.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def accuracy_bars(result):
    """Forget / retain / held-out accuracy of an unlearned model beside the retrained oracle's.

    Args:
      result: an `experiments.unlearning_sweeps.Explored` (MIA AUC and time go in the title).

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    s, o = result.scores, result.oracle
    x = np.arange(3)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar(x - 0.2, [s.forget_accuracy, s.retain_accuracy, s.test_accuracy], 0.4, label=result.method)
    ax.bar(x + 0.2, [o.forget_accuracy, o.retain_accuracy, o.test_accuracy], 0.4, label="oracle (retrained)",
           color="C7")
    ax.set_xticks(x, ["forget", "retain", "held-out"])
    ax.set(ylabel="accuracy", ylim=(0, 1.05),
           title=f"MIA AUC {result.mia_auc:.3f}, {result.seconds * 1e3:.0f} ms")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- printed tables


def ssd_table(result) -> str:
    """The SSD sweep as text: the bound, the oracles' accuracies, one line per (alpha, lambda).

    Args:
      result: an `experiments.unlearning_sweeps.AlphaSweep`.

    Returns:
      The table, lines joined by newlines.
    """
    o = result.oracle
    lines = [f"bound |D|/|D_f| = {result.bound:.2f}; oracles: forget {o.forget_accuracy:.3f}, "
             f"retain {o.retain_accuracy:.3f}, held-out {o.test_accuracy:.3f}",
             "alpha  lambda  dampened  forget  retain  held-out"]
    for i, a in enumerate(result.alphas):
        for j, lam in enumerate(result.lams):
            lines.append(f"{a:5g}  {lam:6g}  {result.selected[i, j]:8.4f}  {result.forget_accuracy[i, j]:6.3f}  "
                         f"{result.retain_accuracy[i, j]:6.3f}  {result.test_accuracy[i, j]:8.3f}")
    lines.append(f"largest Fisher ratio F_f/F_D {result.max_ratio:.3f} (bound {result.bound:.3f}); work in per-example "
                 f"gradients: SSD {result.ssd_gradients}, one retraining {result.retrain_gradients}; one SSD call "
                 f"{result.seconds * 1e3:.1f} ms")
    return "\n".join(lines)


def method_table(bench, kind: str) -> str:
    """A KLoM benchmark as text: one line per method (accuracies, KLoM95, MIA, time per model).

    Args:
      bench: an `experiments.unlearning.Benchmark`.
      kind: the forget set's kind, for the header.

    Returns:
      The table, lines joined by newlines.
    """
    scale = "none" if bench.datamodel_scale is None else f"{bench.datamodel_scale:.2f}"
    lines = [f"forget set: {kind} ({bench.forget_size} examples), {bench.num_models} models per side, "
             f"datamodel scale {scale}",
             f"{'method':19} {'forget':>6} {'retain':>6} {'heldout':>7} | {'KLoM95 f':>8} {'r':>7} {'h':>7} | "
             f"{'MIA':>5} {'ms/model':>8}"]
    for r in bench.rows:
        lines.append(f"{r.method:19} {r.forget_accuracy:6.3f} {r.retain_accuracy:6.3f} {r.test_accuracy:7.3f} | "
                     f"{r.klom_forget_p95:8.3f} {r.klom_retain_p95:7.3f} {r.klom_test_p95:7.3f} | {r.mia_auc:5.3f} "
                     f"{r.seconds * 1e3:8.1f}")
    return "\n".join(lines)


def diffusion_table(rows: Sequence) -> str:
    """The diffusion comparison as text: one line per method (accuracies, Frechet, integrity and
    its floor, wall seconds of the forgetting run including its compilation).

    Args:
      rows: `experiments.diffusion_unlearning.DiffusionRow`s.

    Returns:
      The table, lines joined by newlines.
    """
    lines = [f"{'method':14} {'forget acc':>10} {'retain acc':>10} {'Frechet':>8} | {'integrity px':>12} "
             f"{'feat':>6} | {'floor px':>8} {'feat':>6} | {'s*':>5}"]
    for r in rows:
        lines.append(f"{r.method:14} {r.forget_accuracy:10.3f} {r.retain_accuracy:10.3f} {r.frechet:8.3f} | "
                     f"{r.integrity_pixel:12.3f} {r.integrity_feature:6.3f} | {r.floor_pixel:8.3f} "
                     f"{r.floor_feature:6.3f} | {r.seconds:5.1f}")
    lines.append("* wall seconds of the forgetting run, including its compilation")
    return "\n".join(lines)
