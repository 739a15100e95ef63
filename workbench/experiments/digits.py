"""Recipes on scikit-learn's digits: fit a classifier, fit the tour's MLP, and the untrained
model's accuracy (the control of a trained one)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from workbench.core.numerics import check_positive_int
from workbench.data import load_digits
from workbench.models import MLP, accuracy, functional
from workbench.train import TrainResult, train

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


class Fit(NamedTuple):
    """A trained classifier: its functional form, the training result, and test accuracy."""

    model: Any
    result: TrainResult
    test_accuracy: float


def fit_classifier(
    model_fn: Callable,
    train_data: Any,
    test_data: Any,
    *,
    learning_rate: float,
    num_steps: int,
    seed: int = 0,
    batch_size: int | None = 128,
    l2: float = 0.0,
    optimizer_name: str = "adam",
    progress: bool = True,
) -> Fit:
    """Train `model_fn()` (an NNX classifier) with cross-entropy; the recipe notebooks share.

    Args:
        model_fn: `model_fn() -> nnx.Module`, a fresh classifier (its own `nnx.Rngs` inside).
        train_data: the training `Dataset` (integer labels).
        test_data: the `Dataset` the test accuracy is measured on.
        learning_rate: the optimizer's step size (> 0).
        num_steps: optimisation steps.
        seed: the seed of the minibatch order key (`jax.random.key(seed)`).
        batch_size: examples per step; None trains full-batch.
        l2: the L2 coefficient of the objective.
        optimizer_name: "adam" or "sgd".
        progress: show a progress bar.

    Returns:
        A `Fit(model, result, test_accuracy)`: the `Functional`, the `TrainResult`, the accuracy.

    Raises:
        ValueError: an unknown optimizer or a non-positive learning rate.
    """
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"optimizer_name must be one of {sorted(OPTIMIZERS)}, got {optimizer_name!r}")
    if learning_rate <= 0 or not math.isfinite(learning_rate):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate}")
    f = functional(model_fn(), l2=l2)
    result = train(
        f.loss_fn, f.params, train_data, jax.random.key(seed),
        optimizer=OPTIMIZERS[optimizer_name](learning_rate), num_steps=num_steps,
        batch_size=batch_size, progress=progress,
    )
    return Fit(f, result, accuracy(f.predict_fn, result.params, test_data))


def fit_digits_mlp(
    hidden_size: int = 32,
    learning_rate: float = 1e-2,
    num_steps: int = 500,
    seed: int = 0,
    batch_size: int | None = 128,
    progress: bool = True,
) -> Fit:
    """Train a one-hidden-layer tanh MLP on the digits split of `seed` (the tour's experiment).

    Args:
        hidden_size: the width of the hidden layer.
        learning_rate: Adam's step size.
        num_steps: optimisation steps.
        seed: the seed of the split, the initialisation and the minibatch order.
        batch_size: examples per step; None trains full-batch.
        progress: show a progress bar.

    Returns:
        A `Fit(model, result, test_accuracy)`.
    """
    check_positive_int("hidden_size", hidden_size)
    train_data, test_data = load_digits(seed=seed)
    return fit_classifier(
        lambda: MLP(64, [hidden_size], 10, rngs=nnx.Rngs(seed)), train_data, test_data,
        learning_rate=learning_rate, num_steps=num_steps, seed=seed, batch_size=batch_size,
        progress=progress,
    )


def untrained_test_accuracy(fit: Fit, seed: int = 0) -> float:
    """The test accuracy of `fit`'s model at its initialisation, before any step: the control a
    trained model's accuracy is compared with (about 1 / 10 on digits, chance level).

    Args:
        fit: a `Fit` from `fit_digits_mlp` (its `model.params` are the initial params).
        seed: the seed of the digits split `fit` was trained on (its test part is measured).

    Returns:
        The accuracy in [0, 1], as a Python float.
    """
    _, test_data = load_digits(seed=seed)
    return accuracy(fit.model.predict_fn, fit.model.params, test_data)
