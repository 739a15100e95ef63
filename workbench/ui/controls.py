"""How a panel lays out and names its controls, and refuses out-of-range typed numbers.

Each control becomes a `Field`: its label (the description, with its unit) on a line of its own,
the control below it at the full width of its cell, and, for a numeric slider, a number box beside
the label that is the slider's readout and its typed input.

Accessible names (checked in headless Chromium under voila). ipywidgets 8 renders a
description as a `<label>` tied (`for`) to the `<input>` or `<select>` of text boxes, number boxes
and dropdowns: their accessible name. A tooltip becomes a `title`, which names a dropdown only
when its description is empty and a number box not at all. A slider's handle (`role=slider`,
drawn by noUiSlider) gets no name at all: its label is not tied to it and no `aria-*` name is
passed to it. So every input here keeps the label as its description, kept off screen by the
`wb-named` CSS in `workbench.ui.STYLE` (the shown label is the line above, hidden from screen
readers so it is not read twice), and a slider is paired with a number box, a named,
keyboard-operable input of the same value. The slider keeps the label as tooltip (on hover).
"""

from __future__ import annotations

import html
import math
from typing import Any

NUMERIC_SLIDERS = ("IntSlider", "FloatSlider", "FloatLogSlider")


def value_bounds(slider: Any) -> tuple[float, float]:
    """The smallest and largest value a numeric slider takes (a `FloatLogSlider`'s min and max
    are exponents of its base).

    Args:
        slider: an `IntSlider`, `FloatSlider` or `FloatLogSlider`.

    Returns:
        `(low, high)` in the slider's value space.
    """
    if type(slider).__name__ == "FloatLogSlider":
        return slider.base ** slider.min, slider.base ** slider.max
    return slider.min, slider.max


def refusal(value: Any, low: float, high: float, integer: bool = False) -> str | None:
    """Why a typed `value` is not applied to a control ranging over [low, high], or None.

    Args:
        value: the typed number.
        low: the smallest value allowed.
        high: the largest value allowed.
        integer: whether only whole numbers are allowed.

    Returns:
        A short sentence ending in "not applied", or None when `value` lies in range.
    """
    if not isinstance(value, (int, float)) or math.isnan(value):
        return f"{value} is not a number: not applied"
    if value > high:
        return f"{value:.4g} is above the maximum {high:.4g}: not applied"
    if value < low:
        return f"{value:.4g} is below the minimum {low:.4g}: not applied"
    if integer and value != int(value):
        return f"{value:.4g} is not a whole number: not applied"
    return None


class Field:
    """One control of a panel: its label line, the control at full width and, for a numeric
    slider, a number box linked to it both ways.

    Attributes: `label` (the text: the control's description, or the argument name), `control`
    (the value-holding widget, as given), `number` (the `FloatText` beside the label, or None), `message` (an HTML line saying why a typed number was refused, empty otherwise),
    `inputs` (the widgets a user can change: disabled while the panel runs), `widget` (the box to
    lay out).
    """

    def __init__(self, name: str, control: Any):
        """Re-style `control` in place (label as tooltip and, but for a slider, as off-screen
        description; full width; no slider readout) and build its field.

        Args:
            name: `fn`'s argument name (the label when the control has no description).
            control: an ipywidgets control.
        """
        import ipywidgets as w

        self.label = control.description or name
        self.control = control
        is_slider = type(control).__name__ in NUMERIC_SLIDERS
        control.tooltip = self.label
        control.description = "" if is_slider else self.label  # a slider's label would name nothing
        control.layout = w.Layout(width="100%")
        self.message = w.HTML(value="")
        self.number = None
        if is_slider:
            control.readout = False  # the number box is the one readout (the slider's clamps silently)
            # FloatText even for an IntSlider: IntText parses with parseInt in the browser ("1e9" -> 1)
            self.number = w.FloatText(value=self._shown(control.value), description=self.label, tooltip=self.label,
                                      layout=w.Layout(width="8em"))
            control.observe(self._from_slider, names="value")
            self.number.observe(self._from_number, names="value")
        for named in self.inputs_named():
            named.add_class("wb-named")
        head = w.HBox(children=[w.HTML(value=f"<span aria-hidden='true'>{html.escape(self.label, quote=False)}</span>",
                                       layout=w.Layout(flex="1 1 auto")),
                                *([self.number] if self.number is not None else [])],
                      layout=w.Layout(justify_content="space-between", align_items="center"))
        self.inputs = [control] + ([self.number] if self.number is not None else [])
        self.widget = w.VBox(children=[head, control, self.message], layout=w.Layout(min_width="280px"))

    def inputs_named(self) -> list[Any]:
        """The inputs whose description (a `<label for>`) is their accessible name: the number box
        of a slider, or the control itself."""
        return [self.number] if self.number is not None else [self.control]

    def _shown(self, value: float) -> float:
        """The slider's value as the number box shows it (4 significant digits, not 0.0031622776...)."""
        return value if isinstance(value, int) else float(f"{value:.4g}")

    def _from_slider(self, change: dict) -> None:
        self.message.value = ""
        self.number.value = self._shown(change["new"])

    def _from_number(self, change: dict) -> None:
        value = change["new"]
        if value == self._shown(self.control.value):
            return  # the echo of a slider move or of a revert
        integer = type(self.control).__name__ == "IntSlider"
        problem = refusal(value, *value_bounds(self.control), integer=integer)
        if problem is not None:
            self.number.value = self._shown(self.control.value)  # revert first: its echo returns above
            self.message.value = f"<span style='color:#b00'>{html.escape(problem, quote=False)}</span>"
            return
        self.control.value = int(value) if integer else value
