"""The distributed-minimisation paper's problems: the losses (multinomial logistic, least squares,
binary logistic) and the synthetic data (a sparse regression with a known support, two point clouds
for entropic transport, a binary classification set), each drawn from a NumPy seed so every process
of a job draws the same data; and one-machine references for the optima, computed without the
distributed code (`softmax_reference`: scipy L-BFGS-B and Newton in NumPy; `lasso_reference`:
scikit-learn's coordinate descent and the exact optimality condition on its support)."""

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




class SoftmaxOptimum(NamedTuple):
    """The minimiser of the L2-regularised multinomial logistic loss, and its gradient norm."""

    w: np.ndarray  # [d, classes]
    b: np.ndarray  # [classes]
    grad_norm: float


def _softmax_value_grad(theta, xb, onehot, l2):
    """The objective mean softmax_loss + 0.5 l2 ||theta||^2 and its gradient, written in NumPy."""
    w = theta.reshape(xb.shape[1], onehot.shape[1])
    z = xb @ w
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    value = np.mean(np.log(np.exp(z).sum(1)) - np.sum(z * onehot, 1)) + 0.5 * l2 * theta @ theta
    return value, (xb.T @ (p - onehot) / len(xb)).ravel() + l2 * theta, p


def softmax_reference(x: np.ndarray, y: np.ndarray, l2: float, num_classes: int = 10) -> SoftmaxOptimum:
    """The optimum of `softmax_loss` + 0.5 l2 ||(w, b)||^2 on one machine, independently of the
    distributed code: scipy's L-BFGS-B on a NumPy gradient, then two Newton steps with the NumPy
    Hessian sum_i (x_i x_i^T) kron (diag p_i - p_i p_i^T) / n + l2 I (bias as a column of ones),
    which take the gradient norm to round-off.

    Args:
        x: [n, d] inputs.
        y: [n] integer labels in [0, num_classes).
        l2: the L2 strength (> 0: the optimum is unique).
        num_classes: the number of classes.

    Returns:
        `SoftmaxOptimum(w, b, grad_norm)`.

    Raises:
        ValueError: if `l2` is not positive or a label is out of range.
    """
    import scipy.optimize as so

    if not l2 > 0:
        raise ValueError(f"l2 must be positive (a unique optimum), got {l2!r}")
    y = np.asarray(y)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    xb = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    onehot = np.eye(num_classes)[y]
    dim = xb.shape[1] * num_classes
    theta = so.minimize(lambda t: _softmax_value_grad(t, xb, onehot, l2)[:2], np.zeros(dim), jac=True,
                        method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-7, maxiter=5000)).x
    for _ in range(2):
        _, grad, p = _softmax_value_grad(theta, xb, onehot, l2)
        outer = (xb[:, :, None] * p[:, None, :]).reshape(len(xb), dim)  # x_i kron p_i
        diag = np.einsum("ia,ib,ik->akb", xb, xb, p, optimize=True)  # sum_i x_i x_i^T p_ik, per class k
        hess = -outer.T @ outer
        hess.reshape(xb.shape[1], num_classes, xb.shape[1], num_classes)[:, np.arange(num_classes), :, np.arange(num_classes)] += \
            np.transpose(diag, (1, 0, 2))
        hess = hess / len(xb) + l2 * np.eye(dim)
        theta = theta - np.linalg.solve(hess, grad)
    grad = _softmax_value_grad(theta, xb, onehot, l2)[1]
    w = theta.reshape(xb.shape[1], num_classes)
    return SoftmaxOptimum(w[:-1], w[-1], float(np.linalg.norm(grad)))


class LassoOptimum(NamedTuple):
    """The minimiser of 0.5 mean (x w - y)^2 + l1 ||w||_1 and its worst KKT violation."""

    w: np.ndarray
    kkt_violation: float  # max_j of |g_j + l1 sign w_j| (w_j != 0) or |g_j| - l1 (w_j = 0), g = X^T(Xw - y)/n


def lasso_reference(x: np.ndarray, y: np.ndarray, l1: float) -> LassoOptimum:
    """The optimum of `squared_loss` + l1 ||w||_1 on one machine, independently of OWL-QN:
    scikit-learn's coordinate descent (whose objective is this one) finds the support and the
    signs, then the optimality condition on the support, X_S^T (X_S w_S - y) / n + l1 sign(w_S) = 0,
    is solved exactly.

    Args:
        x: [n, d] inputs (n >= d keeps the solution unique).
        y: [n] targets.
        l1: the L1 strength, positive.

    Returns:
        `LassoOptimum(w, kkt_violation)`.

    Raises:
        ValueError: if `l1` is not positive.
    """
    from sklearn.linear_model import Lasso

    if not l1 > 0:
        raise ValueError(f"l1 must be positive, got {l1!r}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    w = Lasso(alpha=l1, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(x, y).coef_.copy()
    support = w != 0
    xs = x[:, support]
    w[support] = np.linalg.solve(xs.T @ xs / n, xs.T @ y / n - l1 * np.sign(w[support]))
    g = x.T @ (x @ w - y) / n
    violation = np.where(support, np.abs(g + l1 * np.sign(w)), np.maximum(np.abs(g) - l1, 0.0))
    return LassoOptimum(w, float(violation.max()))
