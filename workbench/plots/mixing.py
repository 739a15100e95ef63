"""Objective mixing: held-out losses of every setting over training, the translation share a
bandit learns against the static ratios, and the in-context probes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def loss_curves(results: Mapping[str, object], eval_names: Sequence[str],
                title: str = "Held-out loss of each objective during training"):
    """One panel per held-out set: its loss against step for every setting (mean over seeds).

    Args:
        results: setting name -> `mixing.MixtureResult` with a leading seed axis.
        eval_names: the held-out sets' names, in the order of `eval_loss`'s last axis.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(eval_names), figsize=(3.6 * len(eval_names), 3.3), squeeze=False)
    for j, set_name in enumerate(eval_names):
        ax = axes[0, j]
        for name, r in results.items():
            steps = np.asarray(r.eval_steps[0])
            ax.plot(steps[1:], np.asarray(r.eval_loss)[:, 1:, j].mean(0), lw=1.3, label=name)
        ax.set(title=f"{set_name}", xlabel="step", ylabel="loss (nats per character)")
        ax.title.set_fontsize(9)
        if j == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def learned_ratio(results: Mapping[str, object], static_ratios: Sequence[float], best_static: float | None = None,
                  window: int = 100, title: str = "The translation share a bandit learns"):
    """The probability each bandit gives translation over training (mean over seeds, each seed
    faint) and the share of steps it actually spent there (a moving window), against the static
    ratios.

    Args:
        results: bandit name -> `mixing.MixtureResult` with a leading seed axis.
        static_ratios: the static ratios to draw as horizontal lines.
        best_static: the static ratio with the lowest B loss (drawn bold), or None.
        window: steps of the moving share.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, r) in enumerate(results.items()):
        probs = np.asarray(r.probabilities)[..., 1]
        steps = np.arange(probs.shape[1])
        for seed_curve in probs:
            ax.plot(steps, seed_curve, color=colors[i % len(colors)], lw=0.4, alpha=0.3)
        ax.plot(steps, probs.mean(0), color=colors[i % len(colors)], lw=1.4, label=f"{name}: probability")
        played = (np.asarray(r.tasks) == 1).astype(float).mean(0)
        kernel = np.ones(window) / window
        ax.plot(steps[window - 1:], np.convolve(played, kernel, "valid"), color=colors[i % len(colors)], lw=1,
                ls="--", label=f"{name}: share of the last {window} steps")
    for ratio in static_ratios:
        bold = best_static is not None and np.isclose(ratio, best_static)
        ax.axhline(ratio, color="0.2" if bold else "0.6", lw=1.6 if bold else 0.8, ls=":")
    ax.set(xlabel="step", ylabel="translation share", ylim=(0, 1), title=title)
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def probes(rows: Mapping[str, object], title: str = "Translating in context: with and without demonstrations"):
    """Bars of next-character accuracy on query translations, 0-shot and k-shot, in the trained
    and in an unseen format, for every setting.

    Args:
        rows: setting name -> `experiments.mixing.Probes` (seed means).
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(rows)
    fields = [("zero_shot", "trained format, 0-shot"), ("k_shot", "trained format, k-shot"),
              ("unseen_zero_shot", "unseen format, 0-shot"), ("unseen_k_shot", "unseen format, k-shot")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 3.6))
    width = 0.8 / len(fields)
    x = np.arange(len(names))
    for i, (field, label) in enumerate(fields):
        ax.bar(x + (i - 1.5) * width, [getattr(rows[n], field) for n in names], width, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="next-character accuracy on the target", title=title)
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_overview(result, eval_names: Sequence[str], title: str):
    """One setting at a glance: its held-out losses and its translation probability over training.

    Args:
        result: a `mixing.MixtureResult` with a leading seed axis.
        eval_names: the held-out sets' names.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    steps = np.asarray(result.eval_steps[0])
    for j, name in enumerate(eval_names):
        left.plot(steps[1:], np.asarray(result.eval_loss)[:, 1:, j].mean(0), lw=1.3, label=name)
    left.set(xlabel="step", ylabel="held-out loss (nats per character)")
    left.legend(fontsize=7)
    probs = np.asarray(result.probabilities)[..., 1]
    right.plot(np.arange(probs.shape[1]), probs.mean(0), lw=1.3)
    right.set(xlabel="step", ylabel="probability of translation", ylim=(0, 1))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
