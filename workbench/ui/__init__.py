"""ipywidgets panels. Thin: each control maps to an argument of a plain package function, and the
panel's `run()` is what its button calls, so tests drive panels without a browser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Panel(NamedTuple):
    widget: Any  # the ipywidgets container to display
    controls: dict[str, Any]  # argument name -> widget
    output: Any  # ipywidgets.Output receiving results
    run: Callable[[], Any]  # call the function with the controls' current values and show the result


def panel(fn: Callable[..., Any], controls: dict[str, Any], show: Callable[[Any], None], button_text: str = "Run") -> Panel:
    """A panel that calls `fn(**{name: control.value})` on its button and passes the result to `show`
    inside its output area. `run()` returns the result too."""
    import ipywidgets as w

    output = w.Output()
    button = w.Button(description=button_text, button_style="primary")

    def run():
        values = {name: control.value for name, control in controls.items()}
        result = fn(**values)
        output.clear_output(wait=True)
        with output:
            show(result)
        return result

    button.on_click(lambda _: run())
    box = w.VBox([w.HBox(list(controls.values())), button, output])
    return Panel(box, controls, output, run)


def training_panel(fn: Callable[..., Any], hidden_size: int = 32, learning_rate: float = 1e-2, num_steps: int = 500) -> Panel:
    """Hidden size, learning rate and steps for `fn` (e.g. `workbench.experiments.digits.fit_digits_mlp`), showing
    the loss curve and test accuracy of the returned `Fit`."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from workbench.plots import loss_curves

    controls = {
        "hidden_size": w.IntSlider(value=hidden_size, min=4, max=256, step=4, description="hidden"),
        "learning_rate": w.FloatLogSlider(value=learning_rate, base=10, min=-4, max=0, description="lr"),
        "num_steps": w.IntSlider(value=num_steps, min=50, max=5000, step=50, description="steps"),
    }

    def show(fit):
        fig = loss_curves({"train": fit.result.history})
        display(fig)
        plt.close(fig)
        print(f"test accuracy: {fit.test_accuracy:.3f}")

    return panel(fn, controls, show, button_text="Train")
