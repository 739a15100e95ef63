"""Convex non-smooth problems with their exact optimum (LP through scipy, or L-BFGS-B)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

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
        return int(self.data.x.shape[1])

    @property
    def lipschitz(self) -> float:
        """A bound G on every stochastic subgradient norm: max_i ||x_i|| + l1 sqrt(dim)."""
        x = np.asarray(self.data.x, dtype=np.float64)
        return float(np.linalg.norm(x, axis=1).max() + self.l1 * math.sqrt(self.dim))


def _margins_loss(kind: str, w, x, y):
    z = jnp.sum(x * w, axis=-1)  # not x @ w: under vmap that is a batched tiny matmul, slow on CPU
    if kind == "lad":
        return jnp.abs(z - y)
    if kind == "hinge":
        return jnp.maximum(1.0 - y * z, 0.0)
    return jnp.logaddexp(0.0, -y * z)  # logistic


def objective(problem: Problem, w: jax.Array, batch: Dataset | None = None) -> jax.Array:
    """Mean loss over `batch` (default: all data) plus the l1 term, at the point w [dim]."""
    x, y = problem.data if batch is None else batch
    value = jnp.mean(_margins_loss(problem.kind, w, x, y))
    return value + problem.l1 * jnp.sum(jnp.abs(w)) if problem.l1 else value


def _np_objective(kind: str, l1: float, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ w
    losses = {"lad": lambda: np.abs(z - y), "hinge": lambda: np.maximum(1 - y * z, 0),
              "logistic": lambda: np.logaddexp(0, -y * z)}[kind]()
    return float(losses.mean() + l1 * np.abs(w).sum())


def _make_data(seed: int, n: int, dim: int, labels: bool, noise: float):
    if n < 2 or dim < 1:
        raise ValueError(f"need n >= 2 and dim >= 1, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
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


def least_absolute_deviations(seed: int = 0, n: int = 400, dim: int = 10, noise: float = 0.5,
                              dtype=None) -> Problem:
    """LAD regression; exact optimum from the LP min mean(e) s.t. -e <= Xw - y <= e."""
    x, y = _make_data(seed, n, dim, labels=False, noise=noise)
    eye = np.eye(n)
    a_ub = np.block([[x, -eye], [-x, -eye]])
    b_ub = np.concatenate([y, -y])
    c = np.concatenate([np.zeros(dim), np.full(n, 1.0 / n)])
    res = _solve_lp(c, a_ub, b_ub, [(None, None)] * dim + [(0, None)] * n, "LAD")
    return _as_problem("least absolute deviations", "lad", 0.0, x, y, res.x[:dim],
                       dtype or jnp.result_type(float))


def hinge_svm(seed: int = 0, n: int = 400, dim: int = 10, l1: float = 0.01, noise: float = 0.5,
              dtype=None) -> Problem:
    """L1-regularised hinge-loss SVM; exact optimum from the LP over w = u - v and slacks xi:
    min mean(xi) + l1 sum(u + v) s.t. xi_i >= 1 - y_i x_i.(u - v), u, v, xi >= 0."""
    if l1 < 0:
        raise ValueError(f"l1 must be >= 0, got {l1}")
    x, y = _make_data(seed, n, dim, labels=True, noise=noise)
    yx = y[:, None] * x
    a_ub = np.hstack([-yx, yx, -np.eye(n)])
    c = np.concatenate([np.full(2 * dim, l1), np.full(n, 1.0 / n)])
    res = _solve_lp(c, a_ub, -np.ones(n), [(0, None)] * (2 * dim + n), "hinge SVM")
    w_star = res.x[:dim] - res.x[dim:2 * dim]
    return _as_problem("hinge-loss SVM", "hinge", l1, x, y, w_star, dtype or jnp.result_type(float))


def l1_logistic(seed: int = 0, n: int = 400, dim: int = 10, l1: float = 0.02, noise: float = 1.0,
                dtype=None) -> Problem:
    """L1-regularised logistic regression, solved by L-BFGS-B on w = u - v (u, v >= 0), where
    the objective is smooth, to gradient tolerance 1e-12 (checked against KKT in the tests)."""
    if l1 <= 0:
        raise ValueError(f"l1 must be > 0 (with l1 = 0 use an unregularised solver), got {l1}")
    x, y = _make_data(seed, n, dim, labels=True, noise=noise)

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


def make_problem(kind: str, seed: int = 0, n: int = 400, dim: int = 10) -> Problem:
    """One of the problems by short name: "lad", "hinge" or "logistic"."""
    if kind not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {kind!r}")
    return PROBLEMS[kind](seed=seed, n=n, dim=dim)
