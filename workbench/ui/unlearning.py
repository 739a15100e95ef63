"""Exploration panels for the unlearning papers: pick a method, a forget set and a strength, see
the metrics (and, for diffusion, the samples); each run is added to a small history table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.ui import Panel, panel


def _guarded(fn: Callable, history: list) -> Callable:
    """Call fn; on error return the exception so the panel shows it instead of raising."""

    def run(**values):
        try:
            out = fn(**values)
        except Exception as err:  # shown in the panel
            return err
        history.append((values, out))
        del history[:-8]
        return out

    return run


def _or_error(show: Callable[[Any], None]) -> Callable[[Any], None]:
    """`show` for a result, or the error message in the panel when the call raised."""

    def wrapped(result):
        if isinstance(result, Exception):
            print(f"error: {result}")
            return
        show(result)

    return wrapped


def unlearning_panel(fn: Callable[..., Any], methods=("gradient_ascent", "neggrad_plus", "scrub", "ssd",
                                                      "oracle_matching", "datamodel_matching")) -> Panel:
    """Method, forget set, strength (learning rate, or alpha for SSD) and steps for
    `fn` (e.g. `workbench.experiments.unlearning.explore`), showing the forget / retain / held-out
    accuracy against the oracles', the MIA AUC and the time, with the last runs kept below."""
    import ipywidgets as w

    history: list = []
    controls = {
        "method": w.Dropdown(options=list(methods), value=methods[0], description="method"),
        "kind": w.Dropdown(options=["class", "random", "skewed"], value="class", description="forget set"),
        "strength": w.FloatLogSlider(value=0.05, base=10, min=-3, max=1.5, description="lr or alpha"),
        "num_steps": w.IntSlider(value=40, min=5, max=300, step=5, description="steps"),
    }

    @_or_error
    def show(result):
        s, o = result.scores, result.oracle
        print(f"{'':12} forget  retain  held-out")
        print(f"{result.method:12} {s.forget_accuracy:6.3f}  {s.retain_accuracy:6.3f}  {s.test_accuracy:6.3f}")
        print(f"{'oracle':12} {o.forget_accuracy:6.3f}  {o.retain_accuracy:6.3f}  {o.test_accuracy:6.3f}")
        print(f"MIA AUC {result.mia_auc:.3f}, {result.seconds * 1e3:.1f} ms")
        print("history:")
        for values, out in history[-5:]:
            print(f"  {values} -> forget {out.scores.forget_accuracy:.3f} retain {out.scores.retain_accuracy:.3f}")

    return panel(_guarded(fn, history), controls, show, button_text="Unlearn")


def diffusion_panel(fn: Callable[..., Any], methods=("ascent", "remap", "remap_distill")) -> Panel:
    """Method, forget class, strength (weight of the forget term) and steps for `fn` (e.g.
    `functools.partial(workbench.experiments.unlearning.explore_diffusion, setup)`), showing the
    integrity distances beside the noise floor, accuracy, Frechet distance and the samples."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from workbench.plots.unlearning import sample_grid

    history: list = []
    controls = {
        "method": w.Dropdown(options=list(methods), value=methods[-1], description="method"),
        "forget_class": w.IntSlider(value=0, min=0, max=9, description="forget class"),
        "weight": w.FloatLogSlider(value=1.0, base=10, min=-2, max=1, description="strength"),
        "num_steps": w.IntSlider(value=200, min=20, max=1000, step=20, description="steps"),
    }

    @_or_error
    def show(result):
        r = result.row
        print(f"{r.method}: forget-class acc {r.forget_accuracy:.3f}, retain acc {r.retain_accuracy:.3f}, "
              f"Frechet {r.frechet:.3f}; integrity pixel {r.integrity_pixel:.3f} (floor {r.floor_pixel:.3f}), "
              f"feature {r.integrity_feature:.3f} (floor {r.floor_feature:.3f})")
        fig = sample_grid(result.images, result.names)
        display(fig)
        plt.close(fig)
        for values, out in history[-5:]:
            print(f"  {values} -> integrity pixel {out.row.integrity_pixel:.3f}, forget acc {out.row.forget_accuracy:.3f}")

    return panel(_guarded(fn, history), controls, show, button_text="Forget")
