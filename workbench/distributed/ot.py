"""Entropic optimal transport between two point clouds by L-BFGS on the dual potentials.

With uniform weights a_i = 1/n, b_j = 1/m and squared-Euclidean cost c_ij = ||x_i - y_j||^2,
the entropic dual is

    D(u, v) = sum_i a_i u_i + sum_j b_j v_j - eps * sum_ij a_i b_j exp((u_i + v_j - c_ij) / eps) + eps,

maximised over the potentials (u, v); the plan is P_ij = a_i b_j exp((u_i + v_j - c_ij) / eps).
D equals the regularised OT cost <P, C> + eps KL(P | a b^T) at the optimum (what
`ott-jax`'s Sinkhorn reports as `reg_ot_cost`). We minimise -D with `optax.lbfgs`.

Layout (Schioppa's distributed minimisation, in JAX): the points x are sharded by block over
every device of every process, and each device owns the potentials u_i of its rows. The points y
are gathered once (O(m) memory per device). In every evaluation each device builds its cost
block c_ij for its rows against `chunk_size` columns at a time inside a `lax.scan`, accumulating
a log-sum-exp; the blocks are combined with `psum`. No device ever holds more than
[rows_per_device, chunk_size] of the cost matrix, and the full n x m matrix never exists anywhere.
The potentials themselves are replicated for L-BFGS by default (its inner products stay local);
`shard_potentials=True` shards u and v by block too, as Spark's distributed vectors do, which
makes every L-BFGS inner product a collective (use it when n + m numbers do not fit a device).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from workbench.core.numerics import check_positive_int
from workbench.distributed.minimize import minimize_lbfgs
from workbench.distributed.sharding import AXIS, ShardedData, gather_rows, replicate, to_host


class OTResult(NamedTuple):
    u: np.ndarray  # [n] potential on x (real points only, process order)
    v: np.ndarray  # [m] potential on y
    dual: float  # D(u, v): the regularised OT cost at the optimum
    transport_cost: float  # <P, C>
    marginal_error: float  # ||P 1 - a||_1 + ||P^T 1 - b||_1
    num_steps: int
    num_evaluations: int  # dual-and-gradient evaluations (line-search trials included)
    grad_norm: float
    converged: bool


_MASKED = -1e30  # log-weight of a padding point: exp() of it is 0, and gradients stay finite


def _log_weights(w, count):
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0) / count.astype(w.dtype)), _MASKED)


def _chunks(a, chunk):
    m = a.shape[0]
    pad = (-m) % chunk
    a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
    return a.reshape((-1, chunk) + a.shape[1:])


def _block_terms(u, v, x, y, la, lb, eps, chunk, with_cost: bool):
    """Per device: log sum_ij exp(z_ij) for its rows against every column (and, `with_cost`, the
    row sums, column sums and sum P_ij c_ij), z_ij = (u_i + v_j - c_ij)/eps + log a_i + log b_j."""
    m = v.shape[0]
    pad = (-m) % chunk
    lb = jnp.concatenate([lb, jnp.full((pad,), _MASKED, lb.dtype)]) if pad else lb
    cols = (_chunks(v, chunk), _chunks(y, chunk), lb.reshape(-1, chunk))
    xx = jnp.sum(x * x, axis=1)

    def z_of(vc, yc, lbc):
        cost = xx[:, None] + jnp.sum(yc * yc, axis=1)[None, :] - 2.0 * x @ yc.T  # this block only
        cost = jnp.maximum(cost, 0.0)
        return (u[:, None] + vc[None, :] - cost) / eps + la[:, None] + lbc[None, :], cost

    if not with_cost:
        def body(lse, c):
            z, _ = z_of(*c)
            return jnp.logaddexp(lse, jax.nn.logsumexp(z)), None

        return jax.lax.scan(body, _varying(jnp.asarray(_MASKED, u.dtype)), cols)[0]

    def body(acc, c):
        rows, cost_sum = acc
        z, cost = z_of(*c)
        plan = jnp.exp(z)
        return (rows + plan.sum(1), cost_sum + jnp.sum(plan * cost)), plan.sum(0)

    (rows, cost_sum), col_chunks = jax.lax.scan(body, (jnp.zeros_like(u), _varying(jnp.zeros((), u.dtype))), cols)
    return rows, col_chunks.reshape(-1)[:m], cost_sum


def _varying(a):
    return jax.lax.pcast(a, AXIS, to="varying")


def _gather(a):
    return jax.lax.all_gather(a, AXIS, tiled=True)


def _negative_dual(pot, args, sharded: bool):
    x, eps, chunk = args["x"], args["eps"], args["chunk"]
    u, v = pot

    def local(u, v, xr, y_all, wa, wb, wb_all, na, nb, eps):
        la, lb, lb_all = _log_weights(wa, na), _log_weights(wb, nb), _log_weights(wb_all, nb)
        if sharded:  # u and v are this device's blocks: gather v
            u_blk, v_all = u, _gather(v)
            linear = jnp.sum(jnp.exp(la) * u) + jnp.sum(jnp.exp(lb) * v)
        else:  # both replicated: this device's rows of u, all of v
            rows = xr.shape[0]
            u_blk = jax.lax.dynamic_slice_in_dim(u, jax.lax.axis_index(AXIS) * rows, rows)
            # marked device-varying here, so v's gradient is all-reduced once, not per column chunk
            v_all = _varying(v)
            linear = jnp.sum(jnp.exp(la) * u_blk)
        lse = _block_terms(u_blk, v_all, xr, y_all, la, lb_all, eps, chunk.shape[0], False)
        shift = jax.lax.pmax(jax.lax.stop_gradient(lse), AXIS)
        linear, mass = jax.lax.psum((linear, jnp.exp(lse - shift)), AXIS)
        if not sharded:  # the v term, whole on every device
            linear = linear + jnp.sum(jnp.exp(lb_all) * v)
        return -(linear - eps * mass * jnp.exp(shift) + eps)

    pspec = P(AXIS) if sharded else P()
    spec = (pspec, pspec, P(AXIS), P(), P(AXIS), P(AXIS), P(), P(), P(), P())
    fn = jax.shard_map(local, mesh=x.mesh, in_specs=spec, out_specs=P())
    return fn(u, v, x.data, args["y_all"], x.weights, args["wy"], args["wy_all"], args["n"], args["m"], eps)


def negative_dual(pot, args):
    """-D(u, v) for replicated potentials `pot = (u, v)` and the `args` of `dual_problem`: each
    device takes its rows of u; per evaluation the devices all-reduce two scalars and, in the
    gradient, u's and v's contributions (one vector of n + m numbers).

    Args:
        pot: the potentials (u [slots of x], v [slots of y]), replicated.
        args: the `args` of `dual_problem`.

    Returns:
        -D(u, v), a scalar replicated on every device.
    """
    return _negative_dual(pot, args, False)


def negative_dual_sharded(pot, args):
    """-D(u, v) with u and v sharded by block (`dual_problem(..., sharded=True)`): each device
    holds n/P + m/P potentials and gathers v per evaluation; the optimizer's inner products
    then become collectives too.

    Args:
        pot: the potentials (u, v), sharded by block like x and y.
        args: the `args` of `dual_problem(..., sharded=True)`.

    Returns:
        -D(u, v), a scalar replicated on every device.
    """
    return _negative_dual(pot, args, True)


@jax.jit
def _summary(pot, args):
    x, eps, chunk = args["x"], args["eps"], args["chunk"]

    def local(u, v, xr, y_all, wa, wb_all, na, nb, eps):
        la, lb_all = _log_weights(wa, na), _log_weights(wb_all, nb)
        rows, cols, cost = _block_terms(u, _gather(v), xr, y_all, la, lb_all, eps, chunk.shape[0], True)
        cols = jax.lax.psum(cols, AXIS)
        col_err = jnp.sum(jnp.abs(cols - jnp.exp(lb_all)))
        row_err = jax.lax.psum(jnp.sum(jnp.abs(rows - jnp.exp(la))), AXIS)
        return jax.lax.psum(cost, AXIS), row_err + col_err

    spec = (P(AXIS), P(AXIS), P(AXIS), P(), P(AXIS), P(), P(), P(), P())
    fn = jax.shard_map(local, mesh=x.mesh, in_specs=spec, out_specs=(P(), P()))
    return fn(*pot, x.data, args["y_all"], x.weights, args["wy_all"], args["n"], args["m"], eps)


def _check_points(name, d: ShardedData):
    if not isinstance(d, ShardedData):
        raise TypeError(f"{name} must be a ShardedData of points [n, dim] (see distributed.shard_examples), "
                        f"got {type(d).__name__}")
    if not isinstance(d.data, jax.Array) or d.data.ndim != 2:
        raise ValueError(f"{name} must hold one array of points [n, dim], got {jax.tree.map(np.shape, d.data)}")


def entropic_ot(x: ShardedData, y: ShardedData, epsilon: float, *, num_steps: int = 2000,
                tol: float | None = None, memory_size: int = 20, chunk_size: int = 256,
                shard_potentials: bool = False, require_convergence: bool = True) -> OTResult:
    """Entropic OT between the point clouds `x` and `y` (each a `ShardedData` of one [n, dim]
    array, uniform weights) with regularisation `epsilon`, by L-BFGS on the dual potentials
    (see the module docstring). `chunk_size` columns of the cost are built at a time on each
    device. `shard_potentials=True` keeps u and v sharded by block (n/P + m/P numbers per device,
    for problems whose potentials outgrow one device), at the price of a collective for every
    inner product of L-BFGS; by default they are replicated and only the dual's sums and
    gradient are all-reduced. `tol` bounds the gradient norm of the dual (the marginal
    violation); default 1e-9 in float64, 1e-4 in float32.

    Args:
        x: the first point cloud, a `ShardedData` of one [n, dim] array.
        y: the second point cloud, [m, dim], on the same mesh and dtype.
        epsilon: the entropic regularisation (> 0), in squared-distance units.
        num_steps: the most L-BFGS iterations.
        tol: the dual gradient norm to reach (default 1e-9 in float64, 1e-4 in float32).
        memory_size: the L-BFGS memory.
        chunk_size: cost columns built at once on each device.
        shard_potentials: keep u and v sharded by block instead of replicated.
        require_convergence: raise when `tol` is not reached.

    Returns:
        An `OTResult` with the potentials u [n] and v [m] (numpy, process order), the dual value,
        the transport cost, the marginal error and the solver's counts.

    Raises:
        TypeError: x or y is not a `ShardedData`.
        ValueError: mismatched dimensions, meshes or dtypes, or a bad `epsilon` / `chunk_size`.
        FloatingPointError: the dual became NaN or inf.
        RuntimeError: not converged and `require_convergence`.
    """
    _check_points("x", x)
    _check_points("y", y)
    if x.data.shape[1] != y.data.shape[1]:
        raise ValueError(f"x and y must have the same point dimension, got {x.data.shape[1]} and {y.data.shape[1]}")
    if x.mesh != y.mesh:
        raise ValueError("x and y must be sharded over the same mesh")
    if not np.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if not jnp.issubdtype(x.data.dtype, jnp.floating) or y.data.dtype != x.data.dtype:
        raise ValueError(f"x and y must share one floating dtype, got {x.data.dtype} and {y.data.dtype}")
    start, args = dual_problem(x, y, epsilon, chunk_size, sharded=shard_potentials)
    result = minimize_lbfgs(negative_dual_sharded if shard_potentials else negative_dual, start, args,
                            num_steps=num_steps, tol=tol,
                            memory_size=memory_size, require_convergence=require_convergence,
                            name="entropic_ot")
    u, v = result.params
    pot = (_reshard(u, x), _reshard(v, y))
    cost, err = to_host(_summary(pot, args))
    return OTResult(gather_rows(x, pot[0]), gather_rows(y, pot[1]), -result.value, float(cost),
                    float(err), result.num_steps, result.num_evaluations, result.grad_norm,
                    result.converged)


def dual_problem(x: ShardedData, y: ShardedData, epsilon: float, chunk_size: int = 256, sharded: bool = False):
    """(zero potentials (u, v), args) such that `negative_dual((u, v), args)` is -D(u, v) (call it
    inside `jit`); what `entropic_ot` minimises. The potentials are replicated, or, with
    `sharded=True`, sharded by block like x and y (for `negative_dual_sharded`).

    Args:
        x: the first point cloud (`ShardedData` of [n, dim]).
        y: the second point cloud ([m, dim]).
        epsilon: the entropic regularisation.
        chunk_size: cost columns built at once on each device.
        sharded: shard the potentials by block instead of replicating them.

    Returns:
        The tuple ((u0, v0), args): zero potentials laid out like x's and y's weights, and the
        arrays `negative_dual` reads.
    """
    dtype = x.data.dtype
    chunk = min(chunk_size, y.weights.shape[0])
    args = {
        "x": x,
        # y and its weights are constants: gathered once here, not in every evaluation
        "y_all": replicate(to_host(y.data), x.mesh),
        "wy": y.weights,
        "wy_all": replicate(to_host(y.weights), x.mesh),
        "eps": replicate(np.asarray(epsilon, dtype), x.mesh),
        "n": replicate(np.asarray(x.num_examples, dtype), x.mesh),
        "m": replicate(np.asarray(y.num_examples, dtype), x.mesh),
        "chunk": replicate(np.zeros(chunk, np.int8), x.mesh),  # its shape carries the chunk size
    }
    layout = NamedSharding(x.mesh, P(AXIS) if sharded else P())
    zeros = lambda d: jax.jit(jnp.zeros_like, out_shardings=layout)(d.weights)
    return (zeros(x), zeros(y)), args


def _reshard(host: np.ndarray, d: ShardedData):
    """A host array laid out like `d.weights` (the same on every process) back as a sharded array."""
    sharding = NamedSharding(d.mesh, P(AXIS))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def plan(x: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, epsilon: float) -> np.ndarray:
    """The dense plan P_ij = exp((u_i + v_j - c_ij)/eps) / (n m) on the host (small problems,
    for pictures and checks only).

    Args:
        x: [n, dim] the first points.
        y: [m, dim] the second points.
        u: [n] the first potential.
        v: [m] the second potential.
        epsilon: the entropic regularisation the potentials were computed with.

    Returns:
        The plan [n, m] (float64), summing to about 1.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.exp((u[:, None] + v[None, :] - cost) / epsilon) / (len(x) * len(y))
