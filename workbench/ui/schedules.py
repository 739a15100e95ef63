"""Panels for the schedule papers: warm-up, cool-down and horizon -> the last-iterate bound and
the schedule (live); model, steps and peak learning rate -> a refined schedule and its training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from workbench.ui import Panel, panel


class CustomBound(NamedTuple):
    T: int
    values: np.ndarray  # the schedule over T steps
    curve: np.ndarray  # bound x sqrt(T) / (D G) at each horizon


def custom_bound(horizons: Sequence[int], *, warmup_fraction: float, cooldown_fraction: float, cooldown: str,
                 log10_T: float) -> CustomBound:
    """`schedules.custom_shape(...)`: its values over T = 10^log10_T steps and its bound curve.

    Args:
        horizons: the horizons T of the bound curve.
        warmup_fraction: the fraction of T spent warming up, in [0, 1).
        cooldown_fraction: the fraction of T spent cooling down.
        cooldown: the cool-down shape, "linear" or "1-sqrt".
        log10_T: log10 of the horizon whose schedule is shown.

    Returns:
        `CustomBound(T, values, curve)`: the shown horizon, the schedule over it [T] and the
        normalised bound at each horizon (`schedules.bound_curve`).
    """
    from workbench import schedules

    make = schedules.custom_shape(warmup_fraction, cooldown_fraction, cooldown)
    T = int(round(10 ** log10_T))
    return CustomBound(T, np.asarray(schedules.values(make(T), T)), np.asarray(schedules.bound_curve(make, horizons)))


def bound_panel(horizons: Sequence[int], reference: np.ndarray, warmup_fraction: float = 0.0,
                cooldown_fraction: float = 0.5) -> Panel:
    """Live: warm-up and cool-down fractions, cool-down shape and the horizon shown -> the schedule
    and its bound curve against `reference` (linear decay's, at `horizons`).

    Args:
        horizons: the horizons T of the bound curves.
        reference: the reference schedule's normalised bound at each horizon.
        warmup_fraction: the initial warm-up slider value (fraction of T).
        cooldown_fraction: the initial cool-down slider value (fraction of T).

    Returns:
        The `Panel` (redraws when a slider is released).
    """
    import functools

    import ipywidgets as w

    from workbench.plots.schedules import schedule_and_bound

    controls = {
        "warmup_fraction": w.FloatSlider(value=warmup_fraction, min=0.0, max=0.45, step=0.05,
                                         description="warm-up (fraction of T)", continuous_update=False),
        "cooldown_fraction": w.FloatSlider(value=cooldown_fraction, min=0.05, max=0.5, step=0.05,
                                           description="cool-down (fraction of T)", continuous_update=False),
        "cooldown": w.Dropdown(options=["linear", "1-sqrt"], value="linear", description="cool-down shape"),
        "log10_T": w.FloatSlider(value=3.0, min=1.0, max=5.0, step=0.5, description="log10 T (steps shown)",
                                 continuous_update=False),
    }

    def summary(r):
        return {"bound at largest T": float(r.curve[-1]), "vs linear decay": float(r.curve[-1] / reference[-1])}

    p = panel(functools.partial(custom_bound, list(horizons)), controls,
              lambda r: schedule_and_bound(r.T, r.values, horizons, reference, r.curve), summary=summary, live=True,
              title="Draw your own schedule: its last-iterate bound")
    return p


def refinement_panel(fn: Callable, model: str = "logreg", num_steps: int = 300, peak_lr: float = 0.5,
                     tau: float = 0.1) -> Panel:
    """`fn(model, num_steps, peak_lr, tau) -> RefinementResult` (e.g. a partial of
    `experiments.schedules.digits_refinement`): the gradient norms of a linear-decay run, the
    refined schedule, and each schedule's training loss.

    Args:
        fn: the computation the "Refine" button runs.
        model: the initial model, "logreg" or "mlp".
        num_steps: the initial number of SGD steps T.
        peak_lr: the initial peak learning rate.
        tau: the initial median-filter window fraction.

    Returns:
        The `Panel`.
    """
    import ipywidgets as w

    from workbench.plots.schedules import norms_and_schedules

    controls = {
        "model": w.Dropdown(options=[("logistic regression", "logreg"), ("MLP 64-32-10", "mlp")], value=model,
                            description="model"),
        "num_steps": w.IntSlider(value=num_steps, min=100, max=3000, step=100, description="SGD steps (T)",
                                 continuous_update=False),
        "peak_lr": w.FloatLogSlider(value=peak_lr, base=10, min=-2, max=0.5, step=0.1, readout_format=".3g",
                                    description="peak learning rate", continuous_update=False),
        "tau": w.FloatSlider(value=tau, min=0.02, max=0.5, step=0.02, description="median-filter window τ (fraction)",
                             continuous_update=False),
    }

    def summary(r):
        out = {f"final loss, {name}": run.final_loss for name, run in r.runs.items()}
        out["refined peak at (fraction of T)"] = float(np.argmax(r.refined.values) / len(r.refined.values))
        return out

    return panel(fn, controls, lambda r: norms_and_schedules({"this run": r}, controls["tau"].value),
                 summary=summary, button_text="Refine", title="Refine a schedule from a run's gradient norms")
