"""Which examples a step trains on: the current task, plus a share replayed from earlier tasks.

A step's batch has `batch_size` slots. During task c > 0, the first floor(fraction * batch_size + u)
slots replay old tasks (u uniform in [0, 1) per step: fraction * batch_size on average, within
one slot of it at every step, so a 1% share of a 32-example batch is not rounded away): each draws an old task k < c from `task_weights` and an example of it;
the other slots draw examples of task c. Examples are drawn uniformly with replacement (a
buffer of the first `buffer_size` examples of each old task when given). Joint training draws
every slot's task uniformly from all tasks. Everything is traced, so a replay fraction or a
recency exponent can be vmapped over.

Recency (our reading of Gandhi, Shah, Marupudi and Varma 2024, "Continual learning in power-law
environments": a task is met again with a probability that falls as a power of the time since
it was last the task being learned; we measure that time in task phases, c - k):
- "uniform": every old task alike;
- "power_law": weight (c - k) ** -exponent;
- "exponential": weight exp(-exponent * (c - k)).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

RECENCIES = ("uniform", "power_law", "exponential")


def check_recency(recency) -> str | jax.Array:
    """Check a recency rule: its name, or its index in `RECENCIES` (an int, or a traced int
    scalar so that one compiled program serves every rule).

    Args:
        recency: the name or index to check.

    Returns:
        `recency` unchanged.

    Raises:
        ValueError: an unknown name or an index outside `RECENCIES` (the message lists them).
    """
    if isinstance(recency, str):
        if recency not in RECENCIES:
            raise ValueError(f"recency must be one of {RECENCIES}, got {recency!r}")
    elif not isinstance(recency, jax.core.Tracer) and not (
            jnp.ndim(recency) == 0 and jnp.issubdtype(jnp.asarray(recency).dtype, jnp.integer)
            and 0 <= int(recency) < len(RECENCIES)):
        raise ValueError(f"recency must be one of {RECENCIES} or its index 0..{len(RECENCIES) - 1}, got {recency!r}")
    return recency


def task_weights(current, num_tasks: int, recency="uniform", exponent=1.0) -> jax.Array:
    """The probability of replaying each task while learning task `current`.

    Args:
        current: the task being learned (an int or a traced int scalar).
        num_tasks: the number of tasks T in the stream.
        recency: "uniform", "power_law" or "exponential" (see the module docstring), or its index
            in `RECENCIES` (may be traced).
        exponent: the power-law exponent or the exponential rate (>= 0; 0 gives uniform).

    Returns:
        [T] probabilities, zero for tasks k >= current, summing to 1 when current > 0 (all zero
        during the first task, which has nothing to replay).
    """
    check_recency(recency)
    code = RECENCIES.index(recency) if isinstance(recency, str) else recency
    k = jnp.arange(num_tasks)
    dtype = jnp.result_type(float)
    age = jnp.maximum(current - k, 1).astype(dtype)
    exponent = jnp.asarray(exponent).astype(dtype)
    w = jnp.select([code == 1, code == 2],
                   [age ** -exponent,
                    jnp.exp(-exponent * (age - 1.0))],  # relative to the newest old task: no underflow
                   jnp.ones_like(age))
    w = jnp.where(k < current, w, 0.0)
    total = jnp.sum(w)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


class BatchPlan(NamedTuple):
    """One step's batch: `tasks` [B] the task of each slot, `examples` [B] the example index
    within that task, `replayed` [B] True for slots drawn from an earlier task."""

    tasks: jax.Array
    examples: jax.Array
    replayed: jax.Array


def plan_batch(key: jax.Array, current, *, num_tasks: int, num_examples: int, batch_size: int,
               fraction=0.0, recency="uniform", exponent=1.0, buffer_size: int | None = None,
               joint: bool = False) -> BatchPlan:
    """The tasks and examples of one step's batch (see the module docstring).

    Args:
        key: PRNG key of this step.
        current: the task being learned (int or traced scalar).
        num_tasks: T.
        num_examples: training examples per task.
        batch_size: B, slots per step.
        fraction: the share of slots that replay old tasks, in [0, 1] (traced allowed);
            floor(fraction * B + u) slots with u uniform, from task 1 on.
        recency: how old tasks are weighted (`task_weights`: a name or a possibly traced index).
        exponent: the recency exponent or rate.
        buffer_size: replay only the first `buffer_size` examples of each old task (None: all).
        joint: every slot draws its task uniformly from all T tasks (joint training).

    Returns:
        The `BatchPlan`.
    """
    task_key, example_key, buffer_key, count_key = jax.random.split(key, 4)
    examples = jax.random.randint(example_key, (batch_size,), 0, num_examples)
    if joint:
        tasks = jax.random.randint(task_key, (batch_size,), 0, num_tasks)
        return BatchPlan(tasks, examples, jnp.zeros((batch_size,), bool))
    weights = task_weights(current, num_tasks, recency, exponent)
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    logits = jnp.where(current > 0, logits, 0.0)  # nothing to replay yet: any draw is masked below
    old = jax.random.categorical(task_key, logits, shape=(batch_size,))
    share = jnp.asarray(fraction) * batch_size
    count = jnp.floor(share + jax.random.uniform(count_key, (), jnp.result_type(share))).astype(jnp.int32)
    count = jnp.where(current > 0, count, 0)
    replayed = jnp.arange(batch_size, dtype=jnp.int32) < count
    if buffer_size is not None:
        buffered = jax.random.randint(buffer_key, (batch_size,), 0, min(int(buffer_size), num_examples))
        examples = jnp.where(replayed, buffered, examples)
    tasks = jnp.where(replayed, old, current)
    return BatchPlan(tasks.astype(jnp.int32), examples.astype(jnp.int32), replayed)
