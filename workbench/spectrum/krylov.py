"""Krylov factorizations: power iteration, Lanczos, Arnoldi, and Ritz pairs read off them.

The eigensolver built on them (top-k eigenpairs, thick restart) is `workbench.spectrum.eigensolver`.

Every algorithm takes a `workbench.curvature.LinearOperator` (or anything with `mv`, `dim` and
`dtype`) and an explicit PRNG key, runs its iterations in `lax` loops (compile time does not grow
with the iteration count) and returns a NamedTuple. Krylov bases are fully reorthogonalized
(two passes of classical Gram-Schmidt). A breakdown (the Krylov space became invariant, beta ~ 0)
restarts from a fresh random vector orthogonal to the basis and records beta = 0, so the
projected matrix decouples instead of filling with NaNs. A non-finite operator product raises
`FloatingPointError` at the public boundary (under an outer `jit`, the same check runs as a host
callback and surfaces as a runtime error carrying that message).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_finite_flag as _check_finite
from workbench.core.numerics import check_positive_int, default_tol, quick_compile_on_cpu


class PowerResult(NamedTuple):
    value: jax.Array  # Rayleigh quotient of the dominant (largest-magnitude) eigenvalue
    vector: jax.Array  # [dim], unit norm
    residual: jax.Array  # ||A x - value x||
    converged: jax.Array  # bool
    num_iters: jax.Array  # matvecs used


class LanczosResult(NamedTuple):
    """A V^T = V T + beta_m v_{m+1} e_m^T with T tridiagonal(alphas, betas[:-1])."""

    alphas: jax.Array  # [m] diagonal
    betas: jax.Array  # [m] off-diagonal; betas[-1] couples to the next (residual) vector
    basis: jax.Array | None  # [m + 1, dim] rows orthonormal (None without reorthogonalization)
    finite: jax.Array  # bool: every operator product was finite


class ArnoldiResult(NamedTuple):
    """A V_m^T = V_{m+1}^T H with V rows orthonormal and H upper Hessenberg [m + 1, m]."""

    basis: jax.Array  # [m + 1, dim]
    hessenberg: jax.Array  # [m + 1, m]
    finite: jax.Array


# ----------------------------------------------------------------------------- checks


def _check_op(op) -> None:
    if not (hasattr(op, "mv") and hasattr(op, "dim") and hasattr(op, "dtype")):
        raise TypeError(
            f"op must be a LinearOperator (see workbench.curvature.operator), got {type(op).__name__}"
        )
    if not jnp.issubdtype(op.dtype, jnp.floating):
        raise ValueError(f"op must act on floating vectors, got dtype {op.dtype}")


def _check_iters(num_iters, dim: int, name: str = "num_iters") -> int:
    num_iters = check_positive_int(name, num_iters)
    if num_iters > dim:
        raise ValueError(f"{name}={num_iters} exceeds the operator dimension {dim}")
    return int(num_iters)


# ----------------------------------------------------------------------------- power iteration


def power_iteration(op, key, num_iters: int = 500, tol: float | None = None) -> PowerResult:
    """Dominant (largest-magnitude) eigenpair by power iteration.

    Stops when the residual ||A x - value x|| <= tol * |value| (default tol: the square root of
    `default_tol`, since the eigenvalue error is about residual^2 / gap) or after `num_iters`
    matvecs. Convergence is linear in |lambda_2 / lambda_1|; prefer `top_eigenpairs`.

    Args:
        op: the `curvature.LinearOperator`.
        key: PRNG key of the Gaussian start vector.
        num_iters: the most operator products.
        tol: the relative residual to stop at (default sqrt(default_tol(op.dtype))).

    Returns:
        A `PowerResult(value, vector [dim], residual, converged, num_iters)`.

    Raises:
        FloatingPointError: an operator product was NaN or inf.
    """
    _check_op(op)
    num_iters = check_positive_int("num_iters", num_iters)
    tol = float(np.sqrt(default_tol(op.dtype))) if tol is None else float(tol)
    result = _power_jit(op, key, int(num_iters), tol)
    _check_finite(jnp.isfinite(result.value) & jnp.isfinite(result.residual), "power_iteration")
    return result


@quick_compile_on_cpu(static_argnums=(2, 3))
def _power_jit(op, key, num_iters, tol):
    x0 = jax.random.normal(key, (op.dim,), op.dtype)

    def step(x):
        x = x / jnp.linalg.norm(x)
        ax = op.mv(x)
        value = jnp.vdot(x, ax)
        return x, ax, value, jnp.linalg.norm(ax - value * x)

    def cond(state):
        i, _, _, value, residual = state
        return (i < num_iters) & (residual > tol * jnp.abs(value)) & jnp.isfinite(residual)

    def body(state):
        i, _, ax, _, _ = state
        return (i + 1, *step(ax))

    i, x, _, value, residual = jax.lax.while_loop(cond, body, (1, *step(x0)))
    return PowerResult(value, x, residual, residual <= tol * jnp.abs(value), i)


# ----------------------------------------------------------------------------- Krylov core


def _orthogonalize(basis, w):
    """Two passes of classical Gram-Schmidt against the rows of `basis` (zero rows are inert)."""
    h1 = basis @ w
    w = w - h1 @ basis
    h2 = basis @ w
    return w - h2 @ basis, h1 + h2


_COLUMN_BLOCK = 1 << 14


def _combine_rows_in_place(basis, coefficients):
    """basis <- coefficients.T @ basis for a square [m + 1, m + 1] `coefficients`, one column
    block at a time: the only temporary is a block, never a second [m + 1, dim] basis (the basis
    dominates memory on large models)."""
    dim = basis.shape[1]

    def update(basis, start, width):
        block = jax.lax.dynamic_slice_in_dim(basis, start, width, axis=1)
        return jax.lax.dynamic_update_slice(basis, coefficients.T @ block, (0, start))

    width = min(_COLUMN_BLOCK, dim)
    full = dim // width
    basis = jax.lax.fori_loop(0, full, lambda i, b: update(b, i * width, width), basis)
    if dim % width:
        basis = update(basis, full * width, dim % width)
    return basis


def _hash_words(words, n: int, dtype):
    """n pseudo-random numbers in [-0.5, 0.5) hashed from uint32 `words` (murmur3's finalizer of
    counter and words): one elementwise loop, where a threefry program would cost a notebook's
    first call about a second of compiling on CPU. For start and restart vectors, where any
    vector with generic overlaps will do (never for Monte Carlo probes)."""
    words = jnp.asarray(words).ravel().astype(jnp.uint32)
    x = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    for i in range(words.shape[0]):
        x = x ^ (words[i] + jnp.uint32(0x7F4A7C15))
        for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            x = (x ^ (x >> shift)) * jnp.uint32(mult)
        x = x ^ (x >> 16)
    return (x >> 8).astype(dtype) * jnp.asarray(2.0**-24, dtype) - jnp.asarray(0.5, dtype)


def _restart_vector(seed, step, n: int, dtype):
    """The pseudo-random vector a breakdown at `step` continues from: the hash of the restart
    seed words (`_start`) and the step."""
    return _hash_words(jnp.append(seed, jnp.asarray(step).astype(seed.dtype)), n, dtype)


def _extend(mv, basis, hess, finite, key, start, stop: int, fresh_on_breakdown: bool = True):
    """Arnoldi steps j = start..stop-1: fill basis[j + 1] and column j of `hess`. `finite` comes
    back false when a product was not finite, judged once on the projected matrix (a check per
    step cost a first call ~0.05 s of compiling and changes no answer: a non-finite result raises).

    A breakdown (the Krylov space became invariant) continues from a pseudo-random vector
    orthogonalized against the basis (no branch: the same cost under vmap, and a smaller program
    to compile). With `fresh_on_breakdown=False` (SLQ, where
    the quadrature is already exact then) it freezes instead: beta = 0 and zero vectors, so the
    remaining Ritz values decouple with zero weight, at the cost of one vector per step."""
    dtype = basis.dtype
    breakdown_tol = 1e3 * jnp.finfo(dtype).eps

    def body(j, state):
        basis, hess, key = state
        w = mv(basis[j])
        scale = jnp.linalg.norm(w)
        w, h = _orthogonalize(basis, w)
        beta = jnp.linalg.norm(w)
        broke = beta <= breakdown_tol * jnp.maximum(scale, jnp.finfo(dtype).tiny)
        one = jnp.ones((), dtype)
        if fresh_on_breakdown:  # invariant subspace: continue from r, orthogonal to the basis
            r0 = _restart_vector(key, j, w.shape[0], dtype)
            r = _orthogonalize(basis, r0)[0]
            norm = jnp.linalg.norm(r)
            alive = norm > 1e-3 * jnp.linalg.norm(r0)  # else the basis already spans everything
            replacement = jnp.where(alive, r / jnp.where(alive, norm, one), jnp.zeros_like(r))
        else:  # freeze: the remaining Ritz values decouple with zero weight
            replacement = jnp.zeros_like(w)
        nxt = jnp.where(broke, replacement, w / jnp.where(broke, one, beta))
        h = h.at[j + 1].set(jnp.where(broke, jnp.zeros_like(beta), beta))
        return basis.at[j + 1].set(nxt), hess.at[:, j].set(h), key

    basis, hess, key = jax.lax.fori_loop(start, stop, body, (basis, hess, key))
    # a non-finite product reaches its column of the projected matrix (h = V w, beta = |w - V h|)
    return basis, hess, finite & jnp.all(jnp.isfinite(hess)), key


# Tags the restart stream: restart vectors hash (key words, tag, step), the start vector the key
# words alone, so no key makes a restart vector equal the start vector (key(0) once did, and a
# Krylov space invariant at its first step then reported a spurious eigenvalue 0).
_RESTART_STREAM = 0x52535452


def _start(op, key, num_iters, v0=None):
    """Basis with the unit start vector (pseudo-random from `key` unless given) and the uint32
    seed words of the breakdown restarts (an independent stream of the same key)."""
    words = jnp.asarray(jax.random.key_data(key)).ravel().astype(jnp.uint32)
    v0 = _hash_words(words, op.dim, op.dtype) if v0 is None else v0
    key = jnp.append(words, jnp.uint32(_RESTART_STREAM))  # no RNG compile
    basis = jnp.zeros((num_iters + 1, op.dim), op.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    hess = jnp.zeros((num_iters + 1, num_iters), op.dtype)
    return basis, hess, jnp.asarray(True), key


def check_start_vector(start_vector, op):
    """The explicit Krylov start vector as a [dim] array of the operator's dtype, or None.

    Args:
        start_vector: None (hash one from the key) or a nonzero finite vector of length op.dim.
        op: the operator it starts.

    Returns:
        None, or the vector as a jax array of dtype op.dtype.

    Raises:
        ValueError: the vector has another shape, is zero, or is not finite.
    """
    if start_vector is None or isinstance(start_vector, jax.core.Tracer):
        return start_vector
    v = np.asarray(start_vector)
    if v.shape != (op.dim,):
        raise ValueError(f"start_vector must have shape ({op.dim},) like the operator, got {v.shape}")
    if not np.all(np.isfinite(v)) or not np.any(v):
        raise ValueError("start_vector must be finite and nonzero")
    return jnp.asarray(v, op.dtype)


@quick_compile_on_cpu(static_argnums=(2,))
def _arnoldi_jit(op, key, num_iters, v0=None):
    basis, hess, finite, key = _start(op, key, num_iters, v0)
    basis, hess, finite, _ = _extend(op.mv, basis, hess, finite, key, 0, num_iters)
    return ArnoldiResult(basis, hess, finite)


def arnoldi_factorization(op, key, num_iters: int, *, start_vector=None) -> ArnoldiResult:
    """`num_iters` Arnoldi steps with full reorthogonalization from a pseudo-random start vector (hashed from `key`).

    Args:
        op: the `curvature.LinearOperator`.
        key: PRNG key hashed into the start vector and, independently, into the vectors that
            continue the factorization after a breakdown.
        num_iters: the depth m, at most dim.
        start_vector: an explicit [dim] start vector (normalised here), as matfree takes one;
            None hashes it from `key`.

    Returns:
        An `ArnoldiResult(basis [m + 1, dim], hessenberg [m + 1, m], finite)`.

    Raises:
        FloatingPointError: an operator product was NaN or inf.
    """
    _check_op(op)
    num_iters = _check_iters(num_iters, op.dim)
    result = _arnoldi_jit(op, key, num_iters, check_start_vector(start_vector, op))
    _check_finite(result.finite, "arnoldi_factorization")
    return result


def _plain_recurrence(op, v0, num_iters):
    """Three-term Lanczos recurrence without a stored basis; a breakdown freezes it (beta = 0,
    v = 0), so the remaining Ritz values decouple with zero quadrature weight."""
    tol = 1e3 * jnp.finfo(op.dtype).eps

    def body(carry, _):
        v_prev, v, beta_prev = carry
        w = op.mv(v)
        scale = jnp.linalg.norm(w)
        w = w - beta_prev * v_prev
        alpha = jnp.vdot(v, w)
        w = w - alpha * v
        beta = jnp.linalg.norm(w)
        broke = beta <= tol * jnp.maximum(scale, jnp.finfo(op.dtype).tiny)
        beta = jnp.where(broke, jnp.zeros_like(beta), beta)
        nxt = jnp.where(broke, jnp.zeros_like(w), w / jnp.where(broke, jnp.ones_like(beta), beta))
        return (v, nxt, beta), (alpha, beta)

    init = (jnp.zeros_like(v0), v0, jnp.zeros((), op.dtype))
    _, (alphas, betas) = jax.lax.scan(body, init, None, length=num_iters)
    # a non-finite product reaches alpha = v . w and beta: judged once, not per step
    return alphas, betas, jnp.all(jnp.isfinite(alphas)) & jnp.all(jnp.isfinite(betas))


@quick_compile_on_cpu(static_argnums=(2,))
def _lanczos_plain(op, key, num_iters, v0=None):
    if v0 is None:
        v0 = _hash_words(jax.random.key_data(key), op.dim, op.dtype)  # the start vector of `_start`
    alphas, betas, finite = _plain_recurrence(op, v0 / jnp.linalg.norm(v0), num_iters)
    return LanczosResult(alphas, betas, None, finite)


def _lanczos_full(op, key, num_iters, v0=None):
    basis, hess, finite = _arnoldi_jit(op, key, num_iters, v0)
    idx = jnp.arange(num_iters)
    return LanczosResult(hess[idx, idx], hess[idx + 1, idx], basis, finite)


def lanczos(op, key, num_iters: int, reorthogonalize: bool = True, *, start_vector=None) -> LanczosResult:
    """`num_iters` Lanczos steps on a symmetric operator from a pseudo-random unit start vector
    (hashed from `key`).

    With `reorthogonalize` (default) the basis is kept and fully reorthogonalized; without it the
    plain three-term recurrence runs in O(dim) memory and returns no basis (enough for SLQ).

    Args:
        op: the symmetric `curvature.LinearOperator`.
        key: PRNG key hashed into the start vector.
        num_iters: the number of steps m, at most dim.
        reorthogonalize: keep and fully reorthogonalize the basis.
        start_vector: an explicit [dim] start vector (normalised here), as matfree takes one;
            None hashes it from `key`.

    Returns:
        A `LanczosResult(alphas [m], betas [m], basis [m + 1, dim] or None, finite)`.

    Raises:
        FloatingPointError: an operator product was NaN or inf.
    """
    _check_op(op)
    num_iters = _check_iters(num_iters, op.dim)
    v0 = check_start_vector(start_vector, op)
    result = (_lanczos_full if reorthogonalize else _lanczos_plain)(op, key, num_iters, v0)
    _check_finite(result.finite, "lanczos")
    return result


def tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """The dense [m, m] tridiagonal matrix with diagonal `alphas` and off-diagonal `betas[:m-1]`.

    Args:
        alphas: [m] the diagonal.
        betas: [m] or [m - 1] the off-diagonal (entries past m - 1 are ignored).

    Returns:
        The symmetric tridiagonal matrix [m, m].
    """
    m = alphas.shape[0]
    off = betas[: m - 1]
    return jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


# ----------------------------------------------------------------------------- Ritz pairs


class RitzPairs(NamedTuple):
    values: jax.Array  # [k] wanted Ritz values ("largest": descending)
    vectors: jax.Array  # [k, dim] unit Ritz vectors
    residuals: jax.Array  # [k] ||A x - theta x|| read off the factorization
    next_value: jax.Array  # the first Ritz value not kept (e.g. the top of a discarded tail)


@functools.partial(jax.jit, static_argnums=(1, 2))
def ritz_pairs(factorization: ArnoldiResult, k: int, which: str = "largest") -> RitzPairs:
    """The k wanted Ritz pairs of a symmetric operator's Arnoldi factorization A V_m^T =
    V_{m+1}^T H, without a single extra operator product: H[:m] is (up to rounding) the Lanczos
    tridiagonal, so eigh of its symmetric part gives the Ritz values, and the residual
    ||A x - theta x|| = |h_{m+1,m}| |s_m| comes from the factorization itself."""
    basis, hess = factorization.basis, factorization.hessenberg
    m = hess.shape[1]
    if not 1 <= k <= m:
        raise ValueError(f"k must lie in [1, depth={m}], got {k}")
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    theta, s = jnp.linalg.eigh(0.5 * (hess[:m] + hess[:m].T))  # ascending
    order = jnp.argsort(-theta) if which == "largest" else jnp.argsort(theta)
    idx = order[:k]
    vectors = s[:, idx].T @ basis[:m]
    vectors = vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)
    next_value = theta[order[min(k, m - 1)]]
    return RitzPairs(theta[idx], vectors, jnp.abs(hess[m, m - 1]) * jnp.abs(s[m - 1, idx]), next_value)
