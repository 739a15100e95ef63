"""Quasi-Newton minimisation over examples sharded across processes: L-BFGS and OWL-QN.

The objective of a `ShardedData` is `f(params) = (1/N) sum_i loss_fn(params, example_i) +
0.5 * l2 * ||params||^2` (`objective`), its sum over examples reduced with `global_sum` (each
device its rows, `psum` across every device of every process). Every process runs the same
jitted loop (SPMD) and so takes the same steps on the same replicated numbers.

- `lbfgs(loss_fn, params, data, ...)`: `optax.lbfgs` (zoom line search) in a `lax.while_loop`,
  stopped when the gradient norm reaches `tol` or after `num_steps`.
- `owlqn(loss_fn, params, data, l1=...)`: orthant-wise limited-memory quasi-Newton (Andrew &
  Gao, 2007) for `f(params) + l1 * ||params||_1`: an L-BFGS direction on the pseudo-gradient,
  kept in the orthant of the steepest descent, a projected backtracking line search. optax has
  no OWL-QN, so it is implemented here on pytrees (params may be sharded by block).
- `minimize_lbfgs(value_fn, params, args, ...)`: the L-BFGS loop for any `value_fn(params, args)`
  (the entropic-OT dual uses it).
`block_params(params, data)` places params (and so the optimizer state) sharded by block over
the devices, for linear models whose parameters outgrow one device.

Results carry `converged` and `finite`; a non-finite objective raises `FloatingPointError`, and a
run that does not reach `tol` raises `RuntimeError` naming the gradient norm reached (pass
`require_convergence=False` to get the last iterate anyway, e.g. to time a fixed number of steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from workbench.core.numerics import check_floating, check_positive_int
from workbench.distributed.operator import _example_sum
from workbench.distributed.sharding import AXIS, ShardedData, global_sum, replicate, to_host

PyTree = Any


class MinimizeResult(NamedTuple):
    params: PyTree  # numpy arrays, the same on every process
    value: float  # objective at params (including the l1 term for OWL-QN)
    grad_norm: float  # norm of the (pseudo-)gradient at params
    num_steps: int  # iterations taken
    num_evaluations: int  # objective-and-gradient evaluations (line-search trials included)
    converged: bool  # grad_norm <= tol
    finite: bool  # every objective value was finite
    values: np.ndarray  # [num_steps + 1] objective at every iterate


def _gradient_tol(dtype) -> float:
    """The default gradient-norm tolerance of the quasi-Newton loops: 1e-9 in float64, 1e-4 in
    float32 (a gradient norm, looser than `core.numerics.default_tol`'s relative residual)."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


# ----------------------------------------------------------------------------- the objective


def objective_value(loss_fn: Callable, params: PyTree, data: ShardedData, l2=0.0, chunk_size=None) -> jax.Array:
    """(1/N) sum over every real example of loss_fn(params, example) + 0.5 * l2 * ||params||^2,
    the same scalar on every device (call inside `jit` with `data` as an argument).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean (evaluated on one-example batches).
        params: the point (replicated or `block_params`).
        data: the `ShardedData`.
        l2: the L2 coefficient.
        chunk_size: examples each device evaluates at once (None: all of its rows).

    Returns:
        The objective, a scalar replicated on every device.
    """
    total = global_sum(lambda p, rows, w: _example_sum(loss_fn)(p, (rows, w)), params, data,
                       chunk_size=chunk_size)
    value = total / jnp.asarray(data.num_examples, total.dtype)
    return value + 0.5 * jnp.asarray(l2, value.dtype) * optax.tree.vdot(params, params)


def block_params(params: PyTree, data: ShardedData) -> PyTree:
    """Params as global arrays sharded by block along their first axis over every device (leaves
    whose first axis the device count does not divide are replicated).

    Args:
        params: host params (the same on every process).
        data: the `ShardedData` whose mesh the params are placed on.

    Returns:
        The params as global arrays (blocks of the first axis per device, or replicated).
    """
    k = data.mesh.devices.size
    rep = replicate(params, data.mesh)

    def place(a):
        if a.ndim and a.shape[0] % k == 0:
            return jax.device_put(a, NamedSharding(data.mesh, P(AXIS)))
        return a

    return jax.tree.map(place, rep)


def _as_global(params, data):
    leaves = jax.tree.leaves(params)
    if all(isinstance(a, jax.Array) and not a.is_fully_addressable for a in leaves):
        return params  # already global (e.g. block_params)
    if jax.process_count() == 1 and all(isinstance(a, jax.Array) for a in leaves) and \
            all(getattr(a.sharding, "mesh", None) == data.mesh for a in leaves):
        return params
    return replicate(params, data.mesh)


def _check(params, num_steps, tol, memory_size):
    dtype = check_floating(params)
    check_positive_int("num_steps", num_steps)
    check_positive_int("memory_size", memory_size)
    tol = _gradient_tol(dtype) if tol is None else float(tol)
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    return tol


def _finish(name, params, value, gnorm, k, values, evals, tol, require_convergence) -> MinimizeResult:
    values = np.asarray(to_host(values))[: int(to_host(k)) + 1]
    value, gnorm, k = float(to_host(value)), float(to_host(gnorm)), int(to_host(k))
    finite = bool(np.all(np.isfinite(values))) and np.isfinite(gnorm)
    if not finite:
        raise FloatingPointError(
            f"{name}: the objective became NaN or inf after {k} steps (check the loss, data and "
            "starting point for non-finite values or overflow)")
    converged = gnorm <= tol
    if require_convergence and not converged:
        raise RuntimeError(
            f"{name}: not converged after {k} steps: gradient norm {gnorm:.3e} > tol {tol:.1e} "
            "(raise num_steps, loosen tol, or pass require_convergence=False)")
    return MinimizeResult(to_host(params), value, gnorm, k, int(to_host(evals)), converged, finite, values)


# ----------------------------------------------------------------------------- L-BFGS (optax)


@functools.partial(jax.jit, static_argnames=("value_fn", "num_steps", "memory_size"))
def _lbfgs_run(value_fn, params, args, tol, *, num_steps, memory_size):
    f = lambda p: value_fn(p, args)
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(f)
    value0, grad0 = jax.value_and_grad(f)(params)
    values = jnp.full((num_steps + 1,), jnp.nan, value0.dtype).at[0].set(value0)

    def cond(c):
        _, _, k, value, gnorm, _, _ = c
        return (k < num_steps) & (gnorm > tol) & jnp.isfinite(value)

    def body(c):
        p, s, k, _, _, vals, evals = c
        value, grad = value_and_grad(p, state=s)
        with jax.numpy_dtype_promotion("standard"):  # optax's L-BFGS mixes int32/int64 counters
            updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=f)
        p = optax.apply_updates(p, updates)
        new_value = optax.tree_utils.tree_get(s, "value")
        new_grad = optax.tree_utils.tree_get(s, "grad")
        trials = optax.tree_utils.tree_get(s, "num_linesearch_steps").astype(evals.dtype)
        return p, s, k + 1, new_value, optax.tree.norm(new_grad), vals.at[k + 1].set(new_value), evals + trials

    init = (params, opt.init(params), jnp.asarray(0), value0, optax.tree.norm(grad0), values, jnp.asarray(1))
    p, _, k, value, gnorm, values, evals = jax.lax.while_loop(cond, body, init)
    return p, value, gnorm, k, values, evals


def minimize_lbfgs(value_fn: Callable, params: PyTree, args: Any, *, num_steps: int = 500,
                   tol: float | None = None, memory_size: int = 10, require_convergence: bool = True,
                   name: str = "lbfgs") -> MinimizeResult:
    """Minimise `value_fn(params, args)` (a pure, jittable scalar function; `args` passed as an
    argument, never closed over) with `optax.lbfgs` until the gradient norm is <= `tol`.

    Args:
        value_fn: `value_fn(params, args) -> scalar`, pure and jittable (hashable: it is static).
        params: the starting point (pytree of floating arrays).
        args: the data `value_fn` reads (a pytree of arrays).
        num_steps: the most L-BFGS iterations.
        tol: the gradient norm to reach (default 1e-9 in float64, 1e-4 in float32).
        memory_size: the number of curvature pairs kept.
        require_convergence: raise when `tol` is not reached (False returns the last iterate).
        name: the routine named in error messages.

    Returns:
        A `MinimizeResult(params, value, grad_norm, num_steps, num_evaluations, converged, finite,
    values)` with params as numpy arrays, the same on every process.

    Raises:
        FloatingPointError: the objective became NaN or inf.
        RuntimeError: not converged and `require_convergence`.
    """
    tol = _check(params, num_steps, tol, memory_size)
    p, value, gnorm, k, values, evals = _lbfgs_run(value_fn, params, args, tol, num_steps=int(num_steps),
                                                   memory_size=int(memory_size))
    return _finish(name, p, value, gnorm, k, values, evals, tol, require_convergence)


@functools.lru_cache(maxsize=64)
def _objective_fn(loss_fn, chunk_size):
    return lambda p, args: objective_value(loss_fn, p, args[0], args[1], chunk_size)


def lbfgs(loss_fn: Callable, params: PyTree, data: ShardedData, *, l2: float = 0.0, num_steps: int = 500,
          tol: float | None = None, memory_size: int = 10, chunk_size: int | None = None,
          require_convergence: bool = True) -> MinimizeResult:
    """Minimise the `objective` of `data` (mean of `loss_fn` over every real example, plus
    0.5 * l2 * ||params||^2) with `optax.lbfgs`. `loss_fn(params, batch)` is a batch-mean loss,
    evaluated on one-example batches; `params` are host arrays (replicated) or `block_params`.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the starting point (host arrays, or `block_params`).
        data: the `ShardedData`.
        l2: the L2 coefficient of the objective.
        num_steps: the most iterations.
        tol: the gradient norm to reach (default 1e-9 in float64, 1e-4 in float32).
        memory_size: the number of curvature pairs kept.
        chunk_size: examples each device evaluates at once (None: all of its rows).
        require_convergence: raise when `tol` is not reached.

    Returns:
        A `MinimizeResult(params, value, grad_norm, num_steps, num_evaluations, converged, finite,
    values)` with params as numpy arrays, the same on every process.

    Raises:
        TypeError: `data` is not a `ShardedData`.
        FloatingPointError: the objective became NaN or inf.
        RuntimeError: not converged and `require_convergence`.
    """
    if not isinstance(data, ShardedData):
        raise TypeError(f"data must be a ShardedData (see distributed.shard_examples), got {type(data).__name__}")
    params = _as_global(params, data)
    l2 = replicate(np.asarray(l2, jnp.result_type(*jax.tree.leaves(params))), data.mesh)
    return minimize_lbfgs(_objective_fn(loss_fn, chunk_size), params, (data, l2), num_steps=num_steps,
                          tol=tol, memory_size=memory_size, require_convergence=require_convergence)


# ----------------------------------------------------------------------------- OWL-QN


def pseudo_gradient(grad: PyTree, params: PyTree, l1) -> PyTree:
    """The minimum-norm subgradient of f + l1 ||x||_1 (zero where 0 is a subgradient).

    Args:
        grad: the gradient of the smooth part f (pytree).
        params: the point, shaped like `grad`.
        l1: the L1 coefficient (>= 0).

    Returns:
        The pseudo-gradient, shaped like `grad`.
    """

    def leaf(g, x):
        at_zero = jnp.where(g + l1 < 0, g + l1, jnp.where(g - l1 > 0, g - l1, jnp.zeros_like(g)))
        return jnp.where(x != 0, g + l1 * jnp.sign(x), at_zero)

    return jax.tree.map(leaf, grad, params)


def _two_loop(pg, s_hist, y_hist, rho, count, memory_size):
    """-H pg by the L-BFGS two-loop recursion over the `count` newest pairs (ring buffer)."""
    newest = (count - 1) % memory_size
    dot = lambda a, b: optax.tree.vdot(a, b)
    take = lambda h, i: jax.tree.map(lambda a: a[i], h)

    def first(j, c):
        q, alphas = c
        i = (newest - j) % memory_size
        alpha = jnp.where(j < count, rho[i] * dot(take(s_hist, i), q), 0.0)
        return optax.tree.add_scale(q, -alpha, take(y_hist, i)), alphas.at[i].set(alpha)

    q, alphas = jax.lax.fori_loop(0, memory_size, first, (pg, jnp.zeros_like(rho)))
    s_new, y_new = take(s_hist, newest), take(y_hist, newest)
    gamma = jnp.where(count > 0, dot(s_new, y_new) / jnp.maximum(dot(y_new, y_new), 1e-300), 1.0)
    r = optax.tree.scale(gamma, q)

    def second(j, r):
        i = (newest - (jnp.minimum(count, memory_size) - 1) + j) % memory_size  # oldest kept pair first
        beta = rho[i] * dot(take(y_hist, i), r)
        step = jnp.where(j < count, alphas[i] - beta, 0.0)
        return optax.tree.add_scale(r, step, take(s_hist, i))

    r = jax.lax.fori_loop(0, memory_size, second, r)
    return optax.tree.scale(-1.0, r)


@functools.partial(jax.jit, static_argnames=("value_fn", "num_steps", "memory_size", "max_backtracks"))
def _owlqn_run(value_fn, params, args, l1, tol, *, num_steps, memory_size, max_backtracks=60):
    smooth = lambda p: value_fn(p, args)
    l1_norm = lambda p: sum(jnp.sum(jnp.abs(a)) for a in jax.tree.leaves(p))
    full = lambda p, f: f + l1 * l1_norm(p)
    f0, g0 = jax.value_and_grad(smooth)(params)
    dtype = f0.dtype
    hist = jax.tree.map(lambda a: jnp.zeros((memory_size,) + a.shape, a.dtype), params)
    pg0 = pseudo_gradient(g0, params, l1)
    values = jnp.full((num_steps + 1,), jnp.nan, dtype).at[0].set(full(params, f0))
    c1 = jnp.asarray(1e-4, dtype)

    def cond(c):
        k, gnorm, ok = c[6], c[7], c[8]
        return (k < num_steps) & (gnorm > tol) & ok

    def body(c):
        x, f, g, s_hist, y_hist, rho, k, _, _, count, vals, _ = c
        pg = pseudo_gradient(g, x, l1)
        d = _two_loop(pg, s_hist, y_hist, rho, count, memory_size)
        d = jax.tree.map(lambda di, pgi: jnp.where(di * pgi < 0, di, jnp.zeros_like(di)), d, pg)
        orthant = jax.tree.map(lambda xi, pgi: jnp.where(xi != 0, jnp.sign(xi), -jnp.sign(pgi)), x, pg)
        F = full(x, f)
        step0 = jnp.where(count > 0, 1.0, 1.0 / jnp.maximum(optax.tree.norm(pg), 1e-300)).astype(dtype)

        def trial(alpha):
            xn = jax.tree.map(lambda xi, di, oi: jnp.where(jnp.sign(xi + alpha * di) == oi, xi + alpha * di,
                                                           jnp.zeros_like(xi)), x, d, orthant)
            fn, gn = jax.value_and_grad(smooth)(xn)
            Fn = full(xn, fn)
            ok = jnp.isfinite(Fn) & (Fn <= F + c1 * optax.tree.vdot(pg, optax.tree.sub(xn, x)))
            return xn, fn, gn, ok

        def ls_cond(s):
            return (~s[4]) & (s[5] < max_backtracks)

        def ls_body(s):
            alpha = s[0] * 0.5
            return (alpha, *trial(alpha), s[5] + 1)

        ls = jax.lax.while_loop(ls_cond, ls_body, (step0, *trial(step0), jnp.asarray(0)))
        _, xn, fn, gn, accepted, backtracks = ls
        sk, yk = optax.tree.sub(xn, x), optax.tree.sub(gn, g)
        sy = optax.tree.vdot(sk, yk)
        keep = accepted & (sy > 1e-12 * optax.tree.norm(sk) * optax.tree.norm(yk))
        slot = count % memory_size
        put = lambda h, v: jax.tree.map(lambda a, b: jnp.where(keep, a.at[slot].set(b), a), h, v)
        s_hist, y_hist = put(s_hist, sk), put(y_hist, yk)
        rho = jnp.where(keep, rho.at[slot].set(1.0 / jnp.where(keep, sy, 1.0)), rho)
        count = count + keep.astype(count.dtype)
        x, f, g = (jax.tree.map(lambda a, b: jnp.where(accepted, a, b), new, old)
                   for new, old in ((xn, x), (fn, f), (gn, g)))
        gnorm = optax.tree.norm(pseudo_gradient(g, x, l1))
        return (x, f, g, s_hist, y_hist, rho, k + 1, gnorm, accepted, count,
                vals.at[k + 1].set(full(x, f)), c[11] + backtracks + 1)

    init = (params, f0, g0, hist, hist, jnp.zeros((memory_size,), dtype), jnp.asarray(0),
            optax.tree.norm(pg0), jnp.isfinite(f0), jnp.asarray(0), values, jnp.asarray(1))
    out = jax.lax.while_loop(cond, body, init)
    x, f, k, gnorm, values, evals = out[0], out[1], out[6], out[7], out[10], out[11]
    return x, full(x, f), gnorm, k, values, evals


def owlqn(loss_fn: Callable, params: PyTree, data: ShardedData, *, l1: float, l2: float = 0.0,
          num_steps: int = 500, tol: float | None = None, memory_size: int = 10,
          chunk_size: int | None = None, require_convergence: bool = True) -> MinimizeResult:
    """Minimise `objective + l1 * ||params||_1` with OWL-QN; `grad_norm` is the norm of the
    pseudo-gradient (zero exactly at the minimiser). Exact zeros in the result are the features
    L1 switched off.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean.
        params: the starting point (host arrays, or `block_params`).
        data: the `ShardedData`.
        l1: the L1 coefficient (>= 0).
        l2: the L2 coefficient of the smooth objective.
        num_steps: the most iterations.
        tol: the pseudo-gradient norm to reach (default 1e-9 in float64, 1e-4 in float32).
        memory_size: the number of curvature pairs kept.
        chunk_size: examples each device evaluates at once (None: all of its rows).
        require_convergence: raise when `tol` is not reached.

    Returns:
        A `MinimizeResult(params, value, grad_norm, num_steps, num_evaluations, converged, finite,
    values)` with params as numpy arrays, the same on every process. `value` includes the l1 term.

    Raises:
        TypeError: `data` is not a `ShardedData`.
        ValueError: a negative or non-finite `l1`, or bad counts.
        FloatingPointError: the objective became NaN or inf.
        RuntimeError: not converged and `require_convergence`.
    """
    if not isinstance(data, ShardedData):
        raise TypeError(f"data must be a ShardedData (see distributed.shard_examples), got {type(data).__name__}")
    if not np.isfinite(l1) or l1 < 0:
        raise ValueError(f"l1 must be a non-negative number, got {l1!r}")
    tol = _check(params, num_steps, tol, memory_size)
    params = _as_global(params, data)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    l1_arr, l2_arr = (replicate(np.asarray(v, dtype), data.mesh) for v in (l1, l2))
    x, value, gnorm, k, values, evals = _owlqn_run(
        _objective_fn(loss_fn, chunk_size), params, (data, l2_arr), l1_arr, tol,
        num_steps=int(num_steps), memory_size=int(memory_size))
    return _finish("owlqn", x, value, gnorm, k, values, evals, tol, require_convergence)
