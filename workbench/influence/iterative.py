"""Matrix-free inverse-curvature influence: conjugate gradients and LiSSA on the dataset-averaged
curvature operator of `workbench.curvature` (Hessian, Gauss-Newton or Fisher; damping explicit).

score = g(z)^T (C + damping I)^{-1} g(z_i) with C = curvature.operator(loss_fn, params, train_data,
kind). Each test gradient gets one solve (vmapped over the test batch); training gradients are
used as they are, so scores cost n_test solves plus a pass over the training set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from workbench import curvature
from workbench.core.losses import as_loss
from workbench.core.numerics import check_positive_int, default_tol
from workbench.influence.estimator import (
    Estimator,
    check_damping,
    check_loss_finite,
    grad_featurizer,
)


def curvature_operator(loss_fn: Callable, params, train_data, kind: str = "hessian", **operator_options):
    """`workbench.curvature.operator` on the training data, after checking that the training
    loss is finite there (a NaN loss is reported as such, not as indefinite curvature).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the objective whose curvature is taken, or
            a `models.Functional` (its roles resolved per kind by `curvature.operator`).
        params: pytree, where it is taken.
        train_data: pytree of arrays [n, ...], the data it averages over.
        kind: "hessian", "ggn" or "fisher".
        **operator_options: passed to `workbench.curvature.operator`.

    Returns:
        The dataset-averaged curvature operator (`.mv(v)`, `.dim`, `.dtype`).

    Raises:
        FloatingPointError: if the loss is NaN or infinite on some training example.
    """
    check_loss_finite(as_loss(loss_fn, role="objective", caller="influence"), params, train_data)
    return curvature.operator(loss_fn, params, train_data, kind=kind, **operator_options)


# ----------------------------------------------------------------------------- conjugate gradients


@functools.lru_cache(maxsize=32)
def _cg_precondition(num_iters: int, tol: float) -> Callable:
    """(C + damping I)^{-1} rows by CG; a row is NaN where CG met non-positive curvature and inf
    where it did not reach the tolerance in `num_iters` iterations (the estimator reports both)."""

    def precondition(state, features):
        op, damping = state["op"], state["damping"]
        mv = lambda v: op.mv(v) + damping * v

        def solve(b):
            tiny = jnp.finfo(b.dtype).tiny
            b_norm = jnp.linalg.norm(b)

            def cond(s):
                k, _, r, _, _, indefinite = s
                return (k < num_iters) & (jnp.linalg.norm(r) > tol * b_norm) & ~indefinite

            def body(s):
                k, x, r, d, rr, _ = s
                ad = mv(d)
                curvature = jnp.vdot(d, ad)
                indefinite = curvature <= 1e-14 * jnp.vdot(d, d) * (1.0 + jnp.abs(damping))
                alpha = rr / jnp.where(indefinite, 1.0, curvature)
                x, r = x + alpha * d, r - alpha * ad
                rr_new = jnp.vdot(r, r)
                return k + 1, x, r, r + rr_new / jnp.maximum(rr, tiny) * d, rr_new, indefinite

            init = (0, jnp.zeros_like(b), b, b, jnp.vdot(b, b), jnp.asarray(False))
            _, x, r, _, _, indefinite = jax.lax.while_loop(cond, body, init)
            converged = (jnp.linalg.norm(r) <= tol * b_norm) & jnp.all(jnp.isfinite(x))
            # reported by the estimator, never returned
            return jnp.where(indefinite, jnp.nan, jnp.where(converged, x, jnp.inf))

        return jax.vmap(solve)(features)

    return precondition


def cg(
    loss_fn: Callable,
    params,
    train_data,
    *,
    damping: float = 0.0,
    kind: str = "hessian",
    num_iters: int = 500,
    tol: float | None = None,
    measure_fn: Callable | None = None,
    objective_fn: Callable | None = None,
    operator_options: dict | None = None,
    **options,
) -> Estimator:
    """Influence by conjugate gradients on (C + damping I) x = g(z), C the curvature `kind`.

    Stops at a relative residual `tol` (default `numerics.default_tol` of the params' dtype) or
    after `num_iters` iterations. A direction of
    non-positive curvature (an indefinite or singular system) raises ValueError: raise the
    damping above -lambda_min or use kind="ggn".

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss whose gradients
            are attributed.
        params: pytree, the trained model.
        train_data: pytree of arrays [n, ...], the training set the curvature averages over.
        damping: multiple of the identity added to the curvature (>= 0).
        kind: the curvature, "hessian", "ggn" or "fisher" (`workbench.curvature`).
        num_iters: most CG iterations per solve.
        tol: relative residual at which a solve stops; None means `numerics.default_tol`.
        measure_fn: the test measure; None means `loss_fn`.
        objective_fn: the objective whose curvature is inverted; None means `loss_fn`.
        operator_options: extra options of `workbench.curvature.operator` (e.g. chunk_size).
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "cg"; scoring raises ValueError when CG meets non-positive curvature and
        RuntimeError when a solve does not reach `tol` in `num_iters` iterations.
    """
    damping = check_damping(damping)
    num_iters = check_positive_int("num_iters", num_iters)
    op = curvature_operator(objective_fn or loss_fn, params, train_data, kind, **(operator_options or {}))
    tol = default_tol(op.dtype) if tol is None else float(tol)
    info = {"damping": damping, "kind": kind, "num_iters": num_iters, "tol": tol}
    est = Estimator(
        "cg", train_data, grad_featurizer(loss_fn), _cg_precondition(int(num_iters), float(tol)),
        {"params": params, "op": op, "damping": jnp.asarray(damping, op.dtype)},
        featurize_test=grad_featurizer(measure_fn) if measure_fn else None, info=info, **options,
    )
    est.nonfinite_reasons = {
        "nan": (ValueError, (
            f"conjugate gradients met a direction of non-positive curvature: {kind} + damping I "
            f"(damping={damping}) is not positive definite. Raise the damping above -lambda_min "
            "(workbench.influence.damping_above_min_eigenvalue, or workbench.spectrum."
            "top_eigenpairs(op, key, 1, which='smallest')) or use kind='ggn'")),
        "inf": (RuntimeError, (
            f"conjugate gradients did not reach the relative residual tol={tol} within "
            f"num_iters={num_iters} iterations for some test points ({kind} + damping I is badly "
            "conditioned); raise num_iters or the damping")),
    }
    return est


# ----------------------------------------------------------------------------- LiSSA


@functools.lru_cache(maxsize=32)
def _lissa_precondition(num_iters: int) -> Callable:
    def precondition(state, features):
        op, damping, scale = state["op"], state["damping"], state["scale"]

        def solve(b):
            # x <- b + (I - (C + damping I) / scale) x;  (C + damping I)^{-1} b = x_inf / scale
            step = lambda _, x: b + x - (op.mv(x) + damping * x) / scale
            x = jax.lax.fori_loop(0, num_iters, step, b)
            # a partial sum of a convergent series leaves a residual below |b| (each eigen-
            # component shrinks by |1 - lambda / scale| < 1 per term); above it, it diverged
            residual = jnp.linalg.norm(b - (op.mv(x) + damping * x) / scale)
            bound = jnp.linalg.norm(b) * (1 + jnp.sqrt(jnp.finfo(b.dtype).eps))  # round-off
            diverged = ~(residual <= bound) & jnp.all(jnp.isfinite(b))
            return jnp.where(diverged, jnp.inf, x / scale)

        return jax.vmap(solve)(features)

    return precondition


def lissa(loss_fn: Callable, params, train_data, *, damping: float = 0.0, kind: str = "hessian",
          num_iters: int = 1000, scale: float | None = None, key: jax.Array | None = None,
          measure_fn: Callable | None = None, objective_fn: Callable | None = None,
          operator_options: dict | None = None,
          **options) -> Estimator:
    """LiSSA (Agarwal et al. 2017): the Neumann series of (C + damping I)^{-1}, `num_iters` terms.

    `scale` must exceed the largest eigenvalue of C + damping I for the series to converge; by
    default it is 1.1 x that eigenvalue, estimated with `workbench.spectrum.power_iteration`
    (`key`, required then, seeds it). The error after `num_iters` terms shrinks like
    (1 - (lambda_min + damping) / scale)^num_iters: ill-conditioned problems need more terms
    or damping. Uses the full dataset-averaged operator (deterministic), not minibatch samples.

    Args:
        loss_fn: as in `cg`.
        params: as in `cg`.
        train_data: as in `cg`.
        damping: as in `cg`.
        kind: as in `cg`.
        num_iters: terms of the Neumann series.
        scale: a bound above the largest eigenvalue of C + damping I; None estimates it.
        key: `jax.random` key of the power iteration estimating the scale; required when
            `scale` is None, unused otherwise.
        measure_fn: as in `cg`.
        objective_fn: as in `cg`.
        operator_options: as in `cg`.
        options: as in `cg`.

    Returns:
        The `Estimator` "lissa" (`info["scale"]` holds the scale used); scoring raises
        RuntimeError when the series diverged (its final residual exceeds the gradient's norm:
        scale below half the top eigenvalue, or an indefinite curvature).

    Raises:
        ValueError: if neither `key` nor `scale` is given, or the scale is not positive.
        RuntimeError: if the power iteration for the scale does not converge.
    """
    damping = check_damping(damping)
    num_iters = check_positive_int("num_iters", num_iters)
    op = curvature_operator(objective_fn or loss_fn, params, train_data, kind, **(operator_options or {}))
    if scale is None:
        from workbench import spectrum

        if key is None:
            raise ValueError("lissa needs key= (a jax.random key) to estimate its scale by power "
                             "iteration, or an explicit scale=")
        top = spectrum.power_iteration(op, key)
        if not bool(top.converged):
            raise RuntimeError(
                f"lissa: the power iteration estimating the largest eigenvalue (for the scale) did "
                f"not converge (residual {float(top.residual):.3g} at {float(top.value):.4g} after "
                f"{int(top.num_iters)} products): pass scale= above the largest eigenvalue + damping")
        scale = 1.1 * (abs(float(top.value)) + damping)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    info = {"damping": damping, "kind": kind, "num_iters": num_iters, "scale": float(scale)}
    est = Estimator(
        "lissa", train_data, grad_featurizer(loss_fn), _lissa_precondition(int(num_iters)),
        {"params": params, "op": op, "damping": jnp.asarray(damping, op.dtype),
         "scale": jnp.asarray(scale, op.dtype)},
        featurize_test=grad_featurizer(measure_fn) if measure_fn else None, info=info, **options,
    )
    est.nonfinite_reasons = {"inf": (RuntimeError, (
        f"the LiSSA series diverged for some test points (its residual grew above the gradient's "
        f"norm): scale={float(scale):.4g} must exceed half the largest eigenvalue of {kind} + damping I "
        f"(damping={damping}), which must be positive definite. Leave scale=None to estimate it, or "
        "raise the damping"))}
    return est

