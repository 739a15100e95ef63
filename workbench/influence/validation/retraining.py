"""Real retraining, vmapped over many re-weightings of the training set.

The training objective for per-example weights w is

    J_w(params) = sum_j w_j loss_fn(params, z_j) / sum_j w_j

so w = 1 is the objective of `loss_fn` on the whole training set, w = 1 - e_i is training on
the other n-1 examples (leave-one-out) and w = a 0/1 mask is training on a subset (LDS).

`retrain_weighted` solves many such problems at once (`lax.map` over chunks of weight vectors, vmapped
inside):
- `method="newton"` (the default; convex models and small non-convex ones, warm-started at a
  trained model): line-search Newton-CG (Nocedal & Wright 2006, Algorithm 7.1) to a gradient norm
  below `tol`. Each step solves H_w d = -grad J_w by at most `cg_num_iters` conjugate-gradient
  iterations (HVPs of J_w), preconditioned with |H|^{-1} of the full-data Hessian at `params`
  (its eigenvalues' absolute values, plus `damping`: the inverse Hessian itself on a convex
  model, positive definite on any); CG stops early at negative curvature, and a backtracking
  (Armijo) line search on J_w makes every step a descent, so the iteration also converges from a
  non-convex model's indefinite curvature, to the local minimum next to `params`. For a
  leave-one-out weighting of a convex model the preconditioner is within O(1/n) of exact, so one
  or two steps reach machine precision; subsets need a few more. A model whose gradient norm is
  still above `tol` after `num_iters` steps is an error (RuntimeError naming the norm reached),
  never a returned result, unless `require_convergence=False`. It needs the dense Hessian at
  `params` (p x p): models up to a few thousand parameters.
- `method="optax"`: `num_steps` full-batch steps of an optax optimizer from `params`: training
  "the same way" from an initialisation (LDS of a network), any size of model; no convergence
  is asked of it, so its results are those of a fixed training budget.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from workbench import curvature
from workbench.core.losses import as_loss
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
    require_convergence: bool = True,
) -> RetrainResult:
    """Minimise the weighted objective J_w for every row of `weights`, all models at once.

    J_w(params) = sum_j w_j loss_fn(params, z_j) / sum_j w_j: a row 1 - e_i is leave-one-out, a
    0/1 mask a subset (see the module docstring for the two methods). Models are solved
    `models_per_batch` at a time in chunks of one shape, so the solver compiles once.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective as a mean over the
            batch (regulariser included), or a `models.Functional` (its objective).
        params: pytree, the starting point of every model (the full-data optimum for "newton").
        data: pytree of arrays [n, ...], the training set.
        weights: array [M, n], one weighting of the training set per model.
        method: "newton" (line-search Newton-CG to `tol`: convex models, and non-convex ones of
            up to a few thousand parameters warm-started at a trained model) or "optax"
            (`num_steps` full-batch steps of `optimizer`: any model, a fixed training budget).
        num_iters: most Newton steps per model ("newton").
        tol: gradient norm at which a Newton solve stops; None means
            `numerics.default_tol` of the params' dtype (1e-10 in float64, 1e-4 in float32).
        cg_num_iters: most conjugate-gradient iterations per Newton step ("newton").
        damping: added to the absolute eigenvalues of the full-data Hessian preconditioner (>= 0).
        optimizer: optax `GradientTransformation` ("optax"; required there).
        num_steps: full-batch optimisation steps ("optax"; must be > 0 there).
        models_per_batch: models solved together in one vmapped chunk.
        require_convergence: "newton" raises when a model's gradient norm stays above `tol`;
            False returns it instead (check `grad_norm`).

    Returns:
        `RetrainResult(params, grad_norm, steps)`: params with a leading model axis [M, ...],
        the gradient norm of J_w at them [M] and the iterations taken [M].

    Raises:
        ValueError: if `weights` is not [M, n], `method` is unknown, `damping` is negative, or
            "optax" lacks its optimizer or steps.
        FloatingPointError: if retraining produced NaN or infinite parameters.
        RuntimeError: "newton" left a model's gradient norm above `tol` (with
            `require_convergence`), naming the norm reached.
    """
    loss_fn = as_loss(loss_fn, role="objective", caller="validation.retrain_weighted")
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
        h0 = curvature.dense_hessian(loss_fn, params, data)
        tol = default_tol(flat0.dtype) if tol is None else float(tol)
        precond = _absolute_inverse(h0, damping)
        run = lambda w: _newton(loss_fn, params, data, w, precond, jnp.asarray(tol, flat0.dtype),
                                jnp.asarray(num_iters), jnp.asarray(cg_num_iters))
    elif method == "optax":
        if optimizer is None or num_steps <= 0:
            raise ValueError("method='optax' needs optimizer= (an optax transformation) and num_steps > 0")
        run = lambda w: _optax(loss_fn, params, data, w, optimizer, num_steps)
    else:
        raise ValueError(f"method must be 'newton' or 'optax', got {method!r}")
    flats, gnorms, ks = _map_models(run, weights, models_per_batch)
    if not bool(jnp.all(jnp.isfinite(flats))):
        advice = ("check that loss_fn and the data are finite at params" if method == "newton"
                  else "lower the optimizer's step size")
        raise FloatingPointError(f"retraining ({method}) produced NaN or infinite parameters; {advice}")
    if method == "newton" and require_convergence:
        gn = np.asarray(gnorms)
        bad = np.flatnonzero(~(gn <= tol))
        if bad.size:
            worst = int(bad[np.argmax(gn[bad])])
            raise RuntimeError(
                f"retraining (newton) did not converge: {bad.size} of {len(gn)} models stopped with a gradient "
                f"norm above tol={tol:.3g} after {num_iters} Newton steps (worst: weights row {worst}, gradient "
                f"norm {gn[worst]:.3g}). Raise num_iters or cg_num_iters, loosen tol, or pass "
                "require_convergence=False to inspect the result")
    return RetrainResult(jax.vmap(unravel)(flats), gnorms, ks)


def _absolute_inverse(hessian, damping: float):
    """(|H| + damping I)^{-1} by eigh: H + damping I inverted where H is positive definite, and a
    positive definite preconditioner where it is not (eigenvalues floored at sqrt(eps) lambda_max)."""
    values, vectors = jnp.linalg.eigh(hessian)
    scale = jnp.abs(values) + damping
    floor = jnp.sqrt(jnp.finfo(hessian.dtype).eps) * jnp.max(scale)
    return (vectors / jnp.maximum(scale, floor)) @ vectors.T


def _flat_objective_grad(loss_fn, params, data):
    _, unravel = ravel_pytree(params)
    objective = per_example_objective(loss_fn, data)
    return jax.grad(lambda flat, w: objective(unravel(flat), w))


@functools.partial(jax.jit, static_argnums=0)
def _newton(loss_fn, params, data, weights, precond, tol, num_iters, cg_num_iters):
    """Line-search Newton-CG (Nocedal & Wright 2006, Algorithm 7.1) on J_w for each row of `weights`.

    Each step runs preconditioned CG on H_w d = -g from d = 0 until the residual drops below
    min(0.5, sqrt|g|) |g|, `cg_num_iters` iterations, or negative curvature (then the last
    iterate, or -P g at the first iteration, is the direction); a direction that is not a descent
    one is replaced by -P g. The step length halves from 1 until J_w decreases (Armijo, up to the
    objective's rounding)."""
    flat0, unravel = ravel_pytree(params)
    objective = per_example_objective(loss_fn, data)
    grad = _flat_objective_grad(loss_fn, params, data)
    dtype = flat0.dtype
    tiny, eps = jnp.finfo(dtype).tiny, jnp.finfo(dtype).eps

    def solve(w):
        value = lambda f: objective(unravel(f), w)

        def newton_direction(flat, g):
            hvp = lambda v: jax.jvp(lambda f: grad(f, w), (flat,), (v,))[1]
            gnorm = jnp.linalg.norm(g)
            target = jnp.minimum(0.5, jnp.sqrt(gnorm)) * gnorm

            def cg_cond(state):
                i, _, r, _, _, _, stop = state
                return (i < cg_num_iters) & ~stop & (jnp.linalg.norm(r) > target)

            def cg_step(state):
                i, x, r, z, d, rz, _ = state
                hd = hvp(d)
                curvature = jnp.vdot(d, hd)
                negative = curvature <= 0
                alpha = rz / jnp.where(negative, 1.0, curvature)
                x_new, r_new = x + alpha * d, r - alpha * hd
                z_new = precond @ r_new
                rz_new = jnp.vdot(r_new, z_new)
                d_new = z_new + rz_new / jnp.maximum(rz, tiny) * d
                keep = lambda old, new: jnp.where(negative, old, new)
                return (i + 1, keep(x, x_new), keep(r, r_new), keep(z, z_new), keep(d, d_new),
                        keep(rz, rz_new), negative)

            z0 = -(precond @ g)
            init = (0, jnp.zeros_like(g), -g, z0, z0, jnp.vdot(-g, z0), jnp.asarray(False))
            x = jax.lax.while_loop(cg_cond, cg_step, init)[1]
            descent = jnp.vdot(g, x) < 0
            return jnp.where(descent, x, z0)  # -P g: a descent direction (P is positive definite)

        def line_search(flat, g, d):
            j0, slope = value(flat), jnp.vdot(g, d)
            slack = 10 * eps * jnp.abs(j0)  # differences below the objective's rounding pass

            def cond(state):
                k, step = state
                return (k < 40) & ~(value(flat + step * d) <= j0 + 1e-4 * step * slope + slack)

            return jax.lax.while_loop(cond, lambda state: (state[0] + 1, 0.5 * state[1]),
                                      (0, jnp.asarray(1.0, dtype)))[1]

        def cond(state):
            k, _, g = state
            return (k < num_iters) & (jnp.linalg.norm(g) > tol)

        def body(state):
            k, flat, g = state
            d = newton_direction(flat, g)
            flat = flat + line_search(flat, g, d) * d
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
    require_convergence: bool = True, **options
) -> FitResult:
    """Train on the whole dataset to a gradient norm below `tol` by Newton's method.

    Each round refreshes the Hessian preconditioner at the current params and runs
    `retrain_weighted`'s line-search Newton-CG (5 steps unless `num_iters=` says otherwise):
    convex models reach their optimum, non-convex ones (a few thousand parameters at most) the
    local minimum next to `params`. Leave-one-out and LDS ground truths are measured against it.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (regulariser
            included), a mean over the batch, or a `models.Functional` (its objective).
        params: pytree, the starting point.
        data: pytree of arrays [n, ...], the training set.
        num_refreshes: most Hessian refreshes (rounds of Newton steps).
        tol: gradient norm at which to stop; None means `numerics.default_tol` of the dtype.
        require_convergence: raise when `num_refreshes` rounds leave the gradient norm above
            `tol`; False returns the params reached (check `grad_norm`).
        **options: passed to `retrain_weighted` (`num_iters`, `cg_num_iters`, `damping`, ...).

    Returns:
        `FitResult(params, grad_norm)`: the optimum and the gradient norm reached.

    Raises:
        RuntimeError: the gradient norm stayed above `tol` (with `require_convergence`), naming
            the norm reached.
    """
    loss_fn = as_loss(loss_fn, role="objective", caller="validation.fit")
    n = num_examples(data, "data")
    num_refreshes = check_positive_int("num_refreshes", num_refreshes)
    flat0, _ = ravel_pytree(params)
    options.setdefault("num_iters", 5)
    tol = default_tol(flat0.dtype) if tol is None else tol
    gnorm = float("inf")
    for _ in range(num_refreshes):
        result = retrain_weighted(loss_fn, params, data, jnp.ones((1, n), flat0.dtype), tol=tol,
                                  require_convergence=False, **options)
        params, gnorm = jax.tree.map(lambda a: a[0], result.params), float(result.grad_norm[0])
        if gnorm <= tol:
            break
    if require_convergence and not gnorm <= tol:
        raise RuntimeError(
            f"fit did not converge: gradient norm {gnorm:.3g} > tol={tol:.3g} after {num_refreshes} Hessian "
            f"refreshes of {options['num_iters']} Newton steps. Raise num_refreshes or num_iters, loosen tol, "
            "or pass require_convergence=False to inspect the result")
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
