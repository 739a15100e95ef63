"""Recipes of the `intrinsic_dimension` paper: the digits classifiers (an MLP and logistic
regression) trained in random subspaces, as a grid sweep (Li et al. 2018) and as Schioppa (2024)'s
doubling search, and the paper's recorded metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


def untrained_accuracy(model: str = "mlp", *, seed: int = 0, hidden_size: int = 32) -> float:
    """Test accuracy of a digits classifier at its initialisation theta_0 (no training: d = 0).

    Args:
        model: "mlp" or "logistic" (`digits_model`).
        seed: data split and initialisation seed (as in `digits_intrinsic_sweep`).
        hidden_size: the MLP's hidden width.

    Returns:
        The accuracy of theta_0 on the test split.
    """
    _, test_data = wd.load_digits(seed=seed)
    fn = digits_model(model, seed=seed, hidden_size=hidden_size)
    return float(digits_accuracy(fn)(fn.params, (test_data.x, test_data.y)))


def accuracy_fraction_at(sweep: sk.IntrinsicSweepResult, max_fraction: float) -> tuple[int, float]:
    """The largest swept d with d <= max_fraction * n, and its test accuracy over the full model's.

    Args:
        sweep: an `IntrinsicSweepResult`.
        max_fraction: the largest share of the parameter count n that d may take.

    Returns:
        (d, accuracy(d) / full accuracy).

    Raises:
        ValueError: no swept d is that small.
    """
    dims = np.asarray(sweep.dims)
    ok = np.flatnonzero(dims <= max_fraction * sweep.num_params)
    if not ok.size:
        raise ValueError(f"max_fraction={max_fraction}: no swept d is <= {max_fraction * sweep.num_params:.0f}")
    i = ok[np.argmax(dims[ok])]
    return int(dims[i]), float(sweep.accuracy[i] / sweep.full_accuracy)


def sweep_metrics(sweeps: Mapping[str, sk.IntrinsicSweepResult], untrained: Mapping[str, float] | None = None,
                  max_fraction: float = 0.15) -> dict[str, Any]:
    """The sweep's recorded metrics: d_int90, full-model accuracy and parameter count per model,
    and the claims that d_int90 is far below n and does not grow with n.

    Li et al.'s findings as relative metrics: `accuracy_fraction_<name>` is the accuracy at the
    largest swept d <= `max_fraction` * n over the full model's (above 0.9 when d_int90 is that
    small); `d_int90_mlp_over_logistic` compares the MLP with logistic regression, ~4x fewer
    parameters for the same task (None when either never reached 90%). Their controls:
    `control_untrained_accuracy_fraction_<name>` (theta_0, i.e. d = 0),
    `control_smallest_dim_accuracy_fraction_<name>` (the smallest swept d) and
    `control_num_params_mlp_over_logistic` (what a d_int proportional to n would give).

    Args:
        sweeps: model name -> its `IntrinsicSweepResult` ("mlp" and "logistic" for the ratios).
        untrained: model name -> accuracy of theta_0 (`untrained_accuracy`); None: not recorded.
        max_fraction: the share of n at which the accuracy fraction is read.

    Returns:
        A dict for `workbench.record`: `d_int90_<name>`, `full_accuracy_<name>`,
        `num_params_<name>`, `accuracy_fraction_dim_<name>` (the d read), `accuracy_fraction_<name>`,
        the controls above and, with both models, `d_int90_mlp_over_logistic`.
    """
    out = {
        **{f"d_int90_{name}": r.d_int90 for name, r in sweeps.items()},
        **{f"full_accuracy_{name}": r.full_accuracy for name, r in sweeps.items()},
        **{f"num_params_{name}": r.num_params for name, r in sweeps.items()},
    }
    for name, r in sweeps.items():
        out[f"accuracy_fraction_dim_{name}"], out[f"accuracy_fraction_{name}"] = accuracy_fraction_at(r, max_fraction)
        smallest = int(np.argmin(np.asarray(r.dims)))
        out[f"control_smallest_dim_accuracy_fraction_{name}"] = float(r.accuracy[smallest] / r.full_accuracy)
        if untrained is not None:
            out[f"control_untrained_accuracy_fraction_{name}"] = float(untrained[name] / r.full_accuracy)
    if {"mlp", "logistic"} <= set(sweeps):
        mlp, logistic = sweeps["mlp"], sweeps["logistic"]
        out["d_int90_mlp_over_logistic"] = (mlp.d_int90 / logistic.d_int90 if mlp.d_int90 and logistic.d_int90
                                            else None)
        out["control_num_params_mlp_over_logistic"] = mlp.num_params / logistic.num_params
    return out


def search_metrics(searches: Mapping[str, sk.IntrinsicSearchResult],
                   sweeps: Mapping[str, sk.IntrinsicSweepResult]) -> dict[str, Any]:
    """The doubling search's recorded metrics, and how its D* compares with the sweep's d_int90.

    `search_d_star_fraction_<name>` is D* / n (None when the search never crossed the threshold
    within its budget: censored, so a claim on it fails); `search_over_sweep_mlp` is D* / d_int90
    for the MLP (None when either is missing): D* is a power of two, so it matches the sweep's grid
    value only within a factor of two.

    Args:
        searches: model name -> its `IntrinsicSearchResult`.
        sweeps: model name -> its `IntrinsicSweepResult` (needs "mlp").

    Returns:
        A dict for `workbench.record`: `search_d_star_<name>`, `search_d_star_fraction_<name>`,
        `search_steps_<name>`, `search_confirm_metric_<name>` and `search_over_sweep_mlp`.
    """
    d_star, d_int90 = searches["mlp"].d_star, sweeps["mlp"].d_int90
    return {
        **{f"search_d_star_{name}": r.d_star for name, r in searches.items()},
        **{f"search_d_star_fraction_{name}": r.d_star / r.num_params if r.d_star else None
           for name, r in searches.items()},
        **{f"search_steps_{name}": r.steps for name, r in searches.items()},
        **{f"search_confirm_metric_{name}": r.confirm_metric for name, r in searches.items()},
        "search_over_sweep_mlp": d_star / d_int90 if d_star and d_int90 else None,
    }
