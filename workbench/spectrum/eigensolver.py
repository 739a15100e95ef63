"""Top-k eigenpairs of a linear operator: thick-restart Lanczos (Krylov-Schur) with its host
finish, or one unrestarted Arnoldi factorization for operators that may not be symmetric.

Built on the factorizations of `workbench.spectrum.krylov`. A first call for the largest
eigenvalues compiles one Lanczos pass; its small projected matrix is finished on the host in
float64, and the restart program compiles only when a wanted pair has not converged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_finite_flag as _check_finite
from workbench.core.numerics import check_key, check_positive_int, default_tol, quick_compile_on_cpu
from workbench.spectrum.krylov import (
    _arnoldi_jit,
    _check_iters,
    _check_op,
    _combine_rows_in_place,
    _extend,
    _start,
    check_start_vector,
)

WHICH = ("largest", "smallest", "both")
METHODS = ("lanczos", "arnoldi")


class EigenResult(NamedTuple):
    values: jax.Array  # [k]: "largest" descending, "smallest" ascending, "both" descending
    vectors: jax.Array  # [k, dim] unit rows (op.unravel(vectors[i]) for a params pytree)
    residuals: jax.Array  # [k] true residual norms ||A x - value x||
    converged: jax.Array  # [k] bool: residual <= tol * spectral-norm estimate
    num_matvecs: int  # operator products used (a traced int32 only under an outer jit)


def _wanted(count: int, m: int, which: str) -> np.ndarray:
    """Indices into ascending Ritz values: the `count` wanted ones for `which`."""
    if which == "largest":
        return np.arange(m - count, m)[::-1]
    if which == "smallest":
        return np.arange(count)
    top = (count + 1) // 2
    return np.concatenate([np.arange(m - top, m)[::-1], np.arange(count - top)[::-1]])


def _order(count, m: int, which: str, xp=jnp):
    """`_wanted` for a traced `count`: [m] indices into ascending Ritz values whose first `count`
    entries are the wanted ones in `_wanted`'s order (the rest are filler, masked by callers).
    `xp`: jax.numpy in programs, numpy on the host."""
    i = xp.arange(m, dtype=xp.int32)
    if which == "largest":
        return m - 1 - i
    if which == "smallest":
        return i
    top = (count + 1) // 2
    return xp.where(i < top, m - 1 - i, xp.maximum(count - 1 - i, 0))


def _output_count(k: int, m: int) -> int:
    """How many Ritz pairs the compiled solver returns for k: a bucket (8, 16, 32, ...), so
    k = 1..8 share one program while the output stays far smaller than the basis."""
    return min(m, max(8, 1 << (int(k) - 1).bit_length()))


def _relation_residuals(hess, s, theta, xp=jnp):
    """||A x_i - theta_i x_i|| for the Ritz vectors x_i = V_m s_i, read off the Arnoldi relation
    A V_m = V_{m+1} H: the norm of H s_i - theta_i [s_i; 0]. The whole Hessenberg column enters
    (not only its last row), so an operator that is not symmetric shows in the residual."""
    shifted = xp.concatenate([s * theta, xp.zeros((1, s.shape[1]), s.dtype)])
    return xp.linalg.norm(hess @ s - shifted, axis=0)


def _symmetric_ritz(hess, m):
    """Ritz values (ascending) and vectors of the projected matrix, and every relation residual."""
    theta, s = jnp.linalg.eigh(0.5 * (hess[:m] + hess[:m].T))
    return theta, s, _relation_residuals(hess, s, theta)


def _converged_mask(res, theta, wanted, k, tol, xp=jnp):
    norm = xp.maximum(xp.max(xp.abs(theta)), xp.finfo(theta.dtype).tiny)
    slots = xp.arange(wanted.shape[0], dtype=xp.int32)
    return xp.all((res[wanted] <= tol * norm) | (slots >= k))


def _unit_rows(coefficients, basis, xp=jnp):
    vectors = coefficients @ basis
    return vectors / xp.linalg.norm(vectors, axis=1, keepdims=True)


_ritz_vectors_on_device = jax.jit(_unit_rows)


def _ritz_vectors(coefficients, basis):
    """Unit rows of coefficients @ basis: in NumPy when the basis lives in host memory (CPU: a
    view, nothing to compile), else a small program on its device (no basis transfer)."""
    if all(device.platform == "cpu" for device in basis.devices()):
        return _unit_rows(coefficients, np.asarray(basis), np)
    return _ritz_vectors_on_device(coefficients, basis)


def _wanted_pairs(basis, hess, theta, s, wanted, count, tol, matvecs, xp=jnp):
    """The first `count` wanted Ritz pairs as an EigenResult (residuals from the relation), and
    the spectral-norm estimate max |theta| that `converged` is judged against. `xp`: jax.numpy
    in the restart program, numpy for the host finish of the first pass."""
    picked = wanted[:count]
    # zero-padded coefficients read the whole basis: no sliced copy of it
    coefficients = xp.concatenate([s[:, picked], xp.zeros((1, count), s.dtype)]).T.astype(basis.dtype)
    vectors = (_ritz_vectors if xp is np else _ritz_vectors_on_device)(coefficients, basis)
    values = theta[picked]
    residuals = _relation_residuals(hess, s[:, picked], values, xp)
    norm = xp.max(xp.abs(theta))
    return EigenResult(values, vectors, residuals, residuals <= 10 * tol * norm, matvecs), norm


@quick_compile_on_cpu(static_argnums=(2,))
def _first_pass(op, key, m, v0=None):
    """One Lanczos pass of depth m from the start vector: the only program a first call for the
    largest eigenvalues compiles (operator products and Gram-Schmidt; the small projected
    matrix is finished on the host by `_finish_first_pass`, so no eigensolver, sort or Ritz
    vectors are compiled into it, and it is shared by every k, tol and max_restarts). A
    breakdown freezes the factorization (fresh vectors are the restart program's job). Returns
    the basis, the projected matrix and the seed the restart program continues with."""
    basis, hess, finite, seed = _start(op, key, m, v0)
    basis, hess, _, _ = _extend(op.mv, basis, hess, finite, seed, 0, m, fresh_on_breakdown=False)
    return basis, hess, seed


def _finish_first_pass(basis, hess, seed, k, which, m, count, tol):
    """The first pass's Ritz pairs, computed on the host in float64 from the [m + 1, m]
    projected matrix (microseconds of LAPACK, where compiling them cost a first call ~0.2 s),
    and the Ritz vectors by `_ritz_vectors`. Returns the pairs (an EigenResult), the norm
    estimate, the restart program's state, `done` (every wanted pair converged) and `broke` (a
    breakdown before the last step froze the factorization; then only the two flags)."""
    dtype = hess.dtype
    h = np.asarray(hess, np.float64)
    theta, s = np.linalg.eigh(0.5 * (h[:m] + h[:m].T))
    if np.any(h[np.arange(1, m), np.arange(m - 1)] == 0):  # zero rows: the restart program
        return None, None, None, False, True  # starts over, these pairs would be discarded
    wanted = _order(k, m, which, np)
    done = bool(_converged_mask(_relation_residuals(h, s, theta, np), theta, wanted, k, tol, np))
    pairs, norm = _wanted_pairs(basis, h, theta, s, wanted, count, tol, np.int32(m), np)
    pairs = pairs._replace(values=pairs.values.astype(dtype), residuals=pairs.residuals.astype(dtype))
    state = (np.int32(1), hess, np.bool_(True), seed, theta.astype(dtype), s.astype(dtype), np.bool_(done))
    return pairs, float(norm), state, done, False


def _continued_state_shapes(hess, seed):
    """The shapes of the state `_finish_first_pass` hands the restart program, from the first
    pass's output shapes (to lower the continuing restart program without a run)."""
    m, dtype = hess.shape[1], hess.dtype
    scalar = lambda d: jax.ShapeDtypeStruct((), d)  # noqa: E731
    return (scalar(jnp.int32), hess, scalar(bool), seed, jax.ShapeDtypeStruct((m,), dtype),
            jax.ShapeDtypeStruct((m, m), dtype), scalar(bool))


def _initial_state(op, key, m, v0=None):
    """The restart loop's basis and state before its first pass: v0 in the residual slot, keep 0."""
    basis, hess, finite, seed = _start(op, key, m, v0)
    basis = basis.at[m].set(basis[0]).at[0].set(0)
    dtype = basis.dtype
    return basis, (jnp.int32(0), hess, finite, seed, jnp.zeros(m, dtype), jnp.eye(m, dtype=dtype),
                   jnp.asarray(False))


@quick_compile_on_cpu(static_argnums=(3, 4, 7), donate_argnums=(8,))
def _thick_restart_lanczos(op, key, k, which, m, max_restarts, tol, count, basis=None, state=None, v0=None):
    """Krylov-Schur (thick-restart Lanczos) for the k wanted eigenpairs of a symmetric operator.

    One while loop: each pass (after the first) compresses the basis to the `keep` wanted Ritz
    vectors plus the residual vector, then extends it back to depth m with full
    reorthogonalization. A single matvec and eigh site keeps compile time small. Continues from
    `basis` and `state` (what `_first_pass` returns; the basis is donated and rewritten in
    place) or, without them, starts from the start vector hashed from `key`.

    Compiled once per (operator kind, which, depth m, output bucket `count`): k, max_restarts
    and tol are traced, so asking for k = 1 and then k = 5 (or another tolerance) reuses the
    program. Returns the first `count` >= k Ritz pairs in wanted order (callers keep the first
    k), the norm estimate, the finite flag and the final basis (an output only so that a donated
    `state` basis can be rewritten in place; callers drop it).

    Memory: one Krylov basis. The restart rewrites it in place column block by column block
    (a `lax.cond` or a sliced `basis[:m]` would make XLA copy the whole basis).
    """
    k = jnp.asarray(k, jnp.int32)
    keep = jnp.minimum(m - 1, jnp.maximum(k + (m - k) // 2, k))
    slots = jnp.arange(m, dtype=jnp.int32)
    wanted = _order(k, m, which)
    kept = _order(keep, m, which)
    basis, state = _initial_state(op, key, m, v0) if state is None else (basis, state)
    dtype = basis.dtype
    tol = jnp.asarray(tol, dtype)

    def restart(basis, hess, theta, s, keep):
        """Keep the `keep` wanted Ritz vectors and the residual vector (no branch: the first
        pass is the same code with keep = 0)."""
        sk = jnp.where(slots < keep, s[:, kept], 0)  # [m, m]: kept Ritz vectors, zero columns after
        # rows < keep: the kept Ritz vectors; row keep: the residual vector basis[m]; rows after: 0
        coefficients = jnp.zeros((m + 1, m + 1), dtype).at[:m, :m].set(sk).at[m, keep].set(1)
        new_basis = _combine_rows_in_place(basis, coefficients)
        new_hess = jnp.zeros_like(hess).at[slots, slots].set(jnp.where(slots < keep, theta[kept], 0))
        return new_basis, new_hess.at[keep].set(hess[m] @ sk)

    def body(state):
        passes, basis, hess, finite, seed, theta, s, _ = state
        start = jnp.where(passes > 0, keep, 0)
        basis, hess = restart(basis, hess, theta, s, start)
        basis, hess, finite, seed = _extend(op.mv, basis, hess, finite, seed, start, m)
        theta, s, res = _symmetric_ritz(hess, m)
        return passes + 1, basis, hess, finite, seed, theta, s, _converged_mask(res, theta, wanted, k, tol)

    def cond(state):
        passes, _, _, finite, _, _, _, done = state
        return (passes <= max_restarts) & finite & ~done

    passes, *state = state
    init = (passes, basis, *state)
    passes, basis, hess, finite, _, theta, s, _ = jax.lax.while_loop(cond, body, init)
    matvecs = m + (passes - 1) * (m - keep)
    pairs, norm = _wanted_pairs(basis, hess, theta, s, wanted, count, tol, matvecs)
    return pairs, norm, finite, basis  # the basis out, so a donated one is updated in place


@quick_compile_on_cpu
def _true_residuals(op, vectors, values, k):
    """||A x_i - value_i x_i|| of the first k pairs by k operator products (the rest stay 0)."""

    def one(i, residuals):
        return residuals.at[i].set(jnp.linalg.norm(op.mv(vectors[i]) - values[i] * vectors[i]))

    k = jnp.minimum(jnp.asarray(k, jnp.int32), values.shape[0])
    return jax.lax.fori_loop(jnp.int32(0), k, one, jnp.zeros_like(values))


def _krylov_schur(op, key, k, which, m, max_restarts, tol, count, v0=None):
    """(pairs, norm estimate, finite). Outside a trace, for the largest eigenvalues, the first
    pass runs alone (one small program) and the restart program compiles only when a wanted
    pair has not converged; inside a trace, and for the smallest (interior-leaning, rarely
    converged after one pass: two programs would compile), the restart program runs from the
    start."""
    if which != "largest" or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((op, key))):
        return _thick_restart_lanczos(op, key, k, which, m, max_restarts, tol, count, None, None, v0)[:3]
    basis, hess, seed = _first_pass(op, key, m, v0)
    if not np.all(np.isfinite(np.asarray(hess))):  # a non-finite product reaches its column
        return None, None, False
    pairs, norm, state, done, broke = _finish_first_pass(basis, hess, seed, k, which, m, count, tol)
    if done or (max_restarts == 0 and not broke):
        return pairs, norm, True
    del pairs  # not held while the restart program runs
    if broke:  # the frozen factorization has zero rows: start over with fresh vectors
        basis = state = None
    return _thick_restart_lanczos(op, key, k, which, m, max_restarts, tol, count, basis, state, v0)[:3]


def _first(result: EigenResult, k: int) -> EigenResult:
    """The first k pairs of a wanted-order result. Outside a trace the cut happens on the host
    (NumPy), so a new k compiles nothing."""
    if isinstance(result.values, jax.core.Tracer):
        return result._replace(**{f: getattr(result, f)[:k] for f in _PAIR_FIELDS})
    return result._replace(**{f: jax.device_put(np.asarray(getattr(result, f))[:k]) for f in _PAIR_FIELDS})


_PAIR_FIELDS = ("values", "vectors", "residuals", "converged")


@quick_compile_on_cpu(static_argnums=(2, 3, 4, 5))
def _arnoldi_eigen(op, key, k, which, m, tol, v0=None):
    basis, hess, finite = _arnoldi_jit(op, key, m, v0)
    theta, s = jnp.linalg.eig(hess[:m])  # general: no symmetry assumed
    order = jnp.argsort(theta.real)
    theta, s = theta.real[order], s[:, order].real
    idx = _wanted(k, m, which)
    vectors = s[:, idx].T @ basis[:m]
    vectors = vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)
    values = theta[idx]
    residuals = jnp.linalg.norm(jax.lax.map(op.mv, vectors) - values[:, None] * vectors, axis=1)
    norm = jnp.max(jnp.abs(theta))
    return EigenResult(values, vectors, residuals, residuals <= 10 * tol * norm, m + k), finite


def top_eigenpairs(
    op,
    key,
    k: int,
    which: str = "largest",
    method: str = "lanczos",
    num_iters: int | None = None,
    max_restarts: int = 200,
    tol: float | None = None,
    true_residuals: bool = False,
    *,
    start_vector=None,
    unconverged: str = "raise",
) -> EigenResult:
    """The k largest / smallest (algebraic) eigenpairs, or both ends ("both": ceil(k/2) largest
    and floor(k/2) smallest).

    "lanczos" (default) is thick-restart Lanczos with full reorthogonalization: Krylov depth
    `num_iters` (default max(2k + 20, 40), capped at dim), restarted until every wanted Ritz pair
    has residual <= tol * |largest Ritz value| or `max_restarts` is spent. "arnoldi" runs one
    unrestarted Arnoldi factorization of depth `num_iters` (default max(4k, 80)) and takes the
    real parts of the Ritz values (for operators that may not be exactly symmetric).

    Residuals ||A x - value x|| are read off the Arnoldi relation A V_m = V_{m+1} H (exact up to
    rounding for any linear operator: the whole projected column enters, so asymmetry shows);
    `true_residuals=True` recomputes them with k more operator products instead (it also
    catches an operator that is not linear or not deterministic). `converged[i]` is
    residual <= 10 * tol * |largest Ritz value|.

    Compile cost: a first call for the largest eigenvalues compiles one Lanczos pass (operator
    products and Gram-Schmidt only: the small projected matrix's eigenpairs are computed on the
    host, in float64), shared by every k, `tol` and `max_restarts`; the restart program
    compiles only when a wanted pair has not converged after it ("smallest" and "both" go to
    the restart program directly). It compiles once per (operator kind, `which`, Krylov depth):
    k (at the default depth 40 for every k <= 10), `max_restarts` and `tol` are traced values,
    so trying another of them compiles nothing.

    Args:
        op: the `curvature.LinearOperator` (symmetric for "lanczos").
        key: PRNG key of the start vector.
        k: the number of wanted eigenpairs (at most dim).
        which: "largest", "smallest" or "both".
        method: "lanczos" or "arnoldi".
        num_iters: the Krylov depth (defaults above), more than k unless it equals dim.
        max_restarts: the most restarts of thick-restart Lanczos (0: one pass).
        tol: the relative residual asked (default `default_tol(op.dtype)`).
        true_residuals: recompute the residuals with k more operator products.
        start_vector: an explicit [dim] start vector (normalised here), as matfree takes one;
            None hashes it from `key` (restart vectors always come from `key`, on a stream
            independent of the start vector's).
        unconverged: what a pair that has not converged does outside a trace: "raise"
            (default: a RuntimeError naming the remedy), "warn" (a RuntimeWarning) or "return"
            (no message: read `converged`). Inside a trace the flags are the only signal.

    Returns:
        An `EigenResult(values [k], vectors [k, dim], residuals [k], converged [k], num_matvecs)`;
        values in `which` order ("largest" descending, "smallest" ascending), `num_matvecs` a Python
        int outside a trace.

    Raises:
        ValueError: an unknown `which`, `method` or `unconverged`, a bad `k`, `num_iters` or
            `start_vector`.
        FloatingPointError: an operator product was NaN or inf.
        RuntimeError: a wanted pair has not converged and `unconverged` is "raise".
    """
    key = check_key(key)
    _check_op(op)
    if unconverged not in UNCONVERGED:
        raise ValueError(f"unconverged must be one of {UNCONVERGED}, got {unconverged!r}")
    v0 = check_start_vector(start_vector, op)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    k = check_positive_int("k", k)
    if k > op.dim:
        raise ValueError(f"k={k} exceeds the operator dimension {op.dim}")
    tol = default_tol(op.dtype) if tol is None else float(tol)
    if num_iters is None:
        num_iters = min(op.dim, max(2 * k + 20, 40) if method == "lanczos" else max(4 * k, 80))
    num_iters = _check_iters(num_iters, op.dim)
    if num_iters < min(k + 1, op.dim):
        raise ValueError(f"num_iters={num_iters} must exceed k={k} (or equal the dimension)")
    if method == "lanczos":
        if num_iters == k:  # the whole space: one pass is exact
            max_restarts = 0
        result, norm, finite = _krylov_schur(
            op, key, int(k), which, num_iters, int(max_restarts), tol, _output_count(k, num_iters), v0
        )
        if finite is False:  # the first pass met a non-finite product: no pairs to return
            _check_finite(finite, "top_eigenpairs")
        if true_residuals:
            residuals = _true_residuals(op, result.vectors, result.values, int(k))
            result = result._replace(residuals=residuals, converged=residuals <= 10 * tol * norm,
                                     num_matvecs=result.num_matvecs + int(k))
        result = _first(result, int(k))
    else:
        result, finite = _arnoldi_eigen(op, key, int(k), which, num_iters, tol, v0)
    _check_finite(finite, "top_eigenpairs")
    if not isinstance(result.num_matvecs, jax.core.Tracer):
        result = result._replace(num_matvecs=int(result.num_matvecs))
        _report_unconverged(result, unconverged, method, num_iters, max_restarts, tol)
    return result


UNCONVERGED = ("raise", "warn", "return")


def _report_unconverged(result, unconverged, method, num_iters, max_restarts, tol):
    """Raise or warn (per `unconverged`) when a returned pair has not converged."""
    converged = np.asarray(result.converged)
    if unconverged == "return" or converged.all():
        return
    values, residuals = np.asarray(result.values), np.asarray(result.residuals)
    missing = np.flatnonzero(~converged)
    remedy = ("raise max_restarts or num_iters" if method == "lanczos"
              else "raise num_iters (Arnoldi does not restart)")
    message = (
        f"top_eigenpairs: {missing.size} of {converged.size} eigenpairs did not converge to tol={tol:.3g} "
        f"({method}, num_iters={num_iters}" + (f", max_restarts={max_restarts}" if method == "lanczos" else "")
        + f"); first unconverged: value {values[missing[0]]:.6g}, residual {residuals[missing[0]]:.3g}. "
        f"Remedy: {remedy}, or loosen tol; unconverged='return' returns them with their flags")
    if unconverged == "raise":
        raise RuntimeError(message)
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)



class LoweredPrograms(NamedTuple):
    """The two programs `top_eigenpairs` runs for the largest eigenvalues, lowered (not run)."""

    first_pass: jax.stages.Lowered  # one Lanczos pass of depth num_iters from the start vector
    restart: jax.stages.Lowered  # thick-restart Lanczos continuing from the first pass's state


def lowered_programs(op, key, k: int, num_iters: int | None = None, max_restarts: int = 200,
                     tol: float | None = None) -> LoweredPrograms:
    """The programs `top_eigenpairs(op, key, k)` compiles for the largest eigenvalues, lowered
    without running them, so that their compile cost and buffer plan can be read
    (`.compile().memory_analysis()`): what the memory benchmark and tests measure.

    Args:
        op: the `curvature.LinearOperator`.
        key: PRNG key of the start vector (only its shape and dtype matter for lowering).
        k: the number of wanted eigenpairs.
        num_iters: the Krylov depth (default as in `top_eigenpairs`: max(2k + 20, 40), capped
            at dim).
        max_restarts: as in `top_eigenpairs`.
        tol: as in `top_eigenpairs` (default `default_tol(op.dtype)`).

    Returns:
        `LoweredPrograms(first_pass, restart)`: `jax.stages.Lowered` of the first Lanczos pass
        and of the restart program continuing from its basis and state.
    """
    _check_op(op)
    k = check_positive_int("k", k)
    depth = _check_iters(min(op.dim, max(2 * k + 20, 40)) if num_iters is None else num_iters, op.dim)
    tol = default_tol(op.dtype) if tol is None else float(tol)
    first = _first_pass.lower(op, key, depth)
    basis, hess, seed = first.out_info
    restart = _thick_restart_lanczos.lower(op, key, k, "largest", depth, max_restarts, tol,
                                           _output_count(k, depth), basis, _continued_state_shapes(hess, seed))
    return LoweredPrograms(first, restart)
