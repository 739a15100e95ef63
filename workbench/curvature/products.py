"""Curvature-vector products on one batch: Hessian (forward-over-reverse), Gauss-Newton
J^T H_out J v, and the empirical Fisher (1/B) sum_i g_i g_i^T v. The dataset-averaged operators of
`workbench.curvature.averaged` sum these over chunks of a dataset."""


from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from workbench.core.per_example import (
    per_example_losses,
)

PyTree = Any


def _cast_like(v: PyTree, params: PyTree) -> PyTree:
    return jax.tree.map(lambda vi, pi: jnp.asarray(vi).astype(pi.dtype), v, params)


def hvp(loss_fn: Callable, params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """Hessian of `loss_fn(params, batch)` times `v` (params-shaped), by forward-over-reverse.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`.
        params: the point (pytree).
        batch: the batch `loss_fn` is evaluated on.
        v: the vector, shaped like `params` (cast to the params' dtypes).

    Returns:
        H v, shaped like `params`.
    """
    v = _cast_like(v, params)
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def ggn_vp(
    predict_fn: Callable,
    output_loss_fn: Callable,
    params: PyTree,
    batch: Any,
    v: PyTree,
    l2: float = 0.0,
) -> PyTree:
    """Generalized Gauss-Newton product J^T H_out J v (+ l2 v).

    `predict_fn(params, x)` gives outputs, `output_loss_fn(outputs, y)` per-example losses whose
    batch mean is the loss; H_out is the Hessian of that mean with respect to the outputs.

    Args:
        predict_fn: `predict_fn(params, x) -> outputs`.
        output_loss_fn: `output_loss_fn(outputs, y) -> [n]` per-example losses.
        params: the point (pytree).
        batch: an (x, y) pair.
        v: the vector, shaped like `params`.
        l2: the multiple of `v` added (the regulariser's curvature); 0 adds nothing.

    Returns:
        (J^T H_out J + l2 I) v, shaped like `params`.
    """
    x, y = batch
    v = _cast_like(v, params)
    outputs, jv = jax.jvp(lambda p: predict_fn(p, x), (params,), (v,))
    mean_loss = lambda o: jnp.mean(output_loss_fn(o, y))
    hjv = jax.jvp(jax.grad(mean_loss), (outputs,), (jv,))[1]
    _, vjp = jax.vjp(lambda p: predict_fn(p, x), params)
    out = vjp(hjv)[0]
    return optax.tree.add_scale(out, l2, v) if l2 else out


def fisher_vp(loss_fn: Callable, params: PyTree, batch: Any, v: PyTree) -> PyTree:
    """Empirical Fisher (1/B) sum_i g_i (g_i . v), g_i the gradient of `loss_fn` on example i alone.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, a batch mean (evaluated on one-example batches).
        params: the point (pytree).
        batch: the batch, a pytree with a leading example axis [B, ...].
        v: the vector, shaped like `params`.

    Returns:
        F v, shaped like `params`.
    """
    v = _cast_like(v, params)
    n = jax.tree.leaves(batch)[0].shape[0]

    losses_at = lambda p: per_example_losses(loss_fn, p, batch)
    losses, vjp = jax.vjp(losses_at, params)
    jv = jax.jvp(losses_at, (params,), (v,))[1]
    return optax.tree.scale(jnp.asarray(1.0 / n, losses.dtype), vjp(jv)[0])
