"""The exploration panel for in-context learning: context length, dimension, conditioning and
depth -> a trained linear self-attention model's loss against GD, GD++ and Newton."""

from __future__ import annotations

from collections.abc import Callable

from workbench.ui import Panel


def icl_panel(fn: Callable, dim: int = 5, context_length: int = 10, condition_number: float = 1.0,
              num_layers: int = 2, num_steps: int = 500, history_size: int = 5) -> Panel:
    """Controls for `fn(dim, context_length, condition_number, num_layers, num_steps)` (e.g.
    `workbench.experiments.icl.explore`); shows `plots.icl.exploration` of the result, a small
    history of earlier settings and their final losses, and any error in the panel."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from workbench.plots.icl import exploration

    controls = {
        "dim": w.IntSlider(value=dim, min=1, max=20, description="dimension d"),
        "context_length": w.IntSlider(value=context_length, min=1, max=64, description="context N (pairs)"),
        "condition_number": w.FloatLogSlider(value=condition_number, base=10, min=0, max=3,
                                             description="condition κ"),
        "num_layers": w.IntSlider(value=num_layers, min=1, max=6, description="layers K"),
        "num_steps": w.IntSlider(value=num_steps, min=100, max=5000, step=100, description="train steps"),
    }
    for c in controls.values():
        c.style = {"description_width": "initial"}
    output, history_box = w.Output(), w.HTML()
    button = w.Button(description="Train", button_style="primary")
    status = w.Label("")
    history: list[str] = []

    def run():
        values = {name: control.value for name, control in controls.items()}
        button.disabled, status.value = True, "training..."
        try:
            result = fn(**values)
        except Exception as err:  # shown in the panel, not lost in a callback
            output.clear_output(wait=True)
            with output:
                print(f"error: {type(err).__name__}: {err}")
            status.value = "failed"
            return None
        finally:
            button.disabled = False
        output.clear_output(wait=True)
        with output:
            fig = exploration(result)
            display(fig)
            plt.close(fig)
        k = values["num_layers"]
        history.insert(0, f"d={values['dim']} N={values['context_length']} κ={values['condition_number']:.3g} "
                          f"K={k}: trained {result.trained_layers[-1]:.4g}, GD {result.gd[-1]:.4g}, "
                          f"GD++ {result.gdpp[-1]:.4g}, Newton {result.newton[k]:.4g}")
        del history[history_size:]
        history_box.value = "<br>".join(history)
        status.value = "done"
        return result

    button.on_click(lambda _: run())
    box = w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:] + [button, status]),
                  output, history_box])
    return Panel(box, controls, output, run)
