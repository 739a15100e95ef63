"""ipywidgets panels over plain package functions.

A `Panel` maps each control to one argument of a tested package function `fn` and shows what it
returns. `Panel.run()` is what its button (or, for a live panel, a slider release) calls, so tests
drive panels without a browser. While `fn` runs the controls and buttons are disabled and the
status line says so; `fn` is called inside the panel's output area, so its progress bars and
prints land there, and an exception is shown there (type and message) instead of escaping into the
widget loop. Every result is added to a small history table (the controls' values, the headline
numbers `summary(result)` returns, and a thumbnail of the figure) so settings can be compared;
Clear empties it. Widgets are built with keyword arguments only.

Conventions for the panels in `ui/<area>.py`: controls carry the quantity's name and unit in their
description, log-scaled `FloatLogSlider` where the quantity is (learning rates, damping), and
`continuous_update=False` so a live panel recomputes once per release.
"""

from __future__ import annotations

import base64
import html
import io
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

HISTORY_SIZE = 8


def _figure_png(fig, dpi: int = 30) -> str:
    """A small base64 PNG of a matplotlib figure, for the history table (no tight bounding box:
    that is a second layout pass, too slow for a live panel)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _in_kernel() -> bool:
    """Whether an IPython kernel is running (so an Output widget captures what is printed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


class Panel:
    """A widget panel around `fn(**controls' values)`; see the module docstring.

    Attributes: `widget` (the container to display), `controls` (argument name -> widget),
    `output` (the `ipywidgets.Output` receiving the figure, progress and errors), `status` (an HTML
    line: ready / running / done in N s / the error), `history` (list of dicts with "values",
    "numbers", "figure" (base64 PNG or None) and "seconds"), `history_view` (the HTML table),
    `button` (None for a live panel), `clear_button`, `last_error` (the exception of the last run,
    or None).
    """

    def __init__(self, fn: Callable[..., Any], controls: Mapping[str, Any], show: Callable[[Any], Any], *,
                 summary: Callable[[Any], Mapping[str, Any]] | None = None, button_text: str = "Run",
                 live: bool = False, title: str | None = None, history_size: int = HISTORY_SIZE):
        import ipywidgets as w

        from workbench.core.numerics import check_positive_int

        self.fn, self.show, self.summary = fn, show, summary
        self.controls = dict(controls)
        self.history: list[dict] = []
        self.history_size = check_positive_int("history_size", history_size)
        self.last_error: BaseException | None = None
        self.on_clear: Callable[[], Any] | None = None  # also forget a panel's own overlay state
        self.output = w.Output()
        self.status = w.HTML(value="ready" if not live else "updates when a control is released")
        self.history_view = w.HTML(value="")
        self.clear_button = w.Button(description="Clear history", icon="trash",
                                     tooltip="forget the earlier results")
        self.clear_button.on_click(lambda _: self.clear())
        self.button = None if live else w.Button(description=button_text, button_style="primary", icon="play")
        if self.button is not None:
            self.button.on_click(lambda _: self.run())
        else:
            for control in self.controls.values():
                control.observe(lambda _change: self.run(), names="value")
        header = [w.HTML(value=f"<b>{html.escape(title)}</b>")] if title else []
        buttons = [b for b in (self.button, self.clear_button) if b is not None]
        self.widget = w.VBox(children=[*header, w.HBox(children=list(self.controls.values()),
                                                        layout=w.Layout(flex_flow="row wrap")),
                                       w.HBox(children=[*buttons, self.status]),
                                       self.output, self.history_view])

    def values(self) -> dict[str, Any]:
        """The controls' current values by argument name (what `run` passes to `fn`)."""
        return {name: control.value for name, control in self.controls.items()}

    def _set_busy(self, busy: bool) -> None:
        for control in self.controls.values():
            control.disabled = busy
        for b in (self.button, self.clear_button):
            if b is not None:
                b.disabled = busy
        if self.button is not None:
            self.button.icon = "hourglass" if busy else "play"

    def run(self) -> Any:
        """Call `fn` with the controls' values inside the output area and show the result; returns
        the result, or None when `fn` raised (the error is then shown in the panel)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        values = self.values()
        self._set_busy(True)
        self.status.value = "<i>running...</i>"
        self.output.clear_output(wait=True)
        start = time.perf_counter()
        try:
            with self.output:
                try:
                    result = self.fn(**values)
                    fig = self.show(result)
                    numbers = dict(self.summary(result)) if self.summary is not None else {}
                except Exception as err:  # shown in the panel, never raised into the widget loop
                    self._show_error(err)
                    return None
                if fig is not None:
                    display(fig)
        finally:
            self._set_busy(False)
        seconds = time.perf_counter() - start
        self.last_error = None
        self.status.value = f"done in {seconds:.1f} s"
        self.history.insert(0, {"values": values, "numbers": numbers, "seconds": seconds,
                                "figure": _figure_png(fig) if fig is not None else None})
        del self.history[self.history_size:]
        if fig is not None:
            plt.close(fig)
        self._render_history()
        return result

    def _show_error(self, err: BaseException) -> None:
        """Called inside `with self.output:`. In a kernel the output area captures what is printed
        (setting `outputs` from the kernel would race with the captured messages); outside one
        (tests, scripts) the message is appended to the widget's outputs directly."""
        self.last_error = err
        message = f"{type(err).__name__}: {err}"
        if _in_kernel():
            print(f"error: {message}", file=sys.stderr)
        else:
            self.output.append_stderr(f"error: {message}\n")
        self.status.value = f"<span style='color:#b00'>error: {html.escape(message)}</span>"

    def clear(self) -> None:
        """Empty the history table (and a panel's own overlay state, through `on_clear`)."""
        self.history.clear()
        if self.on_clear is not None:
            self.on_clear()
        self._render_history()

    def _render_history(self) -> None:
        if not self.history:
            self.history_view.value = ""
            return
        params = list(self.history[0]["values"])
        numbers = list(dict.fromkeys(k for h in self.history for k in h["numbers"]))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in [*params, *numbers, "time (s)", "figure"])
        rows = []
        for h in self.history:
            cells = [h["values"].get(p, "") for p in params] + [h["numbers"].get(k, "") for k in numbers]
            img = f"<img src='data:image/png;base64,{h['figure']}' style='height:90px'>" if h["figure"] else ""
            rows.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells)
                        + f"<td>{h['seconds']:.1f}</td><td>{img}</td></tr>")
        self.history_view.value = (
            "<details open><summary>earlier results (newest first)</summary>"
            "<table style='border-collapse:collapse' border='1' cellpadding='3'>"
            f"<tr>{head}</tr>{''.join(rows)}</table></details>")


def panel(fn: Callable[..., Any], controls: Mapping[str, Any], show: Callable[[Any], Any], *,
          summary: Callable[[Any], Mapping[str, Any]] | None = None, button_text: str = "Run",
          live: bool = False, title: str | None = None) -> Panel:
    """A `Panel` calling `fn(**{name: control.value})`; `show(result)` returns a matplotlib figure
    (or None, printing instead) and `summary(result)` the headline numbers kept in the history.
    `live=True` reruns on every control change (use `continuous_update=False` sliders) instead of
    on a button.

    Args:
        fn: the package function the panel calls with the controls' values as keywords.
        controls: ipywidgets controls by `fn`'s argument name.
        show: turns `fn`'s result into a matplotlib figure (or returns None after printing).
        summary: turns the result into headline numbers by label for the history table; None
            keeps none.
        button_text: the run button's label (default "Run").
        live: rerun whenever a control changes, with no button (default off).
        title: a bold heading above the controls; None for none.

    Returns:
        The `Panel`; display `panel.widget`, or call `panel.run()` (tests do).
    """
    return Panel(fn, controls, show, summary=summary, button_text=button_text, live=live, title=title)


def slider_style(*controls: Any) -> None:
    """Let long descriptions ("learning rate", "steps") show in full.

    Args:
        *controls: ipywidgets controls whose `style` is set (in place) to an unclipped description
            width.
    """
    for c in controls:
        c.style = {"description_width": "initial"}


def training_panel(fn: Callable[..., Any], hidden_size: int = 32, learning_rate: float = 1e-2, num_steps: int = 500) -> Panel:
    """Hidden size, learning rate and steps for `fn` (e.g. `workbench.experiments.digits.fit_digits_mlp`), showing
    the loss curve of the returned `Fit`; the history keeps test accuracy and final loss.

    Args:
        fn: the training function; called with keywords `hidden_size`, `learning_rate` and
            `num_steps`, it returns a `Fit` (with `test_accuracy` and `result.history["loss"]`).
        hidden_size: the slider's starting number of hidden units (default 32; 4 to 256).
        learning_rate: the slider's starting Adam learning rate (default 1e-2; 1e-4 to 1).
        num_steps: the slider's starting number of training steps (default 500; 50 to 5000).

    Returns:
        The `Panel`.
    """
    import ipywidgets as w

    from workbench.plots import loss_curves

    controls = {
        "hidden_size": w.IntSlider(value=hidden_size, min=4, max=256, step=4, description="hidden units",
                                   continuous_update=False),
        "learning_rate": w.FloatLogSlider(value=learning_rate, base=10, min=-4, max=0, description="learning rate (Adam)",
                                          readout_format=".2g", continuous_update=False),
        "num_steps": w.IntSlider(value=num_steps, min=50, max=5000, step=50, description="steps", continuous_update=False),
    }
    slider_style(*controls.values())

    def show(fit):
        print(f"test accuracy: {fit.test_accuracy:.3f}")
        return loss_curves({"train": fit.result.history})

    def summary(fit):
        return {"test accuracy": float(fit.test_accuracy), "final loss": float(fit.result.history["loss"][-1])}

    return panel(fn, controls, show, summary=summary, button_text="Train",
                 title="Train the MLP on digits with other settings")
