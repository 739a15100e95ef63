"""Sharpness (the top Hessian eigenvalue of the training loss) along a training run.

- `sharpness(loss_fn, params, data, key)`: the top eigenvalue(s) of the dataset-averaged Hessian.
- `sharpness_callback(loss_fn, data, key, ...)`: a `callback(step, params) -> dict` for
  `workbench.train.train(..., callback=cb, callback_every=k)`; compiled once, reused every call.
The edge-of-stability recipe built on them (`gd_sharpness_run`, `stability_ratio`) lives in
`workbench.experiments.spectra`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench import curvature
from workbench.core.numerics import check_positive_int, default_tol
from workbench.spectrum.eigensolver import _output_count, _thick_restart_lanczos


@functools.lru_cache(maxsize=64)
def _top_values_fn(loss_fn, k, num_iters, max_restarts, tol, kind, chunk_size):
    """jit(params, data, key) -> (the k largest eigenvalues, every product finite, each of the k
    converged), compiled once
    per (loss_fn, configuration) and params/data shapes; the data is an argument, never a
    constant baked into the program."""

    @jax.jit
    def top(params, data, key):
        op = curvature.operator(loss_fn, params, data, kind, chunk_size=chunk_size)
        m = min(op.dim, max(num_iters, k + 1))
        result, _, finite, _ = _thick_restart_lanczos(
            op, key, k, "largest", m, max_restarts, tol or default_tol(op.dtype), _output_count(k, m)
        )
        values = result.values[:k]
        return values, finite & jnp.all(jnp.isfinite(values)), result.converged[:k]

    return top


def _check_options(k, kind, num_iters, max_restarts):
    """(k, num_iters, max_restarts) as Python ints (NumPy integers would reach the program as
    int64 and meet its int32 loop counters)."""
    k, num_iters = check_positive_int("k", k), check_positive_int("num_iters", num_iters)
    max_restarts = check_positive_int("max_restarts", max_restarts, least=0)
    if kind not in curvature.KINDS:
        raise ValueError(f"kind must be one of {curvature.KINDS}, got {kind!r}")
    return k, num_iters, max_restarts


def _check_dim(k, params):
    dim = optax.tree.size(params)
    if k > dim:
        raise ValueError(f"k={k} exceeds the number of parameters {dim}: there are only {dim} eigenvalues")


def _unconverged_message(where, values, converged, num_iters, max_restarts):
    missing = np.flatnonzero(~np.asarray(converged))
    return (f"{where}: {missing.size} of the {len(converged)} top eigenvalues did not converge (first: "
            f"{float(np.asarray(values)[missing[0]]):.6g}) after {max_restarts} restarts at depth {num_iters}; "
            "raise num_iters or max_restarts, or loosen tol")


def sharpness(
    loss_fn, params, data, key, *, k: int = 1, num_iters: int = 20, max_restarts: int = 50,
    tol: float | None = None, kind: str = "hessian", chunk_size: int | None = None,
) -> jax.Array:
    """The k largest eigenvalues of the loss curvature over `data` (descending).

    Raises FloatingPointError when any curvature product was NaN or inf (a diverged run has no
    sharpness; it is never reported as 0).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean) or a `models.Functional`.
        params: the point.
        data: the dataset the curvature averages over.
        key: PRNG key of the Lanczos start vector.
        k: how many of the largest eigenvalues (at most the number of parameters).
        num_iters: the Krylov depth (raised to k + 1, capped at the number of parameters).
        max_restarts: the most thick restarts.
        tol: the relative residual asked (default by dtype).
        kind: "hessian", "ggn" or "fisher" (as in `curvature.operator`).
        chunk_size: examples per operator product (as in `curvature.operator`).

    Returns:
        [k] the largest eigenvalues, descending.

    Raises:
        ValueError: k above the number of parameters, num_iters < 1, an unknown kind.
        FloatingPointError: a curvature product was NaN or inf.
        RuntimeError: an eigenvalue did not converge within max_restarts.
    """
    k, num_iters, max_restarts = _check_options(k, kind, num_iters, max_restarts)
    _check_dim(k, params)
    values, finite, converged = _top_values_fn(loss_fn, k, num_iters, max_restarts, tol, kind, chunk_size)(
        params, data, key)
    if not bool(finite):
        raise FloatingPointError("sharpness: a curvature product returned NaN or inf (check the loss "
                                 "and params for non-finite values)")
    if not np.all(np.asarray(converged)):
        raise RuntimeError(_unconverged_message("sharpness", values, converged, num_iters, max_restarts))
    return values


def sharpness_callback(
    loss_fn: Callable,
    data: Any,
    key: jax.Array,
    *,
    k: int = 1,
    num_iters: int = 20,
    max_restarts: int = 50,
    tol: float | None = None,
    kind: str = "hessian",
    chunk_size: int | None = None,
    name: str = "sharpness",
) -> Callable[[int, Any], dict]:
    """A training callback recording the top Hessian eigenvalue (and the next k-1 if k > 1).

    Returns `callback(step, params) -> {name: top eigenvalue}` (plus `f"{name}_{i}"` for the
    i-th, i >= 2). Each call runs thick-restart Lanczos of depth `num_iters` to relative residual
    `tol` (default 1e-10 in float64, 1e-4 in float32) on the Hessian averaged over all of `data`,
    with the key folded with the step so runs are reproducible.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean) or a `models.Functional`.
        data: the dataset the curvature averages over (passed to the compiled program as an
            argument, never baked into it).
        key: PRNG key, folded with the step number at each call.
        k: how many of the largest eigenvalues to record.
        num_iters: the Krylov depth.
        max_restarts: the most thick restarts per call.
        tol: the relative residual asked (default by dtype).
        kind: "hessian", "ggn" or "fisher".
        chunk_size: examples per operator product (as in `curvature.operator`).
        name: the history key of the top eigenvalue.

    Returns:
        `callback(step, params) -> dict` of Python floats; it raises FloatingPointError naming the
        step when a product was NaN or inf, RuntimeError when an eigenvalue did not converge, and
        ValueError when k exceeds the number of parameters.

    Raises:
        ValueError: k or num_iters not a positive int, an unknown kind.
    """
    k, num_iters, max_restarts = _check_options(k, kind, num_iters, max_restarts)
    top = _top_values_fn(loss_fn, k, num_iters, max_restarts, tol, kind, chunk_size)

    def callback(step: int, params, *model_state) -> dict:  # train passes a stateful model's state
        _check_dim(k, params)
        values, finite, converged = top(params, data, jax.random.fold_in(key, step))
        values = np.asarray(values)
        if not bool(finite):
            raise FloatingPointError(f"{name} at step {step}: the Hessian product returned NaN or inf")
        if not np.all(np.asarray(converged)):
            raise RuntimeError(_unconverged_message(f"{name} at step {step}", values, converged, num_iters,
                                                    max_restarts))
        out = {name: float(values[0])}
        out.update({f"{name}_{i + 1}": float(v) for i, v in enumerate(values[1:], start=1)})
        return out

    return callback
