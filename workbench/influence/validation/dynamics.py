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

from workbench.core.numerics import num_examples
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
    if batch_size is None or batch_size >= n:
        return jnp.tile(jnp.arange(n), (num_steps, 1))
    return batch_indices(key, n, batch_size, num_steps)


class CorrectionResult(NamedTuple):
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
    test_data,
    scores,
    key: jax.Array,
    *,
    k: int = 10,
    num_steps: int = 10,
    learning_rate: float = 0.5,
    weight: float = 0.0,
    max_points: int = 64,
) -> CorrectionResult:
    """For each mispredicted test point, fine-tune `num_steps` full-batch SGD steps from `params` with
    its k most harmful training examples (most negative `scores` row) re-weighted to `weight`
    (0 removes them, negative unlearns them), and separately with k random examples re-weighted
    the same way. Reports the fraction fixed and the accuracy lost on the other test points.
    """
    n = num_examples(train_data, "train_data")
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
    opt = optax.sgd(learning_rate)
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
    steps: np.ndarray  # [T] training steps after the removal
    pearson: np.ndarray  # [T] predicted vs actual effect, per test point, averaged
    spearman: np.ndarray  # [T]
    divergence: np.ndarray  # [T] mean ||params without i - params with all||
    actual: np.ndarray  # [T, n_test, k] actual change of the test measure


def fading(
    loss_fn: Callable,
    params,
    train_data,
    test_data,
    removed,
    predicted,
    key: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int = 500,
    record_every: int = 50,
    batch_size: int | None = 64,
    measure_fn: Callable | None = None,
) -> FadingResult:
    """Continue training from `params` on all the data and, in parallel, without each example of
    `removed` (same minibatches, the removed example weighted 0), and compare the actual change of
    the test measure with `predicted` [n_test, k] (e.g. scores[:, removed]) every `record_every`
    steps. Returns the correlation curve and the parameter divergence over training time.
    """
    n = num_examples(train_data, "train_data")
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
    pear = np.array([np.nanmean(pearson_rows(predicted, a)) for a in actual])
    spear = np.array([np.nanmean(spearman_rows(predicted, a)) for a in actual])
    times = np.arange(1, num_steps // record_every + 1) * record_every
    return FadingResult(times, pear, spear, divergence, actual)
