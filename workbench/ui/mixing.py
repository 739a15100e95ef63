"""The exploration panel for objective mixing: a static translation share or a bandit -> the
held-out losses over training, the translation probability, and the probes in the history."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from workbench.ui import Panel, panel


def mixing_panel(fn: Callable, eval_names: Sequence[str], mixer: str = "exp3s", ratio: float = 0.25,
                 eta: float = 0.02) -> Panel:
    """Controls for `fn(mixer, ratio, eta)` (e.g. a partial of
    `workbench.experiments.mixing.explore`); shows its losses and translation probability; the
    history keeps the share, B's loss and the k-shot gain.

    Args:
        fn: the computation the "Train" button runs; returns an `experiments.mixing.Explored`.
        eval_names: the held-out sets' names.
        mixer: the initial mixer ("static", "exp3s" or "moving_average").
        ratio: the initial static translation share.
        eta: the initial Exp3.S step size.

    Returns:
        The `Panel`.
    """
    import ipywidgets as w

    from workbench.experiments.mixing import KINDS
    from workbench.plots.mixing import run_overview

    controls = {
        "mixer": w.Dropdown(options=list(KINDS), value=mixer, description="who chooses the mix"),
        "ratio": w.FloatSlider(value=ratio, min=0.0, max=1.0, step=0.05, continuous_update=False,
                               description="static translation share (of steps)"),
        "eta": w.FloatLogSlider(value=eta, base=10, min=-3, max=0, readout_format=".3g", continuous_update=False,
                                description="Exp3.S step size eta"),
    }

    def summary(explored):
        row = explored.row
        return {"translation share": row.share, "loss on B": row.loss_b, "loss on A": row.loss_a,
                "k-shot gain, unseen format": row.probes.unseen_k_shot - row.probes.unseen_zero_shot}

    def show(explored):
        return run_overview(explored.result, eval_names, explored.name)

    return panel(fn, controls, show, summary=summary, button_text="Train",
                 title="Mixing language modelling with translation")
