"""Ground truths by real retraining: leave-one-out, the linear datamodeling score, mislabels.

Conventions match the estimators': an estimator's score > 0 says removing the training example
raises the test measurement (the test loss by default). Removing z_i and retraining on the
other n - 1 examples changes it by about score / (n - 1) for the exact influence function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import num_examples
from workbench.core.statistics import Correlations, correlations, spearman_rows
from workbench.data import Dataset
from workbench.influence.estimator import check_like_training
from workbench.influence.validation.retraining import outputs, retrain


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
    """Leave-one-out by retraining (warm-started at `params`, which should be the optimum).

    `measure_fn(params, batch)` is what is attributed (default: loss_fn on the test example).
    """
    n = num_examples(train_data, "train_data")
    check_like_training(test_data, train_data, "test_data")
    removed = np.asarray(removed, dtype=np.int64)
    if removed.ndim != 1 or removed.size == 0 or removed.min() < 0 or removed.max() >= n:
        raise ValueError(f"removed must be a non-empty 1-d array of indices in [0, {n}), got {removed!r}")
    measure_fn = measure_fn or loss_fn
    dtype = jax.tree.leaves(params)[0].dtype
    weights = 1.0 - jax.nn.one_hot(jnp.asarray(removed), n, dtype=dtype)
    result = retrain(loss_fn, params, train_data, weights, **retrain_options)
    base = outputs(measure_fn, jax.tree.map(lambda a: a[None], params), test_data)[0]
    after = outputs(measure_fn, result.params, test_data)
    return LOOResult(removed, np.asarray(after - base[None]).T, np.asarray(result.grad_norm), n)


def loo_correlation(scores, result: LOOResult) -> Correlations:
    """Pearson / Spearman between predicted (scores / (n-1)) and actual leave-one-out effects."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != result.num_train or scores.shape[0] != result.actual.shape[0]:
        raise ValueError(
            f"scores must have shape [n_test={result.actual.shape[0]}, n_train={result.num_train}], "
            f"got {scores.shape}"
        )
    predicted = scores[:, result.removed] / (result.num_train - 1)
    return correlations(predicted, result.actual)


class LDSGroundTruth(NamedTuple):
    masks: np.ndarray  # [M, n_train] bool, the training subsets
    outputs: np.ndarray  # [M, n_test] measure of the model trained on each subset
    grad_norm: np.ndarray  # [M]


def lds_ground_truth(loss_fn: Callable, params, train_data, test_data, key: jax.Array, *,
                     num_subsets: int = 50, fraction: float = 0.5,
                     measure_fn: Callable | None = None, **retrain_options) -> LDSGroundTruth:
    """Train one model per random subset of round(fraction * n) examples (starting at `params`)."""
    n = num_examples(train_data, "train_data")
    check_like_training(test_data, train_data, "test_data")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    if num_subsets < 2:
        raise ValueError(f"num_subsets must be >= 2, got {num_subsets}")
    size = max(1, int(round(fraction * n)))
    keys = jax.random.split(key, num_subsets)
    masks = jax.vmap(lambda k: jnp.zeros(n, bool).at[jax.random.permutation(k, n)[:size]].set(True))(keys)
    dtype = jax.tree.leaves(params)[0].dtype
    result = retrain(loss_fn, params, train_data, masks.astype(dtype), **retrain_options)
    outs = outputs(measure_fn or loss_fn, result.params, test_data)
    return LDSGroundTruth(np.asarray(masks), np.asarray(outs), np.asarray(result.grad_norm))


class LDSResult(NamedTuple):
    mean: float
    per_test: np.ndarray  # [n_test] Spearman per test point


def lds(scores, truth: LDSGroundTruth) -> LDSResult:
    """Linear datamodeling score (Park et al. 2023): Spearman, per test point, between the summed
    scores of each subset and the (negated) measure of the model trained on it, averaged.

    The negation follows the sign convention: a subset of helpful examples lowers the test loss.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != truth.masks.shape[1]:
        raise ValueError(f"scores must have shape [n_test, n_train={truth.masks.shape[1]}], got {scores.shape}")
    predicted = scores @ truth.masks.T.astype(np.float64)  # [n_test, M]
    per_test = spearman_rows(predicted, -truth.outputs.T)
    return LDSResult(float(np.nanmean(per_test)), per_test)


def flip_labels(key: jax.Array, data: Dataset, fraction: float, num_classes: int) -> tuple[Dataset, np.ndarray]:
    """Give round(fraction * n) random examples a different, uniformly drawn label.

    Returns the noisy dataset and the boolean mask of flipped examples.
    """
    n = num_examples(data, "data")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    k_idx, k_shift = jax.random.split(key)
    idx = jax.random.permutation(k_idx, n)[: max(1, int(round(fraction * n)))]
    shift = jax.random.randint(k_shift, idx.shape, 1, num_classes).astype(data.y.dtype)
    y = data.y.at[idx].set((data.y[idx] + shift) % num_classes)
    flipped = np.zeros(n, bool)
    flipped[np.asarray(idx)] = True
    return Dataset(data.x, y), flipped


def loo_summary(estimates: dict, result: LOOResult) -> dict[str, Correlations]:
    """loo_correlation for several estimators' scores at once: {name: {...}}."""
    return {name: loo_correlation(s, result) for name, s in estimates.items()}


__all__ = ["LDSGroundTruth", "LDSResult", "LOOResult", "correlations", "flip_labels", "lds",
           "lds_ground_truth", "loo", "loo_correlation", "loo_summary"]
