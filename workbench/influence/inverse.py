"""Inverse-curvature influence functions (Koh & Liang 2017): score = g(z)^T (H + damping I)^{-1} g(z_i).

`exact` forms the dense dataset-averaged Hessian of the training objective (small models only:
p x p memory, one eigendecomposition), checks that H + damping I is positive definite, and
applies its inverse to the test gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from workbench import curvature
from workbench.core.losses import as_loss, check_loss_output
from workbench.influence.estimator import (
    Estimator,
    check_damping,
    grad_featurizer,
    matrix_precondition,
)

MAX_EXACT_PARAMS = 20_000


class DampingChoice(NamedTuple):
    """A damping that makes H + damping I positive definite, and what it was read from."""

    damping: float  # max(0, -lambda_min) + margin
    lambda_min: float  # the smallest Hessian eigenvalue
    eigen: tuple  # (eigenvalues, eigenvectors) of the dense Hessian: pass as `exact(hessian=...)`


def damping_above_min_eigenvalue(loss_fn: Callable, params, data, *, margin: float = 0.01) -> DampingChoice:
    """The damping just above -lambda_min of the dense dataset Hessian (a non-convex model's
    Hessian has small negative eigenvalues): max(0, -lambda_min) + `margin`. The one place the
    papers and benchmarks choose their damping; the eigendecomposition comes back for reuse.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective, or a
            `models.Functional` (its objective, l2 term included).
        params: pytree, where the Hessian is taken.
        data: pytree of arrays [n, ...], the training set.
        margin: how far above -lambda_min the damping lies (>= 0).

    Returns:
        `DampingChoice(damping, lambda_min, eigen)`; pass `eigen` as `exact(hessian=...)`.

    Raises:
        ValueError: if `margin` is negative or not finite.
    """
    margin = check_damping(margin)
    loss_fn = as_loss(loss_fn, role="objective", caller="influence.damping_above_min_eigenvalue")
    check_loss_output(loss_fn, params, jax.tree.map(lambda a: a[:2], data), expects="scalar",
                      caller="influence.damping_above_min_eigenvalue")
    eigen = jnp.linalg.eigh(curvature.dense_hessian(loss_fn, params, data))
    lam_min = float(eigen[0][0])
    return DampingChoice(max(0.0, -lam_min) + margin, lam_min, eigen)


@jax.jit
def _cholesky(hessian, damping):
    return jnp.linalg.cholesky(hessian + damping * jnp.eye(hessian.shape[0], dtype=hessian.dtype))


def cholesky_precondition(state, features):
    """P = (H + damping I)^{-1} applied to rows from its lower Cholesky factor (two triangular solves).

    Args:
        state: dict holding "cholesky", the lower factor L [p, p] of H + damping I.
        features: array [m, p] of gradients.

    Returns:
        Array [m, p]: features (H + damping I)^{-1}.
    """
    return jax.scipy.linalg.cho_solve((state["cholesky"], True), features.T).T


def _check_definite(evals, damping):
    lam_min = float(evals[0])
    floor = max(1e-12, 10 * float(jnp.finfo(evals.dtype).eps))  # below: zero up to rounding
    if lam_min + damping <= floor * max(float(jnp.abs(evals[-1])), 1.0):
        raise ValueError(
            f"H + damping I is not positive definite: the smallest Hessian eigenvalue is "
            f"{lam_min:.3g} and damping={damping}; use damping > {max(-lam_min, 0.0):.3g} "
            "(with a margin) or a Gauss-Newton matrix"
        )


def exact(
    loss_fn: Callable,
    params,
    train_data,
    *,
    damping: float = 0.0,
    hessian: jax.Array | None = None,
    measure_fn: Callable | None = None,
    objective_fn: Callable | None = None,
    **options,
) -> Estimator:
    """Influence with the dense inverse of (H + damping I), H the Hessian of the training objective
    `objective_fn` (default `loss_fn`; see `workbench.influence.make` for the three roles).

    `hessian` may be passed precomputed: a [p, p] matrix (e.g. a Gauss-Newton matrix) or its
    eigendecomposition `(eigenvalues, eigenvectors)` as returned by `jnp.linalg.eigh` (useful
    when you looked at the spectrum to choose the damping); otherwise it is formed with
    `curvature.dense_hessian`. Raises ValueError when H + damping I is not positive definite
    (a non-convex model needs a damping above -lambda_min, or a Gauss-Newton matrix).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss whose gradients
            are attributed.
        params: pytree, the trained model (at most `MAX_EXACT_PARAMS` entries unless `hessian`
            is given).
        train_data: pytree of arrays [n, ...], the training set.
        damping: multiple of the identity added to H (>= 0).
        hessian: None (form it), a [p, p] matrix, or (eigenvalues [p], eigenvectors [p, p]).
        measure_fn: the test measure; None means `loss_fn`.
        objective_fn: the objective whose Hessian is inverted; None means `loss_fn`.
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "exact" (`info` holds the damping and the factorization used).

    Raises:
        ValueError: if the model is too large, `hessian` has the wrong shape or holds NaN, or
            H + damping I is not positive definite.
    """
    damping = check_damping(damping)
    flat, _ = ravel_pytree(params)
    if flat.size > MAX_EXACT_PARAMS and hessian is None:
        raise ValueError(
            f"exact influence forms a dense {flat.size} x {flat.size} Hessian; use it for models "
            f"with at most {MAX_EXACT_PARAMS} parameters (use 'cg', 'lissa' or 'arnoldi' beyond)"
        )
    if hessian is None:
        hessian = curvature.dense_hessian(objective_fn or loss_fn, params, train_data)
    if isinstance(hessian, tuple | list):
        evals, evecs = (jnp.asarray(a) for a in hessian)
        if evals.shape != (flat.size,) or evecs.shape != (flat.size, flat.size):
            raise ValueError(f"hessian=(eigenvalues, eigenvectors) must have shapes ({flat.size},) and "
                             f"({flat.size}, {flat.size}), got {evals.shape} and {evecs.shape}")
        if not (bool(jnp.all(jnp.isfinite(evals))) and bool(jnp.all(jnp.isfinite(evecs)))):
            raise ValueError("the Hessian eigendecomposition contains NaN or infinite values")
        _check_definite(evals, damping)
        state = {"params": params, "inverse": (evecs / (evals + damping)) @ evecs.T}
        precondition = matrix_precondition
        info = {"damping": damping, "lambda_min": float(evals[0]), "lambda_max": float(evals[-1])}
    else:
        if hessian.shape != (flat.size, flat.size):
            raise ValueError(f"hessian must have shape ({flat.size}, {flat.size}), got {hessian.shape}")
        if not bool(jnp.all(jnp.isfinite(hessian))):
            raise ValueError("the Hessian contains NaN or infinite values; check params and data")
        # Cholesky is ~30x cheaper than eigh at a few thousand parameters (2410: 1 s vs 28 s on
        # one CPU core); the eigenvalues are computed only to explain a failure
        factor = _cholesky(hessian, jnp.asarray(damping, hessian.dtype))
        if not bool(jnp.all(jnp.isfinite(factor))):
            _check_definite(jnp.linalg.eigvalsh(hessian), damping)
            raise ValueError("H + damping I is too ill-conditioned for a Cholesky factorization; raise the damping")
        state = {"params": params, "cholesky": factor}
        precondition = cholesky_precondition
        info = {"damping": damping, "factorization": "cholesky"}
    return Estimator(
        "exact", train_data, grad_featurizer(loss_fn), precondition, state,
        featurize_test=grad_featurizer(measure_fn) if measure_fn else None, info=info, **options,
    )
