"""Output matching: fine-tune a model to given outputs on the forget set and a retain sample,
with the outputs of a retrained oracle (oracle matching) or predicted from the model itself by
data attribution through `workbench.influence` (datamodel matching; Georgiev et al. 2025)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench import influence
from workbench.core.numerics import check_positive_int, num_examples
from workbench.train import optimize_streams
from workbench.unlearning.methods import (
    OPTIMIZERS,
    Unlearned,
    _dtype,
    _finish,
    _one,
    _optimizer,
    _positive,
    _steps,
    step_bucket,
)
from workbench.unlearning.sets import check_sets

PyTree = Any


def _mse(a, b):
    return 0.5 * jnp.mean(jnp.sum((a - b) ** 2, axis=-1))


@functools.partial(jax.jit, static_argnames=("predict_fn", "optimizer_name", "length", "batch_size"))
def _match(predict_fn, optimizer_name, length, batch_size, params, x, targets, key, lr, num_steps):
    objective = lambda p, b: _mse(predict_fn(p, b[0][0]), b[0][1])
    params, losses = optimize_streams(objective, params, ((x, targets),), key, optimizer=OPTIMIZERS[optimizer_name](lr),
                                      num_steps=num_steps, batch_sizes=(batch_size,), max_steps=length)
    return Unlearned(params, losses, _one(_dtype(params)))


def match_outputs(predict_fn: Callable, params: PyTree, x: jax.Array, targets: jax.Array, key: jax.Array, *,
                  learning_rate: float, num_steps: int, batch_size: int = 64,
                  optimizer_name: str = "adam") -> Unlearned:
    """Fine-tune `params` so that `predict_fn(params, x)` matches `targets`.

    The objective is half the squared error of the outputs, summed over the output axis and
    averaged over a minibatch: the last step of oracle matching and datamodel matching.

    Args:
      predict_fn: `predict_fn(params, x) -> outputs` [n, C].
      params: the params to fine-tune.
      x: the inputs [m, ...] to match at.
      targets: the outputs [m, C] to reach.
      key: draws the minibatch order.
      learning_rate: the optimiser's step size, positive.
      num_steps: optimisation steps, a positive int (traced: every count shares one program).
      batch_size: rows per step.
      optimizer_name: "adam" or "sgd".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `match_outputs`.

    Raises:
      ValueError: on bad arguments, or when `x` and `targets` differ in rows or are empty.
      NonFiniteLossError: when the objective or the params become NaN/inf.
    """
    _steps(num_steps, batch_size)
    _optimizer(optimizer_name)
    if np.shape(x)[0] != np.shape(targets)[0] or np.shape(x)[0] == 0:
        raise ValueError(f"x and targets need one non-zero number of rows, got {np.shape(x)[0]} and "
                         f"{np.shape(targets)[0]}")
    out = _match(predict_fn, optimizer_name, step_bucket(num_steps), int(batch_size), params, x, targets, key,
                 jnp.asarray(_positive(learning_rate, "learning_rate"), _dtype(params)),
                 jnp.asarray(int(num_steps), jnp.int32))  # traced: one program for every count
    out = out._replace(losses=out.losses[: int(num_steps)])
    return _finish("match_outputs", out, "lower learning_rate")


def _matching_set(forget, retain, key, retain_sample: int):
    """Inputs to match on: every forget example and `retain_sample` retain examples drawn by key."""
    n_r = num_examples(retain, "retain")
    check_positive_int("retain_sample", retain_sample, least=0)
    idx = jax.random.permutation(key, n_r)[: min(retain_sample, n_r)]
    return jnp.concatenate([forget[0], retain[0][idx]]), idx


def oracle_matching(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                    predict_fn: Callable, oracle_params: PyTree, learning_rate: float, num_steps: int,
                    retain_sample: int = 256, batch_size: int = 64, optimizer_name: str = "adam") -> Unlearned:
    """Oracle matching (Georgiev et al. 2025): fine-tune to reproduce a retrained oracle's outputs.

    The inputs are every forget example and a random sample of the retain set; the targets are
    the outputs of a model retrained without the forget set. An upper bound, since it needs that
    oracle.

    Args:
      loss_fn: the training objective (only the sets are checked; matching uses outputs).
      params: the trained model's params.
      forget: the examples to forget, (x, y) pairs with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: draws the retain sample and the minibatch order.
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      oracle_params: the params of the retrained oracle.
      learning_rate: the optimiser's step size, positive.
      num_steps: optimisation steps, a positive int.
      retain_sample: retain examples matched beside the forget set (0 or more).
      batch_size: rows per step.
      optimizer_name: "adam" or "sgd".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `oracle_matching`.

    Raises:
      ValueError, NonFiniteLossError: bad sets or arguments; a NaN/inf objective or params.
    """
    check_sets(forget, retain)
    k_s, k_t = jax.random.split(key)
    x, _ = _matching_set(forget, retain, k_s, retain_sample)
    return match_outputs(predict_fn, params, x, predict_fn(oracle_params, x), k_t, learning_rate=learning_rate,
                         num_steps=num_steps, batch_size=batch_size, optimizer_name=optimizer_name)


@functools.lru_cache(maxsize=32)
def _logit_measure(predict_fn: Callable) -> Callable:
    """measure(params, (x, c)) = mean logit of class c: the output whose influence is attributed."""

    def measure(params, batch):
        x, c = batch
        logits = predict_fn(params, x)
        return jnp.mean(jnp.take_along_axis(logits, c[:, None].astype(jnp.int32), axis=1))

    return measure


class Targets(NamedTuple):
    """Datamodel-predicted oracle outputs `targets` [m, C] at the inputs `x` [m, ...]."""

    x: jax.Array
    targets: jax.Array


def datamodel_targets(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                      predict_fn: Callable, estimator: str = "arnoldi", retain_sample: int = 256,
                      estimator_options: dict | None = None, scale: float = 1.0) -> Targets:
    """Predict the oracle's logits on the forget set and a retain sample by a datamodel: the model's
    logits plus the attributed effect of removing every forget example,

        f_oracle(x)_c ~ f(x)_c + sum_{i in forget} score_c(x, z_i) / (|D| - |D_f|),

    where score_c is `workbench.influence` with the class-c logit as the measured output (score > 0:
    removing z_i raises the measure; the exact influence function predicts a leave-one-out change
    of score / (n - 1)). The estimator is built on the full data (forget + retain). `scale`
    multiplies the attributed change: influence functions of a non-convex network trained for a
    finite time underestimate the effect of retraining, and a datamodel's scale can be fitted on
    retrainings with other forget sets (see `workbench.experiments.unlearning.calibrate_scale`).

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective whose curvature the
        estimator inverts.
      params: the trained model's params.
      forget: the examples to forget, (x, y) pairs with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: draws the retain sample (and the estimator's key when it is randomised).
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      estimator: a `workbench.influence.make` kind ("arnoldi", "exact", "lissa", "trak", ...).
      retain_sample: retain examples predicted beside the forget set (0 or more).
      estimator_options: keyword options of the estimator (e.g. `k`, `damping`); None for none.
      scale: a positive factor on the attributed change (1 = the influence function's own).

    Returns:
      `Targets(x [m, ...], targets [m, C])`, m = |forget| + min(retain_sample, |retain|).

    Raises:
      ValueError: on bad sets, a non-positive scale or a bad retain_sample.
    """
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    n_f, n_r = check_sets(forget, retain)
    x, _ = _matching_set(forget, retain, key, retain_sample)
    full = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), forget, retain)
    options = dict(estimator_options or {})
    if estimator in ("arnoldi", "lissa", "trak"):  # randomised: its key comes from ours
        options.setdefault("key", jax.random.fold_in(key, 1))
    est = influence.make(estimator, loss_fn, params, full, measure_fn=_logit_measure(predict_fn), **options)
    base = predict_fn(params, x)
    m, num_classes = base.shape
    ys = forget[1]
    xs = jnp.repeat(x, num_classes, axis=0)
    cs = jnp.tile(jnp.arange(num_classes, dtype=ys.dtype), m)
    scores = est.scores(type(forget)(xs, cs) if hasattr(forget, "_fields") else (xs, cs))  # [m*C, n_f + n_r]
    delta = jnp.sum(scores[:, :n_f], axis=1).reshape(m, num_classes) / (n_f + n_r - n_f)
    return Targets(x, base + scale * delta.astype(base.dtype))


def datamodel_matching(loss_fn: Callable, params: PyTree, forget: PyTree, retain: PyTree, key: jax.Array, *,
                       predict_fn: Callable, learning_rate: float, num_steps: int, estimator: str = "arnoldi",
                       retain_sample: int = 256, estimator_options: dict | None = None, scale: float = 1.0,
                       batch_size: int = 64, optimizer_name: str = "adam") -> Unlearned:
    """Datamodel matching (Georgiev et al. 2025): oracle matching without the oracle.

    The oracle's outputs are predicted from the model itself by data attribution
    (`datamodel_targets`), then matched (`match_outputs`), so nothing is retrained.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the training objective.
      params: the trained model's params.
      forget: the examples to forget, (x, y) pairs with a leading example axis.
      retain: the examples to keep, disjoint from `forget`.
      key: split into the targets' key and the matching's key.
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      learning_rate: the matching optimiser's step size, positive.
      num_steps: matching steps, a positive int.
      estimator: the influence estimator kind (see `datamodel_targets`).
      retain_sample: retain examples matched beside the forget set.
      estimator_options: keyword options of the estimator; None for none.
      scale: a positive factor on the attributed change.
      batch_size: rows per matching step.
      optimizer_name: "adam" or "sgd".

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `datamodel_matching`.

    Raises:
      ValueError, NonFiniteLossError: bad sets or arguments; a NaN/inf objective or params.
    """
    k_t, k_m = jax.random.split(key)
    t = datamodel_targets(loss_fn, params, forget, retain, k_t, predict_fn=predict_fn, estimator=estimator,
                          retain_sample=retain_sample, estimator_options=estimator_options, scale=scale)
    return match_outputs(predict_fn, params, t.x, t.targets, k_m, learning_rate=learning_rate,
                         num_steps=num_steps, batch_size=batch_size, optimizer_name=optimizer_name)
