"""Recipes for the influence papers: the digits logistic regression fitted to its exact optimum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from workbench import data, models
from workbench.influence.evaluate import fit

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


