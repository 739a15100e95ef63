"""Continual learning: task streams, replay, per-step evaluation and the stability gap.

- `streams`: `TaskStream` (every task's training and test set stacked on a task axis),
  `stack_tasks`, `rotated` and `permuted` tasks from a data set the caller loaded;
- `replay`: which task and example each batch slot draws: the current task, a replayed share of
  earlier ones weighted uniformly, by a power law or exponentially in their age, or joint
  training over all tasks;
- `training`: `task_schedule` (re-warm and re-decay, no re-warm, the infinite schedule, ... from
  `workbench.schedules`) and `train_stream`, one compiled loop over the whole stream that scores
  every task's test set every `eval_every` steps (continual evaluation);
- `metrics`: the stability gap and its recovery at each switch, minimum and worst-case accuracy
  (De Lange et al. 2023), the view of an evaluation only at task ends, and the loss along the
  straight line between two params.
The digits and text streams of the paper are built in `workbench.experiments.continual`.

Examples:
    Two tasks of a 2-d problem (the second sees the features swapped), a re-warming schedule,
    and the gap read off hand-made accuracy curves (task 0 falls from 0.9 to 0.7 right after the
    switch and ends at 0.85).

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from workbench import continual
    >>> x = jax.random.normal(jax.random.key(0), (200, 2))
    >>> y = (x[:, 0] > 0).astype(jnp.int32)
    >>> stream = continual.stack_tasks(["a", "b"], [(x, y), (x[:, ::-1], y)], [(x, y), (x[:, ::-1], y)])
    >>> stream.num_tasks, stream.train_x.shape
    (2, (2, 200, 2))
    >>> lrs = continual.task_schedule("rewarm", 0.5, 50, 2)
    >>> lrs.shape, float(lrs[0]), float(lrs.max())
    ((100,), 0.0, 0.5)
    >>> accs = np.array([[1.0, 0.5], [0.9, 0.6], [0.7, 0.8], [0.85, 0.9]])
    >>> gap = continual.switch_gaps(accs, np.array([0, 2, 3, 4]), 2)[0]
    >>> round(gap.gap, 2), round(gap.recovery, 2)
    (0.2, 0.15)
"""

from workbench.continual import metrics, replay, streams, training
from workbench.continual.metrics import (
    SwitchGap,
    at_task_ends,
    average_minimum_accuracy,
    linear_path,
    minimum_accuracy,
    switch_gaps,
    worst_case_accuracy,
)
from workbench.continual.replay import RECENCIES, BatchPlan, plan_batch, task_weights
from workbench.continual.streams import TaskStream, permuted, rotated, stack_tasks
from workbench.continual.training import SCHEDULES, StreamResult, task_schedule, train_stream

__all__ = [
    "TaskStream", "stack_tasks", "rotated", "permuted", "task_weights", "plan_batch", "BatchPlan",
    "RECENCIES", "task_schedule", "SCHEDULES", "train_stream", "StreamResult", "switch_gaps", "SwitchGap",
    "minimum_accuracy", "average_minimum_accuracy", "worst_case_accuracy", "at_task_ends", "linear_path",
    "metrics", "replay", "streams", "training",
]
