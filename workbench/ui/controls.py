"""How a panel lays out and names its controls, and refuses out-of-range typed numbers.

Each control becomes a `Field`: its label (the description, with its unit) on a line of its own,
the control below it at the full width of its cell, and, for a numeric slider, a number box beside
the label that is the slider's readout and its typed input.

Accessible names. ipywidgets 8 renders a description as a `<label>` tied (`for`) to the `<input>`
or `<select>` of text boxes and dropdowns, and a tooltip as the `title` of that element when the
description is empty. A slider's handle (`role=slider`, drawn by noUiSlider) gets neither: the
label is not tied to it and no `aria-*` name is passed to it. So every control here carries its
label as `tooltip` with an empty description (the visible label is a separate HTML line, so
nothing squeezes the control), which names text boxes, dropdowns and checkboxes through `title`;
a slider is paired with its number box, a named, keyboard-operable input of the same value.
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


def refusal(value: Any, low: float, high: float) -> str | None:
    """Why a typed `value` is not applied to a control ranging over [low, high], or None.

    Args:
        value: the typed number.
        low: the smallest value allowed.
        high: the largest value allowed.

    Returns:
        A short sentence ending in "not applied", or None when `value` lies in range.
    """
    if not isinstance(value, (int, float)) or math.isnan(value):
        return f"{value} is not a number: not applied"
    if value > high:
        return f"{value:.4g} is above the maximum {high:.4g}: not applied"
    if value < low:
        return f"{value:.4g} is below the minimum {low:.4g}: not applied"
    return None


class Field:
    """One control of a panel: its label line, the control at full width and, for a numeric
    slider, a number box linked to it both ways.

    Attributes: `label` (the text: the control's description, or the argument name), `control`
    (the value-holding widget, as given), `number` (the `IntText`/`FloatText` beside the label, or
    None), `message` (an HTML line saying why a typed number was refused, empty otherwise),
    `inputs` (the widgets a user can change: disabled while the panel runs), `widget` (the box to
    lay out).
    """

    def __init__(self, name: str, control: Any):
        """Re-style `control` in place (empty description, label as tooltip, full width, no
        slider readout) and build its field.

        Args:
            name: `fn`'s argument name (the label when the control has no description).
            control: an ipywidgets control.
        """
        import ipywidgets as w

        self.label = control.description or name
        self.control = control
        control.description, control.tooltip = "", self.label  # the tooltip is the accessible name
        control.layout = w.Layout(width="100%")
        self.message = w.HTML(value="")
        self.number = None
        if type(control).__name__ in NUMERIC_SLIDERS:
            control.readout = False  # the number box is the one readout (the slider's clamps silently)
            box = w.IntText if type(control).__name__ == "IntSlider" else w.FloatText
            self.number = box(value=self._shown(control.value), description="", tooltip=self.label,
                              layout=w.Layout(width="8em"))
            control.observe(self._from_slider, names="value")
            self.number.observe(self._from_number, names="value")
        head = w.HBox(children=[w.HTML(value=f"<span class='wb-label'>{html.escape(self.label)}</span>",
                                       layout=w.Layout(flex="1 1 auto")),
                                *([self.number] if self.number is not None else [])],
                      layout=w.Layout(justify_content="space-between", align_items="center"))
        self.inputs = [control] + ([self.number] if self.number is not None else [])
        self.widget = w.VBox(children=[head, control, self.message], layout=w.Layout(min_width="280px"))

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
        problem = refusal(value, *value_bounds(self.control))
        if problem is not None:
            self.number.value = self._shown(self.control.value)  # revert first: its echo returns above
            self.message.value = f"<span class='wb-refused'>{html.escape(problem)}</span>"
            return
        self.control.value = value
