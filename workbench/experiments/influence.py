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
    """A model fitted to its exact optimum, with its data."""

    model: Any  # workbench.models.Functional
    params: PyTree  # the optimum
    train: Any  # Dataset
    test: Any  # Dataset
    grad_norm: float  # gradient norm at `params`


def fit_digits_logistic(n_train: int, n_test: int, l2: float, seed: int = 0) -> FittedProblem:
    """L2-regularised logistic regression on digits, fitted to machine precision.

    The first `n_train` / `n_test` examples of digits' seeded split, in float64, fitted by
    Newton's method (`influence.validation.fit`): influence functions are statements about the
    exact optimum.

    Args:
        n_train: training examples, in [2, 1347].
        n_test: test examples, in [1, 450].
        l2: L2 regularisation strength of the objective (mean loss + 0.5 l2 |theta|^2).
        seed: seed of the digits split and of the model's initialisation.

    Returns:
        `FittedProblem(model, params, train, test, grad_norm)`: the `Functional`, its optimum,
        the two datasets and the gradient norm reached.

    Raises:
        ValueError: if `n_train` or `n_test` is out of range.
    """
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
    cg_num_iters: int,
    lissa_num_iters: int,
    arnoldi_k: int,
    trak_dim: int,
    trak_damping: float,
) -> dict[str, Callable[[], Any]]:
    """The estimators compared by the evaluation paper, as zero-argument builders.

    Builders (not estimators) so that `validation.compare` / `mislabel_aucs` can time each
    build: exact, cg, lissa, arnoldi with its flat tail and `arnoldi_top_k` (`tail="none"`), trak,
    grad_dot, grad_cos and tracin.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective.
        params: pytree, the trained model the estimators are built at.
        train_data: pytree of arrays [n, ...], the training set.
        key: `jax.random` key seeding lissa, arnoldi and trak (each gets the same key).
        checkpoints: dict step -> params of a training run, for tracin.
        learning_rate: the learning rate of that run (tracin's weights).
        damping: multiple of the identity added to the curvature of the inverse-curvature
            estimators (exact, cg, lissa, arnoldi).
        eigen: (eigenvalues, eigenvectors) of the dense Hessian for exact, or None to form it.
        cosine: include grad_cos; False for self-influence (a cosine's is 1 for every example).
        margin: trak's output function (e.g. `influence.margin_output(predict_fn)`), or None for
            the loss.
        cg_num_iters: most conjugate-gradient iterations per solve of cg.
        lissa_num_iters: terms of lissa's Neumann series.
        arnoldi_k: eigenpairs kept by arnoldi and arnoldi_top_k.
        trak_dim: sketch dimension D of trak.
        trak_damping: damping of trak's sketched Gauss-Newton matrix.

    Returns:
        dict estimator name -> zero-argument function building that `Estimator`.
    """
    out = {
        "exact": lambda: influence.make("exact", loss_fn, params, train_data, damping=damping, hessian=eigen),
        "cg": lambda: influence.make("cg", loss_fn, params, train_data, damping=damping, num_iters=cg_num_iters),
        "lissa": lambda: influence.make("lissa", loss_fn, params, train_data, damping=damping, num_iters=lissa_num_iters,
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
