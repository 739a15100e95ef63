"""Schedule refinement from observed gradient norms (Defazio, Cutkosky, Mehta, Mishchenko 2023),
and the training callback that observes those norms."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage

from workbench.core.losses import as_loss
from workbench.core.numerics import check_positive_int, num_examples
from workbench.schedules.bounds import _check_grad_norms, bound_curve
from workbench.schedules.shapes import Schedule, from_values


class Refined(NamedTuple):
    """A refined schedule: `values[s]` for steps 0..T-1 (peak 1), the median-filtered norms the
    weights came from, and `schedule`, the same values as an optax schedule (multiply by your peak
    learning rate with `scaled(refined.schedule, peak)`)."""

    values: np.ndarray
    smoothed_norms: np.ndarray
    schedule: Schedule


def refine(grad_norms, tau: float = 0.1, window: int | None = None) -> Refined:
    """Schedule refinement from observed gradient norms (Defazio et al. 2023, from the math).

    g_hat = median filter of `grad_norms` over a centred window of ceil(tau * T) steps (rounded
    up to odd; edges padded with the nearest value); w_t = 1 / g_hat_t^2; eta_t = w_t * sum_{p > t} w_p, normalised to peak 1.
    This minimises the last-iterate bound of `last_iterate_bound` for those norms up to the
    choice of final weight: with constant norms eta_s = (T-1-s)/(T-1), i.e. linear decay to zero
    (`linear_decay(1, T)` is (T-s)/T, the same line shifted by one step). Rising norms late in
    training give a faster anneal, large early norms give a warm-up. The last step is 0.

    Args:
        grad_norms: the gradient norms observed at steps 0..T-1 [T], finite and positive.
        tau: the median-filter window as a fraction of T, in (0, 1] (default 0.1).
        window: the window in steps, overriding `tau` (default None: ceil(tau * T)); rounded up
            to odd.

    Returns:
        `Refined(values, smoothed_norms, schedule)`: the refined learning rates [T] with peak 1,
        the filtered norms [T], and the values as an optax schedule.

    Raises:
        ValueError: if the norms are not positive and finite, or `tau`/`window` is out of range.
    """
    g = _check_grad_norms(grad_norms, strictly_positive=True)
    num_steps = g.size
    if not (isinstance(tau, int | float) and 0.0 < tau <= 1.0):
        raise ValueError(f"tau must lie in (0, 1], got {tau!r}")
    if window is None:
        window = max(1, math.ceil(tau * num_steps))
    window = check_positive_int("window", window)
    if num_steps < window:
        raise ValueError(f"grad_norms has T={num_steps} steps, fewer than the median-filter window "
                         f"{window}; pass more steps or a smaller window")
    window = window | 1  # odd, so the window is centred and the median is one element
    smoothed = scipy.ndimage.median_filter(g, size=window, mode="nearest")
    w = 1.0 / smoothed**2
    tail = np.cumsum(w[::-1])[::-1]  # tail[t] = sum_{p >= t} w_p
    eta = w * (tail - w)  # w_t * sum_{p > t} w_p
    peak = eta.max()
    if peak <= 0:  # T == 1: no step after the first
        eta = np.ones_like(eta)
    else:
        eta = eta / peak
    return Refined(eta, smoothed, from_values(eta))


@functools.lru_cache(maxsize=64)
def _grad_norm_fn(loss_fn: Callable, batch_size: int | None, num_batches: int, n: int):
    """jit(params, data, key, step) -> the gradient-norm estimate, compiled once per loss_fn and
    configuration; the data is an argument, not a constant of the program."""
    full = batch_size is None or batch_size >= n

    @jax.jit
    def norm(params, data, key, step):
        if full:
            g = jax.grad(loss_fn)(params, data)
            return jnp.sqrt(optax.tree.vdot(g, g))
        idx = jax.random.randint(jax.random.fold_in(key, step), (num_batches, batch_size), 0, n)
        sq = jax.vmap(lambda i: (lambda g: optax.tree.vdot(g, g))(jax.grad(loss_fn)(
            params, jax.tree.map(lambda a: a[i], data))))(idx)
        return jnp.sqrt(jnp.mean(sq))

    return norm


def grad_norm_callback(loss_fn: Callable, data, key: jax.Array, *, batch_size: int | None,
                       num_batches: int = 8) -> Callable:
    """A `train` callback returning {"grad_norm": sqrt(mean_b ||grad loss(params, batch_b)||^2)}
    over `num_batches` random minibatches (fresh per step): an estimate of the stochastic gradient
    norm sqrt(E ||g_t||^2) that the last-iterate bound uses.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training loss, or a `models.Functional`
            (its objective; a model with BatchNorm or Dropout is evaluated in its `mode`,
            inference by default).
        data: the training data, a pytree of arrays with a leading example axis.
        key: the PRNG key the minibatches are drawn from (folded with the step, so each call
            draws fresh batches and a rerun draws the same ones).
        batch_size: examples per minibatch; None means the full batch (one exact gradient).
        num_batches: minibatches averaged per call (default 8).

    Returns:
        `callback(step, params) -> {"grad_norm": scalar}`, for `train(..., callback=...)`.
    """
    loss_fn = as_loss(loss_fn, role="objective", caller="schedules.grad_norm_callback")
    norm = _grad_norm_fn(loss_fn, batch_size, check_positive_int("num_batches", num_batches),
                         num_examples(data))
    # *model_state: train also passes a stateful model's state; the norm is of the loss as given
    return lambda step, params, *model_state: {"grad_norm": norm(params, data, key, step)}


def per_step(at_steps, at_values, num_steps: int) -> np.ndarray:
    """Values recorded at some steps, linearly interpolated to every step 0..T-1.

    Args:
        at_steps: the increasing steps at which values were recorded [K].
        at_values: the values recorded there [K].
        num_steps: the number of steps T to fill, an int >= 1 (held constant beyond the ends).

    Returns:
        The values at steps 0..T-1 [T], float64.
    """
    check_positive_int("num_steps", num_steps)
    return np.interp(np.arange(num_steps), np.asarray(at_steps), np.asarray(at_values))


def refined_bound_curve(grad_norms: Callable[[int], np.ndarray], horizons: Sequence[int],
                        tau: float = 0.1) -> np.ndarray:
    """`bound_curve` of the schedule refined for the norms at each horizon: how low the
    last-iterate bound goes when the schedule is fitted to the norms it will see.

    Args:
        grad_norms: T -> the gradient norms [T] at horizon T, positive.
        horizons: the horizons T, ints >= 1 (each at least the median-filter window).
        tau: the median-filter window of `refine`, as a fraction of T.

    Returns:
        last_iterate_bound * sqrt(T) / D for each horizon (D = G = 1), [len(horizons)].
    """
    return bound_curve(lambda T: refine(grad_norms(T), tau=tau).values, horizons, grad_norms)


