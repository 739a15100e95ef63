"""The shape of a Hessian spectrum: outliers against the bulk, the gradient in the top eigenspace.

Ghorbani, Krishnan & Xiao (2019) and Gur-Ari, Roberts & Dyer (2018) report two findings about
the Hessian of a trained classifier: a few outlier eigenvalues (about one per class) stand well
apart from a bulk packed near zero, and the gradient lies mostly in the span of the outliers'
eigenvectors. These functions measure both from eigenvalues and eigenvectors, each next to the
value a trivial spectrum or a random subspace gives, so a claim can be checked against a control:

- `outlier_gap(eigenvalues, num_outliers)`: lambda_C / lambda_{C+1} (the C-th largest over the
  largest bulk eigenvalue);
- `outlier_trace_fraction(eigenvalues, num_outliers)`: the share of sum |lambda| in the top C;
- `subspace_fraction(vector, basis)`: the fraction of ||v||^2 in span(basis), and
  `random_subspace_fraction(vector, key, k)` the same for a uniformly random k-dim subspace
  (k / p in expectation);
- `relative_wasserstein(nodes, weights, eigenvalues)`: the Wasserstein-1 distance of a
  quadrature measure to the exact spectrum, over that of the best single point mass (1 is what
  a one-node SLQ at best reaches);
- `autodiff_hessian(loss_fn, params, data)`: the dense Hessian by forward-over-reverse
  differentiation (as `jax.hessian`) of the loss of the flattened parameters, a reference formed
  independently of `curvature.operator`.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from workbench import spectrum
    >>> round(spectrum.outlier_gap(jnp.array([9.0, 8.0, 1.0, 0.5, 0.0]), 2), 3)
    8.0
    >>> basis = jnp.eye(4)[:1]  # the first coordinate axis
    >>> round(spectrum.subspace_fraction(jnp.array([3.0, 4.0, 0.0, 0.0]), basis), 3)
    0.36
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.core.losses import as_loss
from workbench.core.numerics import check_key, check_positive_int
from workbench.core.tree import ravel

PyTree = Any


def _finite_vector(name: str, values, least: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < least:
        raise ValueError(f"{name} must be a 1-d array of at least {least} entries, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def outlier_gap(eigenvalues, num_outliers: int) -> float:
    """The gap between the top `num_outliers` eigenvalues and the rest: lambda_C / lambda_{C+1}.

    With the eigenvalues sorted in descending order, the ratio of the C-th largest to the
    (C+1)-th, the edge of what remains (the bulk when C counts the outliers). A spectrum with
    separated outliers gives a ratio well above 1; a smooth spectrum (a Wishart matrix, a
    bulk-only Hessian) gives a ratio near 1 at any rank inside it.

    Args:
        eigenvalues: the eigenvalues [n], any order (at least `num_outliers` + 1 of them).
        num_outliers: C, the number counted as outliers (>= 1).

    Returns:
        lambda_C / lambda_{C+1} as a Python float.

    Raises:
        ValueError: too few or non-finite eigenvalues, or lambda_{C+1} <= 0 (no positive bulk edge
            to compare with).
    """
    num_outliers = check_positive_int("num_outliers", num_outliers)
    values = np.sort(_finite_vector("eigenvalues", eigenvalues, num_outliers + 1))[::-1]
    edge = values[num_outliers]
    if not edge > 0:
        raise ValueError(f"outlier_gap: eigenvalue {num_outliers + 1} (the bulk edge) is {edge:.3g}, not "
                         "positive; the ratio is undefined (count fewer outliers)")
    return float(values[num_outliers - 1] / edge)


def outlier_trace_fraction(eigenvalues, num_outliers: int) -> float:
    """The share of the spectrum's absolute mass in its top `num_outliers` eigenvalues:
    sum_{i <= C} lambda_i / sum_i |lambda_i| (eigenvalues in descending order).

    A Hessian with C outliers standing apart from a bulk near zero puts most of its trace in C
    of its p directions; a spectrum without outliers puts about C / p there (and a smoothly
    decaying one somewhat more).

    Args:
        eigenvalues: the eigenvalues [n], any order (at least `num_outliers` of them).
        num_outliers: C (>= 1).

    Returns:
        The fraction, a Python float (at most 1; negative only if the top C are negative).

    Raises:
        ValueError: too few or non-finite eigenvalues, or all of them zero.
    """
    num_outliers = check_positive_int("num_outliers", num_outliers)
    values = np.sort(_finite_vector("eigenvalues", eigenvalues, num_outliers))[::-1]
    mass = float(np.sum(np.abs(values)))
    if not mass > 0:
        raise ValueError("eigenvalues are all zero: the fraction is undefined")
    return float(np.sum(values[:num_outliers]) / mass)


def subspace_fraction(vector, basis) -> float:
    """The fraction of ||v||^2 in the span of the rows of `basis`: ||P v||^2 / ||v||^2.

    The rows are orthonormalized first (a reduced QR of basis^T), so any spanning set works;
    for the top-k Hessian eigenvectors the result is sum_i (u_i . v)^2 / ||v||^2.

    Args:
        vector: v [p] (a flattened gradient, say).
        basis: [k, p] rows spanning the subspace (k <= p, full rank).

    Returns:
        The fraction in [0, 1], a Python float.

    Raises:
        ValueError: shapes that disagree, a zero or non-finite vector, or a rank-deficient basis.
    """
    v = _finite_vector("vector", vector)
    rows = np.asarray(basis, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != v.size or not 1 <= rows.shape[0] <= v.size:
        raise ValueError(f"basis must be [k, {v.size}] with 1 <= k <= {v.size}, got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError("basis contains NaN or inf")
    norm2 = float(v @ v)
    if not norm2 > 0:
        raise ValueError("vector is zero: its fraction in a subspace is undefined")
    q, r = np.linalg.qr(rows.T)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-12 * diag.max():
        raise ValueError("basis is rank-deficient: its rows do not span a k-dimensional subspace")
    coefficients = q.T @ v
    return float(coefficients @ coefficients / norm2)


def random_subspace_fraction(vector, key, k: int) -> float:
    """The fraction of ||v||^2 in a uniformly random k-dimensional subspace (the control of
    `subspace_fraction`): k / p in expectation, whatever v.

    The subspace is spanned by k Gaussian vectors drawn from `key` (uniform on the Grassmannian).

    Args:
        vector: v [p].
        key: PRNG key drawing the subspace.
        k: its dimension, in [1, p].

    Returns:
        The fraction in [0, 1], a Python float.

    Raises:
        ValueError: k outside [1, p], or a zero or non-finite vector.
    """
    key = check_key(key)
    v = _finite_vector("vector", vector)
    k = check_positive_int("k", k)
    if k > v.size:
        raise ValueError(f"k must be at most the dimension {v.size}, got {k}")
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
    basis = np.asarray(jax.random.normal(key, (k, v.size), dtype), dtype=np.float64)
    return subspace_fraction(v, basis)


def relative_wasserstein(nodes, weights, eigenvalues) -> float:
    """Wasserstein-1 distance of a quadrature measure to the exact spectrum, relative to the best
    single point mass: W1(sum_i w_i delta_{x_i}, mu) / W1(delta_median, mu), with mu the uniform
    measure on `eigenvalues`.

    The denominator, the mean absolute deviation of the eigenvalues from their median, is the
    smallest W1 any one-node measure reaches, so a one-node SLQ (one Lanczos step: a point mass
    at a Rayleigh quotient) scores at least 1 whatever the spectrum's scale; a density that
    resolves the bulk and the outliers scores far below 1.

    Args:
        nodes: the quadrature nodes, any shape (SLQ's [num_probes, num_iters]).
        weights: their weights, the shape of `nodes`, non-negative (each probe's row sums to 1;
            the rows are averaged).
        eigenvalues: the exact eigenvalues [n].

    Returns:
        The ratio, a Python float (0 for an exact quadrature).

    Raises:
        ValueError: shapes that disagree, negative or non-finite weights, or a spectrum with all
            eigenvalues equal (no scale to compare with).
    """
    from scipy.stats import wasserstein_distance

    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if nodes.shape != weights.shape or nodes.size == 0:
        raise ValueError(f"nodes and weights must have one non-empty shape, got {nodes.shape} and {weights.shape}")
    if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))) or np.any(weights < 0):
        raise ValueError("nodes and weights must be finite and the weights non-negative")
    values = _finite_vector("eigenvalues", eigenvalues)
    scale = float(np.mean(np.abs(values - np.median(values))))
    if not scale > 0:
        raise ValueError("eigenvalues are all equal: the relative distance is undefined")
    distance = wasserstein_distance(nodes.ravel(), values, u_weights=weights.ravel())
    return float(distance / scale)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _hessian_of_flat(fn, params, data, max_vectors):
    """Columns H e_j = d/dt grad f(flat + t e_j) (forward over reverse, as `jax.hessian`) of
    flat -> fn(unravel(flat), data), `max_vectors` at a time; compiled once per (fn, shapes), the
    params and data passed as arguments."""
    flat, unravel = ravel(params)
    gradient = jax.grad(lambda x: fn(unravel(x), data))
    column = lambda e: jax.jvp(gradient, (flat,), (e,))[1]  # noqa: E731
    return jax.lax.map(column, jnp.eye(flat.size, dtype=flat.dtype), batch_size=max_vectors)


def autodiff_hessian(loss_fn, params: PyTree, data: Any, *, max_vectors: int = 64) -> jax.Array:
    """The dense Hessian of the loss over all of `data` by automatic differentiation of the loss
    of the flattened params.

    A reference formed another way than `curvature.operator` (no dataset-averaged products, no
    chunking or weighting of batches): `jax.hessian`'s forward-over-reverse differentiation of
    `flat -> loss_fn(unravel(flat), data)` on the whole of `data`, its columns computed
    `max_vectors` at a time (memory), then symmetrized. Costs p reverse passes over the data:
    for references on small models.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (a batch mean over `data`), or a
            `models.Functional` (its objective, l2 term included).
        params: the point (a pytree of floating arrays, p entries in `core.tree.ravel` order).
        data: the batch the loss is evaluated on (all of it at once).
        max_vectors: the most columns computed together.

    Returns:
        The symmetric Hessian [p, p] in the params' dtype.

    Raises:
        ValueError: `max_vectors` is not a positive int.
        FloatingPointError: an entry is NaN or inf.
    """
    fn = as_loss(loss_fn, role="objective", caller="autodiff_hessian")
    max_vectors = check_positive_int("max_vectors", max_vectors)
    hessian = _hessian_of_flat(fn, params, data, max_vectors)
    if not bool(jnp.all(jnp.isfinite(hessian))):
        raise FloatingPointError("autodiff_hessian: the Hessian has NaN or inf entries (check the loss and params)")
    return 0.5 * (hessian + hessian.T)
