"""Training through a task stream in one compiled loop, evaluated on every task as it goes.

`train_stream` runs tasks one after another (or jointly), replaying old tasks as `replay`
plans, with the learning rate of each step given as an array (`task_schedule` builds the usual
ones from `workbench.schedules`). It records the accuracy and loss on every task's test set
every `eval_every` steps: continual evaluation, which is what shows the stability gap (De Lange,
van de Ven and Tuytelaars 2023). The function is pure: `jit` and `vmap` it over seeds, learning
rates or replay fractions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.continual.replay import check_recency, plan_batch
from workbench.continual.streams import TaskStream
from workbench.core.numerics import check_positive_int
from workbench.core.per_example import mean_loss
from workbench.models import Functional

PyTree = Any

SCHEDULES = ("rewarm", "rewarm_wsd", "no_rewarm", "constant", "single", "infinite")


def task_schedule(kind: str, peak: float, steps_per_task: int, num_tasks: int, *,
                  warmup_fraction: float = 0.1, minimum_fraction: float = 0.1,
                  constant_fraction: float = 0.5, cooldown_fraction: float = 0.2) -> np.ndarray:
    """The learning rate of every step of a task stream [num_tasks * steps_per_task].

    Kinds (the baselines of Ibrahim et al. 2024, "Simple and scalable strategies to continually
    pre-train large language models"):
    - "rewarm": every task re-warms linearly to `peak` and re-decays (cosine) to
      `minimum_fraction * peak`;
    - "rewarm_wsd": every task warms up to `peak`, holds it, and cools down linearly to the
      minimum over its last `cooldown_fraction` (warm-up-stable-decay, `schedules.wsd`);
    - "no_rewarm": the first task as "rewarm", later tasks continue at the minimum;
    - "constant": `peak` throughout;
    - "single": one warm-up and one cosine decay across the whole stream;
    - "infinite": warm up, cool down (cosine) over the rest of the first task to
      `constant_fraction * peak`, hold it through later tasks, and anneal linearly to the minimum
      over the last `cooldown_fraction` of the last task.

    Args:
        kind: one of `SCHEDULES`.
        peak: the largest learning rate (> 0).
        steps_per_task: steps of each task.
        num_tasks: the number of tasks.
        warmup_fraction: the share of a task spent warming up, in [0, 1).
        minimum_fraction: the minimum as a share of `peak`, in [0, 1].
        constant_fraction: the "infinite" schedule's held rate as a share of `peak`, in [0, 1].
        cooldown_fraction: the share of a task "rewarm_wsd" cools down over, and of the last task
            the "infinite" schedule anneals over, in (0, 1].

    Returns:
        The per-step learning rates, a float64 NumPy array.

    Raises:
        ValueError: an unknown kind or an argument out of range.
    """
    from workbench import schedules

    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    steps_per_task = check_positive_int("steps_per_task", steps_per_task)
    num_tasks = check_positive_int("num_tasks", num_tasks)
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a positive learning rate, got {peak}")
    for name, value, lo_open, hi_open in (("warmup_fraction", warmup_fraction, False, True),
                                           ("minimum_fraction", minimum_fraction, False, False),
                                           ("constant_fraction", constant_fraction, False, False),
                                           ("cooldown_fraction", cooldown_fraction, True, False)):
        if not ((value > 0 if lo_open else value >= 0) and (value < 1 if hi_open else value <= 1)):
            raise ValueError(f"{name} must lie in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}, got {value}")
    warm = int(round(warmup_fraction * steps_per_task))
    low = minimum_fraction * peak
    one_task = np.asarray(schedules.values(schedules.cosine(peak, steps_per_task, warm, final=low), steps_per_task))
    total = steps_per_task * num_tasks
    if kind == "rewarm":
        return np.tile(one_task, num_tasks)
    if kind == "rewarm_wsd":
        shape = np.array(schedules.values(schedules.wsd(peak, steps_per_task, cooldown_fraction, "linear", warm),
                                            steps_per_task))
        shape[warm:] = low + (peak - low) * shape[warm:] / peak  # cool down to the minimum, not to 0
        return np.tile(shape, num_tasks)
    if kind == "no_rewarm":
        return np.concatenate([one_task, np.full(total - steps_per_task, low)])
    if kind == "constant":
        return np.full(total, float(peak))
    if kind == "single":
        return np.asarray(schedules.values(schedules.cosine(peak, total, warm, final=low), total))
    held = constant_fraction * peak
    first = np.asarray(schedules.values(schedules.cosine(peak, steps_per_task, warm, final=held), steps_per_task))
    lrs = np.concatenate([first, np.full(total - steps_per_task, held)])
    cool = max(int(round(cooldown_fraction * steps_per_task)), 1)
    lrs[total - cool:] = held + (low - held) * np.arange(1, cool + 1) / cool
    return lrs


class StreamResult(NamedTuple):
    """What `train_stream` returns.

    - `params`: the final params;
    - `accuracy`, `loss`: [num_evals, T] on each task's test set, row e after step
      `eval_steps[e]` (row 0 before any step); NaN once the weights hold NaN or inf (a diverged
      run has no accuracy, and the `metrics` functions refuse it);
    - `eval_steps`: [num_evals] the steps evaluated;
    - `train_loss`: [num_steps] the batch loss before each step;
    - `replayed`: [num_steps] the share of each batch drawn from earlier tasks;
    - `snapshots`: the params after each step of `snapshot_steps`, stacked on a leading axis;
    - `snapshot_steps`: [num_snapshots] those steps (0 = the initial params).
    """

    params: PyTree
    accuracy: jax.Array
    loss: jax.Array
    eval_steps: jax.Array
    train_loss: jax.Array
    replayed: jax.Array
    snapshots: PyTree
    snapshot_steps: jax.Array


def _resolve(loss_fn, predict_fn):
    """(training loss, evaluation loss, predict_fn): a Functional is evaluated on its data loss."""
    if isinstance(loss_fn, Functional):
        return loss_fn.loss_fn, mean_loss(loss_fn.per_example_loss_fn), predict_fn or loss_fn.predict_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or a models.Functional, got {type(loss_fn).__name__}")
    if predict_fn is None:
        raise ValueError("train_stream evaluates accuracy: pass predict_fn= (or a models.Functional as loss_fn)")
    return loss_fn, loss_fn, predict_fn


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_stream_options(stream, lrs, steps_per_task, batch_size, eval_every, snapshot_steps, replay_fraction,
                          recency, recency_exponent, buffer_size):
    steps_per_task = check_positive_int("steps_per_task", steps_per_task)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_every = check_positive_int("eval_every", eval_every)
    check_recency(recency)
    if not isinstance(stream, TaskStream):
        raise TypeError(f"stream must be a continual.TaskStream (see continual.stack_tasks), got {type(stream).__name__}")
    num_steps = steps_per_task * stream.num_tasks
    if jnp.ndim(lrs) != 1 or jnp.shape(lrs)[0] != num_steps:
        raise ValueError(f"lrs needs one learning rate per step: {stream.num_tasks} tasks x {steps_per_task} "
                         f"steps = {num_steps}, got shape {jnp.shape(lrs)} (see continual.task_schedule)")
    if steps_per_task % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide steps_per_task={steps_per_task}, so every task "
                         "switch is evaluated")
    bad = [s for s in snapshot_steps if not 0 <= s <= num_steps]
    if bad:
        raise ValueError(f"snapshot_steps must lie in [0, {num_steps}], got {bad}")
    if _is_concrete(lrs) and not np.all(np.isfinite(np.asarray(lrs))):
        raise ValueError("lrs holds NaN or inf learning rates")
    if _is_concrete(replay_fraction) and not 0.0 <= float(replay_fraction) <= 1.0:
        raise ValueError(f"replay_fraction must lie in [0, 1], got {replay_fraction}")
    if _is_concrete(recency_exponent) and not float(recency_exponent) >= 0.0:
        raise ValueError(f"recency_exponent must be >= 0, got {recency_exponent}")
    if buffer_size is not None:
        check_positive_int("buffer_size", buffer_size)
    return num_steps, steps_per_task, batch_size, eval_every


def train_stream(loss_fn: Callable, params: PyTree, stream: TaskStream, key: jax.Array, *,
                 lrs, steps_per_task: int, batch_size: int, predict_fn: Callable | None = None,
                 replay_fraction=0.0, recency="uniform", recency_exponent=1.0,
                 buffer_size: int | None = None, joint: bool = False, eval_every: int = 1,
                 snapshot_steps: tuple[int, ...] = (),
                 optimizer_fn: Callable[[optax.Schedule], optax.GradientTransformation] = optax.sgd) -> StreamResult:
    """Train on the tasks of `stream` one after another, evaluating on all of them as it goes.

    Step s (0-indexed) learns task s // steps_per_task with learning rate `lrs[s]`; its batch
    comes from `replay.plan_batch` with key `fold_in(key, s)`. The optimizer state carries over
    from task to task. Every `eval_every` steps, and before the first, the model is scored on
    every task's whole test set. A pure function: `jit`/`vmap` it (the learning rates, the
    replay fraction, the recency exponent and the key may be traced).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean) or a `models.Functional`
            (then its data loss, without L2, is the evaluation loss).
        params: the initial params.
        stream: the `TaskStream`.
        key: PRNG key of the batch draws.
        lrs: [T * steps_per_task] the learning rate of every step (`task_schedule`).
        steps_per_task: steps per task.
        batch_size: examples per step.
        predict_fn: `predict_fn(params, x) -> logits [..., classes]` scoring accuracy (the
            arg-max against the integer targets, averaged over every target); taken from a
            `Functional`.
        replay_fraction: the share of each batch replayed from earlier tasks, in [0, 1].
        recency: how old tasks are weighted: "uniform", "power_law" or "exponential", or its
            index in `replay.RECENCIES` (may be traced, so one program serves every rule).
        recency_exponent: the power-law exponent or exponential rate (>= 0).
        buffer_size: replay only the first `buffer_size` examples of each old task (None: all).
        joint: train on all tasks at once (every slot draws a task uniformly): the reference a
            continual learner is compared with.
        eval_every: steps between evaluations; must divide `steps_per_task`.
        snapshot_steps: steps after which the params are kept (0 = initial params), e.g. the
            task switches, for a linear path or curvature afterwards.
        optimizer_fn: `optimizer_fn(learning_rate_schedule) -> optax.GradientTransformation`
            (default `optax.sgd`; e.g. `functools.partial(optax.adamw, weight_decay=0.01)`).

    Returns:
        A `StreamResult`.

    Raises:
        ValueError: `lrs` of the wrong length, `eval_every` not dividing `steps_per_task`, a
            replay fraction outside [0, 1], an unknown recency, a missing `predict_fn`, or
            snapshot steps outside the run.
    """
    loss_fn, eval_loss_fn, predict_fn = _resolve(loss_fn, predict_fn)
    snapshot_steps = tuple(sorted({int(s) for s in snapshot_steps}))
    num_steps, steps_per_task, batch_size, eval_every = _check_stream_options(
        stream, lrs, steps_per_task, batch_size, eval_every, snapshot_steps, replay_fraction, recency,
        recency_exponent, buffer_size)
    num_tasks, n = stream.num_tasks, int(stream.train_x.shape[1])
    dtype = jnp.result_type(*jax.tree.leaves(params))
    lrs = jnp.asarray(lrs, dtype)
    optimizer = optimizer_fn(lambda count: lrs[jnp.minimum(count, num_steps - 1)])

    def evaluate(p):
        # a model with NaN or inf weights has no accuracy (argmax of NaN logits would score ~1/classes)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p)]))

        def one(x, y):
            logits = predict_fn(p, x)
            acc = jnp.mean((jnp.argmax(logits, axis=-1).astype(y.dtype) == y).astype(dtype))
            return jnp.where(finite, acc, jnp.nan), eval_loss_fn(p, (x, y)).astype(dtype)
        return jax.lax.map(lambda xy: one(*xy), (stream.test_x, stream.test_y))

    def step(carry, s):
        p, state = carry
        plan = plan_batch(jax.random.fold_in(key, s), s // steps_per_task, num_tasks=num_tasks, num_examples=n,
                          batch_size=batch_size, fraction=replay_fraction, recency=recency,
                          exponent=recency_exponent, buffer_size=buffer_size, joint=joint)
        batch = (stream.train_x[plan.tasks, plan.examples], stream.train_y[plan.tasks, plan.examples])
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, state = optimizer.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), (loss.astype(dtype), jnp.mean(plan.replayed.astype(dtype)))

    slot_of_step = np.full(num_steps + 1, -1)
    for i, s in enumerate(snapshot_steps):
        slot_of_step[s] = i
    slot_of_step = jnp.asarray(slot_of_step)
    empty = jax.tree.map(lambda a: jnp.zeros((len(snapshot_steps), *jnp.shape(a)), jnp.result_type(a)), params)

    def keep(buffer, p, s):
        slot = slot_of_step[s]
        at = jnp.maximum(slot, 0)
        return jax.tree.map(lambda b, a: jax.lax.dynamic_update_index_in_dim(
            b, jnp.where(slot >= 0, a, b[at]), at, 0), buffer, p)

    buffer = keep(empty, params, 0) if snapshot_steps else empty

    def run_block(carry, first_step):
        p, state, buffer = carry

        def inner(c, s):
            (p, state), buffer = c
            (p, state), out = step((p, state), s)
            if snapshot_steps:
                buffer = keep(buffer, p, s + 1)
            return ((p, state), buffer), out

        ((p, state), buffer), (losses, replayed) = jax.lax.scan(inner, ((p, state), buffer),
                                                                first_step + jnp.arange(eval_every))
        acc, loss = evaluate(p)
        return (p, state, buffer), (losses, replayed, acc, loss)

    acc0, loss0 = evaluate(params)
    starts = jnp.arange(0, num_steps, eval_every)
    (params, _, buffer), (losses, replayed, acc, loss) = jax.lax.scan(
        run_block, (params, optimizer.init(params), buffer), starts)
    accuracy = jnp.concatenate([acc0[None], acc])
    loss = jnp.concatenate([loss0[None], loss])
    eval_steps = jnp.arange(0, num_steps + 1, eval_every)
    return StreamResult(params, accuracy, loss, eval_steps, losses.reshape(-1), replayed.reshape(-1), buffer,
                        jnp.asarray(snapshot_steps, jnp.int32))
