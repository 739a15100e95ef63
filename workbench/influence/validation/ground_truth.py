"""Ground truths by real retraining: leave-one-out, the linear datamodeling score, mislabels.

Conventions match the estimators': an estimator's score > 0 says removing the training example
raises the test measurement (the test loss by default). Removing z_i and retraining on the
other n - 1 examples changes it by about score / (n - 1) for the exact influence function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from workbench.core.losses import as_loss
from workbench.core.numerics import check_positive_int, default_tol, num_examples
from workbench.core.statistics import Correlations, correlations, spearman_rows
from workbench.data import Dataset
from workbench.influence.estimator import check_like_training
from workbench.influence.validation.retraining import (
    fit,
    outputs,
    per_example_objective,
    retrain_weighted,
)


class LOOResult(NamedTuple):
    """Actual effects of removing each of `removed` and retraining, on each test point."""

    removed: np.ndarray  # [k] training indices
    actual: np.ndarray  # [n_test, k] measure(retrained without i) - measure(params)
    grad_norm: np.ndarray  # [k] gradient norm at the retrained params (convergence check)
    num_train: int


def loo(
    loss_fn: Callable,
    params,
    train_data,
    test_data,
    removed,
    *,
    measure_fn: Callable | None = None,
    **retrain_options,
) -> LOOResult:
    """Leave-one-out by retraining, warm-started at `params`.

    For each i in `removed` the model is retrained on the other n - 1 examples (weights
    1 - e_i, all removals at once by `retrain_weighted`) and the change of the test measure is
    recorded against the full-data model trained the same way:
    - method="newton" (the default): Newton-CG to a gradient norm below `tol`, for convex
      models and for non-convex ones of up to a few thousand parameters (an MLP warm-started at
      its trained params converges to the local minimum next to them). When `params` is not yet
      a stationary point of the full objective it is first refined by `fit` (same options), and
      the effects are measured from that refined model; every retraining must reach `tol`, or a
      RuntimeError names the gradient norm reached (never a number from an unconverged solve).
    - method="optax": `num_steps` steps of `optimizer` for each removal and once on the full data,
      the effects being the difference of the two (training "the same way"). This is the effect of
      removing i under that training budget, not of the leave-one-out optimum: when the gradient
      norm stays above `tol` a RuntimeWarning says so.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective (a mean over the
            batch, regulariser included), or a `models.Functional` (its objective; the default
            measure is then its data loss, as `influence.make` attributes).
        params: pytree, the trained model (the full-data optimum, e.g. from `fit`, or near it).
        train_data: pytree of arrays [n, ...], the training set.
        test_data: pytree like `train_data`, [n_test, ...].
        removed: int array [k] of training indices in [0, n), each removed on its own.
        measure_fn: `measure_fn(params, batch) -> scalar`, what is attributed; None means
            `loss_fn` on the test example (a Functional's data loss).
        **retrain_options: passed to `retrain_weighted` (`method`, `num_iters`, `tol`, ...).

    Returns:
        `LOOResult(removed, actual [n_test, k], grad_norm [k], num_train)`: actual is
        measure(retrained without i) - measure(full-data model).

    Raises:
        ValueError: if `removed` is empty, not 1-d, or holds an index outside [0, n).
        RuntimeError: method="newton" did not reach `tol` (the message names the gradient norm).
    """
    measure_fn = measure_fn or as_loss(loss_fn, role="data", caller="validation.loo")
    loss_fn = as_loss(loss_fn, role="objective", caller="validation.loo")
    n = num_examples(train_data, "train_data")
    check_like_training(test_data, train_data, "test_data")
    removed = np.asarray(removed, dtype=np.int64)
    if removed.ndim != 1 or removed.size == 0 or removed.min() < 0 or removed.max() >= n:
        raise ValueError(f"removed must be a non-empty 1-d array of indices in [0, {n}), got {removed!r}")
    measure_fn = measure_fn or loss_fn
    dtype = jax.tree.leaves(params)[0].dtype
    weights = 1.0 - jax.nn.one_hot(jnp.asarray(removed), n, dtype=dtype)
    method = retrain_options.get("method", "newton")
    tol = retrain_options.get("tol")
    tol = default_tol(dtype) if tol is None else float(tol)
    if method == "newton":
        objective = per_example_objective(loss_fn, train_data)
        full_grad = ravel_pytree(jax.grad(objective)(params, jnp.ones(n, dtype)))[0]
        if not float(jnp.linalg.norm(full_grad)) <= tol:  # not yet the optimum: the effects are measured from it
            fit_options = {k: v for k, v in retrain_options.items() if k in ("cg_num_iters", "damping")}
            params = fit(loss_fn, params, train_data, tol=tol, **fit_options).params
        result = retrain_weighted(loss_fn, params, train_data, weights, **retrain_options)
        reference = jax.tree.map(lambda a: a[None], params)
    else:
        result = retrain_weighted(loss_fn, params, train_data, jnp.concatenate([weights, jnp.ones((1, n), dtype)]),
                                  **retrain_options)
        reference = jax.tree.map(lambda a: a[-1:], result.params)
        worst = float(np.max(np.asarray(result.grad_norm)))
        if not worst <= tol:
            warnings.warn(
                f"loo ({method}): the retrained models stop at gradient norms up to {worst:.3g} (tol {tol:.3g}): "
                "the effects are those of this training budget, not of the leave-one-out optimum; "
                "method='newton' solves to tol", RuntimeWarning, stacklevel=2)
        result = result._replace(params=jax.tree.map(lambda a: a[:-1], result.params),
                                 grad_norm=result.grad_norm[:-1])
    base = outputs(measure_fn, reference, test_data)[0]
    after = outputs(measure_fn, result.params, test_data)
    return LOOResult(removed, np.asarray(after - base[None]).T, np.asarray(result.grad_norm), n)


def predicted_loo_effects(scores, removed) -> np.ndarray:
    """The leave-one-out effects an estimator predicts: scores[:, removed] / (n_train - 1).

    Removing z_i from the mean objective over n examples moves the optimum by about
    H^{-1} g_i / (n - 1), so the test measure changes by score / (n - 1).

    Args:
        scores: array [n_test, n_train] of influence scores.
        removed: int array [k] of training indices.

    Returns:
        float64 array [n_test, k], comparable with `LOOResult.actual`.

    Raises:
        ValueError: if `scores` is not 2-d.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [n_test, n_train], got {scores.shape}")
    return scores[:, np.asarray(removed)] / (scores.shape[1] - 1)


def loo_correlation(scores, result: LOOResult) -> Correlations:
    """Pearson / Spearman between predicted (scores / (n-1)) and actual leave-one-out effects.

    Args:
        scores: array [n_test, n_train] of influence scores on the test points of `result`.
        result: the `LOOResult` of `loo`.

    Returns:
        `Correlations` of `predicted_loo_effects(scores, result.removed)` against
        `result.actual` (per test point averaged, and pooled).

    Raises:
        ValueError: if `scores` does not have shape [n_test, n_train] of `result`.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != result.num_train or scores.shape[0] != result.actual.shape[0]:
        raise ValueError(
            f"scores must have shape [n_test={result.actual.shape[0]}, n_train={result.num_train}], "
            f"got {scores.shape}"
        )
    return correlations(predicted_loo_effects(scores, result.removed), result.actual)


class LDSGroundTruth(NamedTuple):
    """Models retrained on random subsets: the subsets and the test measure of each model."""

    masks: np.ndarray  # [M, n_train] bool, the training subsets
    outputs: np.ndarray  # [M, n_test] measure of the model trained on each subset
    grad_norm: np.ndarray  # [M]


def lds_ground_truth(loss_fn: Callable, params, train_data, key: jax.Array, test_data, *,
                     num_subsets: int = 50, fraction: float = 0.5,
                     measure_fn: Callable | None = None, **retrain_options) -> LDSGroundTruth:
    """Train one model per random subset of round(fraction * n) examples (starting at `params`).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective, or a
            `models.Functional` (its objective; the default measure is its data loss).
        params: pytree, where every retraining starts (the full-data optimum for "newton", the
            initialisation for method="optax").
        train_data: pytree of arrays [n, ...], the training set the subsets are drawn from.
        key: `jax.random` key drawing the subsets (one split per subset).
        test_data: pytree like `train_data`, [n_test, ...].
        num_subsets: M, the number of subsets (>= 2).
        fraction: share of the training set in each subset, in (0, 1).
        measure_fn: what is measured on the test points; None means `loss_fn`.
        **retrain_options: passed to `retrain_weighted`.

    Returns:
        `LDSGroundTruth(masks [M, n] bool, outputs [M, n_test], grad_norm [M])`.

    Raises:
        ValueError: if `fraction` is outside (0, 1) or `num_subsets` < 2.
    """
    measure_fn = measure_fn or as_loss(loss_fn, role="data", caller="validation.lds_ground_truth")
    loss_fn = as_loss(loss_fn, role="objective", caller="validation.lds_ground_truth")
    n = num_examples(train_data, "train_data")
    check_like_training(test_data, train_data, "test_data")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    num_subsets = check_positive_int("num_subsets", num_subsets, least=2)
    size = max(1, int(round(fraction * n)))
    keys = jax.random.split(key, num_subsets)
    masks = jax.vmap(lambda k: jnp.zeros(n, bool).at[jax.random.permutation(k, n)[:size]].set(True))(keys)
    dtype = jax.tree.leaves(params)[0].dtype
    result = retrain_weighted(loss_fn, params, train_data, masks.astype(dtype), **retrain_options)
    outs = outputs(measure_fn, result.params, test_data)
    return LDSGroundTruth(np.asarray(masks), np.asarray(outs), np.asarray(result.grad_norm))


class LDSResult(NamedTuple):
    """The linear datamodeling score: its mean and its value per test point."""

    mean: float
    per_test: np.ndarray  # [n_test] Spearman per test point


def lds(scores, truth: LDSGroundTruth) -> LDSResult:
    """Linear datamodeling score (Park et al. 2023): Spearman, per test point, between the summed
    scores of each subset and the (negated) measure of the model trained on it, averaged.

    The negation follows the sign convention: a subset of helpful examples lowers the test loss.

    Args:
        scores: array [n_test, n_train] of influence scores on the test points of `truth`.
        truth: the `LDSGroundTruth` of `lds_ground_truth`.

    Returns:
        `LDSResult(mean, per_test [n_test])`; 1 is a perfect ranking, 0 chance.

    Raises:
        ValueError: if `scores` does not have n_train columns.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != truth.masks.shape[1]:
        raise ValueError(f"scores must have shape [n_test, n_train={truth.masks.shape[1]}], got {scores.shape}")
    predicted = scores @ truth.masks.T.astype(np.float64)  # [n_test, M]
    per_test = spearman_rows(predicted, -truth.outputs.T)
    return LDSResult(float(np.nanmean(per_test)), per_test)


class FlippedLabels(NamedTuple):
    """A dataset with some labels flipped, and which ones."""

    data: Dataset
    flipped: np.ndarray  # [n] bool, True where the label was changed


def flip_labels(data: Dataset, key: jax.Array, fraction: float, num_classes: int) -> FlippedLabels:
    """Give round(fraction * n) random examples a different, uniformly drawn label.

    Args:
        data: `Dataset(x, y)` with integer labels y [n] in [0, num_classes).
        key: `jax.random` key choosing the examples and their new labels.
        fraction: share of the examples whose label is flipped, in (0, 1) (at least one is).
        num_classes: number of classes (>= 2); a new label is never the old one.

    Returns:
        `FlippedLabels(data, flipped)`: the noisy dataset and the boolean mask [n] of flipped
        examples.

    Raises:
        ValueError: if `fraction` is outside (0, 1) or `num_classes` < 2.
    """
    n = num_examples(data, "data")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    num_classes = check_positive_int("num_classes", num_classes, least=2)
    k_idx, k_shift = jax.random.split(key)
    idx = jax.random.permutation(k_idx, n)[: max(1, int(round(fraction * n)))]
    shift = jax.random.randint(k_shift, idx.shape, 1, num_classes).astype(data.y.dtype)
    y = data.y.at[idx].set((data.y[idx] + shift) % num_classes)
    flipped = np.zeros(n, bool)
    flipped[np.asarray(idx)] = True
    return FlippedLabels(Dataset(data.x, y), flipped)


__all__ = ["FlippedLabels", "LDSGroundTruth", "LDSResult", "LOOResult", "flip_labels", "lds",
           "lds_ground_truth", "loo", "loo_correlation", "predicted_loo_effects"]
