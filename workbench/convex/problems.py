"""Convex non-smooth problems with their exact optimum (LP through scipy, or L-BFGS-B).

The data are drawn with NumPy (the LP solvers run on the host in float64) from a generator seeded
by the key's bits read as one integer (`_numpy_generator`): `jax.random.key(s)` draws exactly what
`np.random.default_rng(s)` drew for 0 <= s < 2^32, and every other key draws reproducibly too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from workbench.core.numerics import check_positive_int
from workbench.data import Dataset


class Problem(NamedTuple):
    """A convex problem min_w mean_i loss(w; x_i, y_i) + l1 ||w||_1 with its exact solution."""

    name: str
    data: Dataset  # x [n, dim], y [n]
    kind: str  # "lad" | "hinge" | "logistic"
    l1: float
    w_star: np.ndarray  # a minimiser (float64)
    f_star: float  # the optimal value (float64)

    @property
    def dim(self) -> int:
        """The number of features (the dimension of w)."""
        return int(self.data.x.shape[1])

    @property
    def distance(self) -> float:
        """D = ||w*||: the distance from the start x0 = 0 to the minimiser, as the bounds use it."""
        return float(np.linalg.norm(self.w_star))

    @property
    def lipschitz(self) -> float:
        """A bound G on every stochastic subgradient norm: max_i ||x_i|| + l1 sqrt(dim)."""
        x = np.asarray(self.data.x, dtype=np.float64)
        return float(np.linalg.norm(x, axis=1).max() + self.l1 * math.sqrt(self.dim))


def _losses(kind: str, z, y, xp):
    """Per-example losses at margins/predictions z = x.w, in the array namespace xp (jnp or np)."""
    if kind == "lad":
        return xp.abs(z - y)
    if kind == "hinge":
        return xp.maximum(1.0 - y * z, 0.0)
    return xp.logaddexp(0.0, -y * z)  # logistic


def _margins_loss(kind: str, w, x, y):
    z = jnp.sum(x * w, axis=-1)  # not x @ w: under vmap that is a batched tiny matmul, slow on CPU
    return _losses(kind, z, y, jnp)


def objective(problem: Problem, w: jax.Array, batch: Dataset | None = None) -> jax.Array:
    """Mean loss over `batch` (default: all data) plus the l1 term, at the point w [dim].

    Args:
        problem: the `Problem` (its loss kind and l1 weight).
        w: the point [dim].
        batch: a `Dataset` of examples to average over (default None: all of `problem.data`).

    Returns:
        The objective, a scalar in the dtype of the data; differentiable by `jax.grad` (a
        subgradient at the kinks).
    """
    x, y = problem.data if batch is None else batch
    value = jnp.mean(_margins_loss(problem.kind, w, x, y))
    return value + problem.l1 * jnp.sum(jnp.abs(w)) if problem.l1 else value


def _np_objective(kind: str, l1: float, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """The objective in float64 NumPy, for f* at the solver's minimiser."""
    return float(_losses(kind, x @ w, y, np).mean() + l1 * np.abs(w).sum())


def _numpy_generator(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the key's data words read as one big-endian integer, so
    `jax.random.key(s)` (data [0, s]) seeds `np.random.default_rng(s)`."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    seed = 0
    for word in np.asarray(words, dtype=np.uint64).reshape(-1):
        seed = (seed << 32) | int(word)
    return np.random.default_rng(seed)


def _make_data(key: jax.Array, n: int, dim: int, labels: bool, noise: float):
    check_positive_int("n", n, least=2)
    check_positive_int("dim", dim)
    rng = _numpy_generator(key)
    x = rng.standard_normal((n, dim))
    w_true = rng.standard_normal(dim) / math.sqrt(dim)
    if labels:  # +-1 labels, flipped by noisy margins so the data are not separable
        y = np.where(x @ w_true + noise * rng.standard_normal(n) >= 0, 1.0, -1.0)
    else:  # heavy-tailed (Student t, 2 dof) residuals: where LAD beats least squares
        y = x @ w_true + noise * rng.standard_t(2, n)
    return x, y


def _as_problem(name, kind, l1, x, y, w_star, dtype) -> Problem:
    data = Dataset(jnp.asarray(x, dtype=dtype), jnp.asarray(y, dtype=dtype))
    return Problem(name, data, kind, float(l1), w_star, _np_objective(kind, l1, w_star, x, y))


def _solve_lp(c, a_ub, b_ub, bounds, what: str):
    res = scipy.optimize.linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs",
                                 options={"primal_feasibility_tolerance": 1e-10,
                                          "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        raise RuntimeError(f"linprog failed on the {what} LP: {res.message}")
    return res


def least_absolute_deviations(key: jax.Array, n: int = 400, dim: int = 10, noise: float = 0.5,
                              dtype=None) -> Problem:
    """LAD regression; exact optimum from the LP min mean(e) s.t. -e <= Xw - y <= e.

    Data: x ~ N(0, I_dim), w_true ~ N(0, I / dim), y = x.w_true + noise * t_2 (Student t with
    2 degrees of freedom: heavy-tailed residuals, where LAD beats least squares).

    Args:
        key: the PRNG key the data are drawn from (see the module docstring).
        n: the number of examples, >= 2.
        dim: the number of features, >= 1.
        noise: the scale of the residuals.
        dtype: the dtype of the data (default None: JAX's default float dtype).

    Returns:
        The `Problem` (kind "lad", l1 = 0) with its minimiser and optimal value in float64.

    Raises:
        ValueError: if `n` or `dim` is out of range.
        RuntimeError: if the LP solver fails.
    """
    x, y = _make_data(key, n, dim, labels=False, noise=noise)
    eye = np.eye(n)
    a_ub = np.block([[x, -eye], [-x, -eye]])
    b_ub = np.concatenate([y, -y])
    c = np.concatenate([np.zeros(dim), np.full(n, 1.0 / n)])
    res = _solve_lp(c, a_ub, b_ub, [(None, None)] * dim + [(0, None)] * n, "LAD")
    return _as_problem("least absolute deviations", "lad", 0.0, x, y, res.x[:dim],
                       dtype or jnp.result_type(float))


def hinge_svm(key: jax.Array, n: int = 400, dim: int = 10, l1: float = 0.01, noise: float = 0.5,
              dtype=None) -> Problem:
    """L1-regularised hinge-loss SVM; exact optimum from the LP over w = u - v and slacks xi:
    min mean(xi) + l1 sum(u + v) s.t. xi_i >= 1 - y_i x_i.(u - v), u, v, xi >= 0.

    Args:
        key: the PRNG key the data are drawn from (see the module docstring).
        n: the number of examples, >= 2.
        dim: the number of features, >= 1.
        l1: the weight of ||w||_1, >= 0.
        noise: the scale of the Gaussian noise on the margins that sets the labels +-1 (so the
            data are not separable).
        dtype: the dtype of the data (default None: JAX's default float dtype).

    Returns:
        The `Problem` (kind "hinge") with its minimiser and optimal value in float64.

    Raises:
        ValueError: if an argument is out of range.
        RuntimeError: if the LP solver fails.
    """
    if l1 < 0:
        raise ValueError(f"l1 must be >= 0, got {l1}")
    x, y = _make_data(key, n, dim, labels=True, noise=noise)
    yx = y[:, None] * x
    a_ub = np.hstack([-yx, yx, -np.eye(n)])
    c = np.concatenate([np.full(2 * dim, l1), np.full(n, 1.0 / n)])
    res = _solve_lp(c, a_ub, -np.ones(n), [(0, None)] * (2 * dim + n), "hinge SVM")
    w_star = res.x[:dim] - res.x[dim:2 * dim]
    return _as_problem("hinge-loss SVM", "hinge", l1, x, y, w_star, dtype or jnp.result_type(float))


def l1_logistic(key: jax.Array, n: int = 400, dim: int = 10, l1: float = 0.02, noise: float = 1.0,
                dtype=None) -> Problem:
    """L1-regularised logistic regression, solved by L-BFGS-B on w = u - v (u, v >= 0), where
    the objective is smooth, to gradient tolerance 1e-12 (checked against KKT in the tests).

    Args:
        key: the PRNG key the data are drawn from (see the module docstring).
        n: the number of examples, >= 2.
        dim: the number of features, >= 1.
        l1: the weight of ||w||_1, > 0.
        noise: the scale of the Gaussian noise on the margins that sets the labels +-1.
        dtype: the dtype of the data (default None: JAX's default float dtype).

    Returns:
        The `Problem` (kind "logistic") with its minimiser and optimal value in float64.

    Raises:
        ValueError: if an argument is out of range.
    """
    if l1 <= 0:
        raise ValueError(f"l1 must be > 0 (with l1 = 0 use an unregularised solver), got {l1}")
    x, y = _make_data(key, n, dim, labels=True, noise=noise)

    def fun(uv):
        w = uv[:dim] - uv[dim:]
        z = y * (x @ w)
        sig = -0.5 * (1 - np.tanh(z / 2))  # d/dz log(1+exp(-z)) = -sigmoid(-z)
        g = x.T @ (y * sig) / n
        value = np.logaddexp(0, -z).mean() + l1 * uv.sum()
        return value, np.concatenate([g + l1, -g + l1])

    res = scipy.optimize.minimize(fun, np.zeros(2 * dim), jac=True, method="L-BFGS-B",
                                  bounds=[(0, None)] * (2 * dim),
                                  options={"maxiter": 20000, "ftol": 1e-16, "gtol": 1e-12,
                                           "maxcor": 30})
    w_star = res.x[:dim] - res.x[dim:]
    return _as_problem("L1-regularised logistic regression", "logistic", l1, x, y, w_star,
                       dtype or jnp.result_type(float))


PROBLEMS = {"lad": least_absolute_deviations, "hinge": hinge_svm, "logistic": l1_logistic}


def make_problem(kind: str, key: jax.Array, n: int = 400, dim: int = 10) -> Problem:
    """One of the problems by short name, with its default regularisation and noise.

    Args:
        kind: "lad", "hinge" or "logistic".
        key: the PRNG key the data are drawn from.
        n: the number of examples.
        dim: the number of features.

    Returns:
        The `Problem`.

    Raises:
        ValueError: if `kind` is unknown.
    """
    if kind not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {kind!r}")
    return PROBLEMS[kind](key, n=n, dim=dim)
