"""The exploration panel for neural transport: pick a problem and a method, train it, and see
where the map sends the source next to the target, with its scores kept in the history."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from workbench.ui import Panel, panel


def transport_panel(fn: Callable, problems: Sequence[str], methods: Sequence[str], num_steps: int = 300,
                    problem: str | None = None, method: str = "Sinkhorn regression") -> Panel:
    """Controls for `fn(problem, method, num_steps)` (e.g. a partial of
    `workbench.experiments.transport.explore`); shows the map drawn over the target; the
    history keeps the L2-UVP, the cost ratio and W2 against the floor.

    Args:
        fn: the computation the "Train" button runs; returns an `experiments.transport.Explored`.
        problems: the problem labels to choose from.
        methods: the method names to choose from (`experiments.transport.METHODS`).
        num_steps: the initial number of Adam steps.
        problem: the initial problem (default the first).
        method: the initial method.

    Returns:
        The `Panel`.
    """
    import ipywidgets as w

    from workbench.plots.transport import maps

    controls = {
        "problem": w.Dropdown(options=list(problems), value=problem or list(problems)[0], description="problem"),
        "method": w.Dropdown(options=list(methods), value=method if method in methods else list(methods)[0],
                             description="method"),
        "num_steps": w.IntSlider(value=num_steps, min=50, max=3000, step=50, description="Adam steps",
                                 continuous_update=False),
    }

    def summary(result):
        return {"problem": result.problem, "method": result.method, "L2-UVP %": result.row.l2_uvp,
                "cost / W2^2": result.row.cost_ratio, "W2": result.row.w2, "floor": result.row.floor}

    def show(r):
        return maps({f"{r.method} on {r.problem}": (r.x, r.mapped, r.y)}, title="Where the map sends the source")

    return panel(fn, controls, show, summary=summary, button_text="Train",
                 title="Learning a transport map: pick a problem and a method")
