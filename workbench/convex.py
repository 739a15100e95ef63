"""Convex non-smooth problems with exact optima, and SGD vmapped over hundreds of seeds.

Problems (a `Problem` NamedTuple: data, a batch objective, its exact minimiser and value):
  - `least_absolute_deviations`: f(w) = mean |x_i.w - y_i|, an LP (scipy HiGHS);
  - `hinge_svm`: f(w) = mean max(0, 1 - y_i x_i.w) + l1 ||w||_1, an LP;
  - `l1_logistic`: f(w) = mean log(1 + exp(-y_i x_i.w)) + l1 ||w||_1, solved to ~1e-12 by
    L-BFGS-B on the split w = u - v, u, v >= 0 (a smooth bound-constrained problem).

`make_sgd(problem, schedule, steps=T)` compiles one SGD run (lax.scan over steps) and its vmap
over seeds; each run records the last iterate, the uniform average and the suffix average at a
log-spaced set of T, so one compiled call gives the whole suboptimality-vs-T curve for every seed.

`harvey_gd(T)` is the Harvey, Liaw, Plan, Randhawa (2019) construction on which deterministic
gradient descent with steps 1/sqrt(t) has a last iterate Theta(log T / sqrt T) above the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from workbench.data import Dataset
from workbench.schedules import last_iterate_bound, scaled, values

__all__ = [
    "Problem", "least_absolute_deviations", "hinge_svm", "l1_logistic", "objective",
    "log_steps", "sample_indices", "SAMPLE_BLOCK", "SGDRunner", "Trace", "make_sgd", "suboptimality", "run_sgd", "SGDResult",
    "quantiles", "make_problem", "compare_schedules", "PROBLEMS", "HarveyResult", "harvey_gd", "harvey_value",
]


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


def log_steps(total_steps: int, num: int = 25) -> np.ndarray:
    """About `num` distinct, log-spaced integers in [1, total_steps], ending at total_steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return np.unique(np.round(np.geomspace(1, total_steps, num)).astype(np.int64))


SAMPLE_BLOCK = 256  # steps whose example indices are drawn in one call


def sample_indices(key: jax.Array, block: int | jax.Array, n: int, batch_size: int) -> jax.Array:
    """Example indices [SAMPLE_BLOCK, batch_size] of steps block*SAMPLE_BLOCK + (0..255), drawn
    uniformly with replacement from fold_in(key, block)."""
    return jax.random.randint(jax.random.fold_in(key, block), (SAMPLE_BLOCK, batch_size), 0, n)


class Trace(NamedTuple):
    """Iterates of one run (or [seeds, ...] of many) at the record steps: [K, dim] each."""

    last: jax.Array  # x_T
    uniform: jax.Array  # mean of x_1..x_T
    suffix: jax.Array  # mean of x_{T-m+1}..x_T, m = ceil(suffix_fraction * T)


class SGDRunner(NamedTuple):
    """`run_one(key) -> Trace` (jitted, one seed); `run_many(keys[seeds]) -> Trace` with a
    leading seed axis (jit of vmap: one compiled call for every seed); the record steps T."""

    run_one: Callable[[jax.Array], Trace]
    run_many: Callable[[jax.Array], Trace]
    record_at: np.ndarray
    lrs: jax.Array  # the schedule's values at steps 0..steps-1
    run_many_with: Callable[[jax.Array, jax.Array], Trace]  # (keys, lrs): another schedule,
    # same compiled code (lrs of the same length, e.g. from `schedules.values`)


def make_sgd(problem: Problem, schedule: Callable, *, steps: int, batch_size: int = 1,
             record_at: Sequence[int] | None = None, suffix_fraction: float = 0.5,
             x0: jax.Array | None = None, radius: float | None = None) -> SGDRunner:
    """Compile SGD x_{t+1} = P(x_t - schedule(t) g_t) on `problem` (t = 0..steps-1).

    g_t is the subgradient (jax.grad) of the objective on `batch_size` examples drawn uniformly
    with replacement (`sample_indices`, a block of steps at a time); P projects onto the ball of `radius` around 0 (no
    projection by default). Averages are kept as prefix sums saved at the record steps (and
    the suffix starts), so each step costs O(dim) beyond the gradient, whatever the number of
    record steps. `record_at` defaults to `log_steps(steps)`.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 < suffix_fraction <= 1.0:
        raise ValueError(f"suffix_fraction must lie in (0, 1], got {suffix_fraction}")
    if radius is not None and not radius > 0:
        raise ValueError(f"radius must be positive or None, got {radius}")
    record = np.asarray(log_steps(steps) if record_at is None else record_at, dtype=np.int64)
    if record.ndim != 1 or record.size == 0 or np.any(np.diff(record) <= 0) \
            or record[0] < 1 or record[-1] > steps:
        raise ValueError(f"record_at must be increasing integers in [1, steps={steps}], got {record}")
    dim, n = problem.dim, len(problem.data)
    dtype = problem.data.x.dtype
    x_init = jnp.zeros(dim, dtype) if x0 is None else jnp.asarray(x0, dtype)
    if x_init.shape != (dim,):
        raise ValueError(f"x0 must have shape ({dim},), got {x_init.shape}")

    lengths = np.maximum(1, np.ceil(suffix_fraction * record).astype(np.int64))
    starts = record - lengths  # suffix of T covers iterates starts+1..T
    saved = np.unique(np.concatenate([record, starts[starts > 0]]))
    # saved iterate i is iterate number saved[i] = step saved[i] - 1 of block (saved[i]-1)//B
    saved_block = jnp.asarray((saved - 1) // SAMPLE_BLOCK)
    saved_offset = jnp.asarray((saved - 1) % SAMPLE_BLOCK)
    grad = jax.grad(lambda w, batch: objective(problem, w, batch))

    lrs = jnp.asarray(values(schedule, steps), dtype)  # validates: finite, non-negative

    def run(key, lrs):
        def body(carry, step_and_idx):
            t, idx, lr = step_and_idx
            x, total = carry
            g = grad(x, problem.data.take(idx))
            x = x - lr * g
            if radius is not None:
                x = x * jnp.minimum(1.0, radius / jnp.maximum(jnp.linalg.norm(x), 1e-30))
            total = total + x
            return (x, total), (x, total)

        def run_block(carry, b, block_lrs, length):
            # one batched draw of indices per block (far cheaper than a draw per step); the
            # block's iterates come out as scan outputs and only the saved ones are kept, so
            # no per-step scatter into a buffer (slow under vmap)
            (x, total, xs, sums) = carry
            idx = sample_indices(key, b, n, batch_size)[:length]
            (x, total), (bx, bsum) = jax.lax.scan(
                body, (x, total), (b * SAMPLE_BLOCK + jnp.arange(length), idx, block_lrs))
            here = (saved_block == b)[:, None]
            rows = jnp.minimum(saved_offset, length - 1)
            xs = jnp.where(here, bx[rows], xs)
            sums = jnp.where(here, bsum[rows], sums)
            return (x, total, xs, sums)

        buf = jnp.zeros((saved.size, dim), dtype)
        carry = (x_init, jnp.zeros(dim, dtype), buf, buf)
        full_blocks, rest = divmod(steps, SAMPLE_BLOCK)
        lr_blocks = lrs[:full_blocks * SAMPLE_BLOCK].reshape(full_blocks, SAMPLE_BLOCK)
        carry, _ = jax.lax.scan(lambda c, b_lr: (run_block(c, *b_lr, SAMPLE_BLOCK), None), carry,
                                (jnp.arange(full_blocks), lr_blocks))
        if rest:
            carry = run_block(carry, jnp.asarray(full_blocks), lrs[full_blocks * SAMPLE_BLOCK:], rest)
        _, _, xs, sums = carry
        pos = jnp.asarray(np.searchsorted(saved, record))
        pos_start = jnp.asarray(np.searchsorted(saved, np.maximum(starts, 1)))
        start_sums = jnp.where(jnp.asarray(starts > 0)[:, None], sums[pos_start], 0.0)
        uniform = sums[pos] / jnp.asarray(record, dtype)[:, None]
        suffix = (sums[pos] - start_sums) / jnp.asarray(lengths, dtype)[:, None]
        return Trace(xs[pos], uniform, suffix)

    run_jit = jax.jit(run)
    many_jit = jax.jit(jax.vmap(run, in_axes=(0, None)))

    def run_many_with(keys, other_lrs):
        other_lrs = jnp.asarray(values(np.asarray(other_lrs), steps), dtype)
        return many_jit(keys, other_lrs)

    return SGDRunner(lambda key: run_jit(key, lrs), lambda keys: many_jit(keys, lrs), record,
                     lrs, run_many_with)


def suboptimality(problem: Problem, trace: Trace) -> Trace:
    """f(point) - f* for every point of a trace (any leading axes), as float64 numpy arrays."""
    f = jax.jit(lambda pts: jax.lax.map(lambda w: objective(problem, w),
                                        pts.reshape(-1, problem.dim), batch_size=256))
    return Trace(*(np.asarray(f(p), np.float64).reshape(p.shape[:-1]) - problem.f_star
                   for p in trace))


class SGDResult(NamedTuple):
    """Suboptimality [seeds, K] of the last iterate and the two averages at steps T [K]."""

    steps: np.ndarray
    last: np.ndarray
    uniform: np.ndarray
    suffix: np.ndarray


def run_sgd(problem: Problem, schedule: Callable, *, steps: int, num_seeds: int,
            key: jax.Array, **kwargs) -> SGDResult:
    """`num_seeds` SGD runs in one compiled call (`make_sgd`), evaluated against f*."""
    if not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
    runner = make_sgd(problem, schedule, steps=steps, **kwargs)
    gaps = suboptimality(problem, runner.run_many(jax.random.split(key, num_seeds)))
    return SGDResult(runner.record_at, *gaps)


PROBLEMS = {"lad": least_absolute_deviations, "hinge": hinge_svm, "logistic": l1_logistic}


def make_problem(kind: str, seed: int = 0, n: int = 400, dim: int = 10) -> Problem:
    """One of the problems by short name: "lad", "hinge" or "logistic"."""
    if kind not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {kind!r}")
    return PROBLEMS[kind](seed=seed, n=n, dim=dim)


def compare_schedules(problem: Problem, shapes: dict[str, Callable[[int], Callable]], *,
                      steps: int, num_seeds: int, key: jax.Array, lr_factor: float = 1.0,
                      **kwargs) -> dict[str, SGDResult]:
    """SGD from x0 = 0 with each schedule shape (T -> schedule), scaled to minimise its
    last-iterate bound for D = ||w*|| and constant norms G = `problem.lipschitz`, times
    `lr_factor` (the worst-case G makes that scale cautious); every schedule sees the same seeds
    (same sampled examples) and runs through the same compiled code."""
    if not lr_factor > 0:
        raise ValueError(f"lr_factor must be positive, got {lr_factor}")
    D = float(np.linalg.norm(problem.w_star))
    G = problem.lipschitz
    keys = jax.random.split(key, num_seeds)
    runner, out = None, {}
    for name, make in shapes.items():
        shape = make(steps)
        scale = lr_factor * last_iterate_bound(shape, np.full(steps, G), D).scale
        if runner is None:  # compiled once; the other schedules reuse it through run_many_with
            runner = make_sgd(problem, scaled(shape, scale), steps=steps, **kwargs)
        trace = runner.run_many_with(keys, values(scaled(shape, scale), steps))
        out[name] = SGDResult(runner.record_at, *suboptimality(problem, trace))
    return out


def quantiles(values: np.ndarray, qs: Sequence[float] = (0.5, 0.9, 0.95)) -> np.ndarray:
    """Quantiles across seeds (axis 0): [len(qs), K]."""
    return np.quantile(np.asarray(values), np.asarray(qs), axis=0)


class HarveyResult(NamedTuple):
    """Suboptimality (f* = 0) after T steps: last iterate, uniform and suffix (last half) average."""

    steps: np.ndarray
    last: np.ndarray
    uniform: np.ndarray
    suffix: np.ndarray


def _harvey_coefficients(T: int) -> tuple[np.ndarray, np.ndarray]:
    j = np.arange(1, T + 1, dtype=np.float64)
    return 1.0 / (8.0 * (T - j + 1.0)), np.sqrt(j) / (2.0 * math.sqrt(T))


def harvey_value(x: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f(x), first maximising index) for f(x) = max_{i=1..T+1} h_i.x, in O(T) via a cumsum:
    h_i.x = sum_{j<i} a_j x_j - b_i x_i for i <= T and h_{T+1}.x = sum_j a_j x_j (0-based i)."""
    prefix = jnp.cumsum(a * x)
    vals = jnp.concatenate([prefix - a * x - b * x, prefix[-1:]])
    top = jnp.max(vals)
    # the construction's oracle: the smallest maximising index. The ties it relies on are exact
    # in exact arithmetic, but a blocked cumsum can round tied prefixes differently, so ties are
    # taken within 1e-10 (the true gaps are >= b_1 / (4 sqrt T) ~ 1/(8T), far larger).
    i = jnp.argmax(vals >= top - 1e-10)
    return top, i


def harvey_gd(horizons: Sequence[int]) -> HarveyResult:
    """Deterministic projected GD with eta_t = 1/sqrt(t) on Harvey et al.'s function, per T.

    For horizon T the function on the unit ball of R^T is f(x) = max_{i<=T+1} h_i.x with
    h_{i,j} = a_j (j < i), -b_i (j = i), 0 (j > i), a_j = 1/(8(T-j+1)), b_j = sqrt(j)/(2 sqrt T):
    1-Lipschitz, f(0) = 0 = f* (if every h_i.x < 0, h_1 forces x_1 > 0 and by induction every
    x_j > 0, so h_{T+1}.x > 0). From x_1 = 0 the oracle answers h_t at step t, coordinate t
    rises to eta_t b_t = 1/(2 sqrt T) and later falls by at most 1/(4 sqrt T), so
    f(x_{T+1}) >= sum_j a_j / (4 sqrt T) >= log(T) / (32 sqrt T), while the averages stay O(1/sqrt T).
    """
    out = []
    for T in horizons:
        T = int(T)
        if T < 2:
            raise ValueError(f"horizons must be >= 2, got {T}")
        a_np, b_np = _harvey_coefficients(T)
        a, b = jnp.asarray(a_np), jnp.asarray(b_np)
        out.append(_harvey_run(a, b))
    arr = np.asarray(out, dtype=np.float64)
    return HarveyResult(np.asarray(horizons, np.int64), arr[:, 0], arr[:, 1], arr[:, 2])


@jax.jit
def _harvey_run(a, b):
    T = a.shape[0]
    half = T - (T + 1) // 2  # suffix average over the last ceil(T/2) iterates

    def body(carry, t):  # t = 0..T-1 is step t+1
        x, total, tail = carry
        _, i = harvey_value(x, a, b)
        j = jnp.arange(T)
        h = jnp.where(j < i, a, 0.0) - jnp.where(j == i, b[jnp.minimum(i, T - 1)], 0.0)
        x = x - h / jnp.sqrt(t.astype(a.dtype) + 1.0)
        x = x * jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(x), 1e-30))
        return (x, total + x, tail + jnp.where(t >= half, 1.0, 0.0) * x), None

    zeros = jnp.zeros_like(a)
    (x, total, tail), _ = jax.lax.scan(body, (zeros, zeros, zeros), jnp.arange(T))
    f = lambda z: harvey_value(z, a, b)[0]
    return jnp.stack([f(x), f(total / T), f(tail / (T - half))])
