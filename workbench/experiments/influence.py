"""Recipes for the influence papers: the digits logistic regression fitted to its exact optimum, and
the set of estimators the evaluation paper compares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax
from flax import nnx

from workbench import data, influence, models, train
from workbench.influence.validation import fit

PyTree = Any


class FittedProblem(NamedTuple):
    """A model fitted to its exact optimum, with its data."""

    model: Any  # workbench.models.Functional
    params: PyTree  # the optimum
    train: Any  # Dataset
    test: Any  # Dataset
    grad_norm: float  # gradient norm at `params`


def digits_subsets(n_train: int, n_test: int, seed: int = 0) -> tuple[Any, Any]:
    """The first `n_train` training and `n_test` test examples of digits' seeded split, float64.

    Args:
        n_train: training examples, in [2, 1347].
        n_test: test examples, in [1, 450].
        seed: seed of the digits split.

    Returns:
        (train, test) `Dataset`s.

    Raises:
        ValueError: if `n_train` or `n_test` is out of range.
    """
    train_full, test_full = data.load_digits(seed=seed, dtype=jnp.float64)
    if not 2 <= n_train <= len(train_full) or not 1 <= n_test <= len(test_full):
        raise ValueError(f"n_train must be in [2, {len(train_full)}] and n_test in [1, {len(test_full)}], "
                         f"got {n_train}, {n_test}")
    return train_full.take(jnp.arange(n_train)), test_full.take(jnp.arange(n_test))


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
    train, test = digits_subsets(n_train, n_test, seed)
    model = models.functional(
        models.LogisticRegression(64, 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)
    params, grad_norm = fit(model.loss_fn, model.params, train)
    return FittedProblem(model, params, train, test, grad_norm)


class Trained(NamedTuple):
    """A model trained for attribution: where the estimators are built and what they need."""

    params: PyTree  # where the estimators are built
    checkpoints: dict  # step -> params of the training run (TracIn's checkpoints)
    learning_rate: float  # that run's learning rate (TracIn's weights)
    damping: float  # for the inverse-curvature estimators
    eigen: Any  # (eigenvalues, eigenvectors) of the dense Hessian at params, or None
    lambda_min: float | None  # the smallest Hessian eigenvalue, when `eigen` was formed


OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}


def train_for_attribution(model, train_data, key, *, optimizer_name: str, learning_rate: float,
                          num_steps: int, fit_to_optimum: bool = False,
                          damping_margin: float | None = None) -> Trained:
    """Train `model` from its initialisation, keeping 10 checkpoints, and prepare the curvature.

    A convex model is attributed at its exact optimum (`fit_to_optimum=True`: Newton's method,
    the training run then only serves TracIn); a non-convex one at the end of the run, with the
    damping just above -lambda_min of its Hessian (`damping_margin`), as
    `influence.damping_above_min_eigenvalue` chooses it.

    Args:
        model: a `workbench.models.Functional` (its `loss_fn` and initial `params`).
        train_data: pytree of arrays [n, ...], the training set.
        key: `jax.random` key of the training run.
        optimizer_name: "sgd" or "adam", full-batch.
        learning_rate: the optimizer's step size.
        num_steps: optimisation steps; checkpoints every num_steps // 10 from step 0.
        fit_to_optimum: attribute at the Newton optimum instead of the end of the run.
        damping_margin: margin above -lambda_min of the damping; None means no damping and no
            Hessian eigendecomposition.

    Returns:
        `Trained(params, checkpoints, learning_rate, damping, eigen, lambda_min)`.

    Raises:
        ValueError: for an unknown `optimizer_name`.
    """
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"optimizer_name must be one of {sorted(OPTIMIZERS)}, got {optimizer_name!r}")
    run = train.train(model.loss_fn, model.params, train_data, key,
                      optimizer=OPTIMIZERS[optimizer_name](learning_rate), num_steps=num_steps,
                      checkpoint_steps=list(range(0, num_steps, max(1, num_steps // 10))))
    params = fit(model.loss_fn, model.params, train_data).params if fit_to_optimum else run.params
    damping, eigen, lambda_min = 0.0, None, None
    if damping_margin is not None:
        choice = influence.damping_above_min_eigenvalue(model.loss_fn, params, train_data, margin=damping_margin)
        damping, eigen, lambda_min = choice.damping, choice.eigen, choice.lambda_min
    return Trained(params, run.checkpoints, learning_rate, damping, eigen, lambda_min)


def estimator_builders(
    model: Any,
    trained: Trained,
    train_data: Any,
    key: Any,
    *,
    cosine: bool = True,
    cg_num_iters: int,
    lissa_num_iters: int,
    arnoldi_k: int,
    trak_dim: int,
    trak_damping: float,
) -> dict[str, Callable[[], Any]]:
    """The estimators compared by the evaluation paper, as zero-argument builders.

    Builders (not estimators) so that `validation.compare` / `mislabel_aucs` can time each
    build: exact, cg, lissa, arnoldi with its flat tail and `arnoldi_top_k` (`tail="none"`), trak
    (output function: the classification margin), grad_dot, grad_cos and tracin.

    Args:
        model: the `workbench.models.Functional` (its `loss_fn`, the training objective, and
            `predict_fn`, for TRAK's margin).
        trained: the `Trained` of `train_for_attribution`: the params the estimators are built
            at, TracIn's checkpoints and learning rate, and the damping (and Hessian
            eigendecomposition, for exact) of the inverse-curvature estimators.
        train_data: pytree of arrays [n, ...], the training set.
        key: `jax.random` key seeding lissa, arnoldi and trak (each gets the same key).
        cosine: include grad_cos; False for self-influence (a cosine's is 1 for every example).
        cg_num_iters: most conjugate-gradient iterations per solve of cg.
        lissa_num_iters: terms of lissa's Neumann series.
        arnoldi_k: eigenpairs kept by arnoldi and arnoldi_top_k.
        trak_dim: sketch dimension D of trak.
        trak_damping: damping of trak's sketched Gauss-Newton matrix.

    Returns:
        dict estimator name -> zero-argument function building that `Estimator`.
    """
    loss_fn, params, damping, eigen = model.loss_fn, trained.params, trained.damping, trained.eigen
    checkpoints, learning_rate = trained.checkpoints, trained.learning_rate
    margin = influence.margin_output(model.predict_fn)  # TRAK's output function
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
