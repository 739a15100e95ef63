"""Judging an unlearned model: accuracy and loss on forget / retain / held-out data, KLoM against
retrained oracles, and a loss-threshold membership-inference score.

KLoM (Georgiev et al. 2025, "Attribute-to-Delete"): for every evaluation point, the correct-class
margin (logit_y - logsumexp of the other logits) is collected over many unlearned models and over
many oracles (models retrained without the forget set), each trained from a different seed; both
samples are histogrammed on shared bins spanning their pooled range, and KLoM is
KL(unlearned || oracle) of the two histograms (eps-smoothed). 0 means the unlearned models are
distributed like the oracles at that point; its 95th percentile over the forget, retain and
held-out points summarises a method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.statistics import auc

PyTree = Any


class Scores(NamedTuple):
    """Accuracy and mean cross-entropy on the forget, retain and held-out data."""

    forget_accuracy: float
    retain_accuracy: float
    test_accuracy: float
    forget_loss: float
    retain_loss: float
    test_loss: float


class KLoM(NamedTuple):
    """Per-point KLoM values and their 95th percentiles on forget, retain and held-out points."""

    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray
    forget_p95: float
    retain_p95: float
    test_p95: float


def _margins(xp, logits, labels):
    labels = xp.broadcast_to(xp.asarray(labels).astype(xp.int32), logits.shape[:-1])
    correct = xp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    others = xp.where(xp.arange(logits.shape[-1], dtype=labels.dtype) == labels[..., None], -xp.inf, logits)
    top = others.max(-1, keepdims=True)
    return correct - (top[..., 0] + xp.log(xp.exp(others - top).sum(-1)))


def _cross_entropy(xp, logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    log_probs = z - xp.log(xp.exp(z).sum(-1, keepdims=True))
    return -xp.take_along_axis(log_probs, xp.asarray(labels).astype(xp.int32)[..., None], axis=-1)[..., 0]


def margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Correct-class margin logit_y - logsumexp_{c != y} logit_c, per example.

    The quantity KLoM compares: positive when the model prefers the true class, and (unlike the
    accuracy) continuous in the logits.

    Args:
      logits: [..., C], any leading axes.
      labels: integer classes, broadcastable to the leading axes of `logits`.

    Returns:
      The margins, the leading shape of `logits`.
    """
    return _margins(jnp, logits, labels)


def _check_finite_logits(logits, name):
    if not np.isfinite(np.asarray(logits)).all():  # on the host: no compiled program per shape
        raise FloatingPointError(f"the model's outputs on {name} hold NaN or inf; the model is broken")


# The judging below runs on the host in float64 once the logits are computed: evaluated eagerly in
# JAX, every op was its own compiled program for each of the forget / retain / held-out sizes.


def _np_cross_entropy(logits, labels) -> np.ndarray:
    return _cross_entropy(np, np.asarray(logits, np.float64), np.asarray(labels))


def _np_margins(logits, labels) -> np.ndarray:
    return _margins(np, np.asarray(logits, np.float64), np.asarray(labels))


@functools.partial(jax.jit, static_argnums=0)
def _logits(predict_fn, params, x):
    return predict_fn(params, x)


def scores(predict_fn: Callable, params: PyTree, forget, retain, test) -> Scores:
    """Accuracy and mean cross-entropy of one model on each of the three (x, y) sets.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: the model's params.
      forget: (x, y) of the forget set.
      retain: (x, y) of the retain set.
      test: (x, y) of held-out data.

    Returns:
      `Scores` of floats (losses computed in float64 on the host).

    Raises:
      FloatingPointError: when the model's outputs hold NaN/inf.
    """
    out = []
    for name, (x, y) in (("forget", forget), ("retain", retain), ("test", test)):
        logits = np.asarray(_logits(predict_fn, params, x))
        _check_finite_logits(logits, name)
        y = np.asarray(y)
        out.append((float(np.mean(np.argmax(logits, -1) == y)), float(np.mean(_np_cross_entropy(logits, y)))))
    (fa, fl), (ra, rl), (ta, tl) = out
    return Scores(fa, ra, ta, fl, rl, tl)


@functools.partial(jax.jit, static_argnums=0)
def _stacked_logits(predict_fn, params, x):
    return jax.vmap(predict_fn, in_axes=(0, None))(params, x)


def stacked_logits(predict_fn: Callable, params: PyTree, x: jax.Array) -> np.ndarray:
    """The logits of a stack of models at shared inputs, in one vmapped call.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: stacked params: a leading model axis on every leaf.
      x: inputs [n, ...].

    Returns:
      Logits [num_models, n, C] as a NumPy array.

    Raises:
      FloatingPointError: when a logit is NaN/inf.
    """
    logits = np.asarray(_stacked_logits(predict_fn, params, x))
    _check_finite_logits(logits, "the evaluation data")
    return logits


def stacked_margins(predict_fn: Callable, params: PyTree, data) -> np.ndarray:
    """The correct-class margins (`margins`) of a stack of models, in float64.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: stacked params: a leading model axis on every leaf.
      data: (x [n, ...], y [n]).

    Returns:
      Margins [num_models, n].
    """
    x, y = data
    return _np_margins(stacked_logits(predict_fn, params, x), np.asarray(y)[None])


def stacked_scores(predict_fn: Callable, params: PyTree, forget, retain, test) -> Scores:
    """`scores` of each model of a stack.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: stacked params: a leading model axis on every leaf.
      forget: (x, y) of the forget set.
      retain: (x, y) of the retain set.
      test: (x, y) of held-out data.

    Returns:
      `Scores` whose fields are arrays [num_models].
    """
    out = []
    for x, y in (forget, retain, test):
        logits, y = stacked_logits(predict_fn, params, x), np.asarray(y)
        out.append((np.mean(np.argmax(logits, -1) == y[None], axis=1),
                    np.mean(_np_cross_entropy(logits, y[None]), axis=1)))
    (fa, fl), (ra, rl), (ta, tl) = out
    return Scores(fa, ra, ta, fl, rl, tl)


def stacked_mia(predict_fn: Callable, params: PyTree, forget, test) -> np.ndarray:
    """`mia` of each model of a stack (losses in float64 on the host).

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: stacked params: a leading model axis on every leaf.
      forget: (x, y) of the forget set (the members).
      test: (x, y) of held-out data (the non-members).

    Returns:
      The AUCs [num_models].
    """
    lf = _np_cross_entropy(stacked_logits(predict_fn, params, forget[0]), np.asarray(forget[1])[None])
    lt = _np_cross_entropy(stacked_logits(predict_fn, params, test[0]), np.asarray(test[1])[None])
    return np.asarray([_mia_auc(a, b) for a, b in zip(lf, lt)])



def _mia_auc(forget_losses, test_losses) -> float:
    """The AUC of flagging forget examples (positives) among held-out ones by low loss."""
    forget_losses, test_losses = np.asarray(forget_losses), np.asarray(test_losses)
    positives = np.concatenate([np.ones(forget_losses.size, bool), np.zeros(test_losses.size, bool)])
    return auc(-np.concatenate([forget_losses.ravel(), test_losses.ravel()]), positives)


KLOM_ESTIMATORS = ("histogram", "gaussian")


def klom_values(unlearned: jax.Array, oracle: jax.Array, num_bins: int = 20, eps: float = 1e-5,
                clip: float = 100.0, estimator: str = "histogram") -> np.ndarray:
    """Per-point KL(unlearned || oracle) between the two samples of margins.

    `unlearned` [M, n] and `oracle` [K, n]: margins of M unlearned models and K oracles at n
    points. estimator="histogram" (the benchmark's): `num_bins` equal-width bins over the pooled
    range at each point (after clipping to [-clip, clip]), probabilities with `eps` added and
    renormalised; it needs many models (with tens of models per side most bins are empty and
    the value saturates near log(1/eps)). estimator="gaussian": KL between normal fits (means and
    standard deviations, the latter floored at 1e-3 of the pooled spread + 1e-6), usable with
    ~10-50 models.

    Args:
      unlearned: margins [M, n] of M >= 2 unlearned models at n points.
      oracle: margins [K, n] of K >= 2 oracles at the same points.
      num_bins: histogram bins per point (histogram estimator).
      eps: probability added to every bin before renormalising (histogram estimator).
      clip: margins are clipped to [-clip, clip] first.
      estimator: "histogram" or "gaussian".

    Returns:
      KLoM per point [n], in nats.

    Raises:
      ValueError: on an unknown estimator, mismatched shapes or fewer than 2 models a side.
      FloatingPointError: when a margin is NaN.
    """
    if estimator not in KLOM_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KLOM_ESTIMATORS}, got {estimator!r}")
    u = np.clip(np.asarray(unlearned, np.float64), -clip, clip)
    o = np.clip(np.asarray(oracle, np.float64), -clip, clip)
    if u.ndim != 2 or o.ndim != 2 or u.shape[1] != o.shape[1]:
        raise ValueError(f"unlearned [M, n] and oracle [K, n] margins need the same n, got {u.shape} and {o.shape}")
    if u.shape[0] < 2 or o.shape[0] < 2:
        raise ValueError(f"KLoM needs at least 2 models on each side, got {u.shape[0]} and {o.shape[0]}")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(o))):
        raise FloatingPointError("margins hold NaN: a model is broken")
    if estimator == "gaussian":
        floor = 1e-3 * np.concatenate([u, o]).std(0) + 1e-6
        m1, m2 = u.mean(0), o.mean(0)
        s1, s2 = np.maximum(u.std(0, ddof=1), floor), np.maximum(o.std(0, ddof=1), floor)
        return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    lo = np.minimum(u.min(0), o.min(0))
    hi = np.maximum(u.max(0), o.max(0))
    width = np.where(hi > lo, hi - lo, 1.0)

    def hist(samples):
        b = np.clip(((samples - lo) / width * num_bins).astype(int), 0, num_bins - 1)  # [M, n]
        counts = np.zeros((samples.shape[1], num_bins))
        np.add.at(counts, (np.broadcast_to(np.arange(samples.shape[1]), b.shape), b), 1.0)
        p = counts / samples.shape[0] + eps
        return p / p.sum(1, keepdims=True)

    p, q = hist(u), hist(o)
    return np.sum(p * np.log(p / q), axis=1)


def klom(predict_fn: Callable, unlearned_params: PyTree, oracle_params: PyTree, forget, retain, test,
         num_bins: int = 20, estimator: str = "histogram") -> KLoM:
    """KLoM on the forget, retain and held-out sets for stacks of unlearned models and oracles.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      unlearned_params: stacked params of the unlearned models (leading model axis).
      oracle_params: stacked params of the oracles (leading model axis).
      forget: (x, y) of the forget set.
      retain: (x, y) of the retain set.
      test: (x, y) of held-out data.
      num_bins: histogram bins per point (see `klom_values`).
      estimator: "histogram" or "gaussian" (see `klom_values`).

    Returns:
      `KLoM` with the per-point values and their 95th percentiles per set.
    """
    vals = []
    for data in (forget, retain, test):
        vals.append(klom_values(stacked_margins(predict_fn, unlearned_params, data),
                                stacked_margins(predict_fn, oracle_params, data), num_bins,
                                estimator=estimator))
    f, r, t = vals
    return KLoM(f, r, t, float(np.percentile(f, 95)), float(np.percentile(r, 95)), float(np.percentile(t, 95)))


def mia(predict_fn: Callable, params: PyTree, forget, test) -> float:
    """Loss-threshold membership inference: the AUC of telling forget examples from held-out ones
    by low loss (members have lower loss). 0.5: the forget set looks like unseen data, as it does
    to an oracle on a random forget set; near 1: the model still remembers it.

    Args:
      predict_fn: `predict_fn(params, x) -> logits` [n, C].
      params: the model's params.
      forget: (x, y) of the forget set (the members).
      test: (x, y) of held-out data (the non-members).

    Returns:
      The AUC, in [0, 1].

    Raises:
      FloatingPointError: when a loss is NaN/inf.
    """
    lf = _cross_entropy(jnp, predict_fn(params, forget[0]), forget[1])
    lt = _cross_entropy(jnp, predict_fn(params, test[0]), test[1])
    if not (bool(jnp.all(jnp.isfinite(lf))) and bool(jnp.all(jnp.isfinite(lt)))):
        raise FloatingPointError("losses hold NaN or inf: the model is broken")
    return _mia_auc(lf, lt)
