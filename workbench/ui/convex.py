"""Panel for the last-iterate paper: seeds, horizon T and the step-size factor -> quantiles of the
last iterate's suboptimality across SGD seeds, for each schedule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from workbench.ui import Panel, panel


def last_iterate_panel(fn: Callable, num_seeds: int = 50, num_steps: int = 500, lr_factor: float = 1.0) -> Panel:
    """`fn(num_seeds, num_steps, lr_factor) -> convex.ScheduleComparison` (e.g. a partial of
    `convex.compare_schedules` on the paper's problem and schedules).

    Args:
        fn: the computation the "Run SGD" button runs.
        num_seeds: the initial number of SGD seeds.
        num_steps: the initial horizon T.
        lr_factor: the initial multiple of each schedule's bound-optimal step size.

    Returns:
        The `Panel`; its summary keeps each schedule's 90% quantile of the last iterate at T.
    """
    import ipywidgets as w

    from workbench.plots.convex import suboptimality_quantiles

    controls = {
        "num_seeds": w.IntSlider(value=num_seeds, min=10, max=500, step=10, description="SGD seeds",
                                 continuous_update=False),
        "num_steps": w.IntSlider(value=num_steps, min=100, max=5000, step=100, description="steps T",
                                 continuous_update=False),
        "lr_factor": w.FloatLogSlider(value=lr_factor, base=10, min=-1, max=2, step=0.1, readout_format=".3g",
                                      description="step size x bound-optimal", continuous_update=False),
    }

    def show(results):
        v = controls
        return suboptimality_quantiles({f"lr x{v['lr_factor'].value:.3g}": results},
                                       f"{v['num_seeds'].value} seeds, T = {v['num_steps'].value}")

    def summary(results):
        return {f"last-iterate q90, {name}": float(np.quantile(r.last[:, -1], 0.9)) for name, r in results.items()}

    return panel(fn, controls, show, summary=summary, button_text="Run SGD",
                 title="Last iterate across seeds: median and 90/95% quantiles")
