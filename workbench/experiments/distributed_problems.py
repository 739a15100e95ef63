"""The distributed-minimisation paper's problems: the losses (multinomial logistic, least squares,
binary logistic) and the synthetic data (a sparse regression with a known support, two point clouds
for entropic transport, a binary classification set), each drawn from a NumPy seed so every process
of a job draws the same data."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SparseRegression(NamedTuple):
    """Inputs [n, d], targets [n] and the sparse true weights [d] (about 10% non-zero)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray


class PointClouds(NamedTuple):
    """Two point clouds in the plane, [n, 2] each."""

    x: np.ndarray
    y: np.ndarray


class BinaryData(NamedTuple):
    """Inputs [n, d] and 0/1 labels [n] (float64)."""

    x: np.ndarray
    y: np.ndarray


def softmax_loss(params, batch):
    """Mean multinomial logistic loss of a linear model.

    Args:
        params: {"w": [d, classes], "b": [classes]}.
        batch: (x [n, d], integer labels y [n]).

    Returns:
        The mean cross-entropy, a scalar.
    """
    x, y = batch
    logits = x @ params["w"] + params["b"]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])


def squared_loss(params, batch):
    """Half the mean squared error of a linear model without bias.

    Args:
        params: {"w": [d]}.
        batch: (x [n, d], y [n]).

    Returns:
        0.5 mean (x w - y)^2, a scalar.
    """
    x, y = batch
    return 0.5 * jnp.mean((x @ params["w"] - y) ** 2)


def binary_loss(params, batch):
    """Mean binary logistic loss of a linear model.

    Args:
        params: {"w": [d], "b": scalar}.
        batch: (x [n, d], 0/1 labels y [n]).

    Returns:
        The mean log(1 + e^z) - y z with z = x w + b, a scalar.
    """

    x, y = batch
    z = x @ params["w"] + params["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z)


def sparse_regression(seed: int, n: int, d: int) -> SparseRegression:
    """Gaussian inputs, a truth with about 10% non-zero N(0, 4) weights, noise 0.1.

    Args:
        seed: the NumPy seed (offset by 1 from the job's other draws).
        n: the number of examples.
        d: the number of features.

    Returns:
        `SparseRegression(x, y, w)`.
    """
    rng = np.random.default_rng(seed + 1)
    w = np.where(rng.random(d) < 0.1, rng.normal(size=d) * 2, 0.0)
    x = rng.normal(size=(n, d))
    return SparseRegression(x, x @ w + 0.1 * rng.normal(size=n), w)


def point_clouds(seed: int, n: int) -> PointClouds:
    """Two clouds in the plane: a two-blob mixture and a noisy ring.

    Args:
        seed: the NumPy seed (offset by 2).
        n: points per cloud.

    Returns:
        `PointClouds(x, y)`, [n, 2] each.
    """
    rng = np.random.default_rng(seed + 2)
    centres = np.array([[-1.0, -0.5], [-0.5, 1.0]])
    x = centres[rng.integers(0, 2, n)] + 0.25 * rng.normal(size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    y = np.stack([1.2 + 0.8 * np.cos(angle), 0.8 * np.sin(angle)], 1) + 0.05 * rng.normal(size=(n, 2))
    return PointClouds(x, y)


def binary_data(seed: int, n: int, d: int) -> BinaryData:
    """Labels of a noisy random linear classifier on Gaussian inputs.

    Args:
        seed: the NumPy seed (offset by 3).
        n: the number of examples.
        d: the number of features.

    Returns:
        `BinaryData(x, y)`.
    """
    rng = np.random.default_rng(seed + 3)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d)
    return BinaryData(x, (x @ w + 0.5 * rng.normal(size=n) > 0).astype(np.float64))


