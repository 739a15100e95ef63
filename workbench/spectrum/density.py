"""Spectral density by stochastic Lanczos quadrature, and stochastic trace estimators.

- `spectral_density(op, key, ...)`: per probe, Lanczos gives a Gauss quadrature (Ritz values as
  nodes, squared first components of the Ritz vectors as weights) of the probe's spectral
  measure; averaging over probes estimates the eigenvalue distribution, which is then broadened
  with a Gaussian kernel on a grid (Ghorbani et al. 2019; PyHessian's recipe).
- `trace(op, key, num_probes, method)`: Hutchinson (Rademacher probes), Hutch++ (Meyer et al.
  2021) and XTrace (Epperly, Tropp & Webber 2024), each with a standard error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_key, check_positive_int, quick_compile_on_cpu
from workbench.core.per_example import map_chunks
from workbench.spectrum.krylov import (
    _check_finite,
    _check_iters,
    _check_op,
    _extend,
    _plain_recurrence,
    tridiagonal,
)

TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")
BATCH_BYTES = 1 << 26  # default budget: bytes of probe vectors (and Krylov bases) pushed together
# Trace probes pushed through the operator together, at most: a product per probe is memory-bound
# on CPU, and 100 probes at once ran 1.3-2x slower than 5 at a time (8 asked, a divisor of 100
# used) on digits MLPs of 2.4k and 85k params (benchmarks/results/probe_batch.md).
TRACE_MAX_BATCH = 8


class Density(NamedTuple):
    grid: jax.Array  # [grid_size]
    density: jax.Array  # [grid_size], integrates to 1 over the grid (trapezoid rule)
    nodes: jax.Array  # [num_probes, num_iters] Ritz values of each probe
    weights: jax.Array  # [num_probes, num_iters] quadrature weights, each row sums to 1


class TraceEstimate(NamedTuple):
    estimate: jax.Array
    std_error: jax.Array  # standard error of the estimate (from the spread of its samples)
    num_matvecs: int


def _probe_batch(op, count: int, per_probe: int, batch_bytes) -> int:
    """How many probes to push through the operator at once within `batch_bytes`."""
    if not isinstance(batch_bytes, int | float | np.integer | np.floating) or not batch_bytes > 0:
        raise ValueError(f"batch_bytes must be a positive number of bytes, got {batch_bytes!r}")
    itemsize = jnp.dtype(op.dtype).itemsize
    return int(max(1, min(count, batch_bytes // max(1, per_probe * op.dim * itemsize))))


def _map_rows(fn, xs, batch_size):
    """fn over the rows of xs: all at once (vmap: one batched operator product per step) when
    they fit, else in a loop over equal batches of at most `batch_size` rows (a divisor of the
    row count when one is at least half of it: a remainder batch would compile the operator a
    second time)."""
    return map_chunks(jax.vmap(fn), xs, batch_size, even=True)


# ----------------------------------------------------------------------------- SLQ density


def _slq_nodes(op, key, num_iters, num_probes, reorthogonalize, batch):
    """Per probe: the Ritz values and quadrature weights of its Lanczos tridiagonal."""
    probes = jax.random.rademacher(key, (num_probes, op.dim), op.dtype)  # one draw for all probes

    def one_probe(v0):
        v0 = v0 / jnp.linalg.norm(v0)
        if reorthogonalize:
            basis = jnp.zeros((num_iters + 1, op.dim), op.dtype).at[0].set(v0)
            hess = jnp.zeros((num_iters + 1, num_iters), op.dtype)
            # a breakdown freezes the recurrence (no fresh vector, so no seed is needed)
            _, hess, finite, _ = _extend(op.mv, basis, hess, True, 0, 0, num_iters, False)
            idx = jnp.arange(num_iters)
            alphas, betas = hess[idx, idx], hess[idx + 1, idx]
        else:
            alphas, betas, finite = _plain_recurrence(op, v0, num_iters)
        nodes, vecs = jnp.linalg.eigh(tridiagonal(alphas, betas))
        return nodes, vecs[0] ** 2, finite

    nodes, weights, finite = _map_rows(one_probe, probes, batch)
    return nodes, weights, jnp.all(finite)


@quick_compile_on_cpu(static_argnums=(2, 3, 4, 5, 6))
def _slq(op, key, num_iters, num_probes, reorthogonalize, batch, grid_size, sigma2):
    """Nodes, weights and the broadened density, not yet normalized, in one program (one compile
    on a first call); `_normalized` finishes it."""
    nodes, weights, finite = _slq_nodes(op, key, num_iters, num_probes, reorthogonalize, batch)
    return _grid_density(nodes, weights, sigma2, grid_size), finite


def _gaussian_sum(nodes, weights, grid, sigma2):
    """Mean over probes of sum_i w_i N(grid; node_i, sigma2)."""
    gauss = jnp.exp(-((grid[None, None, :] - nodes[..., None]) ** 2) / (2 * sigma2))
    gauss = gauss / jnp.sqrt(2 * jnp.pi * sigma2)
    return jnp.einsum("pi,pig->g", weights, gauss) / nodes.shape[0]


def _normalized(density, grid, xp=jnp):
    """`density` divided by its trapezoid-rule integral over the uniform `grid`. With `xp=np`
    on the host (float64), after the program: compiled, it cost a first call ~0.03 s."""
    return density / ((grid[1] - grid[0]) * (xp.sum(density) - 0.5 * (density[0] + density[-1])))


def broaden(nodes, weights, grid, sigma2):
    """Mean over probes of sum_i w_i N(grid; node_i, sigma2), renormalized to integrate to 1 on
    the uniform `grid` (trapezoid rule).

    Args:
        nodes: [num_probes, m] quadrature nodes (Ritz values) of each probe.
        weights: [num_probes, m] quadrature weights, each row summing to 1.
        grid: [grid_size] uniform grid of eigenvalues.
        sigma2: the variance of the Gaussian kernel.

    Returns:
        [grid_size] density on `grid`, integrating to 1 (trapezoid rule).
    """
    return _normalized(_gaussian_sum(nodes, weights, grid, sigma2), grid)


def spectral_density(
    op,
    key,
    num_iters: int = 90,
    num_probes: int = 10,
    sigma2: float = 1e-5,
    grid_size: int = 10_000,
    reorthogonalize: bool = True,
    batch_bytes: float = BATCH_BYTES,
) -> Density:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    `num_probes` Rademacher probes, `num_iters` Lanczos steps each (fully reorthogonalized by
    default; set False for O(dim) memory per probe). The Gaussian kernel has variance
    sigma2 * max(1, spectral range) (PyHessian's scaling), on `grid_size` points spanning the
    Ritz values plus a margin; the returned density integrates to 1. The probes run together
    (one batched operator product per Lanczos step) as far as their Krylov bases fit in
    `batch_bytes`, the rest in sequential chunks; the numbers do not depend on the chunking.

    Args:
        op: the symmetric `curvature.LinearOperator`.
        key: PRNG key drawing the Rademacher probes.
        num_iters: Lanczos steps per probe (quadrature nodes per probe), at most dim.
        num_probes: the number of probes averaged.
        sigma2: the kernel variance relative to max(1, spectral range).
        grid_size: the number of grid points (>= 2).
        reorthogonalize: full reorthogonalization (a basis of num_iters + 1 vectors per probe);
            False runs the three-term recurrence in O(dim) memory.
        batch_bytes: the memory budget of probes (and bases) pushed through the operator at once.

    Returns:
        A `Density(grid, density, nodes, weights)`: the grid [grid_size], the density on it, and
        each probe's nodes and weights [num_probes, num_iters].

    Raises:
        ValueError: a bad count, `sigma2` <= 0, or `num_iters` above the dimension.
        FloatingPointError: an operator product was NaN or inf.
    """
    key = check_key(key)
    _check_op(op)
    num_iters = _check_iters(num_iters, op.dim)
    num_probes = check_positive_int("num_probes", num_probes)
    grid_size = check_positive_int("grid_size", grid_size, least=2)
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2!r}")
    batch = _probe_batch(op, num_probes, num_iters + 2 if reorthogonalize else 4, batch_bytes)
    result, finite = _slq(
        op, key, num_iters, int(num_probes), bool(reorthogonalize), batch, int(grid_size), float(sigma2)
    )
    _check_finite(finite, "spectral_density")
    if isinstance(result.density, jax.core.Tracer):
        return result._replace(density=_normalized(result.density, result.grid))
    density = _normalized(np.asarray(result.density, np.float64), np.asarray(result.grid, np.float64), np)
    return result._replace(density=jnp.asarray(density, result.density.dtype))


def _grid_density(nodes, weights, sigma2, grid_size):
    held = weights > 0  # nodes decoupled by a breakdown carry no weight: keep them off the grid
    lo = jnp.min(jnp.where(held, nodes, jnp.inf))
    hi = jnp.max(jnp.where(held, nodes, -jnp.inf))
    var = sigma2 * jnp.maximum(1.0, hi - lo)
    pad = 0.01 * (hi - lo) + 5 * jnp.sqrt(var)
    grid = jnp.linspace(lo - pad, hi + pad, grid_size, dtype=nodes.dtype)
    return Density(grid, _gaussian_sum(nodes, weights, grid, var), nodes, weights)


# ----------------------------------------------------------------------------- traces
# Each program returns its samples and the exact part they add to (Hutch++'s low-rank trace);
# `_summary` turns them into the estimate, its standard error and the finiteness flag.


@quick_compile_on_cpu(static_argnums=(2, 3))
def _hutchinson(op, key, m, batch):
    z = jax.random.rademacher(key, (m, op.dim), op.dtype)
    return jnp.sum(z * _map_rows(op.mv, z, batch), axis=1), jnp.zeros((), op.dtype)


@quick_compile_on_cpu(static_argnums=(2, 3))
def _hutchpp(op, key, m, batch):
    s = m // 3
    g = m - 2 * s
    k1, k2 = jax.random.split(key)
    sketch = jax.random.rademacher(k1, (s, op.dim), op.dtype)
    q = jnp.linalg.qr(_map_rows(op.mv, sketch, batch).T)[0]  # [dim, s]
    aq = _map_rows(op.mv, q.T, batch)  # [s, dim]
    low_rank = jnp.sum(q.T * aq)
    z = jax.random.rademacher(k2, (g, op.dim), op.dtype)
    z = z - (z @ q) @ q.T
    return jnp.sum(z * _map_rows(op.mv, z, batch), axis=1), low_rank


@quick_compile_on_cpu(static_argnums=(2, 3))
def _xtrace(op, key, m, batch):
    """XTrace: for each test vector i, a low-rank trace from the other vectors plus a Hutchinson
    correction with vector i; the average over i is unbiased and exchangeable."""
    t = m // 2
    omega = jax.random.normal(key, (t, op.dim), op.dtype)
    y = _map_rows(op.mv, omega, batch)  # rows A w_i
    q, r = jnp.linalg.qr(y.T)  # [dim, t], [t, t]
    aq = _map_rows(op.mv, q.T, batch)  # rows A q_j
    h = q.T @ aq.T
    h = 0.5 * (h + h.T)
    c = q.T @ omega.T  # [t, t] coordinates of the test vectors in range(Q)

    def one(i):
        others = jnp.arange(t - 1) + (jnp.arange(t - 1) >= i).astype(int)  # all columns but i
        normal = jnp.linalg.qr(r[:, others], mode="complete")[0][:, -1]  # spans range(R_{-i})^perp
        u = c[:, i] - normal * jnp.vdot(normal, c[:, i])
        low_rank = jnp.trace(h) - normal @ h @ normal
        correction = jnp.vdot(omega[i], y[i]) - 2 * jnp.vdot(u, r[:, i]) + u @ h @ u
        return low_rank + correction

    return jax.vmap(one)(jnp.arange(t)), jnp.zeros((), op.dtype)


def _summary(samples, offset, xp=jnp):
    """offset + the mean of the samples, its standard error, and whether all were finite. With
    `xp=np` on the host (float64), after the program: compiled, these few reductions cost a
    first call ~0.07 s."""
    finite = xp.all(xp.isfinite(samples)) & xp.isfinite(offset)
    return offset + samples.mean(), samples.std(ddof=1) / np.sqrt(samples.shape[0]), finite


def trace(
    op, key, num_probes: int = 100, method: str = "hutchinson", *, batch_bytes: float = BATCH_BYTES,
    max_batch: int = TRACE_MAX_BATCH,
) -> TraceEstimate:
    """Stochastic trace estimate using `num_probes` operator products, with its standard error.

    "hutchinson": mean of z^T A z over Rademacher z. "hutch++": a third of the budget sketches
    the top subspace Q, a third computes tr(Q^T A Q) exactly, the rest runs Hutchinson on the
    deflated remainder (needs >= 4 probes). "xtrace": num_probes/2 Gaussian test vectors used
    leave-one-out (needs >= 4; assumes a symmetric operator). The deflating estimators have far
    lower variance than Hutchinson when the spectrum decays fast. Probes are pushed through the
    operator together (vmap), at most `max_batch` at a time and as far as they fit in
    `batch_bytes`, the batches one after another; the estimate does not depend on the batching.

    Args:
        op: the `curvature.LinearOperator` (symmetric for "xtrace").
        key: PRNG key drawing the probes.
        num_probes: the budget of operator products (>= 2; >= 4 for "hutch++" and "xtrace").
        method: "hutchinson", "hutch++" or "xtrace".
        batch_bytes: the memory budget of probe vectors pushed through the operator at once.
        max_batch: the most probes pushed through the operator together.

    Returns:
        A `TraceEstimate(estimate, std_error, num_matvecs)`; `num_matvecs` is a Python int (xtrace
        uses an even number of products).

    Raises:
        ValueError: an unknown method or too few or too many probes for it.
        FloatingPointError: an operator product was NaN or inf.
    """
    key = check_key(key)
    _check_op(op)
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    least = 2 if method == "hutchinson" else 4
    if not isinstance(num_probes, int | np.integer) or num_probes < least:
        raise ValueError(f"num_probes must be an int >= {least} for {method}, got {num_probes!r}")
    if method != "hutchinson" and num_probes // (3 if method == "hutch++" else 2) > op.dim:
        raise ValueError(f"num_probes={num_probes} is too many for {method} on dimension {op.dim}")
    check_positive_int("max_batch", max_batch)
    num_probes = int(num_probes)
    fn = {"hutchinson": _hutchinson, "hutch++": _hutchpp, "xtrace": _xtrace}[method]
    batch = min(int(max_batch), _probe_batch(op, num_probes, 2, batch_bytes))
    samples, offset = fn(op, key, num_probes, batch)
    if isinstance(samples, jax.core.Tracer):
        estimate, std_error, finite = _summary(samples, offset)
    else:
        summary = _summary(np.asarray(samples, np.float64), np.asarray(offset, np.float64), np)
        estimate, std_error = (jnp.asarray(x, samples.dtype) for x in summary[:2])
        finite = bool(summary[2])
    _check_finite(finite, "trace")
    used = num_probes if method != "xtrace" else 2 * (num_probes // 2)
    return TraceEstimate(estimate, std_error, used)


def wasserstein_to_eigenvalues(density: Density, eigenvalues) -> float:
    """Wasserstein-1 distance between the SLQ node/weight measure (probes averaged) and the
    uniform measure on exact `eigenvalues`: how far the estimated spectrum is from the truth,
    in eigenvalue units.

    Args:
        density: the `Density` from `spectral_density`.
        eigenvalues: the exact eigenvalues [dim] (e.g. `np.linalg.eigvalsh` of the dense matrix).

    Returns:
        The Wasserstein-1 distance, as a Python float.
    """
    from scipy.stats import wasserstein_distance

    nodes = np.asarray(density.nodes, dtype=np.float64).ravel()
    weights = np.asarray(density.weights, dtype=np.float64).ravel()
    return float(wasserstein_distance(nodes, np.asarray(eigenvalues, np.float64), u_weights=weights))
