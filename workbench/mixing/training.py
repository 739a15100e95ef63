"""Training on a mixture of objectives whose mixing ratio a bandit chooses, step by step.

Every objective ("task") is a set of token sequences with a weight per target position: a
language-modelling task weighs every position, a translation task only the target side of its
parallel pairs (the loss on the source would be language modelling again). `train_mixture` runs
one `lax.scan`: at every step the bandit's policy draws a task, one optimizer step is taken on a
batch of it, the reward (the loss reduction that step brought, on a fresh batch of the same task:
Graves et al.'s self-prediction gain) updates the bandit, and every `eval_every` steps the model is
scored on held-out sets. Pure: `jit`/`vmap` it over keys and static ratios.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.core.numerics import check_positive_int
from workbench.mixing.bandits import Bandit
from workbench.train.steps import step as train_step

PyTree = Any

REWARDS = ("self_prediction", "target", "training_batch", "none")


class ObjectiveTasks(NamedTuple):
    """K objectives stacked on a task axis (every task the same number of sequences and length).

    - `x`: [K, n, L] int input tokens;
    - `y`: [K, n, L] int target tokens (the inputs shifted by one);
    - `weights`: [K, n, L] the weight of each target position in the loss (0 = not scored);
    - `names`: the tasks' names.
    """

    x: jax.Array
    y: jax.Array
    weights: jax.Array
    names: tuple[str, ...]


def stack_objectives(names: Sequence[str], sets: Sequence[tuple]) -> ObjectiveTasks:
    """Stack (x, y, weights) sets into `ObjectiveTasks`, refusing sets that do not fit together.

    Args:
        names: one name per task.
        sets: one (x [n, L], y [n, L], weights [n, L]) per task.

    Returns:
        The `ObjectiveTasks`.

    Raises:
        ValueError: a different number of names and sets, fewer than two tasks, shapes that
            differ (naming the task), a task with no weighted position, or negative weights.
    """
    names = tuple(str(n) for n in names)
    if len(names) != len(sets) or len(sets) < 2:
        raise ValueError(f"need one name per set and at least two tasks, got {len(names)} names and {len(sets)} sets")
    shape = np.shape(sets[0][0])
    for name, (x, y, w) in zip(names, sets):
        if not (np.shape(x) == np.shape(y) == np.shape(w) == shape) or len(shape) != 2:
            raise ValueError(f"task {name!r}: x, y and weights must all be [n, L] = {shape}, got "
                             f"{np.shape(x)}, {np.shape(y)}, {np.shape(w)}")
        w = np.asarray(w)
        if np.any(w < 0) or not np.any(w > 0):
            raise ValueError(f"task {name!r}: weights must be >= 0 with at least one positive")
    stack = lambda i: jnp.stack([jnp.asarray(s[i]) for s in sets])
    return ObjectiveTasks(stack(0), stack(1), stack(2), names)


def weighted_token_loss(predict_fn: Callable) -> Callable:
    """`loss(params, (x, y, weights))`: the weighted mean of the next-token cross-entropy,
    sum(w * ce) / sum(w) over the batch's positions.

    Args:
        predict_fn: `predict_fn(params, x [b, L]) -> logits [b, L, vocab]`.

    Returns:
        The loss function (a scalar per batch).
    """
    def loss(params, batch):
        x, y, w = batch
        logits = predict_fn(params, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        w = w.astype(ce.dtype)
        return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)
    return loss


def weighted_token_accuracy(predict_fn: Callable, params: PyTree, batch) -> jax.Array:
    """The weighted share of positions whose arg-max next token is the target (teacher forcing).

    Args:
        predict_fn: `predict_fn(params, x) -> logits [b, L, vocab]`.
        params: the model's params.
        batch: (x [b, L], y [b, L], weights [b, L]).

    Returns:
        sum(w * [argmax = y]) / sum(w), a scalar.
    """
    x, y, w = batch
    w = jnp.asarray(w, jnp.result_type(*jax.tree.leaves(params)))
    hits = (jnp.argmax(predict_fn(params, x), axis=-1) == y).astype(w.dtype)
    return jnp.sum(w * hits) / jnp.maximum(jnp.sum(w), 1e-12)


class MixtureResult(NamedTuple):
    """What `train_mixture` returns.

    - `params`: the final params;
    - `tasks`: [S] the task each step trained on;
    - `probabilities`: [S, K] the policy each step drew from;
    - `train_loss`: [S] the batch loss before each step;
    - `reward`: [S] the raw reward of each step (NaN with `reward="none"`);
    - `eval_loss`: [E, M] the loss on each of the M held-out sets, row e after step
      `eval_steps[e]` (row 0 before training); NaN once the weights are not finite;
    - `eval_steps`: [E].
    """

    params: PyTree
    tasks: jax.Array
    probabilities: jax.Array
    train_loss: jax.Array
    reward: jax.Array
    eval_loss: jax.Array
    eval_steps: jax.Array


def train_mixture(loss_fn: Callable, params: PyTree, objectives: ObjectiveTasks, key: jax.Array, *,
                  bandit: Bandit, lrs, batch_size: int, eval_sets: Sequence[tuple] = (), eval_every: int = 1,
                  reward: str = "self_prediction", target: tuple | None = None,
                  optimizer_fn: Callable[[optax.Schedule], optax.GradientTransformation] = optax.adam
                  ) -> MixtureResult:
    """Train on the objectives, one task per step drawn from the bandit's policy.

    Step s: probabilities pi = bandit.probabilities(state); task a ~ pi; a batch of task a
    (examples drawn with replacement); one optimizer step at learning rate `lrs[s]`; the raw
    reward is the loss reduction L(b, theta) - L(b, theta') with b (Graves et al.'s names)
    - "self_prediction": a fresh batch of task a (self-prediction gain, SPG);
    - "target": a fresh batch of the `target` set, whichever task was played (target prediction
      gain, TPG: the mix is judged by what it does for the objective one cares about);
    - "training_batch": the batch just trained on (prediction gain, which also rewards
      memorising the batch: the control).
    Keys come from `fold_in(key, s)`.

    Args:
        loss_fn: `loss_fn(params, (x, y, weights)) -> scalar`, e.g. `weighted_token_loss(predict_fn)`.
        params: the initial params.
        objectives: the `ObjectiveTasks` (the bandit's arms, in order).
        key: PRNG key.
        bandit: a `bandits.Bandit` over `len(objectives.names)` tasks.
        lrs: [S] the learning rate of every step (S steps in all).
        batch_size: sequences per step.
        eval_sets: held-out (x, y, weights) sets scored with `loss_fn` every `eval_every` steps.
        eval_every: steps between evaluations; must divide S.
        reward: one of `REWARDS` ("none" skips the two extra forward passes; for static mixtures).
        target: (x, y, weights) [m, L], the set "target" rewards are measured on.
        optimizer_fn: `optimizer_fn(schedule) -> optax.GradientTransformation` (default Adam).

    Returns:
        A `MixtureResult`.

    Raises:
        ValueError: an unknown reward, a bandit over another number of tasks, `eval_every` not
            dividing the number of steps, or non-finite learning rates.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if (reward == "target") != (target is not None):
        raise ValueError('pass target=(x, y, weights) exactly when reward="target"')
    if not isinstance(objectives, ObjectiveTasks):
        raise TypeError(f"objectives must be mixing.ObjectiveTasks (see stack_objectives), got {type(objectives).__name__}")
    num_tasks, n = objectives.x.shape[0], objectives.x.shape[1]
    if bandit.num_tasks != num_tasks:
        raise ValueError(f"the bandit chooses among {bandit.num_tasks} tasks, the objectives have {num_tasks}: "
                         f"{list(objectives.names)}")
    batch_size = check_positive_int("batch_size", batch_size)
    eval_every = check_positive_int("eval_every", eval_every)
    if jnp.ndim(lrs) != 1:
        raise ValueError(f"lrs must hold one learning rate per step, got shape {jnp.shape(lrs)}")
    num_steps = int(jnp.shape(lrs)[0])
    if num_steps % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide the {num_steps} steps")
    if not isinstance(lrs, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(lrs))):
        raise ValueError("lrs holds NaN or inf learning rates")
    dtype = jnp.result_type(*jax.tree.leaves(params))
    lrs = jnp.asarray(lrs, dtype)
    optimizer = optimizer_fn(lambda count: lrs[jnp.minimum(count, num_steps - 1)])

    def draw(k, task):
        idx = jax.random.randint(k, (batch_size,), 0, n)
        return objectives.x[task, idx], objectives.y[task, idx], objectives.weights[task, idx]

    def draw_target(k):
        idx = jax.random.randint(k, (batch_size,), 0, target[0].shape[0])
        return tuple(jnp.asarray(a)[idx] for a in target)

    def step(carry, s):
        p, opt_state, bstate = carry
        k_task, k_batch, k_fresh = jax.random.split(jax.random.fold_in(key, s), 3)
        probs = bandit.probabilities(bstate)
        task = jax.random.choice(k_task, num_tasks, p=probs)
        batch = draw(k_batch, task)
        new_p, opt_state, loss = train_step(loss_fn, optimizer, p, opt_state, batch)
        if reward in ("self_prediction", "target"):
            fresh = draw(k_fresh, task) if reward == "self_prediction" else draw_target(k_fresh)
            raw = loss_fn(p, fresh) - loss_fn(new_p, fresh)
        elif reward == "training_batch":
            raw = loss - loss_fn(new_p, batch)
        else:
            raw = jnp.asarray(jnp.nan, dtype)
        if reward != "none":
            bstate = bandit.update(bstate, task, raw, probs)
        return (new_p, opt_state, bstate), (task, probs.astype(dtype), loss.astype(dtype), raw.astype(dtype))

    def evaluate(p):
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p)]))
        values = [loss_fn(p, tuple(jnp.asarray(a) for a in s)).astype(dtype) for s in eval_sets]
        values = jnp.stack(values) if values else jnp.zeros((0,), dtype)
        return jnp.where(finite, values, jnp.nan)

    def block(carry, first):
        carry, outs = jax.lax.scan(step, carry, first + jnp.arange(eval_every))
        return carry, (outs, evaluate(carry[0]))

    initial = evaluate(params)
    carry = (params, optimizer.init(params), bandit.init())
    (params, _, _), ((tasks, probs, losses, raws), evals) = jax.lax.scan(
        block, carry, jnp.arange(0, num_steps, eval_every))
    flat = lambda a: a.reshape(num_steps, *a.shape[2:])
    return MixtureResult(params, flat(tasks), flat(probs), flat(losses), flat(raws),
                         jnp.concatenate([initial[None], evals]), jnp.arange(0, num_steps + 1, eval_every))


def translation_share(result: MixtureResult, task: int = 1, last_fraction: float = 1.0) -> jax.Array:
    """The share of steps spent on `task` (e.g. translation) over the last `last_fraction` of the run.

    Args:
        result: a `MixtureResult` (or a batch of them: the leading axes are kept).
        task: the task's index.
        last_fraction: the share of the run, counted from its end, in (0, 1].

    Returns:
        The share of steps, a scalar (or one per leading index).
    """
    if not 0.0 < last_fraction <= 1.0:
        raise ValueError(f"last_fraction must lie in (0, 1], got {last_fraction}")
    steps = result.tasks.shape[-1]
    start = steps - max(int(round(last_fraction * steps)), 1)
    return jnp.mean((result.tasks[..., start:] == task).astype(jnp.float32), axis=-1)
