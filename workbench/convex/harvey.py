"""The Harvey, Liaw, Plan, Randhawa (2019) lower-bound construction for the last iterate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.schedules import log_slope


class HarveyResult(NamedTuple):
    """Suboptimality (f* = 0) after T steps: last iterate, uniform and suffix (last half) average."""

    steps: np.ndarray
    last: np.ndarray
    uniform: np.ndarray
    suffix: np.ndarray

    def over_rate(self, kind: str = "last") -> np.ndarray:
        """Suboptimality x sqrt(T) / log T of `kind` ("last", "uniform" or "suffix"): the
        theorem bounds it below by 1/32 for the last iterate, while the averages tend to 0."""
        T = np.asarray(self.steps, dtype=np.float64)
        return np.asarray(getattr(self, kind)) * np.sqrt(T) / np.log(T)

    def log_growth(self, kind: str = "last") -> float:
        """The least-squares slope of suboptimality x sqrt(T) against ln T for `kind` ("last",
        "uniform" or "suffix"): about 1/32 or more for the last iterate, whose gap is
        Theta(log T / sqrt T), and near 0 for the averages, whose gap is O(1 / sqrt T)."""
        T = np.asarray(self.steps, dtype=np.float64)
        return log_slope(T, np.asarray(getattr(self, kind)) * np.sqrt(T))


class HarveyValue(NamedTuple):
    """f(x) on the Harvey construction and the smallest index i attaining the maximum."""

    value: jax.Array
    index: jax.Array


def _harvey_coefficients(T: int) -> tuple[np.ndarray, np.ndarray]:
    j = np.arange(1, T + 1, dtype=np.float64)
    return 1.0 / (8.0 * (T - j + 1.0)), np.sqrt(j) / (2.0 * math.sqrt(T))


def harvey_value(x: jax.Array, a: jax.Array, b: jax.Array) -> HarveyValue:
    """(f(x), first maximising index) for f(x) = max_{i=1..T+1} h_i.x, in O(T) via a cumsum:
    h_i.x = sum_{j<i} a_j x_j - b_i x_i for i <= T and h_{T+1}.x = sum_j a_j x_j (0-based i).

    Args:
        x: the point [T].
        a: the coefficients a_j [T] of the construction.
        b: the coefficients b_j [T].

    Returns:
        `HarveyValue(value, index)`: f(x), a scalar, and the smallest index attaining it (ties
        within 1/(32 T), a quarter of the smallest gap of the construction), int.
    """
    prefix = jnp.cumsum(a * x)
    vals = jnp.concatenate([prefix - a * x - b * x, prefix[-1:]])
    top = jnp.max(vals)
    # the construction's oracle: the smallest maximising index. The ties it relies on are exact
    # in exact arithmetic, but a blocked cumsum can round tied prefixes differently, so ties are
    # taken within a quarter of the smallest true gap, b_1 / (4 sqrt T) = 1/(8T): relative to the
    # problem, never an absolute 1e-10 that float32 rounding (~1e-7) exceeds.
    i = jnp.argmax(vals >= top - 1.0 / (32.0 * a.shape[0]))
    return HarveyValue(top, i)


def harvey_gd(horizons: Sequence[int], dtype=None) -> HarveyResult:
    """Deterministic projected GD with eta_t = 1/sqrt(t) on Harvey et al.'s function, per T.

    For horizon T the function on the unit ball of R^T is f(x) = max_{i<=T+1} h_i.x with
    h_{i,j} = a_j (j < i), -b_i (j = i), 0 (j > i), a_j = 1/(8(T-j+1)), b_j = sqrt(j)/(2 sqrt T):
    1-Lipschitz, f(0) = 0 = f* (if every h_i.x < 0, h_1 forces x_1 > 0 and by induction every
    x_j > 0, so h_{T+1}.x > 0). From x_1 = 0 the oracle answers h_t at step t, coordinate t
    rises to eta_t b_t = 1/(2 sqrt T) and later falls by at most 1/(4 sqrt T), so
    f(x_{T+1}) >= sum_j a_j / (4 sqrt T) >= log(T) / (32 sqrt T), while the averages stay O(1/sqrt T).

    Args:
        horizons: the horizons T, ints >= 2 (one compiled run per distinct T).
        dtype: the dtype of the run (default None: JAX's default float dtype).

    Returns:
        `HarveyResult(steps, last, uniform, suffix)`: the horizons and, for each, the
        suboptimality (f* = 0) of the last iterate, the uniform average and the suffix average
        (last ceil(T/2) iterates), float64.

    Raises:
        ValueError: if a horizon is below 2.
    """
    out = []
    for T in horizons:
        T = int(T)
        if T < 2:
            raise ValueError(f"horizons must be >= 2, got {T}")
        a_np, b_np = _harvey_coefficients(T)
        a, b = jnp.asarray(a_np, dtype), jnp.asarray(b_np, dtype)
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
    f = lambda z: harvey_value(z, a, b).value
    return jnp.stack([f(x), f(total / T), f(tail / (T - half))])
