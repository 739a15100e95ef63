"""Entropic OT between two small point clouds inside a training loop: a fixed-iteration
log-domain Sinkhorn, the barycentric projection of its plan, and exact assignments.

With weights a [n], b [m] and the squared-Euclidean cost c_ij = |x_i - y_j|^2, the entropic
plan is P_ij = a_i b_j exp((f_i + g_j - c_ij) / eps) for the potentials (f, g) maximising the
dual D(f, g) = a.f + b.g - eps sum_ij a_i b_j exp((f_i + g_j - c_ij)/eps) + eps: the convention
of `workbench.distributed.ot` (the large-scale solver, L-BFGS on sharded potentials) and of
ott-jax, so the three share potentials. Here the whole cost matrix of one batch fits in memory
and Sinkhorn's alternating updates

    f_i = -eps logsumexp_j (log b_j + (g_j - c_ij)/eps),  g_j = -eps logsumexp_i (log a_i + (f_i - c_ij)/eps)

run a fixed number of times in a `lax.fori_loop` (a static loop, differentiable, jittable and
vmappable, so it compiles once inside a `lax.scan` of training steps). Working with log-sum-exps
keeps every quantity finite for any eps > 0, where the kernel exp(-c/eps) underflows.

`assignment` solves the eps -> 0 limit with equal weights exactly (SciPy's Hungarian-type
`linear_sum_assignment` on the host; `assignment_in_jit` wraps it for traced code with
`jax.pure_callback`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from workbench.core.numerics import check_positive_int


class SinkhornResult(NamedTuple):
    """f [n], g [m]: the potentials; plan [n, m]; transport_cost <P, C>; marginal_error
    |P 1 - a|_1 + |P^T 1 - b|_1 (the row error after the final g update); finite: whether every
    number is finite."""

    f: jax.Array
    g: jax.Array
    plan: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array
    finite: jax.Array


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """The cost matrix c_ij = |x_i - y_j|^2 (clipped at 0 against round-off).

    Args:
        x: [n, dim] points.
        y: [m, dim] points.

    Returns:
        [n, m] squared distances.
    """
    cost = jnp.sum(x * x, 1)[:, None] + jnp.sum(y * y, 1)[None, :] - 2.0 * x @ y.T
    return jnp.maximum(cost, 0.0)


def _check_inputs(x, y, epsilon):
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x and y must be point clouds [n, dim], got shapes {x.shape} and {y.shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same point dimension, got {x.shape[1]} and {y.shape[1]}")
    if not isinstance(epsilon, jax.core.Tracer):
        value = float(np.asarray(epsilon))
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"epsilon must be a positive number, got {value!r}")


def sinkhorn(x: jax.Array, y: jax.Array, epsilon, num_iters: int = 100, a: jax.Array | None = None,
             b: jax.Array | None = None, cost: jax.Array | None = None) -> SinkhornResult:
    """`num_iters` log-domain Sinkhorn iterations (an f update, then a g update) from zero
    potentials, for the squared-Euclidean cost between `x` and `y` (or a given `cost`).

    A pure function of arrays: use it under `jit`, `vmap` and `grad` (gradients flow through
    the unrolled iterations).

    Args:
        x: [n, dim] the first points.
        y: [m, dim] the second points.
        epsilon: the entropic regularisation (> 0), in squared-distance units.
        num_iters: the number of iterations (a Python int; a traced int is accepted where no
            gradient flows through the iterations, e.g. under `stop_gradient`).
        a: [n] the first weights (default uniform 1/n).
        b: [m] the second weights (default uniform 1/m).
        cost: [n, m] a cost matrix to use instead of `squared_distances(x, y)`.

    Returns:
        A `SinkhornResult(f, g, plan, transport_cost, marginal_error, finite)`.

    Raises:
        ValueError: point clouds of different dimensions or not 2-d, a concrete `epsilon` <= 0
            or not finite, or a `num_iters` that is not a positive int.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_inputs(x, y, epsilon)
    if not isinstance(num_iters, jax.core.Tracer):
        num_iters = check_positive_int("num_iters", num_iters)
    dtype = jnp.result_type(x, y)
    n, m = x.shape[0], y.shape[0]
    a = jnp.full((n,), 1.0 / n, dtype) if a is None else jnp.asarray(a, dtype)
    b = jnp.full((m,), 1.0 / m, dtype) if b is None else jnp.asarray(b, dtype)
    c = squared_distances(x, y) if cost is None else jnp.asarray(cost, dtype)
    eps = jnp.asarray(epsilon, dtype)
    la, lb = jnp.log(a), jnp.log(b)

    def body(_, fg):
        f, g = fg
        f = -eps * jax.nn.logsumexp(lb[None, :] + (g[None, :] - c) / eps, axis=1)
        g = -eps * jax.nn.logsumexp(la[:, None] + (f[:, None] - c) / eps, axis=0)
        return f, g

    f, g = jax.lax.fori_loop(0, num_iters, body, (jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)))
    plan = jnp.exp(la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - c) / eps)
    error = jnp.sum(jnp.abs(plan.sum(1) - a)) + jnp.sum(jnp.abs(plan.sum(0) - b))
    cost_value = jnp.sum(plan * c)
    finite = jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(g)) & jnp.isfinite(cost_value)
    return SinkhornResult(f, g, plan, cost_value, error, finite)


def barycentric_projection(plan: jax.Array, y: jax.Array) -> jax.Array:
    """Where each x_i goes on average under `plan`: sum_j P_ij y_j / sum_j P_ij.

    Args:
        plan: [n, m] a transport plan (non-negative).
        y: [m, dim] the points of the second cloud.

    Returns:
        [n, dim] the barycentric projection.
    """
    return (plan @ y) / jnp.sum(plan, axis=1, keepdims=True)


def entropic_map(x: jax.Array, y: jax.Array, g: jax.Array, epsilon) -> jax.Array:
    """The entropic map at new points (Pooladian & Niles-Weed 2021): the barycentric projection
    of the plan extended by the c-transform of g, T(x) = sum_j softmax_j((g_j - |x - y_j|^2)/eps) y_j
    (uniform weights on y). With g from `sinkhorn(x_fit, y, eps)` it agrees with
    `barycentric_projection` on x_fit.

    Args:
        x: [n, dim] where to evaluate the map.
        y: [m, dim] the target points the potential g lives on.
        g: [m] the potential on y.
        epsilon: the entropic regularisation g was computed with.

    Returns:
        [n, dim] the mapped points.
    """
    logits = (g[None, :] - squared_distances(x, y)) / jnp.asarray(epsilon, g.dtype)
    return jax.nn.softmax(logits, axis=1) @ y


def assignment(x, y) -> np.ndarray:
    """The exact optimal matching of two equal-size clouds for the squared-Euclidean cost
    (the eps -> 0 limit of Sinkhorn with uniform weights): x_i goes to y_{perm[i]}.

    Args:
        x: [n, dim] the first points.
        y: [n, dim] the second points.

    Returns:
        perm [n] (numpy int), a permutation.

    Raises:
        ValueError: clouds of different sizes or dimensions.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be point clouds of the same shape [n, dim], got {x.shape} and {y.shape}")
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(x), np.int64)
    perm[rows] = cols
    return perm


def assignment_in_jit(x: jax.Array, y: jax.Array) -> jax.Array:
    """`assignment` callable from traced code (`jax.pure_callback`, run on the host); no gradient.

    Args:
        x: [n, dim] the first points.
        y: [n, dim] the second points.

    Returns:
        perm [n] (int32): x_i is matched with y_{perm[i]}.
    """
    out = jax.ShapeDtypeStruct((x.shape[0],), jnp.int32)
    return jax.pure_callback(lambda a, b: assignment(a, b).astype(np.int32), out,
                             jax.lax.stop_gradient(x), jax.lax.stop_gradient(y), vmap_method="sequential")
