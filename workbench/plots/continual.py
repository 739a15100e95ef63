"""Continual learning: accuracy on every task at every step around the switches, the learning
rate beside it, the old task's loss along SGD's path and along the straight line, and the
curvature along a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _switch_lines(ax, steps_per_task: int, num_tasks: int) -> None:
    for k in range(1, num_tasks):
        ax.axvline(k * steps_per_task, color="0.6", lw=0.8, ls=":")


def stream_curves(results: Mapping[str, object], lrs: Mapping[str, np.ndarray], steps_per_task: int,
                  task_names: Sequence[str], title: str = "Accuracy on every task at every step"):
    """One column per setting: test accuracy on each task against step (the mean over seeds,
    each seed faint), switches dotted, and the learning rate below.

    Args:
        results: setting name -> its `StreamResult` with a leading seed axis.
        lrs: setting name -> its learning rate per step.
        steps_per_task: steps of each task.
        task_names: the tasks' names.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 4.6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(names):
        r = results[name]
        steps = np.asarray(r.eval_steps[0])
        acc = np.asarray(r.accuracy)
        ax = axes[0, j]
        for t, task in enumerate(task_names):
            for seed_curve in acc[:, :, t]:
                ax.plot(steps, seed_curve, color=colors[t % len(colors)], lw=0.4, alpha=0.3)
            ax.plot(steps, acc[:, :, t].mean(0), color=colors[t % len(colors)], lw=1.4, label=task)
        _switch_lines(ax, steps_per_task, len(task_names))
        ax.set(title=name, ylim=(0, 1.02))
        ax.title.set_fontsize(9)
        if j == 0:
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7, loc="lower left")
        lr_ax = axes[1, j]
        lr_ax.plot(np.arange(len(lrs[name])), lrs[name], color="0.3", lw=1)
        _switch_lines(lr_ax, steps_per_task, len(task_names))
        lr_ax.set_xlabel("step")
        if j == 0:
            lr_ax.set_ylabel("learning rate")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def zoom_on_switch(results: Mapping[str, object], steps_per_task: int, task: int = 0, window: int | None = None,
                   title: str = "The old task right after the switch"):
    """The old task's accuracy around the switch that ends it, one line per setting (mean over
    seeds), and the same curve as an evaluation only at task ends sees it (dashed).

    Args:
        results: setting name -> `StreamResult` with a leading seed axis.
        steps_per_task: steps of each task.
        task: the old task.
        window: steps shown after the switch (default: the whole next task).
        title: the axes title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    switch = (task + 1) * steps_per_task
    window = window or steps_per_task
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (name, r) in enumerate(results.items()):
        steps = np.asarray(r.eval_steps[0])
        mean = np.asarray(r.accuracy)[:, :, task].mean(0)
        keep = (steps >= switch - steps_per_task // 4) & (steps <= switch + window)
        line, = ax.plot(steps[keep], mean[keep], lw=1.4, label=name)
        ends = (steps % steps_per_task == 0) & keep
        ax.plot(steps[ends], mean[ends], "o--", color=line.get_color(), lw=0.8, ms=4,
                label="only at task ends" if i == 0 else None)
    ax.axvline(switch, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel=f"accuracy on task {task}", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def paths(comparison, title: str = "The old task's loss: SGD's path against the straight line"):
    """Left: the old task's test loss along SGD's path from the switch to the next task's end;
    right: along the straight line between the same two params.

    Args:
        comparison: an `experiments.continual.PathComparison`.
        title: the figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    c = comparison
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    a.plot(c.sgd_steps, c.sgd_loss, color="C3")
    a.set(xlabel="step", ylabel="old task's test loss", title=f"SGD's path (barrier {c.sgd_barrier:.3f})")
    b.plot(c.alphas, c.linear_loss, "o-", ms=3, color="C0")
    b.set(xlabel="alpha: (1 - alpha) switch + alpha end", title=f"straight line (barrier {c.linear_barrier:.3f})")
    for ax in (a, b):
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curvature(curves: Mapping[str, object], steps_per_task: int, num_tasks: int):
    """The top Hessian eigenvalue of the current task's loss and learning rate x that eigenvalue
    along runs (2: gradient descent's stability threshold).

    Args:
        curves: setting name -> `experiments.continual.CurvatureAlongRun`.
        steps_per_task: steps of each task.
        num_tasks: the number of tasks.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, c in curves.items():
        a.plot(c.steps, c.top_eigenvalue, "o-", ms=3, label=name)
        b.plot(c.steps, c.lr_times_top, "o-", ms=3, label=name)
    b.axhline(2.0, color="k", lw=0.8, ls="--", label="2 (GD stability)")
    for ax in (a, b):
        _switch_lines(ax, steps_per_task, num_tasks)
        ax.set_xlabel("step")
    a.set(ylabel="top Hessian eigenvalue", title="Sharpness of the task being learned")
    b.set(ylabel="learning rate x top eigenvalue", title="Against the stability threshold")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def final_accuracies(labels: Sequence[str], old: Sequence[float], new: Sequence[float], joint_old: float,
                     joint_new: float, xlabel: str, title: str):
    """Final accuracy on the old tasks and on the last task against a swept setting, with joint
    training's as horizontal lines.

    Args:
        labels: the swept values, as labels.
        old: the old tasks' final accuracy at each.
        new: the last task's final accuracy at each.
        joint_old: joint training's final accuracy on the old tasks.
        joint_new: joint training's on the last task.
        xlabel: what was swept.
        title: the axes title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = np.arange(len(labels))
    ax.plot(x, old, "o-", label="old tasks")
    ax.plot(x, new, "s-", label="last task")
    ax.axhline(joint_old, color="C0", ls=":", lw=1, label="joint: old tasks")
    ax.axhline(joint_new, color="C1", ls=":", lw=1, label="joint: last task")
    ax.set_xticks(x, labels)
    ax.set(xlabel=xlabel, ylabel="final test accuracy", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
