"""SGD on a `Problem`, lax.scan over steps and vmap over seeds, recording last/uniform/suffix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.convex.problems import Problem, objective
from workbench.core.numerics import check_positive_int, num_examples
from workbench.schedules import last_iterate_bound, scaled, values


def log_steps(num_steps: int, num: int = 25) -> np.ndarray:
    """About `num` distinct, log-spaced integers in [1, num_steps], ending at num_steps.

    Args:
        num_steps: the largest step T, an int >= 1.
        num: the number of log-spaced points before rounding and removing repeats.

    Returns:
        The increasing steps [<= num], int64, from 1 to T.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    return np.unique(np.round(np.geomspace(1, num_steps, num)).astype(np.int64))


def _hash32(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons): a fast invertible 32-bit mixer with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def sample_indices(key: jax.Array, steps: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Example indices [*steps.shape, batch_size] for the given step numbers, uniform on [0, n)
    with replacement, a pure function of (key, step).

    A counter-based hash keyed by the seed's key data: ~10 integer operations per index where
    threefry `randint` costs ~100 (and dominated the runner's time). Statistically fine for
    drawing examples (modulo bias <= n / 2^32), not meant for cryptography.

    Args:
        key: the PRNG key of one run (its data words seed the hash).
        steps: the step numbers, any integer array shape.
        n: the number of examples to draw from.
        batch_size: indices per step.

    Returns:
        The indices [*steps.shape, batch_size], int32 in [0, n).
    """
    seed = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    counter = (jnp.asarray(steps).astype(jnp.uint32)[..., None] * jnp.uint32(batch_size)
               + jnp.arange(batch_size, dtype=jnp.uint32))
    bits = _hash32(_hash32(counter ^ seed[0]) + seed[-1])
    return (bits % jnp.uint32(n)).astype(jnp.int32)


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


def make_sgd(problem: Problem, schedule: Callable, *, num_steps: int, batch_size: int = 1,
             record_at: Sequence[int] | None = None, suffix_fraction: float = 0.5,
             x0: jax.Array | None = None, radius: float | None = None) -> SGDRunner:
    """Compile SGD x_{t+1} = P(x_t - schedule(t) g_t) on `problem` (t = 0..num_steps-1).

    g_t is the subgradient (jax.grad) of the objective on `batch_size` examples drawn uniformly
    with replacement (`sample_indices`, a counter-based hash of (key, t)); P projects onto the ball of `radius` around 0 (no
    projection by default). Averages are kept as prefix sums saved at the record steps (and
    the suffix starts), so each step costs O(dim) beyond the gradient, whatever the number of
    record steps.

    Args:
        problem: the convex `Problem`.
        schedule: the learning rate, an optax schedule or an array of its `num_steps` values.
        num_steps: the number of SGD steps T, an int >= 1.
        batch_size: examples per stochastic subgradient (default 1).
        record_at: the increasing steps in [1, T] at which iterates and averages are kept
            (default None: `log_steps(num_steps)`).
        suffix_fraction: the suffix average at step T covers the last ceil(fraction * T)
            iterates, in (0, 1] (default 0.5: the last half).
        x0: the start point [dim] (default None: zero).
        radius: the radius of the ball projected onto (default None: no projection).

    Returns:
        An `SGDRunner`: `run_one(key)`, `run_many(keys)` (one compiled call for every seed),
        `record_at`, the schedule's values `lrs` and `run_many_with(keys, lrs)` for another
        schedule through the same compiled code.

    Raises:
        ValueError: if an argument is out of range or the schedule is invalid.
    """
    steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    if not 0.0 < suffix_fraction <= 1.0:
        raise ValueError(f"suffix_fraction must lie in (0, 1], got {suffix_fraction}")
    if radius is not None and not radius > 0:
        raise ValueError(f"radius must be positive or None, got {radius}")
    record = np.asarray(log_steps(steps) if record_at is None else record_at, dtype=np.int64)
    if record.ndim != 1 or record.size == 0 or np.any(np.diff(record) <= 0) \
            or record[0] < 1 or record[-1] > steps:
        raise ValueError(f"record_at must be increasing integers in [1, num_steps={steps}], got {record}")
    dim, n = problem.dim, num_examples(problem.data, "problem.data")
    dtype = problem.data.x.dtype
    x_init = jnp.zeros(dim, dtype) if x0 is None else jnp.asarray(x0, dtype)
    if x_init.shape != (dim,):
        raise ValueError(f"x0 must have shape ({dim},), got {x_init.shape}")

    lengths = np.maximum(1, np.ceil(suffix_fraction * record).astype(np.int64))
    starts = record - lengths  # suffix of T covers iterates starts+1..T
    saved = np.unique(np.concatenate([record, starts[starts > 0]]))
    grad = jax.grad(lambda w, batch: objective(problem, w, batch))
    lrs = jnp.asarray(values(schedule, steps), dtype)  # validates: finite, non-negative

    def run(key, lrs):
        def step(t, carry):
            x, total = carry
            g = grad(x, problem.data.take(sample_indices(key, t, n, batch_size)))
            x = x - lrs[t] * g
            if radius is not None:
                x = x * jnp.minimum(1.0, radius / jnp.maximum(jnp.linalg.norm(x), 1e-30))
            return x, total + x

        def segment(carry, bounds):
            # steps between consecutive saved iterates: a loop with no per-step recording (the
            # bounds do not depend on the seed, so under vmap it stays one loop for all seeds)
            carry = jax.lax.fori_loop(bounds[0], bounds[1], step, carry)
            return carry, carry

        bounds = jnp.asarray(np.stack([np.concatenate([[0], saved[:-1]]), saved], axis=1))
        init = (x_init, jnp.zeros(dim, dtype))
        _, (xs, sums) = jax.lax.scan(segment, init, bounds)  # iterate saved[k] = after saved[k] steps
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
    """f(point) - f* for every point of a trace (any leading axes), as float64 numpy arrays.

    Args:
        problem: the `Problem` the trace was run on.
        trace: a `Trace` of points [..., dim].

    Returns:
        A `Trace` of the suboptimalities [...] (float64).
    """
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


def run_sgd(problem: Problem, schedule: Callable, key: jax.Array, *, num_steps: int,
            num_seeds: int, **kwargs) -> SGDResult:
    """`num_seeds` SGD runs in one compiled call (`make_sgd`), evaluated against f*.

    Args:
        problem: the convex `Problem`.
        schedule: the learning rate, an optax schedule or an array of its values.
        key: the PRNG key, split into one key per seed (the examples each run draws).
        num_steps: the number of SGD steps T.
        num_seeds: the number of independent runs, an int >= 1.
        **kwargs: the other options of `make_sgd` (batch_size, record_at, suffix_fraction, x0,
            radius).

    Returns:
        `SGDResult(steps, last, uniform, suffix)`: suboptimality [num_seeds, K] at the record
        steps [K].
    """
    num_seeds = check_positive_int("num_seeds", num_seeds)
    runner = make_sgd(problem, schedule, num_steps=num_steps, **kwargs)
    gaps = suboptimality(problem, runner.run_many(jax.random.split(key, num_seeds)))
    return SGDResult(runner.record_at, *gaps)


class ScheduleComparison(NamedTuple):
    """SGD under several schedules on the same seeds: one `SGDResult` per schedule, in order."""

    names: tuple[str, ...]
    results: tuple[SGDResult, ...]
    scales: np.ndarray  # [schedules] the step-size scale each unit-peak shape ran at

    def items(self):
        """(name, SGDResult) pairs, in the order the shapes were given."""
        return zip(self.names, self.results, strict=True)

    def result(self, name: str) -> SGDResult:
        """The `SGDResult` of the schedule called `name`."""
        if name not in self.names:
            raise KeyError(f"no schedule named {name!r}; the comparison has {list(self.names)}")
        return self.results[self.names.index(name)]


def compare_schedules(problem: Problem, shapes: dict[str, Callable[[int], Callable]],
                      key: jax.Array, *, num_steps: int, num_seeds: int, lr_factor: float = 1.0,
                      **kwargs) -> ScheduleComparison:
    """SGD from x0 = 0 with each schedule shape (T -> schedule), scaled to minimise its
    last-iterate bound for D = ||w*|| and constant norms G = `problem.lipschitz`, times
    `lr_factor` (the worst-case G makes that scale cautious); every schedule sees the same seeds
    (same sampled examples) and runs through the same compiled code.

    Args:
        problem: the convex `Problem`.
        shapes: schedule name -> (T -> unit-peak schedule), e.g. from
            `schedules.standard_shapes()`.
        key: the PRNG key, split into one key per seed, shared by every schedule.
        num_steps: the number of SGD steps T every schedule is set for.
        num_seeds: the number of independent runs per schedule.
        lr_factor: the multiple of each schedule's bound-optimal scale, positive (default 1).
        **kwargs: the other options of `make_sgd` (batch_size, record_at, suffix_fraction, x0,
            radius).

    Returns:
        A `ScheduleComparison(names, results, scales)`: one `SGDResult` per schedule
        (suboptimality [num_seeds, K] at the record steps) and the scale each ran at.

    Raises:
        ValueError: if `lr_factor` is not positive or `shapes` is empty.
    """
    if not lr_factor > 0:
        raise ValueError(f"lr_factor must be positive, got {lr_factor}")
    if not shapes:
        raise ValueError("shapes is empty; pass at least one schedule shape")
    D, G = problem.distance, problem.lipschitz
    keys = jax.random.split(key, check_positive_int("num_seeds", num_seeds))
    runner, results, scales = None, [], []
    for make in shapes.values():
        shape = make(num_steps)
        scale = lr_factor * last_iterate_bound(shape, np.full(num_steps, G), D).scale
        if runner is None:  # compiled once; the other schedules reuse it through run_many_with
            runner = make_sgd(problem, scaled(shape, scale), num_steps=num_steps, **kwargs)
        trace = runner.run_many_with(keys, values(scaled(shape, scale), num_steps))
        results.append(SGDResult(runner.record_at, *suboptimality(problem, trace)))
        scales.append(scale)
    return ScheduleComparison(tuple(shapes), tuple(results), np.asarray(scales))


def quantiles(values: np.ndarray, qs: Sequence[float] = (0.5, 0.9, 0.95)) -> np.ndarray:
    """Quantiles across seeds (axis 0): [len(qs), K].

    Args:
        values: suboptimalities [seeds, K] (e.g. `SGDResult.last`).
        qs: the quantile levels in [0, 1].

    Returns:
        The quantiles [len(qs), K].
    """
    return np.quantile(np.asarray(values), np.asarray(qs), axis=0)


def _quantile_name(q: float) -> str:
    return "median" if q == 0.5 else f"q{round(100 * q):d}"


def final_quantiles(comparison: ScheduleComparison, qs: Sequence[float] = (0.5, 0.9, 0.95)) -> dict:
    """The high-probability picture at the largest T: quantiles across seeds of the last iterate
    and both averages, for each schedule.

    Args:
        comparison: a `compare_schedules` result.
        qs: the quantile levels in [0, 1] (default: median, 90% and 95%).

    Returns:
        A nested dict schedule name -> "last" / "uniform" / "suffix" -> {"median": ..., "q90":
        ..., "q95": ...} (a level q other than 0.5 is named f"q{100 q}"), Python floats.
    """
    table = {}
    for name, res in comparison.items():
        table[name] = {}
        for kind in ("last", "uniform", "suffix"):
            q = quantiles(getattr(res, kind)[:, -1:], qs)[:, 0]
            table[name][kind] = {_quantile_name(level): float(v) for level, v in zip(qs, q, strict=True)}
    return table


def last_over_average(comparison: ScheduleComparison, average: str = "suffix", q: float = 0.5) -> dict:
    """How much worse the last iterate ends than an average, per schedule: the q-quantile across
    seeds of the last iterate's suboptimality at the largest T over the same quantile of the
    average's. Near 1 for linear decay (its last iterate is as good as an average, Defazio et al.
    2023); several times 1 for constant and 1/sqrt(t) steps once gradient noise dominates.

    Args:
        comparison: a `compare_schedules` result.
        average: the average compared with, "suffix" or "uniform".
        q: the quantile level in [0, 1] (default 0.5, the median).

    Returns:
        Schedule name -> the ratio, a Python float.

    Raises:
        ValueError: if `average` is not "suffix" or "uniform", `q` lies outside [0, 1], or an
            average's quantile is not positive.
    """
    if average not in ("suffix", "uniform"):
        raise ValueError(f"average must be 'suffix' or 'uniform', got {average!r}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    out = {}
    for name, res in comparison.items():
        last, avg = (float(np.quantile(getattr(res, kind)[:, -1], q)) for kind in ("last", average))
        if not avg > 0:
            raise ValueError(f"the {average} average of {name!r} has quantile {avg} at the largest T; "
                             "a ratio to it is undefined")
        out[name] = last / avg
    return out
