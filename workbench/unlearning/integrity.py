"""The integrity metric of Schioppa, Hoogeboom & Heek (2024) and the Frechet distance.

Integrity compares the original and the unlearned diffusion model's samples for the same class and
the same initial noise (deterministic DDIM sampling of `workbench.unlearning.diffusion`): an
unlearning method that keeps the other classes intact moves their samples little. The Frechet
distance compares feature distributions (means and covariances).
"""


from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.unlearning.diffusion import Model, sample

PyTree = Any


class Integrity(NamedTuple):
    """Mean distance between two models' samples drawn with shared noise (pixel RMSE and
    classifier-feature L2), and the noise floor: the same distances between the first model's
    samples under two independent noises."""

    pixel: float
    feature: float
    pixel_floor: float
    feature_floor: float


def _distances(a, b, feature_fn):
    pix = jnp.sqrt(jnp.mean((a - b) ** 2, axis=1))
    feat = jnp.linalg.norm(feature_fn(a) - feature_fn(b), axis=1)
    return float(jnp.mean(pix)), float(jnp.mean(feat))


def integrity(model: Model, params: PyTree, unlearned_params: PyTree, labels: jax.Array, key: jax.Array, *,
              feature_fn: Callable[[jax.Array], jax.Array], num_steps: int = 25) -> Integrity:
    """The integrity metric (Schioppa, Hoogeboom & Heek 2024) on the classes `labels`.

    The distances between the original and the unlearned model's DDIM samples from the same
    noise, beside the noise floor (the original model's samples under two independent noises).

    Args:
      model: the `Model` (its `apply_fn` is used).
      params: the original denoiser's params.
      unlearned_params: the unlearned denoiser's params.
      labels: the classes to sample [n] (use retain classes).
      key: draws the shared noise and the floor's second noise.
      feature_fn: images [n, dim] -> features [n, d] (e.g. a classifier's hidden layer).
      num_steps: DDIM steps.

    Returns:
      `Integrity(pixel, feature, pixel_floor, feature_floor)`: mean pixel RMSE and mean feature
      L2 distance, and the same distances of the floor.
    """
    return integrity_against(reference_samples(model, params, labels, key, num_steps=num_steps), model,
                             unlearned_params, feature_fn=feature_fn, num_steps=num_steps)


class Reference(NamedTuple):
    """The original model's samples for `integrity`: `shared` from the noise the unlearned model
    is sampled from too, `other` from an independent noise (the floor), the labels and that noise."""

    shared: jax.Array
    other: jax.Array
    labels: jax.Array
    noise: jax.Array


def reference_samples(model: Model, params: PyTree, labels: jax.Array, key: jax.Array, *,
                      num_steps: int = 25) -> Reference:
    """The original model's half of `integrity`, drawn once for any number of unlearned models.

    Args:
      model: the `Model` (its `apply_fn` is used).
      params: the original denoiser's params.
      labels: the classes to sample [n] (use retain classes).
      key: draws the shared noise and the floor's second noise (as `integrity` does).
      num_steps: DDIM steps.

    Returns:
      `Reference(shared, other, labels, noise)`.
    """
    k1, k2 = jax.random.split(key)
    dim = jax.tree.leaves(params)[0].dtype
    n = int(np.shape(labels)[0])
    size = _output_dim(model, params)
    noise, other = (jax.random.normal(k, (n, size), dim) for k in (k1, k2))
    return Reference(sample(model, params, labels, noise, num_steps), sample(model, params, labels, other, num_steps),
                     labels, noise)


def integrity_against(reference: Reference, model: Model, unlearned_params: PyTree, *,
                      feature_fn: Callable[[jax.Array], jax.Array], num_steps: int = 25) -> Integrity:
    """`integrity` with the original model's samples drawn beforehand (`reference_samples`).

    Args:
      reference: the original model's samples and the shared noise.
      model: the `Model` (its `apply_fn` is used).
      unlearned_params: the unlearned denoiser's params.
      feature_fn: images [n, dim] -> features [n, d] (e.g. a classifier's hidden layer).
      num_steps: DDIM steps (those of the reference).

    Returns:
      `Integrity(pixel, feature, pixel_floor, feature_floor)`, as `integrity` returns it.
    """
    return integrity_of_samples(reference, sample(model, unlearned_params, reference.labels, reference.noise, num_steps),
                                feature_fn=feature_fn)


def integrity_of_samples(reference: Reference, samples: jax.Array, *,
                         feature_fn: Callable[[jax.Array], jax.Array]) -> Integrity:
    """`integrity` from the unlearned model's samples, drawn from `reference.noise` for
    `reference.labels` (so a caller that needs those samples anyway draws them once).

    Args:
      reference: the original model's samples and the shared noise (`reference_samples`).
      samples: the unlearned model's DDIM samples from `reference.noise` [n, dim].
      feature_fn: images [n, dim] -> features [n, d] (e.g. a classifier's hidden layer).

    Returns:
      `Integrity(pixel, feature, pixel_floor, feature_floor)`.

    Raises:
      ValueError: when the samples' shape differs from the reference's.
    """
    if np.shape(samples) != np.shape(reference.shared):
        raise ValueError(f"samples need the reference's shape {np.shape(reference.shared)}, got {np.shape(samples)}")
    pix, feat = _distances(reference.shared, samples, feature_fn)
    pix0, feat0 = _distances(reference.shared, reference.other, feature_fn)
    return Integrity(pix, feat, pix0, feat0)


def _output_dim(model: Model, params) -> int:
    return int(params["out"]["kernel"].shape[1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Frechet distance between Gaussian fits of two feature sets (FID's formula).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64, in whatever
    feature space is given.

    Args:
      features_a: features [n_a >= 2, d].
      features_b: features [n_b >= 2, d].

    Returns:
      The distance, a float >= 0 (up to rounding).

    Raises:
      ValueError: on bad shapes.
      FloatingPointError: when a feature is NaN/inf.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features need shapes [n >= 2, d] with one d, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FloatingPointError("features hold NaN or inf")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sum(np.sqrt(np.clip(mid, 0, None))))
