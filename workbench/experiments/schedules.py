"""Schedule refinement on digits, the recipe behind the `schedule_refinement` paper, and the
gradient-norm profile of the `schedule_bounds` paper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from workbench.core.numerics import check_positive_int
from workbench.core.progress import bar
from workbench.data import load_digits
from workbench.models import MLP, LogisticRegression, accuracy, functional
from workbench.schedules import (
    Refined,
    bound_curve,
    cosine,
    grad_norm_callback,
    last_iterate_bound,
    linear_decay,
    per_step,
    refine,
    refined_bound_curve,
    scaled,
    values,
    warmup_fraction,
)
from workbench.train import train


class ScheduleRun(NamedTuple):
    lrs: np.ndarray  # learning rate at each step
    history: dict  # `train` history (minibatch loss per step, ...)
    final_loss: float  # full-batch training loss of the final params
    test_accuracy: float


class RefinementResult(NamedTuple):
    grad_norms: np.ndarray  # per step, from the linear-decay run
    refined: Refined
    runs: dict[str, ScheduleRun]  # "linear decay", "cosine", "refined", "linear decay (same area)"


def digits_refinement(model: str = "logreg", num_steps: int = 1000, peak_lr: float = 0.5,
                      batch_size: int = 32, seed: int = 0, tau: float = 0.1,
                      norm_every: int = 10) -> RefinementResult:
    """Refinement on digits: train with SGD + linear decay, recording gradient norms every
    `norm_every` steps, refine them into a schedule, then train from the same initialisation
    and batch order with the refined schedule, linear decay and cosine (all at `peak_lr`), and
    with linear decay scaled to the refined schedule's total step size (its sum of learning
    rates): at one peak the refined schedule takes larger steps overall, and this run tells a gain
    of its shape from a gain of that larger budget.

    Args:
        model: "logreg" (logistic regression 64 -> 10) or "mlp" (64-32-10 ReLU MLP).
        num_steps: SGD steps T of every run.
        peak_lr: the peak learning rate shared by the three schedules, positive.
        batch_size: examples per SGD step (also the minibatch size of the norm estimate).
        seed: the data split, initialisation and batch order (`jax.random.key(seed)`).
        tau: the median-filter window of `schedules.refine`, as a fraction of T.
        norm_every: record the gradient norm every this many steps (interpolated between).

    Returns:
        `RefinementResult(grad_norms, refined, runs)`: the per-step norms of the linear-decay run,
        the refined schedule, and a `ScheduleRun` for "linear decay", "cosine", "refined" and
        "linear decay (same area)".

    Raises:
        ValueError: if `model` is unknown or `peak_lr` is not positive.
    """
    if model not in ("logreg", "mlp"):
        raise ValueError(f"model must be 'logreg' or 'mlp', got {model!r}")
    if not peak_lr > 0:
        raise ValueError(f"peak_lr must be positive, got {peak_lr!r}")
    num_steps = check_positive_int("num_steps", num_steps)
    train_data, test_data = load_digits(seed=seed)
    net = (LogisticRegression(64, 10, rngs=nnx.Rngs(seed)) if model == "logreg"
           else MLP(64, [32], 10, rngs=nnx.Rngs(seed)))
    f = functional(net)
    key = jax.random.key(seed)

    def fit(schedule, callback=None):
        res = train(f.loss_fn, f.params, train_data, key, optimizer=optax.sgd(schedule),
                    num_steps=num_steps, batch_size=batch_size, callback=callback,
                    callback_every=norm_every if callback else 0, progress=False)
        final = float(f.loss_fn(res.params, train_data))
        acc = accuracy(f.predict_fn, res.params, test_data)
        return res, ScheduleRun(values(schedule, num_steps), res.history, final, acc)

    linear = linear_decay(peak_lr, num_steps)
    callback = grad_norm_callback(f.loss_fn, train_data, jax.random.fold_in(key, 1), batch_size=batch_size)
    with bar(total=4, desc=f"refinement ({model}, T={num_steps})", unit="runs") as pbar:
        res, linear_run = fit(linear, callback)
        pbar.update(1)
        norms = per_step(res.history["callback_step"], res.history["grad_norm"], num_steps)
        refined = refine(norms, tau=tau)
        same_area = peak_lr * refined.values.sum() / values(linear_decay(1.0, num_steps), num_steps).sum()
        runs = {"linear decay": linear_run}
        for name, schedule in (("cosine", cosine(peak_lr, num_steps)),
                               ("refined", scaled(refined.schedule, peak_lr)),
                               ("linear decay (same area)", linear_decay(same_area, num_steps))):
            runs[name] = fit(schedule)[1]
            pbar.update(1)
    return RefinementResult(norms, refined, runs)


class RefinementSummary(NamedTuple):
    """The headline numbers of one `digits_refinement` result (ratios below 1 favour the refined
    schedule); "unrefined" is `refine` of constant norms, linear decay, the schedule a refinement
    that ignored the observed norms would return."""

    warmup_fraction: float  # of the refined schedule: where it peaks, as a fraction of T
    unrefined_warmup_fraction: float  # of the unrefined control (0)
    bound_over_linear: float  # last-iterate bound under the observed norms, refined / linear decay
    unrefined_bound_over_linear: float  # the same for the unrefined control
    cosine_bound_over_linear: float  # the same for cosine
    loss_over_linear: float  # final full-batch training loss, refined / linear decay (same peak)
    loss_over_cosine: float  # refined / cosine (same peak)
    cosine_loss_over_linear: float  # cosine / linear decay: an unrefined schedule's ratio
    loss_over_same_area: float  # refined / linear decay scaled to the refined schedule's area


def refinement_summary(result: RefinementResult) -> RefinementSummary:
    """Where the refined schedule peaks, how much it lowers the last-iterate bound for the gradient
    norms it was refined from, and how its final loss compares with the other schedules.

    The bounds are `schedules.last_iterate_bound` at the best scale for the observed norms, so their
    ratio does not depend on D; the unrefined control is `refine(ones(T), tau)`, linear decay.

    Args:
        result: a `digits_refinement` result.

    Returns:
        A `RefinementSummary` (see its fields).
    """
    norms = np.asarray(result.grad_norms)
    T = norms.size
    unrefined = refine(np.ones(T)).values  # constant norms: any median window leaves them constant
    bound = lambda lrs: last_iterate_bound(lrs, norms, 1.0).bound  # noqa: E731
    runs = result.runs
    linear = bound(runs["linear decay"].lrs)
    loss = {name: run.final_loss for name, run in runs.items()}
    return RefinementSummary(
        warmup_fraction=warmup_fraction(result.refined.values, T),
        unrefined_warmup_fraction=warmup_fraction(unrefined, T),
        bound_over_linear=bound(result.refined.values) / linear,
        unrefined_bound_over_linear=bound(unrefined) / linear,
        cosine_bound_over_linear=bound(runs["cosine"].lrs) / linear,
        loss_over_linear=loss["refined"] / loss["linear decay"],
        loss_over_cosine=loss["refined"] / loss["cosine"],
        cosine_loss_over_linear=loss["cosine"] / loss["linear decay"],
        loss_over_same_area=loss["refined"] / loss["linear decay (same area)"],
    )


def best_runs(by_peak: Mapping[float, RefinementResult]) -> dict[str, ScheduleRun]:
    """Each schedule at its best peak learning rate: the tuned comparison of the paper.

    Args:
        by_peak: peak learning rate -> the `digits_refinement` result at that peak.

    Returns:
        Schedule name ("linear decay", "cosine", "refined") -> the run with the lowest final
        full-batch training loss among the peaks (the first such peak on ties).

    Raises:
        ValueError: if `by_peak` is empty.
    """
    if not by_peak:
        raise ValueError("by_peak is empty; pass at least one digits_refinement result")
    names = next(iter(by_peak.values())).runs
    return {name: min((r.runs[name] for r in by_peak.values()), key=lambda run: run.final_loss)
            for name in names}


def varying_norms(num_steps: int) -> np.ndarray:
    """Gradient norms that are large early and rise again at the end, the picture common in deep
    learning: g(t) = 1 + 4 exp(-t / 0.05) + 2 t^4 with t = s / T the fraction of training done.

    Args:
        num_steps: the number of steps T.

    Returns:
        The norms at steps 0..T-1 [T], float64, between 1 and 5.
    """
    t = np.arange(num_steps) / num_steps
    return 1.0 + 4.0 * np.exp(-t / 0.05) + 2.0 * t**4


class VaryingNormsBounds(NamedTuple):
    """Bound x sqrt(T) / D per horizon under `varying_norms`, for linear decay, cosine, the schedule
    refined for those norms and the control refined for constant norms (linear decay again: what a
    refinement that ignored the norms would return)."""

    horizons: np.ndarray
    curves: dict[str, np.ndarray]

    def over_linear(self, name: str) -> float:
        """The bound of schedule `name` over linear decay's at the largest horizon (< 1: better)."""
        if name not in self.curves:
            raise KeyError(f"no schedule named {name!r}; the comparison has {list(self.curves)}")
        return float(self.curves[name][-1] / self.curves["linear decay"][-1])


def varying_norms_bounds(horizons, tau: float = 0.1) -> VaryingNormsBounds:
    """The last-iterate bounds of the `schedule_bounds` paper under `varying_norms`: refinement's
    gain over linear decay and cosine when the norms are not constant, next to its control.

    Args:
        horizons: the horizons T, ints, each at least the median-filter window ceil(tau T).
        tau: the median-filter window of `schedules.refine`, as a fraction of T.

    Returns:
        `VaryingNormsBounds(horizons, curves)`: last_iterate_bound * sqrt(T) / D (D = 1) per horizon
        for "linear decay", "cosine", "refined for these norms" (`refine(varying_norms(T))`) and
        "refined for constant norms" (`refine(ones(T))`, the unrefined control), all evaluated
        under `varying_norms(T)`.
    """
    curves = {
        "linear decay": bound_curve(lambda T: linear_decay(1.0, T), horizons, varying_norms),
        "cosine": bound_curve(lambda T: cosine(1.0, T), horizons, varying_norms),
        "refined for these norms": refined_bound_curve(varying_norms, horizons, tau=tau),
        "refined for constant norms": bound_curve(lambda T: refine(np.ones(T), tau=tau).values, horizons,
                                                  varying_norms),
    }
    return VaryingNormsBounds(np.asarray(horizons, np.int64), curves)
