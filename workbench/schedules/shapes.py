"""Learning-rate schedules as plain optax schedules (`step -> lr`), and the named families the
papers compare. Steps are 0-indexed: a run of T steps evaluates the schedule at s = 0, ..., T-1."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.core.numerics import check_positive_int

Schedule = Callable[[jax.Array | int], jax.Array]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float | np.floating | np.integer) and math.isfinite(value)
            and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_peak_and_horizon(peak: float, num_steps: int) -> None:
    _check_positive("peak", peak)
    check_positive_int("num_steps", num_steps)


def _as_float(s) -> jax.Array:
    """The step as the default float dtype (strict dtype promotion forbids int + float)."""
    return jnp.asarray(s).astype(jnp.result_type(float))


def _with_warmup(peak: float, warmup_steps: int, body: Schedule) -> Schedule:
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then `body` (counted from its own 0)."""
    warmup_steps = check_positive_int("warmup_steps", warmup_steps, least=0)
    if warmup_steps == 0:
        return _float_step(body)
    warm = optax.linear_schedule(0.0, peak, warmup_steps)
    return _float_step(optax.join_schedules([warm, body], [warmup_steps]))


def _float_step(schedule: Schedule) -> Schedule:
    """optax's schedules mix the integer count with floats, which strict promotion rejects."""
    return lambda s: schedule(_as_float(s))


def constant(value: float = 1.0) -> Schedule:
    """lr(s) = value at every step.

    Args:
        value: the learning rate, a positive finite number (default 1: a unit-peak shape).

    Returns:
        The schedule `step -> value` (broadcast to the step's shape, default float dtype).

    Raises:
        ValueError: if `value` is not positive and finite.
    """
    _check_positive("value", value)
    return lambda s: jnp.full(jnp.shape(s), value, jnp.result_type(float))


def inverse_sqrt(peak: float = 1.0) -> Schedule:
    """lr(s) = peak / sqrt(s + 1): the classical anytime step size ~ 1/sqrt(t).

    Args:
        peak: the learning rate at step 0, positive (default 1).

    Returns:
        The schedule `step -> peak / sqrt(step + 1)`.
    """
    _check_positive("peak", peak)
    return lambda s: peak / jnp.sqrt(_as_float(s) + 1.0)


def linear_decay(peak: float, num_steps: int, warmup_steps: int = 0) -> Schedule:
    """lr(s) = peak * (1 - s / T) for s <= T (after an optional linear warm-up), 0 afterwards.

    Over steps s = 0..T-1 this is the paper's eta_t = 1 - t/(T+1) (t = s+1) up to a constant
    factor, the schedule that is worst-case optimal for the last iterate.

    Args:
        peak: the learning rate at the start of the decay, positive.
        num_steps: the horizon T (steps of the run), an int >= 1.
        warmup_steps: steps of linear warm-up from 0 to `peak` before the decay (default 0: none);
            the decay then covers the remaining T - warmup_steps steps.

    Returns:
        The schedule `step -> lr`.

    Raises:
        ValueError: if `peak` is not positive or a step count is not a valid integer.
    """
    _check_peak_and_horizon(peak, num_steps)
    body = optax.linear_schedule(peak, 0.0, max(num_steps - warmup_steps, 1))
    return _with_warmup(peak, warmup_steps, body)


def cosine(peak: float, num_steps: int, warmup_steps: int = 0, final: float = 0.0) -> Schedule:
    """Half-cosine from `peak` to `final` over `num_steps` (after an optional linear warm-up).

    lr(s) = final + (peak - final) (1 + cos(pi u)) / 2 with u = s / (T - warmup_steps) clipped
    to [0, 1].

    Args:
        peak: the learning rate at the start of the decay, positive.
        num_steps: the horizon T, an int >= 1.
        warmup_steps: steps of linear warm-up from 0 to `peak` (default 0: none).
        final: the learning rate reached at the end, in [0, peak] (default 0).

    Returns:
        The schedule `step -> lr`.

    Raises:
        ValueError: if `peak` or `num_steps` is invalid, or `final` lies outside [0, peak].
    """
    _check_peak_and_horizon(peak, num_steps)
    if not 0.0 <= final <= peak:
        raise ValueError(f"final must lie in [0, peak={peak}], got {final}")
    decay_steps = max(num_steps - warmup_steps, 1)

    def body(s):
        u = jnp.clip(s / decay_steps, 0.0, 1.0)
        return final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * u))

    return _with_warmup(peak, warmup_steps, body)


def wsd(peak: float, num_steps: int, cooldown_fraction: float = 0.2, cooldown: str = "linear",
        warmup_steps: int = 0) -> Schedule:
    """Warmup-stable-decay: hold `peak`, then cool down to 0 over the last `cooldown_fraction`.

    cooldown="linear": peak * (1 - u); cooldown="1-sqrt": peak * (1 - sqrt(u)), with u in [0, 1]
    the fraction of the cooldown done.

    Args:
        peak: the learning rate held between warm-up and cool-down, positive.
        num_steps: the horizon T, an int >= 1.
        cooldown_fraction: the fraction of T spent cooling down, in (0, 1] (default 0.2).
        cooldown: the cool-down shape, "linear" or "1-sqrt".
        warmup_steps: steps of linear warm-up from 0 (default 0: none); must end before the
            cool-down starts.

    Returns:
        The schedule `step -> lr`.

    Raises:
        ValueError: if an argument is out of range or the warm-up overlaps the cool-down.
    """
    _check_peak_and_horizon(peak, num_steps)
    if not 0.0 < cooldown_fraction <= 1.0:
        raise ValueError(f"cooldown_fraction must lie in (0, 1], got {cooldown_fraction}")
    if cooldown not in ("linear", "1-sqrt"):
        raise ValueError(f"cooldown must be 'linear' or '1-sqrt', got {cooldown!r}")
    cool_steps = max(int(round(cooldown_fraction * num_steps)), 1)
    start = num_steps - cool_steps
    if start < warmup_steps:
        raise ValueError(f"warmup_steps={warmup_steps} overlaps the cooldown, which starts at "
                         f"step {start}")

    def schedule(s):
        u = jnp.clip((_as_float(s) - start) / cool_steps, 0.0, 1.0)
        shape = 1.0 - (u if cooldown == "linear" else jnp.sqrt(u))
        warm = jnp.clip(_as_float(s) / warmup_steps, 0.0, 1.0) if warmup_steps else 1.0
        return peak * warm * shape

    return schedule


def step(peak: float, num_steps: int, boundaries: Sequence[float] = (0.5, 0.75),
         factor: float = 0.1) -> Schedule:
    """Piecewise constant: `peak`, multiplied by `factor` at each boundary (fractions of T).

    Args:
        peak: the learning rate before the first boundary, positive.
        num_steps: the horizon T, an int >= 1.
        boundaries: increasing fractions of T in (0, 1) at which the rate drops (default 50%
            and 75%).
        factor: the multiplier applied at each boundary, positive (default 0.1).

    Returns:
        The schedule `step -> lr` (float).

    Raises:
        ValueError: if `peak`, `num_steps` or `factor` is invalid, or the boundaries are not
            increasing fractions of T.
    """
    _check_peak_and_horizon(peak, num_steps)
    _check_positive("factor", factor)
    if any(not 0.0 < b < 1.0 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing fractions in (0, 1), got {boundaries}")
    return _float_step(optax.piecewise_constant_schedule(
        peak, {int(round(b * num_steps)): factor for b in boundaries}))


def from_values(lrs) -> Schedule:
    """The schedule that takes value lrs[s] at step s (and lrs[-1] after the end).

    Args:
        lrs: the learning rates [T], finite and non-negative.

    Returns:
        The schedule `step -> lrs[clip(step, 0, T - 1)]` (default float dtype).

    Raises:
        ValueError: if `lrs` is not a non-empty 1-D array of finite, non-negative values.
    """
    table = np.asarray(lrs, dtype=np.float64)
    if table.ndim != 1 or table.size == 0:
        raise ValueError(f"lrs must be a non-empty 1-D array, got shape {table.shape}")
    if not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError("lrs must be finite and non-negative")
    table = jnp.asarray(table, dtype=jnp.result_type(float))
    return lambda s: table[jnp.clip(jnp.asarray(s), 0, table.shape[0] - 1)]


def scaled(schedule: Schedule, factor: float) -> Schedule:
    """factor * schedule(s): a unit-peak shape at a chosen peak learning rate.

    Args:
        schedule: an optax schedule `step -> lr`.
        factor: the positive multiplier.

    Returns:
        The schedule `step -> factor * schedule(step)`.
    """
    _check_positive("factor", factor)
    return lambda s: factor * schedule(s)


def values(schedule: Schedule | Sequence[float] | np.ndarray, num_steps: int) -> np.ndarray:
    """The schedule's values at steps 0..T-1 as float64 numpy; raises if any is negative or NaN.

    Args:
        schedule: an optax schedule (evaluated with `jax.vmap` over the steps), or an array of
            the T values, which is checked and passed through.
        num_steps: the number of steps T, an int >= 1.

    Returns:
        The learning rates [T], float64.

    Raises:
        ValueError: if the values have the wrong shape, are not finite or go negative.
    """
    check_positive_int("num_steps", num_steps)
    if callable(schedule):
        out = np.asarray(jax.vmap(schedule)(jnp.arange(num_steps)), dtype=np.float64)
    else:
        out = np.asarray(schedule, dtype=np.float64)
        if out.shape != (num_steps,):
            raise ValueError(f"schedule array must have shape ({num_steps},), got {out.shape}")
    if out.shape != (num_steps,):
        raise ValueError(f"schedule must return one scalar per step, got shape {out.shape[1:]}")
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"schedule is not finite at step {bad}: {out[bad]}")
    if np.any(out < 0):
        bad = int(np.flatnonzero(out < 0)[0])
        raise ValueError(f"schedule goes negative at step {bad}: {out[bad]:.3g}; a learning rate "
                         "must be >= 0")
    return out


def standard_shapes(cooldown_fraction: float = 0.2) -> dict[str, Callable[[int], Schedule]]:
    """Name -> (T -> schedule with peak 1): the schedules the papers compare.

    Args:
        cooldown_fraction: the fraction of T the two WSD variants spend cooling down.

    Returns:
        A dict from display name ("constant", "1/sqrt(t)", "linear decay", "cosine",
        "wsd (linear)", "wsd (1-sqrt)", "step (x0.1 at 50%, 75%)") to a function of the horizon T
        that returns the unit-peak schedule.
    """
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
    of T ("linear" or "1-sqrt"): a family that spans constant, linear decay and WSD.

    Args:
        warmup_fraction: the fraction of T spent warming up, in [0, 1) (default 0: none).
        cooldown_fraction: the fraction of T spent cooling down, in (0, 1 - warmup_fraction]
            (default 1: linear decay over the whole run).
        cooldown: the cool-down shape, "linear" or "1-sqrt".

    Returns:
        A function of the horizon T returning the unit-peak `wsd` schedule.

    Raises:
        ValueError: if a fraction is out of range.
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
    if not 0.0 < cooldown_fraction <= 1.0 - warmup_fraction:
        raise ValueError(f"cooldown_fraction must lie in (0, 1 - warmup_fraction], got "
                         f"{cooldown_fraction}")
    return lambda T: wsd(1.0, T, cooldown_fraction, cooldown, int(warmup_fraction * T))




def warmup_fraction(schedule: Schedule | Sequence[float] | np.ndarray, num_steps: int) -> float:
    """The fraction of the run spent before the schedule first reaches its peak: 0 for a schedule
    that starts at its peak (linear decay, cosine), w / T for a linear warm-up over w steps.

    Args:
        schedule: an optax schedule or an array of its T values (see `values`).
        num_steps: the number of steps T, an int >= 1.

    Returns:
        argmax_s lr(s) / T (the first maximiser), a float in [0, 1).

    Raises:
        ValueError: if the values are invalid (see `values`) or zero at every step.
    """
    lrs = values(schedule, num_steps)
    if not np.any(lrs > 0):
        raise ValueError("schedule is zero at every step; it has no peak")
    return float(np.argmax(lrs) / num_steps)
