"""The last-iterate bound of (stochastic) subgradient descent for a schedule and observed
gradient norms, and its growth over horizons."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.optimize

from workbench.core.numerics import check_positive_int
from workbench.schedules.shapes import Schedule, _check_positive, values


def _check_grad_norms(grad_norms, strictly_positive: bool) -> np.ndarray:
    g = np.asarray(grad_norms, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grad_norms must be a non-empty 1-D array, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        bad = int(np.flatnonzero(~np.isfinite(g))[0])
        raise ValueError(f"grad_norms must be finite; entry {bad} is {g[bad]}")
    bad_mask = g <= 0 if strictly_positive else g < 0
    if np.any(bad_mask):
        bad = int(np.flatnonzero(bad_mask)[0])
        need = "positive" if strictly_positive else "non-negative"
        raise ValueError(f"grad_norms must be {need}; entry {bad} is {g[bad]}")
    return g


class Bound(NamedTuple):
    """The last-iterate bound and the schedule scale and final weight it was evaluated at."""

    bound: float
    scale: float
    last_weight: float


def _bound_parts(eta: np.ndarray, g2: np.ndarray) -> tuple[float, float, float]:
    """(S_1, sum eta^2 g^2, E) of the bound for unit scale; see `last_iterate_bound`."""
    tail = np.cumsum(eta[::-1])[::-1]  # S_k = sum_{t >= k} eta_t
    q = np.cumsum((eta**2 * g2)[::-1])[::-1]  # Q_k = sum_{t >= k} eta_t^2 g_t^2
    k = slice(0, eta.size - 1)
    extra = 0.5 * np.sum(eta[k] / (tail[1:] * tail[k]) * q[k])
    return float(tail[0]), float(q[0]), float(extra)


def last_iterate_bound(schedule, grad_norms, D: float, *, optimal_scale: bool = True) -> Bound:
    """Bound on f(x_T) - f* for (stochastic) subgradient descent x_{t+1} = x_t - eta_t g_t.

    With eta_1..eta_T the schedule at steps 0..T-1, g_t = ||g_t|| the gradient norms, D = ||x_1 - x*||,
    S_k = sum_{t=k}^T eta_t and Q_k = sum_{t=k}^T eta_t^2 g_t^2:

        f(x_T) - f* <= (D^2 + Q_1) / (2 S_1) + 1/2 sum_{k=1}^{T-1} eta_k / (S_{k+1} S_k) * Q_k.

    Derivation (convexity only; in expectation for unbiased stochastic gradients). For any u and
    k, the regret of the steps k..T is sum_{t=k}^T eta_t (f(x_t) - f(u)) <= ||x_k - u||^2 / 2 +
    Q_k / 2. For any q_t and positive weights eta_t, writing A_k = sum_{t>=k} eta_t q_t / S_k,
    A_{k+1} - A_k = eta_k (A_k - q_k) / S_{k+1}, which telescopes to
    q_T = A_1 + sum_{k<T} eta_k / S_{k+1} * (A_k - q_k). With q_t = f(x_t) - f*, u = x* bounds A_1
    and u = x_k bounds A_k - q_k, giving the formula.

    x_T does not depend on eta_T (the step taken from it), which enters only as the weight of the
    last iterate; any positive value gives a valid bound, so it is chosen to minimise the bound
    (this also makes schedules that end at 0, such as `refine`'s, well defined). The bound is
    a/c + b*c in a common scale c of the schedule; `optimal_scale=True` (default) returns the
    minimum over c, 2*sqrt(a*b), so schedules are compared by their shape. For linear decay and
    constant norms G it tends to 2 D G / sqrt(T); for constant and 1/sqrt(t) schedules it is of
    order D G log(T) / sqrt(T).

    Args:
        schedule: an optax schedule (evaluated at steps 0..T-1, T = len(grad_norms)) or an array
            of its T values, non-negative and not all zero.
        grad_norms: the gradient norms g_1..g_T [T], finite and non-negative (for stochastic
            gradients, sqrt(E ||g_t||^2)).
        D: the distance ||x_1 - x*|| from the start to a minimiser, positive.
        optimal_scale: if True (default), minimise over a common scale c of the schedule;
            if False, evaluate the schedule as given.

    Returns:
        `Bound(bound, scale, last_weight)`: the bound on f(x_T) - f*, the scale c it was taken
        at (1 when `optimal_scale=False`; inf when every norm is 0) and the weight chosen for
        the last step.

    Raises:
        ValueError: if the norms or the schedule are invalid, or the schedule is zero everywhere.
    """
    g = _check_grad_norms(grad_norms, strictly_positive=False)
    _check_positive("D", D)
    eta = values(schedule, g.size).copy()
    g2 = g**2
    top = eta.max()
    if top <= 0:
        raise ValueError("schedule is zero at every step; nothing to bound")

    def evaluate(last: float) -> tuple[float, float]:
        eta[-1] = last
        s1, q1, extra = _bound_parts(eta, g2)
        a, b = D**2 / (2 * s1), q1 / (2 * s1) + extra
        if optimal_scale:
            if b <= 0:  # zero gradients: the bound vanishes as the scale grows
                return 0.0, math.inf
            return 2.0 * math.sqrt(a * b), math.sqrt(a / b)
        return a + b, 1.0

    own = eta[-1]
    res = scipy.optimize.minimize_scalar(lambda z: evaluate(top * math.exp(z))[0],
                                         bounds=(math.log(1e-9), math.log(1e3)), method="bounded",
                                         options={"xatol": 1e-6})
    candidates = [top * math.exp(res.x)] + ([own] if own > 0 else [])
    best = min(candidates, key=lambda lam: evaluate(lam)[0])
    value, scale = evaluate(best)
    return Bound(value, scale, best)


def bound_curve(make_schedule: Callable[[int], Schedule | np.ndarray], horizons: Sequence[int],
                grad_norms: Callable[[int], np.ndarray] | None = None, D: float = 1.0,
                G: float = 1.0) -> np.ndarray:
    """last_iterate_bound * sqrt(T) / (D G) for each horizon T, at the best scale.

    Linear decay gives ~2 for every T; anytime schedules (constant, 1/sqrt(t)) grow like log T.

    Args:
        make_schedule: T -> the schedule (or its T values) for horizon T, e.g. a value of
            `standard_shapes()`.
        horizons: the horizons T, ints >= 1.
        grad_norms: T -> the gradient norms [T] for horizon T (default None: constant G).
        D: the distance to the optimum used in the bound and the normalisation (default 1).
        G: the norm used for the normalisation, and for the norms when `grad_norms` is None.

    Returns:
        The normalised bounds [len(horizons)], float64.
    """
    out = []
    for T in horizons:
        check_positive_int("horizon", int(T))
        g = np.full(int(T), G) if grad_norms is None else grad_norms(int(T))
        out.append(last_iterate_bound(make_schedule(int(T)), g, D).bound * math.sqrt(T) / (D * G))
    return np.asarray(out)




def log_slope(horizons: Sequence[int], curve) -> float:
    """The least-squares slope of `curve` against ln T: how much bound x sqrt(T) grows per unit
    of log T.

    A schedule whose last iterate pays a log factor (bound ~ c D G log(T) / sqrt(T), constant
    or 1/sqrt(t) steps) has a slope near c > 0 once T is large; linear decay and cosine, whose
    normalised bound tends to a constant, have a slope near 0. Pass the largest horizons only,
    where the curves are in their asymptotic regime.

    Args:
        horizons: the horizons T [H], at least two distinct values, each >= 1.
        curve: the values at those horizons [H] (e.g. a row of `bound_curve`), finite.

    Returns:
        The slope d curve / d ln T of the least-squares line, a float.

    Raises:
        ValueError: if the shapes differ, fewer than two distinct horizons are given, a horizon
            is below 1 or a value is not finite.
    """
    T = np.asarray(horizons, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if T.ndim != 1 or y.shape != T.shape:
        raise ValueError(f"horizons and curve must be 1-D of one length, got shapes {T.shape} and {y.shape}")
    if np.unique(T).size < 2 or np.any(T < 1):
        raise ValueError(f"horizons must hold at least two distinct values >= 1, got {T.tolist()}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"curve must be finite, got {y.tolist()}")
    return float(np.polyfit(np.log(T), y, 1)[0])
