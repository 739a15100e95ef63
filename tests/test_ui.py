"""Widget panels work without a browser: the button's callback is a package function."""

import pytest

from workbench import ui
from workbench.experiments import digits


def test_generic_panel_calls_function_with_control_values():
    import ipywidgets as w

    calls = []
    p = ui.panel(lambda a, b: calls.append((a, b)) or a + b, {"a": w.IntText(value=2), "b": w.IntText(value=3)}, show=print)
    assert p.run() == 5
    p.controls["a"].value = 10
    p.widget.children[1].click()  # the button, as a user would press it
    assert calls == [(2, 3), (10, 3)]


@pytest.mark.standard_promotion  # Adam inside fit_digits_mlp
def test_training_panel_trains_and_shows_accuracy(capsys):
    p = ui.training_panel(digits.fit_digits_mlp, hidden_size=8, learning_rate=0.05, num_steps=100)
    assert set(p.controls) == {"hidden_size", "learning_rate", "num_steps"}
    fit = p.run()
    assert fit.test_accuracy > 0.7
    assert len(fit.result.history["loss"]) == 100
    # outside a kernel the Output widget passes prints through to stdout
    assert f"test accuracy: {fit.test_accuracy:.3f}" in capsys.readouterr().out
