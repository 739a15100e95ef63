"""ipywidgets panels over plain package functions.

A `Panel` maps each control to one argument of a tested package function `fn` and shows what it
returns. `Panel.run()` is what its button (or, for a live panel, a slider release) calls, so tests
drive panels without a browser. While `fn` runs the controls and buttons are disabled, the status
line says so and the previous output is dimmed; `fn` is called inside the panel's output area, so
its progress bars and prints land there, and an exception is shown there (type and message)
instead of escaping into the widget loop. Warnings raised during a run are shown once each, in
plain words, under the status line. A run whose headline numbers are not finite, or that the
panel's `verdict` finds broken (accuracy at chance, say), says so in the status line instead of
"done", and its history row is marked. Every result is added to a small history table (the
controls' values under their labels, the headline numbers `summary(result)` returns, and a
thumbnail of the figure) so settings can be compared, and to a CSV a participant can download;
Clear empties it. Widgets are built with keyword arguments only.

Conventions for the panels in `ui/<area>.py`: a control's description is its label, naming the
quantity and its unit ("damping λ (curvature units)"); the panel shows it on a line above the
control (see `workbench.ui.controls`, which also says how controls get accessible names), so
descriptions may be long. Log-scaled `FloatLogSlider` where the quantity is (learning rates,
damping), and `continuous_update=False` so a live panel recomputes once per release. Numeric
sliders get a number box for typing a value; a value outside the slider's range is refused with a
message, never clamped. A panel whose result can be broken without raising passes a `verdict`.
"""

from __future__ import annotations

import html
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from workbench.ui.controls import Field
from workbench.ui.history import (
    download_link,
    figure_png,
    history_csv,
    history_table,
    non_finite,
    plain_warnings,
)

HISTORY_SIZE = 8
CHANCE_DIGITS = 0.1  # accuracy of guessing among the ten digit classes

# Injected once per panel (an HTML widget may carry a <style>; the Output widget has no inline
# style to set): the previous result is dimmed while a run computes the next, and an input's
# description, its accessible name (see `workbench.ui.controls`), is kept for screen readers only,
# since the same text is shown on the line above.
STYLE = ("<style>.wb-busy { opacity: 0.35; transition: opacity 0.2s; }"
         " .wb-named > .widget-label, .wb-named .widget-label-basic > span { position: absolute !important;"
         " width: 1px !important; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }"
         "</style>")


def _in_kernel() -> bool:
    """Whether an IPython kernel is running (so an Output widget captures what is printed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class Panel:
    """A widget panel around `fn(**controls' values)`; see the module docstring.

    Attributes: `widget` (the container to display), `controls` (argument name -> the
    value-holding widget, as given), `fields` (argument name -> its `controls.Field`: label, number
    box, refusal message), `output` (the `ipywidgets.Output` receiving the figure, progress and
    errors), `status` (an HTML line: ready / running / done in N s / the problem / the error),
    `notes` (the run's warnings, in plain words), `history` (list of dicts with "values",
    "numbers", "figure" (base64 PNG or None), "seconds", "finished" and "problem" (None when
    fine)), `history_view` (the HTML table), `download` (the HTML link to the history as CSV, saved as
    `filename`),
    `button` (None for a live panel), `clear_button`, `last_error` (the exception of the last run,
    or None).
    """

    def __init__(self, fn: Callable[..., Any], controls: Mapping[str, Any], show: Callable[[Any], Any], *,
                 summary: Callable[[Any], Mapping[str, Any]] | None = None,
                 verdict: Callable[[Any], str | None] | None = None, button_text: str = "Run",
                 live: bool = False, title: str | None = None, history_size: int = HISTORY_SIZE):
        """Build the panel's widgets; see `panel` for the arguments (`history_size`: how many runs
        the history keeps, an int >= 1).

        Raises:
            ValueError: if `history_size` is not an int >= 1.
        """
        import ipywidgets as w

        from workbench.core.numerics import check_positive_int

        self.fn, self.show, self.summary, self.verdict = fn, show, summary, verdict
        self.history_size = check_positive_int("history_size", history_size)
        self.controls = dict(controls)
        self.fields = {name: Field(name, control) for name, control in self.controls.items()}
        self.history: list[dict] = []
        self.last_error: BaseException | None = None
        self.on_clear: Callable[[], Any] | None = None  # also forget a panel's own overlay state
        self.output = w.Output()
        self.status = w.HTML(value="ready" if not live else "updates when a control is released")
        self.notes = w.HTML(value="")
        self.history_view = w.HTML(value="")
        self.download = w.HTML(value="")
        self.filename = (re.sub(r"[^a-z0-9]+", "-", (title or "panel").lower()).strip("-")[:40] or "panel") + "-results.csv"
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
        grid = w.GridBox(children=[f.widget for f in self.fields.values()],
                         layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(280px, 1fr))",
                                         grid_gap="4px 16px"))
        self.widget = w.VBox(children=[w.HTML(value=STYLE), *header, grid,
                                       w.HBox(children=[*buttons, self.status]), self.notes,
                                       self.output, self.history_view, self.download])

    def values(self) -> dict[str, Any]:
        """The controls' current values by argument name (what `run` passes to `fn`)."""
        return {name: control.value for name, control in self.controls.items()}

    def _set_busy(self, busy: bool) -> None:
        for field in self.fields.values():
            for widget in field.inputs:
                widget.disabled = busy
        for b in (self.button, self.clear_button):
            if b is not None:
                b.disabled = busy
        if self.button is not None:
            self.button.icon = "hourglass" if busy else "play"
        if busy:
            self.output.add_class("wb-busy")
        else:
            self.output.remove_class("wb-busy")

    def run(self) -> Any:
        """Call `fn` with the controls' values inside the output area and show the result.

        Returns:
            The result, or None when `fn` (or `show`, `summary`, `verdict`) raised; the error is
            then shown in the panel, never raised.
        """
        import matplotlib.pyplot as plt
        from IPython.display import display

        values = self.values()
        self._set_busy(True)
        self.status.value = "<i>running...</i>"
        self.notes.value = ""
        self.output.clear_output(wait=True)
        start = time.perf_counter()
        try:
            with self.output, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every warning is recorded, shown once below
                try:
                    result = self.fn(**values)
                    fig = self.show(result)
                    numbers = dict(self.summary(result)) if self.summary is not None else {}
                    diverged = non_finite(numbers)
                    judged = self.verdict(result) if self.verdict is not None and diverged is None else None
                except Exception as err:  # shown in the panel, never raised into the widget loop
                    self._show_error(err)
                    return None
                finally:
                    self._show_notes(plain_warnings(caught))
                # before display: the inline backend redraws (tight box) and may close the figure
                figure = figure_png(fig) if fig is not None else None
                if fig is not None:
                    display(fig)
        finally:
            self._set_busy(False)
        seconds = time.perf_counter() - start
        self.last_error = None
        if diverged is not None:
            self.status.value = f"<span style='color:#b00'><b>diverged</b>: {html.escape(diverged, quote=False)}</span>"
        elif judged is not None:
            self.status.value = f"<span style='color:#c55a00'><b>finished, but</b>: {html.escape(judged, quote=False)}</span>"
        else:
            self.status.value = f"done in {seconds:.1f} s"
        self.history.insert(0, {"values": values, "numbers": numbers, "seconds": seconds, "figure": figure,
                                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "problem": diverged or judged})
        del self.history[self.history_size:]
        if fig is not None:
            plt.close(fig)
        self._render_history()
        return result

    def _show_notes(self, messages: list[str]) -> None:
        self.notes.value = "".join(f"<div style='color:#555;font-size:90%'>note: {html.escape(m, quote=False)}</div>"
                                   for m in messages)

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
        labels = {name: field.label for name, field in self.fields.items()}
        self.history_view.value = history_table(self.history, labels)
        self.download.value = download_link(history_csv(self.history, labels), self.filename) if self.history else ""


def panel(fn: Callable[..., Any], controls: Mapping[str, Any], show: Callable[[Any], Any], *,
          summary: Callable[[Any], Mapping[str, Any]] | None = None,
          verdict: Callable[[Any], str | None] | None = None, button_text: str = "Run",
          live: bool = False, title: str | None = None) -> Panel:
    """A `Panel` calling `fn(**{name: control.value})`; `show(result)` returns a matplotlib figure
    (or None, printing instead), `summary(result)` the headline numbers kept in the history and
    `verdict(result)` what is wrong with a result that did not raise. `live=True` reruns on every
    control change (use `continuous_update=False` sliders) instead of on a button.

    Args:
        fn: the package function the panel calls with the controls' values as keywords.
        controls: ipywidgets controls by `fn`'s argument name; each one's description is its
            label (quantity and unit). They are re-styled in place (see `workbench.ui.controls`).
        show: turns `fn`'s result into a matplotlib figure (or returns None after printing).
        summary: turns the result into headline numbers by label for the history table; None
            keeps none. A number that is NaN or infinite flags the run as diverged.
        verdict: turns a result into a plain-language problem ("test accuracy 0.10 is chance
            level ...: try a smaller learning rate"), or None when it is fine; the status line
            then says "finished, but" and the history row is marked. None judges nothing.
        button_text: the run button's label (default "Run").
        live: rerun whenever a control changes, with no button (default off).
        title: a bold heading above the controls; None for none.

    Returns:
        The `Panel`; display `panel.widget`, or call `panel.run()` (tests do).
    """
    return Panel(fn, controls, show, summary=summary, verdict=verdict, button_text=button_text, live=live,
                 title=title)


def chance_verdict(accuracy: float, chance: float = CHANCE_DIGITS, what: str = "test accuracy",
                   advice: str = "try a smaller learning rate") -> str | None:
    """The verdict on an accuracy at (or below) twice chance level: the model did not learn.

    Args:
        accuracy: the accuracy reached, in [0, 1].
        chance: the accuracy of guessing (default 0.1: ten classes).
        what: what the accuracy is of, for the message.
        advice: what to try instead.

    Returns:
        e.g. "test accuracy 0.10 is chance level (0.10): the model did not learn; try a smaller
        learning rate", or None when `accuracy` is above twice `chance`.
    """
    if not accuracy <= 2 * chance:  # above, or NaN (the panel's non-finite check says so)
        return None
    return f"{what} {accuracy:.2f} is chance level ({chance:.2f}): the model did not learn; {advice}"


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
        The `Panel`; a run whose test accuracy is near chance (or whose loss is not finite) is
        flagged.
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

    def show(fit):
        print(f"test accuracy: {fit.test_accuracy:.3f}")
        return loss_curves({"train": fit.result.history})

    def summary(fit):
        return {"test accuracy": float(fit.test_accuracy), "final loss": float(fit.result.history["loss"][-1])}

    return panel(fn, controls, show, summary=summary, verdict=lambda fit: chance_verdict(fit.test_accuracy),
                 button_text="Train",
                 title="Train the MLP on digits with other settings")
