"""Sharpness (the top Hessian eigenvalue of the training loss) along a training run.

- `sharpness(loss_fn, params, data, key)`: the top eigenvalue(s) of the dataset-averaged Hessian.
- `sharpness_callback(loss_fn, data, key, ...)`: a `callback(step, params) -> dict` for
  `workbench.train.train(..., callback=cb, callback_every=k)`; compiled once, reused every call.
The edge-of-stability recipe built on them (`gd_sharpness_run`, `stability_ratio`) lives in
`workbench.experiments.spectra`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench import curvature
from workbench.numerics import default_tol
from workbench.spectrum.krylov import _thick_restart_lanczos


def _top_values_fn(loss_fn, data, k, num_iters, max_restarts, tol, kind, batch_size):
    """jit(params, key) -> the k largest eigenvalues, compiled once per params shape."""

    @jax.jit
    def top(params, key):
        op = curvature.operator(loss_fn, params, data, kind, batch_size=batch_size)
        m = min(op.dim, max(num_iters, k + 1))
        result, _ = _thick_restart_lanczos(
            op, key, k, "largest", m, max_restarts, tol or default_tol(op.dtype), False
        )
        return result.values

    return top


def sharpness(
    loss_fn, params, data, key, *, k: int = 1, num_iters: int = 20, kind: str = "hessian",
    batch_size: int | None = None,
) -> jax.Array:
    """The k largest eigenvalues of the loss curvature over `data` (descending)."""
    top = _top_values_fn(loss_fn, data, k, num_iters, 50, None, kind, batch_size)
    values = top(params, key)
    if not bool(jnp.all(jnp.isfinite(values))):
        raise FloatingPointError("sharpness: the curvature operator returned NaN or inf")
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
    batch_size: int | None = None,
    name: str = "sharpness",
) -> Callable[[int, Any], dict]:
    """A training callback recording the top Hessian eigenvalue (and the next k-1 if k > 1).

    Returns `callback(step, params) -> {name: top eigenvalue}` (plus `f"{name}_{i}"` for the
    i-th, i >= 2). Each call runs thick-restart Lanczos of depth `num_iters` to relative residual
    `tol` (default 1e-10 in float64, 1e-4 in float32) on the Hessian averaged over all of `data`,
    with the key folded with the step so runs are reproducible.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if kind not in curvature.KINDS:
        raise ValueError(f"kind must be one of {curvature.KINDS}, got {kind!r}")
    top = _top_values_fn(loss_fn, data, k, num_iters, max_restarts, tol, kind, batch_size)

    def callback(step: int, params) -> dict:
        values = np.asarray(top(params, jax.random.fold_in(key, step)))
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(f"{name} at step {step}: the Hessian product returned NaN or inf")
        out = {name: float(values[0])}
        out.update({f"{name}_{i + 1}": float(v) for i, v in enumerate(values[1:], start=1)})
        return out

    return callback
