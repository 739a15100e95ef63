"""Exploration panels for the unlearning papers: pick a method, a forget set and a strength, see
the metrics (and, for diffusion, the samples); each run is added to the panel's history table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.ui import Panel, panel


def retain_verdict(retain_accuracy: float, oracle_retain_accuracy: float) -> str | None:
    """The verdict on an unlearned model whose retain accuracy fell below half the oracle's.

    Args:
        retain_accuracy: the unlearned model's accuracy on the retained data.
        oracle_retain_accuracy: the retrained oracle's.

    Returns:
        A sentence naming both accuracies and what to try, or None when the model kept at least
        half the oracle's retain accuracy.
    """
    if retain_accuracy >= 0.5 * oracle_retain_accuracy:
        return None
    return (f"retain accuracy {retain_accuracy:.2f} is below half the oracle's ({oracle_retain_accuracy:.2f}): "
            "the model lost its accuracy on the retained data; try a smaller strength")


def unlearning_panel(fn: Callable[..., Any], methods=("gradient_ascent", "neggrad_plus", "scrub", "ssd",
                                                      "oracle_matching", "datamodel_matching")) -> Panel:
    """A panel over one unlearning run: method, forget set, strength and steps.

    Shows the forget / retain / held-out accuracy against the oracle's, the MIA AUC and the time;
    each run joins the panel's history.

    Args:
      fn: `fn(method, kind, strength, num_steps) -> Explored`, e.g.
        `workbench.experiments.unlearning_sweeps.explore` (strength: the learning rate, or alpha
        for SSD).
      methods: the method names offered, the first selected.

    Returns:
      The `Panel`; a run that kept less than half the oracle's retain accuracy is flagged.
    """
    import ipywidgets as w

    from workbench.plots.unlearning import accuracy_bars

    controls = {
        "method": w.Dropdown(options=list(methods), value=methods[0], description="method"),
        "kind": w.Dropdown(options=["class", "random", "skewed"], value="class", description="forget set"),
        "strength": w.FloatLogSlider(value=0.05, base=10, min=-3, max=1.5, readout_format=".3g",
                                     description="learning rate (or SSD alpha)", continuous_update=False),
        "num_steps": w.IntSlider(value=40, min=5, max=300, step=5, description="steps", continuous_update=False),
    }

    def summary(result):
        s = result.scores
        return {"forget acc": s.forget_accuracy, "retain acc": s.retain_accuracy, "held-out acc": s.test_accuracy,
                "oracle forget acc": result.oracle.forget_accuracy, "MIA AUC": result.mia_auc}

    def verdict(result):
        return retain_verdict(result.scores.retain_accuracy, result.oracle.retain_accuracy)

    return panel(fn, controls, accuracy_bars, summary=summary, verdict=verdict, button_text="Unlearn",
                 title="Unlearn a forget set and compare with the retrained oracle")


def diffusion_panel(fn: Callable[..., Any], methods=("ascent", "remap", "remap_distill")) -> Panel:
    """A panel over one class-forgetting run of the diffusion model: method, class, strength, steps.

    Shows the samples; the history keeps integrity (beside its noise floor), accuracy and Frechet
    distance.

    Args:
      fn: `fn(method, forget_class, weight, num_steps) -> ExploredDiffusion`, e.g.
        `functools.partial(workbench.experiments.diffusion_unlearning.explore_diffusion, setup)`.
      methods: the forgetting kinds offered, the last selected.

    Returns:
      The `Panel`; a run with a non-finite score (a diverged denoiser) is flagged.
    """
    import ipywidgets as w

    from workbench.plots.unlearning import sample_grid

    controls = {
        "method": w.Dropdown(options=list(methods), value=methods[-1], description="method"),
        "forget_class": w.IntSlider(value=0, min=0, max=9, description="forget class (digit)", continuous_update=False),
        "weight": w.FloatLogSlider(value=1.0, base=10, min=-2, max=1, readout_format=".3g",
                                   description="strength (forget-term weight)", continuous_update=False),
        "num_steps": w.IntSlider(value=200, min=20, max=1000, step=20, description="steps", continuous_update=False),
    }

    def summary(result):
        r = result.row
        return {"forget-class acc": r.forget_accuracy, "retain acc": r.retain_accuracy, "Frechet": r.frechet,
                "integrity (pixel)": r.integrity_pixel, "floor (pixel)": r.floor_pixel,
                "integrity (feature)": r.integrity_feature, "floor (feature)": r.floor_feature}

    return panel(fn, controls, lambda result: sample_grid(result.images, result.names), summary=summary,
                 button_text="Forget", title="Forget a class of the diffusion model")
