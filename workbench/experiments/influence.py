"""Recipes for the influence papers: the digits logistic regression fitted to its exact optimum, and
the set of estimators the evaluation paper compares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from workbench import data, influence, models
from workbench.influence.validation import fit

PyTree = Any


class FittedProblem(NamedTuple):
    model: Any  # workbench.models.Functional
    params: PyTree  # the optimum
    train: Any  # Dataset
    test: Any  # Dataset
    grad_norm: float  # gradient norm at `params`


def fit_digits_logistic(n_train: int, n_test: int, l2: float, seed: int = 0) -> FittedProblem:
    """L2-regularised logistic regression on the first `n_train` / `n_test` examples of digits'
    seeded split, in float64, fitted by Newton's method to machine precision (influence functions
    are statements about the exact optimum)."""
    train_full, test_full = data.load_digits(seed=seed, dtype=jnp.float64)
    if not 2 <= n_train <= len(train_full) or not 1 <= n_test <= len(test_full):
        raise ValueError(f"n_train must be in [2, {len(train_full)}] and n_test in [1, {len(test_full)}], "
                         f"got {n_train}, {n_test}")
    train, test = train_full.take(jnp.arange(n_train)), test_full.take(jnp.arange(n_test))
    model = models.functional(
        models.LogisticRegression(64, 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)
    params, grad_norm = fit(model.loss_fn, model.params, train)
    return FittedProblem(model, params, train, test, grad_norm)




def estimator_builders(
    loss_fn: Callable,
    params: PyTree,
    train_data: Any,
    key: Any,
    *,
    checkpoints: Any,
    learning_rate: float,
    damping: float = 0.0,
    eigen: Any = None,
    cosine: bool = True,
    margin: Callable | None = None,
    cg_iters: int,
    lissa_iters: int,
    arnoldi_k: int,
    trak_dim: int,
    trak_damping: float,
) -> dict[str, Callable[[], Any]]:
    """The estimators compared by the evaluation paper, as zero-argument builders (so
    `evaluate.compare` / `mislabel_aucs` can time each build): exact (with `eigen`, a precomputed
    eigendecomposition of the Hessian, when given), cg (`cg_iters`), lissa (`lissa_iters` terms),
    arnoldi with its flat tail and `arnoldi_top_k` (`tail="none"`), trak (`trak_dim`,
    `trak_damping`, output function `margin`), grad_dot, grad_cos (left out when `cosine` is
    False: a cosine's self-influence is 1 for every example) and tracin (`checkpoints` of a run at
    `learning_rate`). `damping` is shared by the inverse-curvature estimators; `key` seeds lissa,
    arnoldi and trak (each gets the same key)."""
    out = {
        "exact": lambda: influence.make("exact", loss_fn, params, train_data, damping=damping, hessian=eigen),
        "cg": lambda: influence.make("cg", loss_fn, params, train_data, damping=damping, num_iters=cg_iters),
        "lissa": lambda: influence.make("lissa", loss_fn, params, train_data, damping=damping, num_iters=lissa_iters,
                                        key=key),
        "arnoldi": lambda: influence.make("arnoldi", loss_fn, params, train_data, damping=damping, k=arnoldi_k, key=key),
        "arnoldi_top_k": lambda: influence.make("arnoldi", loss_fn, params, train_data, damping=damping, k=arnoldi_k,
                                                tail="none", key=key),
        "trak": lambda: influence.make("trak", loss_fn, params, train_data, dim=trak_dim, output_fn=margin,
                                       damping=trak_damping, key=key),
        "grad_dot": lambda: influence.make("grad_dot", loss_fn, params, train_data),
        "grad_cos": lambda: influence.make("grad_cos", loss_fn, params, train_data),
        "tracin": lambda: influence.make("tracin", loss_fn, params, train_data, checkpoints=checkpoints,
                                         learning_rates=learning_rate),
    }
    if not cosine:
        del out["grad_cos"]
    return out
