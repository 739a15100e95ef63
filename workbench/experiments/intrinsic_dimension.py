"""Recipes of the `intrinsic_dimension` paper: the digits classifiers (an MLP and logistic
regression) trained in random subspaces, as a grid sweep (Li et al. 2018) and as Schioppa (2024)'s
doubling search, and the paper's recorded metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from workbench import data as wd
from workbench import models
from workbench import sketch as sk

MODELS = ("mlp", "logistic")


def digits_model(model: str = "mlp", *, seed: int = 0, hidden_size: int = 32) -> models.Functional:
    """A freshly initialised digits classifier (64 inputs, 10 classes) as a `Functional`.

    Args:
        model: "mlp" (64-hidden_size-10) or "logistic" (64-10 logistic regression).
        seed: initialisation seed (`nnx.Rngs(seed)`).
        hidden_size: the MLP's hidden width (ignored for "logistic").

    Returns:
        The model's `Functional` (params, loss_fn, predict_fn).

    Raises:
        ValueError: `model` is not one of `MODELS`.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    net = (models.MLP(64, [hidden_size], 10, rngs=nnx.Rngs(seed)) if model == "mlp"
           else models.LogisticRegression(64, 10, rngs=nnx.Rngs(seed)))
    return models.functional(net)


def digits_accuracy(fn: models.Functional):
    """`metric_fn(params, data) -> test accuracy` of a digits classifier (argmax of the logits).

    Args:
        fn: the classifier's `Functional`.

    Returns:
        A function (params, (x, y)) -> scalar accuracy in [0, 1].
    """
    def accuracy(params, data):
        x, y = data
        return jnp.mean((jnp.argmax(fn.predict_fn(params, x), -1) == y).astype(jnp.float32))

    return accuracy


def digits_intrinsic_sweep(model: str = "mlp", *, dims: Sequence[int], seed: int = 0, hidden_size: int = 32,
                           num_steps: int = 300, learning_rate: float = 0.03,
                           kind: str = "dense") -> sk.IntrinsicSweepResult:
    """Li et al.'s sweep on digits: test accuracy after full-batch Adam in each subspace d of `dims`.

    Args:
        model: "mlp" or "logistic" (`digits_model`).
        dims: subspace dimensions d.
        seed: data split, initialisation and subspace seed (the key is `jax.random.key(seed)`).
        hidden_size: the MLP's hidden width.
        num_steps: Adam steps per subspace and for the full model.
        learning_rate: Adam's step size.
        kind: sketch kind of the subspace (`workbench.sketch.intrinsic.SWEEP_KINDS`).

    Returns:
        `workbench.sketch.intrinsic_sweep`'s `IntrinsicSweepResult`.
    """
    train_data, test_data = wd.load_digits(seed=seed)
    fn = digits_model(model, seed=seed, hidden_size=hidden_size)
    return sk.intrinsic_sweep(fn.loss_fn, fn.params, train_data, test_data, jax.random.key(seed), dims,
                              predict_fn=fn.predict_fn, num_steps=num_steps,
                              optimizer=optax.adam(learning_rate), kind=kind)


def digits_intrinsic_search(model: str = "mlp", *, seed: int = 0, hidden_size: int = 32, learning_rate: float = 0.03,
                            kind: str = "affd", d_start: int = 8, check_every: int = 50, min_improvement: float = 0.001,
                            max_steps: int = 3000, full_steps: int = 300) -> sk.IntrinsicSearchResult:
    """The paper's doubling search for a digits classifier, with test accuracy as the metric.

    Args:
        model: "mlp" or "logistic" (`digits_model`).
        seed: data split, initialisation and search seed.
        hidden_size: the MLP's hidden width.
        learning_rate: Adam's step size (the search and the full model).
        kind: sketch kind (`workbench.sketch.intrinsic.NESTED_KINDS`; the paper's affd).
        d_start: the first subspace dimension.
        check_every: steps between checks (the paper's c).
        min_improvement: a smaller accuracy gain between checks doubles d (the paper's delta).
        max_steps: the search's step budget.
        full_steps: Adam steps for the full model that sets the threshold.

    Returns:
        `workbench.sketch.intrinsic_search`'s `IntrinsicSearchResult`.
    """
    train_data, test_data = wd.load_digits(seed=seed)
    fn = digits_model(model, seed=seed, hidden_size=hidden_size)
    return sk.intrinsic_search(fn.loss_fn, fn.params, train_data, test_data, jax.random.key(seed),
                               metric_fn=digits_accuracy(fn), d_start=d_start, check_every=check_every,
                               min_improvement=min_improvement, max_steps=max_steps,
                               optimizer=optax.adam(learning_rate), kind=kind, full_steps=full_steps)


def sweep_metrics(sweeps: Mapping[str, sk.IntrinsicSweepResult]) -> dict[str, Any]:
    """The sweep's recorded metrics: d_int90, full-model accuracy and parameter count per model.

    Args:
        sweeps: model name -> its `IntrinsicSweepResult`.

    Returns:
        A dict for `workbench.record`: `d_int90_<name>`, `full_accuracy_<name>`, `num_params_<name>`.
    """
    return {
        **{f"d_int90_{name}": r.d_int90 for name, r in sweeps.items()},
        **{f"full_accuracy_{name}": r.full_accuracy for name, r in sweeps.items()},
        **{f"num_params_{name}": r.num_params for name, r in sweeps.items()},
    }


def search_metrics(searches: Mapping[str, sk.IntrinsicSearchResult],
                   sweeps: Mapping[str, sk.IntrinsicSweepResult]) -> dict[str, Any]:
    """The doubling search's recorded metrics, and how its D* compares with the sweep's d_int90.

    `search_reached_<name>` is 1.0 when the search crossed the threshold within its budget (a
    search that never reaches it, e.g. with a broken subspace map, records 0.0 and fails the
    claim); `search_over_sweep_mlp` is D* / d_int90 for the MLP (-1.0 when either is missing):
    D* is a power of two, so it matches the sweep's grid value only within a factor of two.

    Args:
        searches: model name -> its `IntrinsicSearchResult`.
        sweeps: model name -> its `IntrinsicSweepResult` (needs "mlp").

    Returns:
        A dict for `workbench.record`: `search_d_star_<name>`, `search_reached_<name>`,
        `search_steps_<name>`, `search_confirm_metric_<name>` and `search_over_sweep_mlp`.
    """
    d_star, d_int90 = searches["mlp"].d_star, sweeps["mlp"].d_int90
    return {
        **{f"search_d_star_{name}": r.d_star for name, r in searches.items()},
        **{f"search_reached_{name}": float(r.d_star is not None) for name, r in searches.items()},
        **{f"search_steps_{name}": r.steps for name, r in searches.items()},
        **{f"search_confirm_metric_{name}": r.confirm_metric for name, r in searches.items()},
        "search_over_sweep_mlp": d_star / d_int90 if d_star and d_int90 else -1.0,
    }
