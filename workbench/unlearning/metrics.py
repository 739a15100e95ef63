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
    """Correct-class margin logit_y - logsumexp_{c != y} logit_c, per example (any leading axes)."""
    return _margins(jnp, logits, labels)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy."""
    return _cross_entropy(jnp, logits, labels)


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
    """Accuracy and cross-entropy of one model on each of the three (x, y) sets."""
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


def stacked_logits(predict_fn: Callable, params: PyTree, x: jax.Array) -> jax.Array:
    """Logits [num_models, n, C] of a stack of models (leading axis on every params leaf)."""
    logits = np.asarray(_stacked_logits(predict_fn, params, x))
    _check_finite_logits(logits, "the evaluation data")
    return logits


def stacked_margins(predict_fn: Callable, params: PyTree, data) -> jax.Array:
    """Margins [num_models, n] of a stack of models."""
    x, y = data
    return _np_margins(stacked_logits(predict_fn, params, x), np.asarray(y)[None])


def stacked_scores(predict_fn: Callable, params: PyTree, forget, retain, test) -> Scores:
    """`Scores` of a stack of models, each field an array [num_models]."""
    out = []
    for x, y in (forget, retain, test):
        logits, y = stacked_logits(predict_fn, params, x), np.asarray(y)
        out.append((np.mean(np.argmax(logits, -1) == y[None], axis=1),
                    np.mean(_np_cross_entropy(logits, y[None]), axis=1)))
    (fa, fl), (ra, rl), (ta, tl) = out
    return Scores(fa, ra, ta, fl, rl, tl)


def stacked_mia(predict_fn: Callable, params: PyTree, forget, test) -> np.ndarray:
    """`mia` of each model of a stack, [num_models]."""
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
    """KLoM on the forget, retain and held-out sets for stacks of unlearned models and oracles."""
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
    to an oracle on a random forget set; near 1: the model still remembers it."""
    lf = cross_entropy(predict_fn(params, forget[0]), forget[1])
    lt = cross_entropy(predict_fn(params, test[0]), test[1])
    if not (bool(jnp.all(jnp.isfinite(lf))) and bool(jnp.all(jnp.isfinite(lt)))):
        raise FloatingPointError("losses hold NaN or inf: the model is broken")
    return _mia_auc(lf, lt)
