"""The one optax step of the package and the pure scans built on it.

- `step(loss_fn, optimizer, params, opt_state, batch)`: one optax update.
- `optimize(...)`: `num_steps` steps in one `lax.scan`, a pure function (under `jit`/`vmap`).
- `optimize_streams(...)`: steps whose objective reads one minibatch from each of several data
  streams, with a traced step count (unlearning's fine-tuning).
- `batch_indices(key, num_examples, batch_size, num_steps)`: minibatch indices without
  replacement within each pass.
"""


from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.core.numerics import check_positive_int, num_examples

PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StepResult(NamedTuple):
    """One optax step: the updated params and optimizer state, and the loss at the params
    before the update."""

    params: PyTree
    opt_state: PyTree
    loss: jax.Array


class OptimizeResult(NamedTuple):
    """The params after `num_steps` optax steps and the loss before each step [num_steps]."""

    params: PyTree
    losses: jax.Array


def batch_indices(key: jax.Array, num_examples: int, batch_size: int, num_steps: int) -> jax.Array:
    """Example indices of every minibatch of a run: a fresh permutation each epoch.

    The last partial batch of each epoch is dropped, so every step sees `batch_size` distinct
    examples and every epoch's batches are disjoint. Epoch e draws its permutation from
    `jax.random.split(key, epochs)[e]`, so a longer run extends a shorter one's batches.

    Args:
        key: PRNG key drawing the permutations.
        num_examples: the number of examples N to draw from (indices lie in [0, N)).
        batch_size: examples per step, at most `num_examples`.
        num_steps: how many steps (rows) to return.

    Returns:
        int32 array [num_steps, batch_size] of example indices.
    """
    per_epoch = num_examples // batch_size
    epochs = math.ceil(num_steps / per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(jax.random.split(key, epochs))
    return perms[:, : per_epoch * batch_size].reshape(-1, batch_size)[:num_steps]


def _learning_rate(opt_state) -> jax.Array | None:
    """The current learning rate if the optimizer exposes it (optax.inject_hyperparams)."""
    for state in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(state, "hyperparams") and "learning_rate" in state.hyperparams:
            return state.hyperparams["learning_rate"]
    return None


def step(loss_fn: Callable, optimizer: optax.GradientTransformation, params: PyTree, opt_state: PyTree,
         batch: Any) -> StepResult:
    """One optax step: the gradient of `loss_fn` at `params` on `batch`, transformed and applied.

    The one training step of the package: `train`, `optimize` and every recipe go through it.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch.
        optimizer: the optax `GradientTransformation` making the update.
        params: the current parameters (pytree).
        opt_state: the optimizer's state for `params` (`optimizer.init(params)` at the start).
        batch: the batch the gradient is taken on (any pytree `loss_fn` accepts).

    Returns:
        A `StepResult(params, opt_state, loss)`: the updated params and state, and the loss at
        `params` before the update.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return StepResult(optax.apply_updates(params, updates), opt_state, loss)


class StatefulStepResult(NamedTuple):
    """One optax step of a model with state: `StepResult`'s fields and the model's new state."""

    params: PyTree
    opt_state: PyTree
    loss: jax.Array
    state: PyTree


def stateful_step(train_loss_fn: Callable, optimizer: optax.GradientTransformation, params: PyTree,
                  opt_state: PyTree, state: PyTree, batch: Any, key: jax.Array | None) -> StatefulStepResult:
    """One optax step of a model with non-parameter state (BatchNorm statistics, Dropout).

    `step` for `models.Functional.train_loss_fn`: the gradient is taken through the training-mode
    forward pass, whose new state (e.g. updated running statistics) comes back with the update.

    Args:
        train_loss_fn: `train_loss_fn(params, state, batch, key) -> (loss, new_state)`.
        optimizer: the optax `GradientTransformation` making the update.
        params: the current parameters (pytree).
        opt_state: the optimizer's state for `params`.
        state: the model's non-parameter state before the step.
        batch: the batch the gradient is taken on.
        key: the step's PRNG key for dropout masks (None for a model that draws none).

    Returns:
        A `StatefulStepResult(params, opt_state, loss, state)`.
    """
    (loss, new_state), grads = jax.value_and_grad(train_loss_fn, has_aux=True)(params, state, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return StatefulStepResult(optax.apply_updates(params, updates), opt_state, loss, new_state)


def _full_batch(batch_size, n: int, key) -> bool:
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    full = batch_size is None or batch_size >= n
    if not full and key is None:
        raise ValueError("minibatch training needs a key (it draws the batch order); key=None "
                         "is only for full-batch training")
    return full


def _batch(data, indices, step_index, full_batch: bool):
    return data if full_batch else jax.tree.map(lambda a: a[indices[step_index]], data)


def optimize(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data: Any, key: jax.Array | None,
             *, optimizer: optax.GradientTransformation, num_steps: int,
             batch_size: int | None = None) -> OptimizeResult:
    """`num_steps` optax steps inside one `lax.scan`, from `optimizer.init(params)`.

    A pure function (no host work, no events): use it under `jit`/`vmap`, e.g. to train many
    seeds or subspaces at once. Minibatches come from `batch_indices(key, ...)`, as in `train`.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a batch.
        params: the initial parameters (pytree).
        data: the training data, a pytree of arrays with a leading example axis.
        key: PRNG key drawing the minibatch order; None only for full-batch training.
        optimizer: the optax `GradientTransformation`.
        num_steps: the number of steps.
        batch_size: examples per step; None (or >= the data size) trains full-batch.

    Returns:
        An `OptimizeResult(params, losses)`: the final params and the loss before each step
        [num_steps].

    Raises:
        ValueError: minibatch training without a key, empty data, or a `batch_size` or
            `num_steps` that is not a positive int.
    """
    n = num_examples(data)
    num_steps = check_positive_int("num_steps", num_steps, least=0)
    full_batch = _full_batch(batch_size, n, key)
    if num_steps == 0:  # nothing to scan (a minibatch body would index an empty order)
        return OptimizeResult(params, jnp.zeros((0,), jnp.result_type(*jax.tree.leaves(params))))
    indices = None if full_batch else batch_indices(key, n, batch_size, num_steps)

    def body(carry, i):
        p, s = carry
        p, s, loss = step(loss_fn, optimizer, p, s, _batch(data, indices, i, full_batch))
        return (p, s), loss

    (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), jnp.arange(num_steps))
    return OptimizeResult(params, losses)


def optimize_streams(objective: Callable[[PyTree, tuple], jax.Array], params: PyTree, streams: Sequence[Any],
                     key: jax.Array, *, optimizer: optax.GradientTransformation, num_steps: int | jax.Array,
                     batch_sizes: Sequence[int], max_steps: int | None = None,
                     step_keys: bool = False) -> OptimizeResult:
    """`num_steps` optax steps of an objective that reads one minibatch from each of several data
    streams: (final params, losses [max_steps]).

    Step i calls `step(objective, optimizer, params, state, batches)` with `batches[j]` the i-th
    minibatch of `streams[j]` (`batch_indices` of its own key, so without replacement within
    each pass over that stream) and, with `step_keys`, a fresh key appended as the last element
    (`(*batches, key_i)`: for objectives that draw noise, e.g. a denoising loss). Unlearning
    needs this rather than `optimize`: its objectives mix a forget and a retain batch, and its
    step count is a traced value, so a sweep over step counts compiles once.

    A pure function for use under `jit`/`vmap`. With a static `max_steps` >= `num_steps`,
    `num_steps` may be traced: the loop runs exactly `num_steps` steps (a while loop, no wasted
    steps) and `losses` has `max_steps` entries, the first `num_steps` filled and the rest 0.
    The minibatches and step keys are drawn for `max_steps` steps; their first `num_steps` rows
    are the ones `num_steps` alone would draw (a split key does not depend on how many are drawn),
    so the numbers do not depend on `max_steps`.

    Args:
      objective: `objective(params, batches) -> scalar`, batches a tuple of one minibatch per
        stream (plus the step key with `step_keys`).
      params: the initial params pytree.
      streams: the data sets, each a pytree of arrays with a leading example axis.
      key: draws each stream's minibatch order (split once per stream, plus one for step keys).
      optimizer: the optax transformation; its state starts at `optimizer.init(params)`.
      num_steps: optimisation steps, a positive int, or a traced int32 scalar with `max_steps`.
      batch_sizes: examples per minibatch of each stream (one per stream; a size >= the stream's
        length takes the whole stream every step).
      max_steps: the static loop length compiled; None means `num_steps` (then a Python int).
      step_keys: append a per-step key to the batches.

    Returns:
      `OptimizeResult(params, losses)`: the params after `num_steps` steps and the objective
      before each step ([max_steps], in the params' dtype).

    Raises:
      ValueError: when the streams and batch sizes differ in number, or a size is not a positive
        int.
    """

    if len(streams) != len(batch_sizes):
        raise ValueError(f"one batch size per stream: got {len(streams)} streams and {len(batch_sizes)} sizes")
    for size in batch_sizes:
        check_positive_int("batch_sizes", size)
    length = check_positive_int("num_steps" if max_steps is None else "max_steps",
                                num_steps if max_steps is None else max_steps)
    keys = jax.random.split(key, len(streams) + (1 if step_keys else 0))
    indices = []
    for k, data, size in zip(keys, streams, batch_sizes):
        n = num_examples(data, "each stream")
        indices.append(batch_indices(k, n, min(int(size), n), length))
    step_key = jax.random.split(keys[-1], length) if step_keys else None

    def body(i, carry):
        p, s, losses = carry
        batches = tuple(jax.tree.map(lambda a, ix=ix: a[ix[i]], d) for d, ix in zip(streams, indices))
        if step_keys:
            batches = (*batches, step_key[i])
        p, s, loss = step(objective, optimizer, p, s, batches)
        return p, s, losses.at[i].set(loss.astype(losses.dtype))

    dtype = jnp.result_type(*jax.tree.leaves(params))
    init = (params, optimizer.init(params), jnp.zeros((length,), dtype))
    params, _, losses = jax.lax.fori_loop(0, num_steps, body, init)
    return OptimizeResult(params, losses)
