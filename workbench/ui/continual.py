"""The exploration panel for continual learning: peak learning rate, replay fraction and schedule
-> every task's accuracy at every step, and the gap at the switch."""

from __future__ import annotations

from collections.abc import Callable

from workbench.ui import Panel, chance_verdict, panel


def stream_panel(fn: Callable, steps_per_task: int, task_names, peak_lr: float = 0.3, replay_fraction: float = 0.25,
                 schedule: str = "rewarm") -> Panel:
    """Controls for `fn(peak_lr, replay_fraction, schedule)` (e.g. a partial of
    `workbench.experiments.continual.explore`); shows its figure; the history keeps the final
    accuracies, the gap and the recovery.

    Args:
        fn: the computation the "Train" button runs; returns an `experiments.continual.Explored`.
        steps_per_task: steps of each task (for the switch lines).
        task_names: the tasks' names.
        peak_lr: the initial peak learning rate.
        replay_fraction: the initial share of each batch replayed from earlier tasks.
        schedule: the initial schedule kind (`continual.SCHEDULES`).

    Returns:
        The `Panel`; a run whose new-task accuracy stays near chance (digits: 0.1) is flagged.
    """
    import ipywidgets as w

    from workbench.continual import SCHEDULES
    from workbench.plots.continual import stream_curves

    controls = {
        "peak_lr": w.FloatLogSlider(value=peak_lr, base=10, min=-2, max=0.3, readout_format=".3g",
                                    description="peak learning rate", continuous_update=False),
        "replay_fraction": w.FloatSlider(value=replay_fraction, min=0.0, max=0.9, step=0.05,
                                         description="replayed share of each batch", continuous_update=False),
        "schedule": w.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule"),
    }

    def summary(result):
        return {"old task": result.row.old_final, "new task": result.row.new_final, "gap": result.row.gap,
                "recovery": result.row.recovery}

    def show(r):
        return stream_curves({r.name: r.result}, {r.name: r.lrs}, steps_per_task, task_names)

    def verdict(result):
        return chance_verdict(result.row.new_final, what="new task's accuracy", advice="try a smaller peak learning rate")

    return panel(fn, controls, show, summary=summary, verdict=verdict, button_text="Train",
                 title="A task switch: accuracy on both tasks at every step")
