"""Real retraining, vmapped over many re-weightings of the training set.

The training objective for per-example weights w is

    J_w(params) = sum_j w_j loss_fn(params, z_j) / sum_j w_j

so w = 1 is the objective of `loss_fn` on the whole training set, w = 1 - e_i is training on
the other n-1 examples (leave-one-out) and w = a 0/1 mask is training on a subset (LDS).

`retrain_weighted` solves many such problems at once (`lax.map` over chunks of weight vectors, vmapped
inside), to convergence:
- `method="newton"` (convex models): warm-started at `params`, inexact Newton steps whose
  systems H_w d = grad J_w are solved by `cg_num_iters` conjugate-gradient iterations (HVPs of J_w)
  preconditioned with the inverse full-data Hessian at `params` (plus `damping`). For a
  leave-one-out weighting that preconditioner is within O(1/n) of exact, so one or two steps
  reach machine precision; subsets need a few more. It stops when the
  gradient norm drops below `tol` (default `numerics.default_tol`) or after `num_iters` steps, and returns that norm so convergence
  can be checked.
- `method="optax"`: `num_steps` full-batch steps of an optax optimizer from `params` (non-convex
  models, or training from an initialisation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from workbench import curvature
from workbench.core.numerics import check_nonnegative, check_positive_int, default_tol, num_examples
from workbench.core.per_example import example_loss, per_example_losses
from workbench.core.progress import bar
from workbench.train import optimize

PyTree = Any


class RetrainResult(NamedTuple):
    """Retrained params (leaves with a leading model axis [M, ...]) and convergence diagnostics."""

    params: PyTree
    grad_norm: jax.Array  # [M] gradient norm of J_w at the returned params
    steps: jax.Array  # [M] iterations taken


def per_example_objective(loss_fn: Callable, data) -> Callable:
    """The weighted training objective J_w as a function of (params, weights).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a mean over the batch; it is applied to one
            example at a time.
        data: pytree of arrays with a leading example axis [n, ...], the training set.

    Returns:
        `objective(params, weights [n]) -> sum_j w_j loss_fn(params, z_j) / sum_j w_j`, a scalar.
    """

    def objective(params, weights):
        return jnp.sum(weights * per_example_losses(loss_fn, params, data)) / jnp.sum(weights)

    return objective


def retrain_weighted(
    loss_fn: Callable,
    params: PyTree,
    data,
    weights: jax.Array,
    *,
    method: str = "newton",
    num_iters: int = 30,
    tol: float | None = None,
    cg_num_iters: int = 8,
    damping: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 0,
    models_per_batch: int = 16,
) -> RetrainResult:
    """Minimise the weighted objective J_w for every row of `weights`, all models at once.

    J_w(params) = sum_j w_j loss_fn(params, z_j) / sum_j w_j: a row 1 - e_i is leave-one-out, a
    0/1 mask a subset (see the module docstring for the two methods). Models are solved
    `models_per_batch` at a time in chunks of one shape, so the solver compiles once.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective as a mean over the
            batch (regulariser included).
        params: pytree, the starting point of every model (the full-data optimum for "newton").
        data: pytree of arrays [n, ...], the training set.
        weights: array [M, n], one weighting of the training set per model.
        method: "newton" (convex models: preconditioned inexact Newton to `tol`) or "optax"
            (`num_steps` full-batch steps of `optimizer`).
        num_iters: most Newton steps per model ("newton").
        tol: gradient norm at which a Newton solve stops; None means
            `numerics.default_tol` of the params' dtype.
        cg_num_iters: conjugate-gradient iterations per Newton step ("newton").
        damping: multiple of the identity added to the full-data Hessian preconditioner.
        optimizer: optax `GradientTransformation` ("optax"; required there).
        num_steps: full-batch optimisation steps ("optax"; must be > 0 there).
        models_per_batch: models solved together in one vmapped chunk.

    Returns:
        `RetrainResult(params, grad_norm, steps)`: params with a leading model axis [M, ...],
        the gradient norm of J_w at them [M] (check it against `tol`) and the iterations taken [M].

    Raises:
        ValueError: if `weights` is not [M, n], `method` is unknown, `damping` is negative, or
            "optax" lacks its optimizer or steps.
        FloatingPointError: if retraining produced NaN or infinite parameters.
    """
    n = num_examples(data, "data")
    num_iters = check_positive_int("num_iters", num_iters)
    cg_num_iters = check_positive_int("cg_num_iters", cg_num_iters)
    models_per_batch = check_positive_int("models_per_batch", models_per_batch)
    damping = check_nonnegative("damping", damping)
    weights = jnp.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must have shape [M, n_train={n}], got {weights.shape}")
    flat0, unravel = ravel_pytree(params)
    weights = weights.astype(flat0.dtype)
    if method == "newton":
        h0 = curvature.dense_hessian(loss_fn, params, data) + damping * jnp.eye(flat0.size, dtype=flat0.dtype)
        tol = default_tol(flat0.dtype) if tol is None else tol
        precond, tol = jnp.linalg.inv(h0), jnp.asarray(tol, flat0.dtype)
        run = lambda w: _newton(loss_fn, params, data, w, precond, tol, jnp.asarray(num_iters),
                                jnp.asarray(cg_num_iters))
    elif method == "optax":
        if optimizer is None or num_steps <= 0:
            raise ValueError("method='optax' needs optimizer= (an optax transformation) and num_steps > 0")
        run = lambda w: _optax(loss_fn, params, data, w, optimizer, num_steps)
    else:
        raise ValueError(f"method must be 'newton' or 'optax', got {method!r}")
    flats, gnorms, ks = _map_models(run, weights, models_per_batch)
    if not bool(jnp.all(jnp.isfinite(flats))):
        advice = ("Newton's method suits convex models: raise the damping, or use method='optax' for a "
                  "non-convex one" if method == "newton" else "lower the optimizer's step size")
        raise FloatingPointError(f"retraining ({method}) produced NaN or infinite parameters; {advice}")
    return RetrainResult(jax.vmap(unravel)(flats), gnorms, ks)


def _flat_objective_grad(loss_fn, params, data):
    _, unravel = ravel_pytree(params)
    objective = per_example_objective(loss_fn, data)
    return jax.grad(lambda flat, w: objective(unravel(flat), w))


@functools.partial(jax.jit, static_argnums=0)
def _newton(loss_fn, params, data, weights, precond, tol, num_iters, cg_num_iters):
    """Inexact Newton: each step solves H_w d = -g by conjugate gradients preconditioned with
    `precond` (the inverse full-data Hessian at the start), from HVPs of J_w."""
    flat0, _ = ravel_pytree(params)
    grad = _flat_objective_grad(loss_fn, params, data)

    def solve(w):
        def newton_direction(flat, g):
            hvp = lambda v: jax.jvp(lambda f: grad(f, w), (flat,), (v,))[1]

            def cg_step(_, state):
                x, r, z, d, rz = state
                hd = hvp(d)
                alpha = rz / jnp.maximum(jnp.vdot(d, hd), jnp.finfo(d.dtype).tiny)
                x, r = x + alpha * d, r - alpha * hd
                z = precond @ r
                rz_new = jnp.vdot(r, z)
                beta = rz_new / jnp.maximum(rz, jnp.finfo(d.dtype).tiny)
                return x, r, z, z + beta * d, rz_new

            z0 = precond @ g
            init = (jnp.zeros_like(g), g, z0, z0, jnp.vdot(g, z0))
            return jax.lax.fori_loop(0, cg_num_iters, cg_step, init)[0]

        def cond(state):
            k, _, g = state
            return (k < num_iters) & (jnp.linalg.norm(g) > tol)

        def body(state):
            k, flat, g = state
            flat = flat - newton_direction(flat, g)
            return k + 1, flat, grad(flat, w)

        k, flat, g = jax.lax.while_loop(cond, body, (0, flat0, grad(flat0, w)))
        return flat, jnp.linalg.norm(g), k

    return jax.vmap(solve)(weights)


def _map_models(run, weights, models_per_batch):
    """run(weights chunk [models_per_batch, n]) over padded chunks of the rows of `weights`.

    Every chunk has the same shape, so the solver compiles once whatever the number of models.
    """
    m = weights.shape[0]
    chunks = -(-m // models_per_batch)
    pad = chunks * models_per_batch - m
    if pad:
        weights = jnp.concatenate([weights, jnp.repeat(weights[:1], pad, axis=0)])
    parts = [run(weights[c * models_per_batch : (c + 1) * models_per_batch])
             for c in bar(range(chunks), desc="retraining", disable=chunks < 4)]
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:m], *parts)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _optax(loss_fn, params, data, weights, optimizer, num_steps):
    flat0, unravel = ravel_pytree(params)
    grad = _flat_objective_grad(loss_fn, params, data)
    objective = per_example_objective(loss_fn, data)

    def solve(w):
        flat, _ = optimize(lambda f, _: objective(unravel(f), w), flat0, data, None,
                           optimizer=optimizer, num_steps=num_steps)
        return flat, jnp.linalg.norm(grad(flat, w)), jnp.asarray(num_steps)

    return jax.vmap(solve)(weights)


class FitResult(NamedTuple):
    """The optimum found by `fit` and the gradient norm of the objective there."""

    params: PyTree
    grad_norm: float


def fit(
    loss_fn: Callable, params: PyTree, data, *, num_refreshes: int = 20, tol: float | None = None,
    **options
) -> FitResult:
    """Train on the whole dataset to convergence by Newton's method (convex models).

    Each round refreshes the Hessian and runs the fixed-preconditioner iteration of
    `retrain_weighted` (5 Newton steps unless `num_iters=` says otherwise). Leave-one-out and LDS
    ground truths are measured against this optimum.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (regulariser
            included), a mean over the batch.
        params: pytree, the starting point.
        data: pytree of arrays [n, ...], the training set.
        num_refreshes: most Hessian refreshes (rounds of Newton steps).
        tol: gradient norm at which to stop; None means `numerics.default_tol` of the dtype.
        **options: passed to `retrain_weighted` (`num_iters`, `cg_num_iters`, `damping`, ...).

    Returns:
        `FitResult(params, grad_norm)`: the optimum and the gradient norm reached (compare it
        with `tol`: it stays above when `num_refreshes` rounds were not enough).
    """
    n = num_examples(data, "data")
    num_refreshes = check_positive_int("num_refreshes", num_refreshes)
    flat0, _ = ravel_pytree(params)
    options.setdefault("num_iters", 5)
    tol = default_tol(flat0.dtype) if tol is None else tol
    gnorm = float("inf")
    for _ in range(num_refreshes):
        result = retrain_weighted(loss_fn, params, data, jnp.ones((1, n), flat0.dtype), tol=tol, **options)
        params, gnorm = jax.tree.map(lambda a: a[0], result.params), float(result.grad_norm[0])
        if gnorm <= tol:
            break
    return FitResult(params, gnorm)


@functools.partial(jax.jit, static_argnums=0)
def _outputs(measure_fn, stacked_params, test):
    one = lambda p: jax.vmap(lambda z: example_loss(measure_fn, p, z))(test)
    return jax.lax.map(one, stacked_params, batch_size=16)


def outputs(measure_fn: Callable, stacked_params: PyTree, test) -> jax.Array:
    """The test measure of every model on every test point.

    Args:
        measure_fn: `measure_fn(params, batch) -> scalar`, a mean over the batch (applied to one
            test example at a time), e.g. the loss.
        stacked_params: pytree whose leaves have a leading model axis [M, ...].
        test: pytree of arrays [n_test, ...], the test points.

    Returns:
        Array [M, n_test]: measure_fn(params_m, test example t).
    """
    return _outputs(measure_fn, stacked_params, test)
