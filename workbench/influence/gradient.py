"""Curvature-free estimators: gradient dot product, gradient cosine, and TracIn over checkpoints.

All use the per-example gradient of `loss_fn` on a batch of one example; `grad_dot` and
`grad_cos` at `params`, `tracin` at each checkpoint, weighted by that checkpoint's learning rate
(Pruthi et al. 2020, "TracIn-CP"): score = sum_c lr_c <g_c(z), g_c(z_i)>.
Test examples use the gradient of `measure_fn` (default `loss_fn`) where one is given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from workbench.core import tree as tu
from workbench.core.numerics import check_finite
from workbench.core.per_example import flat_per_example_grads
from workbench.influence.estimator import (
    Estimator,
    grad_featurizer,
    identity_precondition,
)


def grad_dot(loss_fn: Callable, params, train_data, *, measure_fn: Callable | None = None,
             **options) -> Estimator:
    """Gradient dot product: score = <grad measure(z), grad loss(z_i)> at `params` (no curvature).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss whose gradients
            are attributed (applied to one example at a time).
        params: pytree, the trained model.
        train_data: pytree of arrays [n, ...], the training set.
        measure_fn: the test measure whose gradient is taken on test points; None means
            `loss_fn`.
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "grad_dot".
    """
    return Estimator(
        "grad_dot", train_data, grad_featurizer(loss_fn), identity_precondition, {"params": params},
        featurize_test=grad_featurizer(measure_fn) if measure_fn else None, info={}, **options,
    )


def grad_cos(loss_fn: Callable, params, train_data, *, measure_fn: Callable | None = None,
             **options) -> Estimator:
    """Gradient cosine: score = the cosine between the two per-example gradients, in [-1, 1].

    Scale-free, so examples with large gradients (badly fit ones) do not dominate; its
    self-influence is 1 for every example (useless for mislabel detection).

    Args:
        loss_fn: as in `grad_dot`.
        params: as in `grad_dot`.
        train_data: as in `grad_dot`.
        measure_fn: as in `grad_dot`.
        options: as in `grad_dot`.

    Returns:
        The `Estimator` "grad_cos".
    """
    return Estimator(
        "grad_cos", train_data, grad_featurizer(loss_fn, True), identity_precondition,
        {"params": params},
        featurize_test=grad_featurizer(measure_fn, True) if measure_fn else None, info={}, **options,
    )


def _learning_rates(steps: Sequence[int], learning_rates) -> list[float]:
    if callable(learning_rates):
        return [float(learning_rates(s)) for s in steps]
    if isinstance(learning_rates, Mapping):
        missing = [s for s in steps if s not in learning_rates]
        if missing:
            raise ValueError(f"learning_rates has no entry for checkpoint step(s) {missing}")
        return [float(learning_rates[s]) for s in steps]
    if isinstance(learning_rates, int | float):
        return [float(learning_rates)] * len(steps)
    rates = [float(r) for r in learning_rates]
    if len(rates) != len(steps):
        raise ValueError(f"learning_rates has {len(rates)} entries for {len(steps)} checkpoints")
    return rates


def _stack_flat(trees) -> jax.Array:
    """[len(trees), p]: each pytree raveled (like `ravel_pytree`) and stacked, on the host, so a
    first call compiles no reshape/concatenate/stack per leaf shape."""
    dtype = jnp.result_type(*jax.tree.leaves(trees[0]))
    return jnp.asarray(np.stack([
        np.concatenate([np.ravel(np.asarray(a)).astype(dtype) for a in jax.tree.leaves(t)]) for t in trees]))


@functools.lru_cache(maxsize=128)
def _checkpoint_featurizer(loss_fn: Callable) -> Callable:
    def featurize(state, chunk):
        _, unravel = ravel_pytree(state["params"])
        per_ckpt = jax.vmap(lambda flat: flat_per_example_grads(loss_fn, unravel(flat), chunk))(
            state["checkpoints"])
        per_ckpt = per_ckpt * state["root_rates"][:, None, None]  # [C, c, p]
        return jnp.moveaxis(per_ckpt, 0, 1).reshape(per_ckpt.shape[1], -1)

    return featurize


def tracin(
    loss_fn: Callable,
    params,
    train_data,
    *,
    checkpoints: Mapping[int, object] | None = None,
    learning_rates=None,
    measure_fn: Callable | None = None,
    **options,
) -> Estimator:
    """TracIn-CP: score = sum over checkpoints c of lr_c * <g_c(z), g_c(z_i)>.

    `checkpoints` maps step -> params (e.g. `TrainResult.checkpoints` of `workbench.train`);
    `learning_rates` is a float, a mapping step -> lr, a sequence in step order, or a schedule
    (callable step -> lr). The features are the gradients at all checkpoints, each scaled by
    sqrt(lr_c) and stacked, so the score is one dot product.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss whose gradients
            are attributed (applied to one example at a time).
        params: pytree, the model whose structure the checkpoints share (its values are not used).
        train_data: pytree of arrays [n, ...], the training set.
        checkpoints: dict step -> params pytree (required).
        learning_rates: float, dict step -> lr, sequence in step order, or a schedule
            step -> lr (required); all >= 0.
        measure_fn: the test measure whose gradients are taken on test points; None means
            `loss_fn`.
        **options: passed to `Estimator` (`chunk_size`, `cache_bytes`).

    Returns:
        The `Estimator` "tracin" (`info` holds the checkpoint steps and learning rates).

    Raises:
        ValueError: if checkpoints or learning rates are missing, negative, of another
            structure than `params`, or hold NaN.
    """
    if not checkpoints:
        raise ValueError("tracin needs checkpoints=: a dict step -> params (TrainResult.checkpoints)")
    if learning_rates is None:
        raise ValueError("tracin needs learning_rates=: a float, a dict step -> lr, or a schedule")
    steps = sorted(checkpoints)
    rates = _learning_rates(steps, learning_rates)
    if any(r < 0 for r in rates):
        raise ValueError(f"learning_rates must be non-negative, got {rates}")
    for s in steps:
        tu.check_same_structure(params, checkpoints[s], "params", f"checkpoints[{s}]")
        check_finite(checkpoints[s], f"checkpoints[{s}]")
    stacked = _stack_flat([checkpoints[s] for s in steps])  # [C, p]
    state = {"params": params, "checkpoints": stacked,
             "root_rates": jnp.asarray(np.sqrt(np.asarray(rates, stacked.dtype)))}
    info = {"checkpoint_steps": steps, "learning_rates": rates}
    return Estimator(
        "tracin", train_data, _checkpoint_featurizer(loss_fn), identity_precondition, state,
        featurize_test=_checkpoint_featurizer(measure_fn) if measure_fn else None, info=info,
        **options,
    )
