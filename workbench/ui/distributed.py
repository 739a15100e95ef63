"""Panel for the distributed-minimisation paper: solve an entropic OT problem as a multi-process
job with chosen processes, points and epsilon, and compare with earlier runs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from workbench.ui import Panel, panel


def ot_job_panel(run_job: Callable[..., Any], base_config: Any, num_processes: int = 2) -> Panel:
    """Controls: processes, points per cloud, epsilon. `run_job(out_dir, num_processes, config)` is
    `workbench.experiments.distributed.run_job`; the history keeps the dual value, steps and time.

    Args:
        run_job: the job launcher, `run_job(out_dir, num_processes, config)` returning a job whose
            `results` hold "ot_x", "ot_y", "ot_u", "ot_v", "ot_dual", "ot_steps" and "ot_seconds".
        base_config: the job's configuration (a dataclass with `ot_points` and `epsilon`); the
            panel replaces those two and solves at one scaling size (1000).
        num_processes: the slider's starting number of processes (default 2; 1 to 4).

    Returns:
        The `Panel`; each run writes into a fresh temporary folder.
    """
    import dataclasses

    import ipywidgets as w

    from workbench.distributed import plan
    from workbench.plots.distributed import ot_plan

    controls = {
        "num_processes": w.IntSlider(value=num_processes, min=1, max=4, description="processes",
                                     continuous_update=False),
        "ot_points": w.IntSlider(value=base_config.ot_points, min=50, max=2000, step=50, description="points / cloud",
                                 continuous_update=False),
        "epsilon": w.FloatLogSlider(value=base_config.epsilon, base=10, min=-2, max=0, readout_format=".3g",
                                    description="epsilon (cost units)", continuous_update=False),
    }

    def solve(num_processes, ot_points, epsilon):
        config = dataclasses.replace(base_config, ot_points=ot_points, epsilon=epsilon, scaling_sizes=(1000,))
        return run_job(tempfile.mkdtemp(prefix="ot-panel-"), num_processes, config), epsilon

    def show(result):
        job, epsilon = result
        r = job.results
        return ot_plan(r["ot_x"], r["ot_y"], plan(r["ot_x"], r["ot_y"], r["ot_u"], r["ot_v"], epsilon))

    def summary(result):
        r = result[0].results
        steps = int(r["ot_steps"])
        return {"dual": float(r["ot_dual"]), "steps": steps,
                "ms / step": 1000 * float(r["ot_seconds"]) / max(steps, 1)}

    return panel(solve, controls, show, summary=summary, button_text="Solve (multi-process job)",
                 title="Entropic optimal transport as a multi-process job")
