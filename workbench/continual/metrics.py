"""What continual evaluation measures: the stability gap, minimum and worst-case accuracy, and the
loss along the straight line between two points of a run.

The accuracy curves come from `train_stream` ([num_evals, T], rows at `eval_steps`). Definitions
(our reading of De Lange, van de Ven and Tuytelaars 2023, "Continual evaluation for lifelong
learning: identifying the stability gap"):
- at the switch from task k to task k + 1, the **gap** of task k is its accuracy at the switch
  minus the lowest accuracy it reaches during task k + 1; the **recovery** is its accuracy at
  the end of task k + 1 minus that lowest point;
- the **minimum accuracy** of task k is its lowest accuracy at any evaluation after its own
  training ended; `average_minimum_accuracy` averages it over every task but the last;
- the **worst-case accuracy** at the end is (1 / T) x the last task's final accuracy +
  (1 - 1 / T) x the average minimum accuracy of the others.
Evaluating only at task ends (`at_task_ends`) sees no gap: the lowest point it can find is an
end-of-task accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class SwitchGap(NamedTuple):
    """The old task's accuracy around one task switch (see the module docstring)."""

    task: int  # the task that was just learned
    switch_step: int  # the first step of the next task starts after this step
    at_switch: float
    lowest: float  # the lowest accuracy during the next task
    lowest_step: int
    at_next_end: float  # at the end of the next task
    gap: float  # at_switch - lowest
    recovery: float  # at_next_end - lowest


def _check_curves(accuracy, eval_steps, steps_per_task):
    acc = np.asarray(accuracy, np.float64)
    steps = np.asarray(eval_steps)
    if acc.ndim != 2 or steps.shape != (acc.shape[0],):
        raise ValueError(f"accuracy must be [num_evals, num_tasks] with one eval step per row, got "
                         f"{acc.shape} and {steps.shape}")
    if not np.all(np.isfinite(acc)):
        raise ValueError("accuracy holds NaN or inf (did the run diverge?)")
    ends = [k * steps_per_task for k in range(acc.shape[1] + 1)]
    missing = [e for e in ends if e not in set(steps.tolist())]
    if missing:
        raise ValueError(f"the task ends {missing} were not evaluated (eval_every must divide steps_per_task)")
    return acc, steps


def switch_gaps(accuracy, eval_steps, steps_per_task: int) -> list[SwitchGap]:
    """The gap and recovery of each task at the switch that follows it.

    Args:
        accuracy: [num_evals, T] test accuracies (`StreamResult.accuracy`).
        eval_steps: [num_evals] the steps they were taken after.
        steps_per_task: steps of each task.

    Returns:
        One `SwitchGap` per switch (T - 1 of them), task k for the switch from k to k + 1.

    Raises:
        ValueError: misshapen or non-finite curves, or task ends that were not evaluated.
    """
    acc, steps = _check_curves(accuracy, eval_steps, steps_per_task)
    out = []
    for k in range(acc.shape[1] - 1):
        switch, end = (k + 1) * steps_per_task, (k + 2) * steps_per_task
        during = np.flatnonzero((steps > switch) & (steps <= end))
        at_switch = float(acc[np.flatnonzero(steps == switch)[0], k])
        low = during[np.argmin(acc[during, k])]
        at_end = float(acc[np.flatnonzero(steps == end)[0], k])
        lowest = min(float(acc[low, k]), at_switch)
        out.append(SwitchGap(k, switch, at_switch, lowest, int(steps[low]), at_end, at_switch - lowest,
                             at_end - lowest))
    return out


def minimum_accuracy(accuracy, eval_steps, steps_per_task: int) -> np.ndarray:
    """Each task's lowest test accuracy after its own training ended (the last task has no "after").

    Args:
        accuracy: as in `switch_gaps`.
        eval_steps: as in `switch_gaps`.
        steps_per_task: as in `switch_gaps`.

    Returns:
        [T - 1] the minimum accuracy of tasks 0 .. T - 2.
    """
    acc, steps = _check_curves(accuracy, eval_steps, steps_per_task)
    return np.array([acc[steps >= (k + 1) * steps_per_task, k].min() for k in range(acc.shape[1] - 1)])


def average_minimum_accuracy(accuracy, eval_steps, steps_per_task: int) -> float:
    """De Lange et al.'s min-ACC at the end of the stream: `minimum_accuracy` averaged over tasks.

    Args:
        accuracy: as in `switch_gaps`.
        eval_steps: as in `switch_gaps`.
        steps_per_task: as in `switch_gaps`.

    Returns:
        The average minimum accuracy, a float.
    """
    return float(np.mean(minimum_accuracy(accuracy, eval_steps, steps_per_task)))


def worst_case_accuracy(accuracy, eval_steps, steps_per_task: int) -> float:
    """De Lange et al.'s WC-ACC at the end: (1/T) last task's final accuracy + (1 - 1/T) min-ACC.

    Args:
        accuracy: as in `switch_gaps`.
        eval_steps: as in `switch_gaps`.
        steps_per_task: as in `switch_gaps`.

    Returns:
        The worst-case accuracy, a float (the final accuracy when there is one task).
    """
    acc, _ = _check_curves(accuracy, eval_steps, steps_per_task)
    T = acc.shape[1]
    if T == 1:
        return float(acc[-1, 0])
    return float(acc[-1, -1] / T + (1 - 1 / T) * average_minimum_accuracy(accuracy, eval_steps, steps_per_task))


def at_task_ends(accuracy, eval_steps, steps_per_task: int) -> tuple[np.ndarray, np.ndarray]:
    """The curves as an evaluation only at task ends would see them.

    Args:
        accuracy: as in `switch_gaps`.
        eval_steps: as in `switch_gaps`.
        steps_per_task: as in `switch_gaps`.

    Returns:
        (accuracy rows at steps 0, steps_per_task, 2 steps_per_task, ..., those steps).
    """
    acc, steps = _check_curves(accuracy, eval_steps, steps_per_task)
    keep = steps % steps_per_task == 0
    return acc[keep], steps[keep]


def linear_path(loss_fn: Callable, start: PyTree, end: PyTree, data, num_points: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """The loss along the straight line from `start` to `end`: (alphas, losses) with
    params (1 - alpha) start + alpha end at `num_points` evenly spaced alphas in [0, 1].

    Args:
        loss_fn: `loss_fn(params, data) -> scalar`.
        start: the params at alpha = 0 (e.g. at a task switch).
        end: the params at alpha = 1 (e.g. at the end of the next task).
        data: what the loss is evaluated on (e.g. the old task's test set).
        num_points: points on the line (>= 2).

    Returns:
        (alphas [num_points], losses [num_points]) as NumPy arrays.

    Raises:
        ValueError: fewer than 2 points, or params of different structures.
    """
    from workbench.core.numerics import check_positive_int
    from workbench.core.tree import check_same_structure

    num_points = check_positive_int("num_points", num_points, least=2)
    check_same_structure(start, end, "start", "end")
    alphas = jnp.linspace(0.0, 1.0, num_points, dtype=jnp.result_type(*jax.tree.leaves(start)))

    def at(alpha):
        return loss_fn(jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, start, end), data)

    return np.asarray(alphas), np.asarray(jax.lax.map(at, alphas))
