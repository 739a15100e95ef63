"""Transport problems with a known answer: Gaussian to Gaussian, a Brenier pair, and the unit
disk to four disks.

- `gaussian_map(mean1, cov1, mean2, cov2)`: the Monge map between two Gaussians for the squared
  Euclidean cost, T(x) = m2 + A (x - m1) with
  A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}, a symmetric positive definite matrix
  (so T is the gradient of the convex x -> m2.x + (x - m1)^T A (x - m1) / 2, Brenier's form);
  `gaussian_w2_squared` the closed form
  W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).
- `brenier_potential(...)`: phi(x) = alpha |x|^2 / 2 + logsumexp_k (x^T Q_k x / 2 + b_k.x),
  convex (a log-sum-exp of convex quadratics plus a strictly convex quadratic). Its gradient
  grad phi(x) = alpha x + sum_k softmax_k(x) (Q_k x + b_k) pushes N(0, I) onto a skewed,
  several-lobed target, and by Brenier's theorem grad phi is the optimal map between the two.
- `Problem`: samplers for mu and nu (pure functions of a key), the optimal map where it is known,
  W2^2 where it is known in closed form, and nu's total variance (the L2-UVP denominator).
  `gaussian`, `brenier` and `disks` build them; `disks` (the uniform unit disk onto four equal
  disks, our reading of the paper's 2-d example, whose exact radii we could not read) has no
  closed-form map: it is judged against exact assignments of samples (`metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.numerics import check_positive_int


class Problem(NamedTuple):
    """A pair of distributions (mu, nu) on R^dim to transport between.

    `sample_source(key, n)` and `sample_target(key, n)` draw [n, dim] samples (pure, jittable);
    `true_map(x)` is the optimal (Brenier) map on [n, dim] points, None when unknown;
    `w2_squared` is W2^2(mu, nu) in closed form, None when unknown (then estimate it as
    E|x - T*(x)|^2 or by assignment); `target_variance` is E|y - E y|^2 (trace of nu's covariance).
    """

    name: str
    dim: int
    sample_source: Callable[[jax.Array, int], jax.Array]
    sample_target: Callable[[jax.Array, int], jax.Array]
    true_map: Callable[[jax.Array], jax.Array] | None
    w2_squared: float | None
    target_variance: float


def _check_covariance(name: str, cov: np.ndarray, dim: int | None = None) -> np.ndarray:
    cov = np.asarray(cov, np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{name} must be a square matrix [dim, dim], got shape {cov.shape}")
    if dim is not None and cov.shape[0] != dim:
        raise ValueError(f"{name} must be [{dim}, {dim}] to match the mean, got {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"{name} has non-finite entries")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(cov).max()))):
        raise ValueError(f"{name} must be symmetric")
    smallest = float(np.linalg.eigvalsh(cov).min())
    if smallest <= 0:
        raise ValueError(f"{name} must be positive definite, its smallest eigenvalue is {smallest:.3g}")
    return cov


def _sqrtm(s: np.ndarray, power: float = 0.5) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.clip(w, 0.0, None) ** power) @ v.T


def _check_pair(mean1, cov1, mean2, cov2):
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    if mean1.ndim != 1 or mean2.ndim != 1:
        raise ValueError(f"mean1 and mean2 must be vectors, got shapes {mean1.shape} and {mean2.shape}")
    if mean1.shape != mean2.shape:
        raise ValueError(f"mean1 and mean2 must have the same dimension, got {mean1.shape[0]} and {mean2.shape[0]}")
    dim = mean1.shape[0]
    return mean1, _check_covariance("cov1", cov1, dim), mean2, _check_covariance("cov2", cov2, dim)


def gaussian_map(mean1, cov1, mean2, cov2) -> tuple[np.ndarray, np.ndarray]:
    """The optimal map between N(mean1, cov1) and N(mean2, cov2): T(x) = A x + shift.

    A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2} (symmetric positive definite), shift =
    mean2 - A mean1; computed in float64 by eigendecompositions.

    Args:
        mean1: [dim] the source mean.
        cov1: [dim, dim] the source covariance (symmetric positive definite).
        mean2: [dim] the target mean.
        cov2: [dim, dim] the target covariance (symmetric positive definite).

    Returns:
        (A [dim, dim], shift [dim]), float64 numpy.

    Raises:
        ValueError: mismatched dimensions, a non-symmetric or non-positive-definite covariance.
    """
    mean1, cov1, mean2, cov2 = _check_pair(mean1, cov1, mean2, cov2)
    root = _sqrtm(cov1)
    inv_root = _sqrtm(cov1, -0.5)
    a = inv_root @ _sqrtm(root @ cov2 @ root) @ inv_root
    a = 0.5 * (a + a.T)
    return a, mean2 - a @ mean1


def gaussian_w2_squared(mean1, cov1, mean2, cov2) -> float:
    """W2^2 between two Gaussians: |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

    Args:
        mean1: [dim] the first mean.
        cov1: [dim, dim] the first covariance (symmetric positive definite).
        mean2: [dim] the second mean.
        cov2: [dim, dim] the second covariance (symmetric positive definite).

    Returns:
        The squared 2-Wasserstein distance (a float).

    Raises:
        ValueError: mismatched dimensions, a non-symmetric or non-positive-definite covariance.
    """
    mean1, cov1, mean2, cov2 = _check_pair(mean1, cov1, mean2, cov2)
    root = _sqrtm(cov1)
    cross = _sqrtm(root @ cov2 @ root)
    return float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2.0 * cross))


def _random_covariance(key, dim: int, low: float, high: float) -> np.ndarray:
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (dim, dim)), np.float64))
    eigenvalues = np.exp(np.linspace(np.log(low), np.log(high), dim)) if dim > 1 else np.array([high])
    return (q * eigenvalues) @ q.T


def _gaussian_sampler(mean: np.ndarray, cov: np.ndarray, dtype):
    mean_j, chol = jnp.asarray(mean, dtype), jnp.asarray(np.linalg.cholesky(cov), dtype)

    def sample(key, n):
        return mean_j + jax.random.normal(key, (n, mean.shape[0]), dtype) @ chol.T

    return sample


def gaussian(key: jax.Array, dim: int, spread: float = 4.0, dtype=jnp.float32) -> Problem:
    """Two Gaussians on R^dim with random means (N(0, I/4) each) and random covariances whose
    eigenvalues run geometrically from 1/spread to spread in random orientations, with their
    closed-form optimal map and W2^2.

    Args:
        key: PRNG key drawing the means and the covariances' orientations.
        dim: the dimension.
        spread: the largest eigenvalue of each covariance (the smallest is 1 / spread).
        dtype: the dtype of the samples.

    Returns:
        The `Problem` (name "gaussian").

    Raises:
        ValueError: a `dim` that is not a positive int, or `spread` < 1.
    """
    dim = check_positive_int("dim", dim)
    if not spread >= 1:
        raise ValueError(f"spread must be >= 1, got {spread!r}")
    k1, k2, k3, k4 = jax.random.split(key, 4)
    mean1 = 0.5 * np.asarray(jax.random.normal(k1, (dim,)), np.float64)
    mean2 = 0.5 * np.asarray(jax.random.normal(k2, (dim,)), np.float64)
    cov1 = _random_covariance(k3, dim, 1.0 / spread, spread)
    cov2 = _random_covariance(k4, dim, 1.0 / spread, spread)
    a, shift = gaussian_map(mean1, cov1, mean2, cov2)
    a_j, shift_j = jnp.asarray(a, dtype), jnp.asarray(shift, dtype)
    return Problem("gaussian", dim, _gaussian_sampler(mean1, cov1, dtype), _gaussian_sampler(mean2, cov2, dtype),
                   lambda x: x @ a_j.T + shift_j, gaussian_w2_squared(mean1, cov1, mean2, cov2),
                   float(np.trace(cov2)))


class BrenierPotential(NamedTuple):
    """phi(x) = alpha |x|^2 / 2 + logsumexp_k (x^T Q_k x / 2 + b_k.x): `alpha` > 0, `q`
    [K, dim, dim] positive semidefinite, `b` [K, dim]."""

    alpha: jax.Array
    q: jax.Array
    b: jax.Array


def brenier_potential(key: jax.Array, dim: int, num_components: int = 4, alpha: float = 0.5,
                      curvature: float = 1.0, offset: float = 2.0, dtype=jnp.float32) -> BrenierPotential:
    """A random convex potential of the Brenier problem (see the module docstring).

    Q_k = curvature * B_k B_k^T / dim with B_k standard normal, b_k = offset * a random unit
    vector: each component pulls its region of the Gaussian towards its own direction, so the
    target has several lobes and skew.

    Args:
        key: PRNG key drawing Q_k and b_k.
        dim: the dimension.
        num_components: K, the number of quadratics in the log-sum-exp.
        alpha: the weight of the strictly convex term alpha |x|^2 / 2 (> 0).
        curvature: the scale of the Q_k.
        offset: the length of the linear terms b_k.
        dtype: the dtype of the arrays.

    Returns:
        The `BrenierPotential(alpha, q, b)`.

    Raises:
        ValueError: a non-positive `alpha` or a bad `dim` / `num_components`.
    """
    dim = check_positive_int("dim", dim)
    num_components = check_positive_int("num_components", num_components)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (it makes the potential strictly convex), got {alpha!r}")
    kq, kb = jax.random.split(key)
    raw = jax.random.normal(kq, (num_components, dim, dim), dtype)
    q = curvature * jnp.einsum("kij,klj->kil", raw, raw) / dim
    b = jax.random.normal(kb, (num_components, dim), dtype)
    b = offset * b / jnp.linalg.norm(b, axis=1, keepdims=True)
    return BrenierPotential(jnp.asarray(alpha, dtype), q, b)


def brenier_value(potential: BrenierPotential, x: jax.Array) -> jax.Array:
    """phi(x) for points x [n, dim].

    Args:
        potential: the `BrenierPotential`.
        x: [n, dim] points.

    Returns:
        [n] the potential's values.
    """
    quad = 0.5 * jnp.einsum("ni,kij,nj->nk", x, potential.q, x) + x @ potential.b.T
    return 0.5 * potential.alpha * jnp.sum(x * x, axis=1) + jax.nn.logsumexp(quad, axis=1)


def brenier_map(potential: BrenierPotential, x: jax.Array) -> jax.Array:
    """grad phi(x) for points x [n, dim], in closed form: alpha x + sum_k w_k (Q_k x + b_k) with
    w = softmax_k(x^T Q_k x / 2 + b_k.x).

    Args:
        potential: the `BrenierPotential`.
        x: [n, dim] points.

    Returns:
        [n, dim] the optimal map's values.
    """
    lin = jnp.einsum("kij,nj->nki", potential.q, x) + potential.b[None]
    quad = 0.5 * jnp.einsum("nki,ni->nk", lin - potential.b[None], x) + x @ potential.b.T
    w = jax.nn.softmax(quad, axis=1)
    return potential.alpha * x + jnp.einsum("nk,nki->ni", w, lin)


def brenier(key: jax.Array, dim: int, num_components: int = 4, dtype=jnp.float32,
            variance_samples: int = 200_000) -> Problem:
    """mu = N(0, I), nu = grad phi # mu for a random `brenier_potential`: the optimal map is
    grad phi exactly. nu's variance is estimated once from `variance_samples` samples (float64).

    Args:
        key: PRNG key drawing the potential (and, folded, the variance sample).
        dim: the dimension.
        num_components: the number of quadratics in the potential.
        dtype: the dtype of the samples.
        variance_samples: samples used to estimate nu's total variance.

    Returns:
        The `Problem` (name "brenier", `w2_squared` None: estimate it as E|x - T*(x)|^2).
    """
    potential = brenier_potential(key, dim, num_components, dtype=dtype)

    def source(k, n):
        return jax.random.normal(k, (n, dim), dtype)

    def target(k, n):
        return brenier_map(potential, source(k, n))

    big = jax.tree.map(lambda a: a.astype(jnp.float64) if jax.config.jax_enable_x64 else a, potential)
    ys = np.asarray(brenier_map(big, jax.random.normal(jax.random.fold_in(key, 1), (variance_samples, dim),
                                                       big.q.dtype)), np.float64)
    return Problem("brenier", dim, source, target, lambda x: brenier_map(potential, x), None,
                   float(np.sum(np.var(ys, axis=0))))


def _uniform_disk(key, n, dtype):
    kr, ka = jax.random.split(key)
    radius = jnp.sqrt(jax.random.uniform(kr, (n,), dtype))
    angle = jax.random.uniform(ka, (n,), dtype, 0.0, 2.0 * np.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1)


def disks(radius: float = 0.5, centre: float = 2.0, dtype=jnp.float32) -> Problem:
    """The unit disk onto four disks of `radius` centred at (+-centre, +-centre), both uniform
    (the target's four disks equally likely): our reading of the paper's 2-d example. No
    closed-form map: `true_map` and `w2_squared` are None, and the metrics judge a map against
    exact assignments between samples.

    Args:
        radius: the radius of each target disk.
        centre: the offset of each target disk's centre along both axes.
        dtype: the dtype of the samples.

    Returns:
        The `Problem` (name "disks", dim 2).
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    corners = jnp.asarray([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype) * centre

    def source(k, n):
        return _uniform_disk(k, n, dtype)

    def target(k, n):
        kd, kc = jax.random.split(k)
        which = jax.random.randint(kc, (n,), 0, 4)
        return corners[which] + radius * _uniform_disk(kd, n, dtype)

    variance = 2.0 * centre**2 + radius**2 / 2.0  # corners: 2 c^2; each uniform disk: r^2 / 2
    return Problem("disks", 2, source, target, None, None, float(variance))
