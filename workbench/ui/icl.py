"""The exploration panel for in-context learning: context length, dimension, conditioning and
depth -> a trained linear self-attention model's loss against GD, GD++ and Newton."""

from __future__ import annotations

from collections.abc import Callable

from workbench.ui import Panel, panel


def icl_panel(fn: Callable, dim: int = 5, context_length: int = 10, condition_number: float = 1.0,
              num_layers: int = 2, num_steps: int = 500) -> Panel:
    """Controls for `fn(dim, context_length, condition_number, num_layers, num_steps)` (e.g.
    `workbench.experiments.icl.explore`); shows `plots.icl.exploration` of the result; the history
    keeps each setting's final losses.

    Args:
        fn: the computation the "Train" button runs.
        dim: the initial input dimension d.
        context_length: the initial context length N.
        condition_number: the initial condition number of the input covariance.
        num_layers: the initial depth K.
        num_steps: the initial number of Adam steps.

    Returns:
        The `Panel`.
    """
    import ipywidgets as w

    from workbench.plots.icl import exploration

    controls = {
        "dim": w.IntSlider(value=dim, min=1, max=20, description="dimension d", continuous_update=False),
        "context_length": w.IntSlider(value=context_length, min=1, max=64, description="context N (pairs)",
                                      continuous_update=False),
        "condition_number": w.FloatLogSlider(value=condition_number, base=10, min=0, max=3, readout_format=".3g",
                                             description="condition number κ", continuous_update=False),
        "num_layers": w.IntSlider(value=num_layers, min=1, max=6, description="layers K", continuous_update=False),
        "num_steps": w.IntSlider(value=num_steps, min=100, max=5000, step=100, description="train steps (Adam)",
                                 continuous_update=False),
    }

    def summary(result):
        k = controls["num_layers"].value
        return {"trained": float(result.trained_layers[-1]), "GD": float(result.gd[-1]),
                "GD++": float(result.gdpp[-1]), "Newton": float(result.newton[k])}

    return panel(fn, controls, exploration, summary=summary, button_text="Train",
                 title="Trained linear self-attention against GD, GD++ and Newton")
