"""Panel for the distributed-minimisation paper: solve an entropic OT problem as a multi-process
job with chosen processes, points and epsilon, and compare with earlier runs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from workbench.ui import Panel, panel


def ot_job_panel(run_job: Callable[..., Any], base_config: Any, num_processes: int = 2) -> Panel:
    """Controls: processes, points per cloud, epsilon. `run_job(out_dir, num_processes, config)` is
    `workbench.experiments.distributed.run_job`; each run is added to a small history table."""
    import dataclasses

    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from workbench.distributed import plan
    from workbench.plots.distributed import ot_plan

    controls = {
        "num_processes": w.IntSlider(value=num_processes, min=1, max=4, description="processes"),
        "ot_points": w.IntSlider(value=base_config.ot_points, min=50, max=2000, step=50, description="points / cloud"),
        "epsilon": w.FloatLogSlider(value=base_config.epsilon, base=10, min=-2, max=0, description="epsilon (cost units)"),
    }
    history: list[str] = []

    def solve(num_processes, ot_points, epsilon):
        for c in controls.values():
            c.disabled = True
        try:
            config = dataclasses.replace(base_config, ot_points=ot_points, epsilon=epsilon, scaling_sizes=(1000,))
            return run_job(tempfile.mkdtemp(prefix="ot-panel-"), num_processes, config), epsilon
        finally:
            for c in controls.values():
                c.disabled = False

    def show(result):
        if isinstance(result, Exception):
            print(f"error: {result}")
            return
        job, epsilon = result
        r = job.results
        fig = ot_plan(r["ot_x"], r["ot_y"], plan(r["ot_x"], r["ot_y"], r["ot_u"], r["ot_v"], epsilon))
        display(fig)
        plt.close(fig)
        history.append(f"{job.num_processes} proc, n={len(r['ot_x'])}, eps={epsilon:.3g}: dual {float(r['ot_dual']):.5f}, "
                       f"{int(r['ot_steps'])} steps, {1000 * float(r['ot_seconds']) / max(int(r['ot_steps']), 1):.1f} ms/step")
        print("\n".join(history[-6:]))

    def safe(**values):
        try:
            return solve(**values)
        except Exception as err:  # noqa: BLE001 - shown in the panel, not raised into the widget loop
            return err

    return panel(safe, controls, show, button_text="Solve (multi-process job)")
