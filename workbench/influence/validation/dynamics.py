"""The two findings of Schioppa et al. 2023, "Theoretical and Practical Perspectives on what
Influence Functions Do": mispredictions can be corrected by a few fine-tuning steps that drop
the most influential (harmful) training examples, and the influence of a removal fades as
training goes on after it (the two runs' parameters diverge).

Both fine-tune many models at once: one weight vector over the training set per model, vmapped,
with the minibatch weighted loss  sum_{j in batch} w_j loss_fn(params, z_j) / |batch|.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from workbench.core.numerics import check_positive_int, num_examples
from workbench.core.per_example import per_example_losses
from workbench.core.statistics import pearson_rows, spearman_rows
from workbench.influence.estimator import check_like_training
from workbench.influence.validation.retraining import outputs
from workbench.train import batch_indices, step


def _weighted_minibatch_loss(loss_fn, unravel, data, weights):
    """(flat params, minibatch indices) -> sum_{j in batch} w_j loss(z_j) / |batch|."""

    def loss(flat, idx):
        batch = jax.tree.map(lambda a: a[idx], data)
        per = per_example_losses(loss_fn, unravel(flat), batch)
        return jnp.sum(weights[idx] * per) / idx.shape[0]

    return loss


@functools.partial(jax.jit, static_argnums=(0, 4, 6))
def _trajectories(loss_fn, params, data, weights, optimizer, batch_idx, record_every):
    """Train from params for every row of weights with the batches batch_idx [T * r, B];
    return flat params every `record_every` steps, [T, M, p]."""
    flat0, unravel = ravel_pytree(params)
    blocks = batch_idx.reshape(-1, record_every, batch_idx.shape[1])

    def run(w):
        loss = _weighted_minibatch_loss(loss_fn, unravel, data, w)

        def one_step(carry, idx):
            flat, state, _ = step(loss, optimizer, *carry, idx)
            return (flat, state), None

        def block(carry, idxs):
            carry, _ = jax.lax.scan(one_step, carry, idxs)
            return carry, carry[0]

        _, flats = jax.lax.scan(block, (flat0, optimizer.init(flat0)), blocks)
        return flats

    return jnp.swapaxes(jax.vmap(run)(weights), 0, 1)


def _batches(key, n, batch_size, num_steps):
    """Minibatch indices [num_steps, B] (the whole set every step when batch_size is None or >= n)."""
    if batch_size is None or batch_size >= n:
        return jnp.tile(jnp.arange(n), (num_steps, 1))
    return batch_indices(key, n, batch_size, num_steps)


@functools.lru_cache(maxsize=32)
def _sgd(learning_rate: float) -> optax.GradientTransformation:
    """optax.sgd(learning_rate), the same object for the same step size (a static argument of the
    jitted `_trajectories`, so repeated corrections reuse its compiled program)."""
    return optax.sgd(learning_rate)


class CorrectionResult(NamedTuple):
    """Mispredictions fixed by dropping the most harmful examples, against random ones."""

    mispredicted: np.ndarray  # [m] test indices that were wrong before fine-tuning
    fixed: np.ndarray  # [m] bool: right after dropping the k most harmful examples
    fixed_random: np.ndarray  # [m] bool: right after dropping k random examples instead
    fix_rate: float
    fix_rate_random: float
    damage: float  # mean drop in accuracy on the other test points (influential removal)
    damage_random: float


def correct_mispredictions(
    loss_fn: Callable,
    predict_fn: Callable,
    params,
    train_data,
    key: jax.Array,
    test_data,
    scores,
    *,
    k: int = 10,
    num_steps: int = 10,
    learning_rate: float = 0.5,
    weight: float = 0.0,
    max_points: int = 64,
) -> CorrectionResult:
    """Fine-tune away each misprediction by re-weighting its k most harmful training examples.

    For each mispredicted test point (up to `max_points`), fine-tune `num_steps` full-batch SGD
    steps from `params` with its k most harmful training examples (most negative `scores` row)
    re-weighted to `weight` (0 removes them, negative unlearns them), and separately with k
    random examples re-weighted the same way (the control). All fine-tunings run at once,
    vmapped, on the minibatch loss sum_j w_j loss_fn(params, z_j) / n.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective, a mean over the batch.
        predict_fn: `predict_fn(params, x) -> logits [n, num_classes]`.
        params: pytree, the trained model.
        train_data: `(x, y)` pytree [n, ...], the training set.
        key: `jax.random` key drawing the k random training examples of the control, one draw
            per mispredicted test point.
        test_data: `(x, y)` like `train_data`, [n_test, ...], with integer labels y.
        scores: array [n_test, n_train] of influence scores (sign convention of
            `workbench.influence`: negative = harmful).
        k: training examples re-weighted per test point, in [1, n_train).
        num_steps: full-batch SGD fine-tuning steps.
        learning_rate: SGD step size.
        weight: the new weight of the selected examples (1 is the unchanged objective).
        max_points: most mispredicted test points corrected (the first ones, in test order).

    Returns:
        `CorrectionResult(mispredicted [m], fixed [m], fixed_random [m], fix_rate,
        fix_rate_random, damage, damage_random)`: damage is the mean accuracy lost on the other
        test points (negative: they improved).

    Raises:
        ValueError: if `scores` is not [n_test, n_train], k is outside [1, n_train), or the model
            predicts every test point correctly.
    """
    n = num_examples(train_data, "train_data")
    k = check_positive_int("k", k)
    num_steps = check_positive_int("num_steps", num_steps)
    max_points = check_positive_int("max_points", max_points)
    n_test = check_like_training(test_data, train_data, "test_data")
    scores = np.asarray(scores)
    if scores.shape != (n_test, n):
        raise ValueError(f"scores must have shape [n_test={n_test}, n_train={n}], got {scores.shape}")
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, n_train), got {k}")
    x, y = test_data
    correct = np.asarray(jnp.argmax(predict_fn(params, x), -1).astype(y.dtype) == y)
    wrong = np.flatnonzero(~correct)[:max_points]
    if wrong.size == 0:
        raise ValueError("the model predicts every test point correctly; nothing to correct")
    harmful = np.argsort(scores[wrong], axis=1)[:, :k]
    keys = jax.random.split(key, wrong.size)
    rand = np.asarray(jax.vmap(lambda kk: jax.random.permutation(kk, n)[:k])(keys))
    dtype = jax.tree.leaves(params)[0].dtype

    def weights_for(sets):
        w = np.ones((sets.shape[0], n))
        np.put_along_axis(w, sets, weight, axis=1)
        return jnp.asarray(w, dtype)

    full = _batches(None, n, None, num_steps)
    opt = _sgd(float(learning_rate))  # one optimizer object per step size: `_trajectories` compiles once for it
    results = {}
    _, unravel = ravel_pytree(params)
    for name, sets in (("influence", harmful), ("random", rand)):
        flats = _trajectories(loss_fn, params, train_data, weights_for(sets), opt, full, num_steps)[-1]
        preds = jax.vmap(lambda f: jnp.argmax(predict_fn(unravel(f), x), -1).astype(y.dtype))(flats)  # [m, n_test]
        right = np.asarray(preds == y[None])
        fixed = right[np.arange(wrong.size), wrong]
        others = np.ones_like(right, dtype=bool)
        others[np.arange(wrong.size), wrong] = False
        before = np.array([correct[o].mean() for o in others])
        after = np.array([right[i][others[i]].mean() for i in range(wrong.size)])
        results[name] = (fixed, float(np.mean(before - after)))
    return CorrectionResult(
        wrong, results["influence"][0], results["random"][0], float(results["influence"][0].mean()),
        float(results["random"][0].mean()), results["influence"][1], results["random"][1],
    )


class FadingResult(NamedTuple):
    """Predicted against actual effects of removals as training continues after them."""

    steps: np.ndarray  # [T] training steps after the removal
    pearson: np.ndarray  # [T] predicted vs actual effect, per test point, averaged
    spearman: np.ndarray  # [T]
    divergence: np.ndarray  # [T] mean ||params without i - params with all||
    actual: np.ndarray  # [T, n_test, k] actual change of the test measure


def fading(
    loss_fn: Callable,
    params,
    train_data,
    key: jax.Array,
    test_data,
    removed,
    predicted,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int = 500,
    record_every: int = 50,
    batch_size: int | None = 64,
    measure_fn: Callable | None = None,
) -> FadingResult:
    """How the influence of a removal fades as training continues after it.

    Continue training from `params` on all the data and, in parallel, without each example of
    `removed` (same minibatches, the removed example weighted 0), and compare the actual change of
    the test measure with `predicted` every `record_every` steps (`fading_correlations`), along
    with how far the two runs' parameters drift apart.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the training objective, a mean over the batch.
        params: pytree, the point of removal (where `predicted` was computed).
        train_data: pytree of arrays [n, ...], the training set.
        key: `jax.random` key drawing the minibatches (shared by every run).
        test_data: pytree like `train_data`, [n_test, ...].
        removed: int array [k] of training indices, each removed in its own run.
        predicted: array [n_test, k], the predicted effects of the removals (e.g.
            `predicted_loo_effects(scores, removed)`).
        optimizer: optax `GradientTransformation` of the continued training.
        num_steps: optimisation steps after the removal, a multiple of `record_every`.
        record_every: steps between two comparisons.
        batch_size: minibatch size; None (or >= n) means full-batch steps.
        measure_fn: what is measured on the test points; None means `loss_fn`.

    Returns:
        `FadingResult(steps [T], pearson [T], spearman [T], divergence [T], actual [T, n_test, k])`
        with T = num_steps / record_every.

    Raises:
        ValueError: if `predicted` is not [n_test, k] or `num_steps` is not a multiple of
            `record_every`.
    """
    n = num_examples(train_data, "train_data")
    num_steps = check_positive_int("num_steps", num_steps)
    record_every = check_positive_int("record_every", record_every)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    check_like_training(test_data, train_data, "test_data")
    removed = np.asarray(removed)
    predicted = np.asarray(predicted)
    if predicted.shape[1:] != removed.shape or removed.ndim != 1:
        raise ValueError(f"predicted must have shape [n_test, {removed.size}], got {predicted.shape}")
    if num_steps % record_every:
        raise ValueError(f"num_steps={num_steps} must be a multiple of record_every={record_every}")
    dtype = jax.tree.leaves(params)[0].dtype
    weights = jnp.concatenate([jnp.ones((1, n), dtype),
                               1.0 - jax.nn.one_hot(jnp.asarray(removed), n, dtype=dtype)])
    idx = _batches(key, n, batch_size, num_steps)
    flats = _trajectories(loss_fn, params, train_data, weights, optimizer, idx, record_every)  # [T, M, p]
    _, unravel = ravel_pytree(params)
    measure = measure_fn or loss_fn
    outs = np.stack([np.asarray(outputs(measure, jax.vmap(unravel)(f), test_data)) for f in flats])  # [T, M, n_test]
    actual = np.transpose(outs[:, 1:] - outs[:, :1], (0, 2, 1))  # [T, n_test, k]
    divergence = np.asarray(jnp.linalg.norm(flats[:, 1:] - flats[:, :1], axis=-1).mean(axis=1))
    curve = fading_correlations(predicted, actual)
    times = np.arange(1, num_steps // record_every + 1) * record_every
    return FadingResult(times, curve.pearson, curve.spearman, divergence, actual)


class FadingCorrelations(NamedTuple):
    """Predicted against actual effects at each recorded time, per test point averaged."""

    pearson: np.ndarray  # [T]
    spearman: np.ndarray  # [T]


def fading_correlations(predicted, actual) -> FadingCorrelations:
    """Pearson and Spearman of fixed predictions against the actual effects at each time.

    At each time t, the correlation across the k removals of predicted[i] and actual[t, i] per
    test point i, averaged over the test points (constant rows skipped). Use it to score another
    estimator's predictions against a `FadingResult.actual`.

    Args:
        predicted: array [n_test, k] of predicted effects (any scale: correlations only).
        actual: array [T, n_test, k] of actual effects (`FadingResult.actual`).

    Returns:
        `FadingCorrelations(pearson [T], spearman [T])`.

    Raises:
        ValueError: if a time slice of `actual` does not have the shape of `predicted`.
    """
    pear = np.array([np.nanmean(pearson_rows(predicted, a)) for a in actual])
    spear = np.array([np.nanmean(spearman_rows(predicted, a)) for a in actual])
    return FadingCorrelations(pear, spear)


class FadingPeak(NamedTuple):
    """Where the fading curve peaks and where it ends."""

    peak_pearson: float  # the largest Pearson correlation over the recorded times
    peak_step: int  # the step after the removal where it is reached (the first, on ties)
    final_pearson: float  # the Pearson correlation at the last recorded step


def fading_peak(result: FadingResult) -> FadingPeak:
    """The peak and the final value of the Pearson curve of `fading`.

    Args:
        result: the `FadingResult` of `fading`.

    Returns:
        `FadingPeak(peak_pearson, peak_step, final_pearson)`; the finding "influence fades" is
        final_pearson well below peak_pearson.
    """
    peak = int(np.argmax(result.pearson))
    return FadingPeak(float(result.pearson[peak]), int(result.steps[peak]), float(result.pearson[-1]))
