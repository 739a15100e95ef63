"""Bandits that choose which objective trains the next step, as pure functions on a state pytree.

A bandit here is a `Bandit(init, probabilities, update)` of pure functions, usable inside
`lax.scan` (optax's shape): `probabilities(state)` is the policy over the K tasks, the caller
draws a task from it, trains one step on that task, measures a raw reward (e.g. the loss
reduction the step brought) and calls `update(state, task, raw_reward, probabilities)`.

- `exp3s`: Exp3.S as Graves et al. (2017, "Automated curriculum learning for neural networks")
  state it for curricula: the policy mixes a softmax of the weights w with uniform exploration,
  pi_i = (1 - eps) exp(w_i) / sum_j exp(w_j) + eps / K; the played task's rescaled reward r is
  importance-weighted, r~_i = (r 1[i = a] + beta) / pi_i, and the weights move as
  w_i <- log[(1 - alpha_t) exp(w_i + eta r~_i) + alpha_t / (K - 1) sum_{j != i} exp(w_j + eta r~_j)]
  with alpha_t = 1 / t (the mixing that lets Exp3.S track a changing best task).
- `moving_average`: our reading of the variant Schioppa, Garcia and Firat (2023) describe in
  words ("sample tasks in proportion to a moving average of their rewards", to avoid locking onto
  one task; their full text is not readable here): each task keeps an exponential moving average
  of its rescaled rewards, mapped to [0, 1], updated when it is played; the policy is
  proportional to those averages, mixed with eps / K.
- `static`: fixed probabilities (a mixing ratio), the baseline a learned ratio is compared with.

Rewards are rescaled as Graves et al. do: the raw reward is placed among the recent raw rewards
(a window of the last `window` ones) by their 20th and 80th percentiles, q_lo and q_hi:
r = -1 below q_lo, +1 above q_hi, linear in between. `per_task=True` keeps one window per task
(a task's reward is then judged against that task's own recent rewards, so a task whose losses
are simply larger cannot take over); `per_task=False` keeps one shared window, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int


class BanditState(NamedTuple):
    """What a bandit carries from step to step (one structure for every bandit, so they can be
    swapped inside one compiled program).

    - `log_weights`: [K] Exp3.S weights w (only their differences matter);
    - `average`: [K] the moving average of each task's rewards in [0, 1];
    - `history`: [R, window] the recent raw rewards (R = K per task, or 1 shared), NaN where empty;
    - `filled`: [R] how many raw rewards each window has received;
    - `step`: the number of updates so far.
    """

    log_weights: jax.Array
    average: jax.Array
    history: jax.Array
    filled: jax.Array
    step: jax.Array


class Bandit(NamedTuple):
    """A bandit over K tasks: `init()` -> state; `probabilities(state)` -> [K] policy;
    `update(state, task, raw_reward, probabilities)` -> state (the probabilities the task was
    drawn with, for importance weighting)."""

    init: Callable[[], BanditState]
    probabilities: Callable[[BanditState], jax.Array]
    update: Callable[[BanditState, jax.Array, jax.Array, jax.Array], BanditState]
    num_tasks: int


def rescale(window: jax.Array, raw: jax.Array, low: float = 0.2, high: float = 0.8) -> jax.Array:
    """Graves et al.'s reward rescaling: `raw` placed among the rewards of `window` (NaN = empty)
    by their `low` and `high` quantiles, mapped to [-1, 1].

    Args:
        window: [H] recent raw rewards (the current one included), NaN where empty.
        raw: the raw reward to rescale.
        low: the lower quantile (0.2 in the paper).
        high: the upper quantile (0.8 in the paper).

    Returns:
        -1 when `raw` < q_low, +1 when `raw` > q_high, 2 (raw - q_low) / (q_high - q_low) - 1 in
        between, and 0 while the quantiles coincide (too few rewards seen to judge).
    """
    q_low = jnp.nanquantile(window, low)
    q_high = jnp.nanquantile(window, high)
    spread = q_high - q_low
    inside = 2.0 * (raw - q_low) / jnp.where(spread > 0, spread, 1.0) - 1.0
    scaled = jnp.clip(inside, -1.0, 1.0)
    return jnp.where(spread > 0, scaled, jnp.zeros_like(scaled))


def _check(num_tasks, epsilon, window):
    num_tasks = check_positive_int("num_tasks", num_tasks, least=2)
    window = check_positive_int("window", window, least=2)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon (the uniform exploration share) must lie in [0, 1], got {epsilon}")
    return num_tasks, window


def _init(num_tasks: int, window: int, per_task: bool, dtype) -> Callable[[], BanditState]:
    rows = num_tasks if per_task else 1

    def init():
        return BanditState(jnp.zeros(num_tasks, dtype), jnp.full(num_tasks, 0.5, dtype),
                           jnp.full((rows, window), jnp.nan, dtype), jnp.zeros(rows, jnp.int32),
                           jnp.zeros((), jnp.int32))
    return init


def _record(state: BanditState, task, raw, per_task: bool):
    """Write `raw` into its window; return (scaled reward in [-1, 1], history, filled)."""
    row = task if per_task else 0
    window = state.history.shape[1]
    slot = state.filled[row] % window
    history = state.history.at[row, slot].set(raw.astype(state.history.dtype))
    filled = state.filled.at[row].add(1)
    return rescale(history[row], raw.astype(state.history.dtype)), history, filled


def _mix(shares: jax.Array, epsilon: float) -> jax.Array:
    return (1.0 - epsilon) * shares + epsilon / shares.shape[0]


def exp3s(num_tasks: int, *, eta: float = 0.02, epsilon: float = 0.05, beta: float = 0.0,
          window: int = 200, per_task: bool = False, importance_weighted: bool = True,
          dtype=jnp.float32) -> Bandit:
    """Exp3.S over `num_tasks` tasks (Graves et al. 2017, Section 2; see the module docstring).

    Graves et al. use eta = 1e-3, beta = 0 and eps = 0.05 over hundreds of thousands of steps;
    a run of a few thousand steps needs a larger eta for the weights to move at all.

    Args:
        num_tasks: K >= 2.
        eta: the step size of the weights (> 0).
        epsilon: the uniform exploration share, in [0, 1].
        beta: the bias added to every task's importance-weighted reward (>= 0).
        window: how many recent raw rewards the rescaling ranks against.
        per_task: one rescaling window per task (True) or one shared (False, as in the paper).
        importance_weighted: divide the reward by the probability the task was drawn with (the
            algorithm); False is the broken variant a negative control runs.
        dtype: the dtype of the state.

    Returns:
        The `Bandit`.
    """
    num_tasks, window = _check(num_tasks, epsilon, window)
    if not eta > 0 or not beta >= 0:
        raise ValueError(f"eta must be > 0 and beta >= 0, got eta={eta}, beta={beta}")

    def probabilities(state):
        return _mix(jax.nn.softmax(state.log_weights), epsilon)

    def update(state, task, raw, probs):
        reward, history, filled = _record(state, task, raw, per_task)
        played = jax.nn.one_hot(task, num_tasks, dtype=state.log_weights.dtype)
        estimate = reward * played + beta
        if importance_weighted:
            estimate = estimate / probs
        moved = state.log_weights + eta * estimate
        alpha = 1.0 / (state.step + 2).astype(moved.dtype)  # alpha_t = 1/t, t = 2 at the first update
        top = jnp.max(moved)
        e = jnp.exp(moved - top)
        mixed = (1.0 - alpha) * e + alpha / (num_tasks - 1) * (jnp.sum(e) - e)
        log_weights = jnp.log(mixed)
        return state._replace(log_weights=log_weights - jnp.max(log_weights), history=history, filled=filled,
                              step=state.step + 1)

    return Bandit(_init(num_tasks, window, per_task, dtype), probabilities, update, num_tasks)


def moving_average(num_tasks: int, *, decay: float = 0.05, epsilon: float = 0.05, window: int = 200,
                   per_task: bool = False, dtype=jnp.float32) -> Bandit:
    """Tasks drawn in proportion to a moving average of their rewards (our reading of Schioppa et
    al. 2023; see the module docstring): the played task's average a_i moves towards
    (r + 1) / 2 by `decay`; pi = (1 - eps) a / sum(a) + eps / K. Every average starts at 0.5
    (uniform).

    Args:
        num_tasks: K >= 2.
        decay: the weight of the newest reward in the average, in (0, 1].
        epsilon: the uniform exploration share, in [0, 1].
        window: how many recent raw rewards the rescaling ranks against.
        per_task: one rescaling window per task, or one shared.
        dtype: the dtype of the state.

    Returns:
        The `Bandit`.
    """
    num_tasks, window = _check(num_tasks, epsilon, window)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must lie in (0, 1], got {decay}")

    def probabilities(state):
        total = jnp.sum(state.average)
        shares = jnp.where(total > 0, state.average / jnp.where(total > 0, total, 1.0), 1.0 / num_tasks)
        return _mix(shares, epsilon)

    def update(state, task, raw, probs):
        del probs
        reward, history, filled = _record(state, task, raw, per_task)
        target = 0.5 * (reward + 1.0)
        average = state.average.at[task].add(decay * (target - state.average[task]))
        return state._replace(average=average, history=history, filled=filled, step=state.step + 1)

    return Bandit(_init(num_tasks, window, per_task, dtype), probabilities, update, num_tasks)


def static(probabilities, *, dtype=None) -> Bandit:
    """Fixed probabilities: a static mixing ratio (may be traced, so one program serves a grid).

    Args:
        probabilities: [K] non-negative shares summing to 1 (K >= 2).
        dtype: the dtype of the state (default: that of `probabilities`, float32 for Python
            numbers).

    Returns:
        The `Bandit` (its update only counts steps).
    """
    shape = jnp.shape(probabilities)
    if len(shape) != 1 or shape[0] < 2:
        raise ValueError(f"probabilities must be a vector over >= 2 tasks, got shape {shape}")
    if not isinstance(probabilities, jax.core.Tracer):
        p = np.asarray(probabilities, np.float64)
        if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"probabilities must be non-negative and sum to 1, got {p.tolist()}")
    num_tasks = shape[0]
    fixed = jnp.asarray(probabilities, dtype)
    dtype = fixed.dtype if jnp.issubdtype(fixed.dtype, jnp.floating) else jnp.float32
    fixed = fixed.astype(dtype)

    def update(state, task, raw, probs):
        del task, raw, probs
        return state._replace(step=state.step + 1)

    return Bandit(_init(num_tasks, 2, False, dtype), lambda state: fixed, update, num_tasks)
