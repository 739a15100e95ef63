"""Learning-rate schedules as plain optax schedules, schedule refinement, and a last-iterate bound.

Every schedule here is a callable `step -> lr` (an `optax.Schedule`), so it drops into any optax
chain: `optax.sgd(linear_decay(0.1, 1000))`. Steps are 0-indexed: a run of T steps evaluates the
schedule at s = 0, ..., T-1.

`refine(grad_norms)` turns the gradient norms observed in one run into the schedule that minimises
the last-iterate bound for those norms (Defazio, Cutkosky, Mehta, Mishchenko 2023); with constant
norms it is linear decay, with norms that fall early and rise late it grows a warm-up and a fast
anneal. `last_iterate_bound(schedule, grad_norms, D)` evaluates that bound, so schedules can be
compared without training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage
import scipy.optimize

Schedule = Callable[[jax.Array | int], jax.Array]

__all__ = [
    "constant", "inverse_sqrt", "linear_decay", "cosine", "wsd", "step", "from_values", "scaled",
    "values", "refine", "Refined", "last_iterate_bound", "Bound", "standard_shapes",
    "custom_shape", "bound_curve", "grad_norm_callback", "per_step", "digits_refinement",
    "RefinementResult", "ScheduleRun",
]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float | np.floating | np.integer) and math.isfinite(value)
            and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _as_float(s) -> jax.Array:
    """The step as the default float dtype (strict dtype promotion forbids int + float)."""
    return jnp.asarray(s).astype(jnp.result_type(float))


def _with_warmup(peak: float, warmup_steps: int, body: Schedule) -> Schedule:
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then `body` (counted from its own 0)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return _float_step(body)
    warm = optax.linear_schedule(0.0, peak, warmup_steps)
    return _float_step(optax.join_schedules([warm, body], [warmup_steps]))


def _float_step(schedule: Schedule) -> Schedule:
    """optax's schedules mix the integer count with floats, which strict promotion rejects."""
    return lambda s: schedule(_as_float(s))


def constant(value: float = 1.0) -> Schedule:
    """lr(s) = value."""
    _check_positive("value", value)
    return lambda s: jnp.full(jnp.shape(s), value, jnp.result_type(float))


def inverse_sqrt(peak: float = 1.0) -> Schedule:
    """lr(s) = peak / sqrt(s + 1): the classical anytime step size ~ 1/sqrt(t)."""
    _check_positive("peak", peak)
    return lambda s: peak / jnp.sqrt(_as_float(s) + 1.0)


def linear_decay(peak: float, total_steps: int, warmup_steps: int = 0) -> Schedule:
    """lr(s) = peak * (1 - s / T) for s <= T (after an optional linear warm-up), 0 afterwards.

    Over steps s = 0..T-1 this is the paper's eta_t = 1 - t/(T+1) (t = s+1) up to a constant
    factor, the schedule that is worst-case optimal for the last iterate.
    """
    _check_positive("peak", peak)
    _check_steps("total_steps", total_steps)
    body = optax.linear_schedule(peak, 0.0, max(total_steps - warmup_steps, 1))
    return _with_warmup(peak, warmup_steps, body)


def cosine(peak: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> Schedule:
    """Half-cosine from `peak` to `final` over `total_steps` (after an optional linear warm-up)."""
    _check_positive("peak", peak)
    _check_steps("total_steps", total_steps)
    if not 0.0 <= final <= peak:
        raise ValueError(f"final must lie in [0, peak={peak}], got {final}")
    decay_steps = max(total_steps - warmup_steps, 1)

    def body(s):
        u = jnp.clip(s / decay_steps, 0.0, 1.0)
        return final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * u))

    return _with_warmup(peak, warmup_steps, body)


def wsd(peak: float, total_steps: int, cooldown_fraction: float = 0.2, cooldown: str = "linear",
        warmup_steps: int = 0) -> Schedule:
    """Warmup-stable-decay: hold `peak`, then cool down to 0 over the last `cooldown_fraction`.

    cooldown="linear": peak * (1 - u); cooldown="1-sqrt": peak * (1 - sqrt(u)), with u in [0, 1]
    the fraction of the cooldown done.
    """
    _check_positive("peak", peak)
    _check_steps("total_steps", total_steps)
    if not 0.0 < cooldown_fraction <= 1.0:
        raise ValueError(f"cooldown_fraction must lie in (0, 1], got {cooldown_fraction}")
    if cooldown not in ("linear", "1-sqrt"):
        raise ValueError(f"cooldown must be 'linear' or '1-sqrt', got {cooldown!r}")
    cool_steps = max(int(round(cooldown_fraction * total_steps)), 1)
    start = total_steps - cool_steps
    if start < warmup_steps:
        raise ValueError(f"warmup_steps={warmup_steps} overlaps the cooldown, which starts at "
                         f"step {start}")

    def schedule(s):
        u = jnp.clip((_as_float(s) - start) / cool_steps, 0.0, 1.0)
        shape = 1.0 - (u if cooldown == "linear" else jnp.sqrt(u))
        warm = jnp.clip(_as_float(s) / warmup_steps, 0.0, 1.0) if warmup_steps else 1.0
        return peak * warm * shape

    return schedule


def step(peak: float, total_steps: int, boundaries: Sequence[float] = (0.5, 0.75),
         factor: float = 0.1) -> Schedule:
    """Piecewise constant: `peak`, multiplied by `factor` at each boundary (fractions of T)."""
    _check_positive("peak", peak)
    _check_steps("total_steps", total_steps)
    _check_positive("factor", factor)
    if any(not 0.0 < b < 1.0 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {boundaries}")
    return _float_step(optax.piecewise_constant_schedule(
        peak, {int(round(b * total_steps)): factor for b in boundaries}))


def from_values(lrs) -> Schedule:
    """The schedule that takes value lrs[s] at step s (and lrs[-1] after the end)."""
    table = np.asarray(lrs, dtype=np.float64)
    if table.ndim != 1 or table.size == 0:
        raise ValueError(f"lrs must be a non-empty 1-D array, got shape {table.shape}")
    if not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError("lrs must be finite and non-negative")
    table = jnp.asarray(table, dtype=jnp.result_type(float))
    return lambda s: table[jnp.clip(jnp.asarray(s), 0, table.shape[0] - 1)]


def scaled(schedule: Schedule, factor: float) -> Schedule:
    """factor * schedule(s)."""
    _check_positive("factor", factor)
    return lambda s: factor * schedule(s)


def values(schedule: Schedule | Sequence[float] | np.ndarray, total_steps: int) -> np.ndarray:
    """The schedule's values at steps 0..T-1 as float64 numpy; raises if any is negative or NaN.

    An array is passed through (it must have length T).
    """
    _check_steps("total_steps", total_steps)
    if callable(schedule):
        out = np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)), dtype=np.float64)
    else:
        out = np.asarray(schedule, dtype=np.float64)
        if out.shape != (total_steps,):
            raise ValueError(f"schedule array must have shape ({total_steps},), got {out.shape}")
    if out.shape != (total_steps,):
        raise ValueError(f"schedule must return one scalar per step, got shape {out.shape[1:]}")
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"schedule is not finite at step {bad}: {out[bad]}")
    if np.any(out < 0):
        bad = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"schedule goes negative at step {bad}: {out[bad]:.3g}; a learning rate "
                         "must be >= 0")
    return out


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


class Refined(NamedTuple):
    """A refined schedule: `values[s]` for steps 0..T-1 (peak 1), the median-filtered norms the
    weights came from, and `schedule`, the same values as an optax schedule (multiply by your peak
    learning rate with `scaled(refined.schedule, peak)`)."""

    values: np.ndarray
    smoothed_norms: np.ndarray
    schedule: Schedule


def refine(grad_norms, tau: float = 0.1, window: int | None = None) -> Refined:
    """Schedule refinement from observed gradient norms (Defazio et al. 2023, from the math).

    g_hat = median filter of `grad_norms` over a centred window of ceil(tau * T) steps (rounded
    up to odd; edges padded with the nearest value); w_t = 1 / g_hat_t^2; eta_t = w_t * sum_{p > t} w_p, normalised to peak 1.
    This minimises the last-iterate bound of `last_iterate_bound` for those norms up to the
    choice of final weight: with constant norms eta_s = (T-1-s)/(T-1), i.e. linear decay to zero
    (`linear_decay(1, T)` is (T-s)/T, the same line shifted by one step). Rising norms late in
    training give a faster anneal, large early norms give a warm-up. The last step is 0.
    """
    g = _check_grad_norms(grad_norms, strictly_positive=True)
    num_steps = g.size
    if not (isinstance(tau, int | float) and 0.0 < tau <= 1.0):
        raise ValueError(f"tau must lie in (0, 1], got {tau!r}")
    if window is None:
        window = max(1, math.ceil(tau * num_steps))
    if not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if num_steps < window:
        raise ValueError(f"grad_norms has T={num_steps} steps, fewer than the median-filter window "
                         f"{window}; pass more steps or a smaller window")
    window = int(window) | 1  # odd, so the window is centred and the median is one element
    smoothed = scipy.ndimage.median_filter(g, size=window, mode="nearest")
    w = 1.0 / smoothed**2
    tail = np.cumsum(w[::-1])[::-1]  # tail[t] = sum_{p >= t} w_p
    eta = w * (tail - w)  # w_t * sum_{p > t} w_p
    peak = eta.max()
    if peak <= 0:  # T == 1: no step after the first
        eta = np.ones_like(eta)
    else:
        eta = eta / peak
    return Refined(eta, smoothed, from_values(eta))


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

    `schedule` is an optax schedule (evaluated at steps 0..T-1, T = len(grad_norms)) or an array.
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


def standard_shapes(cooldown_fraction: float = 0.2) -> dict[str, Callable[[int], Schedule]]:
    """Name -> (T -> schedule with peak 1): the schedules the papers compare."""
    return {
        "constant": lambda T: constant(1.0),
        "1/sqrt(t)": lambda T: inverse_sqrt(1.0),
        "linear decay": lambda T: linear_decay(1.0, T),
        "cosine": lambda T: cosine(1.0, T),
        "wsd (linear)": lambda T: wsd(1.0, T, cooldown_fraction, "linear"),
        "wsd (1-sqrt)": lambda T: wsd(1.0, T, cooldown_fraction, "1-sqrt"),
        "step (x0.1 at 50%, 75%)": lambda T: step(1.0, T),
    }


def custom_shape(warmup_fraction: float = 0.0, cooldown_fraction: float = 1.0,
                 cooldown: str = "linear") -> Callable[[int], Schedule]:
    """T -> warm-up over `warmup_fraction` of T, hold, then cool down over `cooldown_fraction`
    of T ("linear" or "1-sqrt"): a family that spans constant, linear decay and WSD."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
    if not 0.0 < cooldown_fraction <= 1.0 - warmup_fraction:
        raise ValueError(f"cooldown_fraction must lie in (0, 1 - warmup_fraction], got "
                         f"{cooldown_fraction}")
    return lambda T: wsd(1.0, T, cooldown_fraction, cooldown, int(warmup_fraction * T))


def bound_curve(make_schedule: Callable[[int], Schedule | np.ndarray], horizons: Sequence[int],
                grad_norms: Callable[[int], np.ndarray] | None = None, D: float = 1.0,
                G: float = 1.0) -> np.ndarray:
    """last_iterate_bound * sqrt(T) / (D G) for each horizon T, at the best scale.

    `make_schedule(T)` gives the schedule (or values) for horizon T; `grad_norms(T)` the norms
    (default: constant G). Linear decay gives ~2 for every T; anytime schedules grow like log T.
    """
    out = []
    for T in horizons:
        _check_steps("horizon", int(T))
        g = np.full(int(T), G) if grad_norms is None else grad_norms(int(T))
        out.append(last_iterate_bound(make_schedule(int(T)), g, D).bound * math.sqrt(T) / (D * G))
    return np.asarray(out)


def grad_norm_callback(loss_fn: Callable, data, batch_size: int | None, key: jax.Array,
                       num_batches: int = 8) -> Callable:
    """A `train` callback returning {"grad_norm": sqrt(mean_b ||grad loss(params, batch_b)||^2)}
    over `num_batches` random minibatches (fresh per step): an estimate of the stochastic gradient
    norm sqrt(E ||g_t||^2) that the last-iterate bound uses. batch_size=None: full batch."""
    from workbench.data import num_examples
    from workbench.tree import vdot

    n = num_examples(data)
    full = batch_size is None or batch_size >= n

    @jax.jit
    def norm(params, step):
        if full:
            g = jax.grad(loss_fn)(params, data)
            return jnp.sqrt(vdot(g, g))
        idx = jax.random.randint(jax.random.fold_in(key, step), (num_batches, batch_size), 0, n)
        sq = jax.vmap(lambda i: (lambda g: vdot(g, g))(jax.grad(loss_fn)(
            params, jax.tree.map(lambda a: a[i], data))))(idx)
        return jnp.sqrt(jnp.mean(sq))

    return lambda step, params: {"grad_norm": norm(params, step)}


def per_step(at_steps, at_values, total_steps: int) -> np.ndarray:
    """Values recorded at some steps, linearly interpolated to every step 0..T-1."""
    return np.interp(np.arange(total_steps), np.asarray(at_steps), np.asarray(at_values))


class ScheduleRun(NamedTuple):
    lrs: np.ndarray  # learning rate at each step
    history: dict  # `train` history (minibatch loss per step, ...)
    final_loss: float  # full-batch training loss of the final params
    test_accuracy: float


class RefinementResult(NamedTuple):
    grad_norms: np.ndarray  # per step, from the linear-decay run
    refined: Refined
    runs: dict[str, ScheduleRun]  # "linear decay", "cosine", "refined"


def digits_refinement(model: str = "logreg", steps: int = 1000, peak_lr: float = 0.5,
                      batch_size: int = 32, seed: int = 0, tau: float = 0.1,
                      norm_every: int = 10) -> RefinementResult:
    """Refinement on digits: train with SGD + linear decay, recording gradient norms every
    `norm_every` steps, refine them into a schedule, then train from the same initialisation
    and batch order with the refined schedule, linear decay and cosine (all at `peak_lr`)."""
    from flax import nnx

    from workbench.data import load_digits
    from workbench.models import MLP, LogisticRegression, accuracy, functional
    from workbench.train import train

    if model not in ("logreg", "mlp"):
        raise ValueError(f"model must be 'logreg' or 'mlp', got {model!r}")
    _check_positive("peak_lr", peak_lr)
    train_data, test_data = load_digits(seed=seed)
    net = (LogisticRegression(64, 10, rngs=nnx.Rngs(seed)) if model == "logreg"
           else MLP(64, [32], 10, rngs=nnx.Rngs(seed)))
    f = functional(net)
    key = jax.random.key(seed)

    def fit(schedule, callback=None):
        res = train(f.loss_fn, f.params, train_data, key, optimizer=optax.sgd(schedule), num_steps=steps, batch_size=batch_size, callback=callback, callback_every=norm_every if callback else 0, progress=False)
        final = float(f.loss_fn(res.params, train_data))
        acc = accuracy(f.predict_fn, res.params, test_data)
        return res, ScheduleRun(values(schedule, steps), res.history, final, acc)

    linear = linear_decay(peak_lr, steps)
    callback = grad_norm_callback(f.loss_fn, train_data, batch_size, jax.random.fold_in(key, 1))
    res, linear_run = fit(linear, callback)
    norms = per_step(res.history["callback_step"], res.history["grad_norm"], steps)
    refined = refine(norms, tau=tau)
    runs = {"linear decay": linear_run, "cosine": fit(cosine(peak_lr, steps))[1],
            "refined": fit(scaled(refined.schedule, peak_lr))[1]}
    return RefinementResult(norms, refined, runs)
