"""What a classroom sees in a panel, checked without a browser: labelled full-width controls with
accessible names, typed numbers refused (not clamped) outside a slider's range, broken runs
flagged instead of "done", the previous output dimmed while busy, warnings in plain words once,
history columns under the controls' labels, a thumbnail independent of the display, and the
history as a downloadable CSV."""

import base64
import csv
import importlib
import inspect
import io
import pkgutil
import re
import types
import warnings

import ipywidgets as w
import matplotlib.image as mpimg
import numpy as np
import pytest

from workbench import ui


def _figure(x, size=(6, 3)):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.plot([0, 1], [0, x])
    return fig


def _slider_panel(**kw):
    controls = {"num_probes": w.IntSlider(value=4, min=1, max=64, description="probe vectors"),
                "learning_rate": w.FloatLogSlider(value=1e-2, base=10, min=-4, max=0, description="learning rate (Adam)")}
    return ui.panel(lambda num_probes, learning_rate: num_probes * learning_rate, controls, _figure,
                    summary=lambda r: {"product": r}, **kw)


# --- layout and accessible names ----------------------------------------------------------------

def test_each_control_is_a_label_line_over_a_full_width_control():
    p = _slider_panel()
    grid = next(c for c in p.widget.children if isinstance(c, w.GridBox))
    assert "minmax(280px" in grid.layout.grid_template_columns  # wraps responsively
    for name, field in p.fields.items():
        assert field.widget in grid.children
        head, control, message = field.widget.children
        assert control is p.controls[name] and control.layout.width == "100%"
        assert control.description == "" and control.readout is False  # nothing squeezes the track
        assert field.label in head.children[0].value and head.children[1] is field.number
    assert p.fields["num_probes"].label == "probe vectors"


def _area_panels():
    """Every `*_panel` of every `workbench.ui` module, built with stand-ins (nothing runs)."""
    from workbench.experiments.distributed import JobConfig
    from workbench.ui import (
        continual,
        convex,
        distributed,
        icl,
        influence,
        mixing,
        schedules,
        sketching,
        spectra,
        transport,
        unlearning,
    )

    fn = lambda **kw: None  # noqa: E731
    test = types.SimpleNamespace(y=np.zeros(5))
    return {
        "training_panel": ui.training_panel(fn),
        "sharpness_panel": spectra.sharpness_panel(fn),
        "density_panel": spectra.density_panel(fn),
        "estimator_panel": influence.estimator_panel(None, None, None, None, test, np.zeros((5, 3))),
        "lds_panel": influence.lds_panel({"logistic": ({"exact": fn}, None)}, test),
        "fading_panel": influence.fading_panel(np.arange(3), np.zeros((3, 4, 2)), np.zeros((4, 2)), np.arange(2)),
        "correction_panel": influence.correction_panel(fn),
        "unlearning_panel": unlearning.unlearning_panel(fn),
        "diffusion_panel": unlearning.diffusion_panel(fn),
        "bound_panel": schedules.bound_panel([10, 100], np.ones(2)),
        "refinement_panel": schedules.refinement_panel(fn),
        "sketch_panel": sketching.sketch_panel(np.zeros((3, 8)), None, ["dense"], max_log2_dim=6),
        "intrinsic_panel": sketching.intrinsic_panel(fn),
        "last_iterate_panel": convex.last_iterate_panel(fn),
        "icl_panel": icl.icl_panel(fn),
        "mixing_panel": mixing.mixing_panel(fn, ["a", "b"]),
        "transport_panel": transport.transport_panel(fn, ["gaussian"], ["Sinkhorn regression"]),
        "stream_panel": continual.stream_panel(fn, 10, ["a", "b"]),
        "ot_job_panel": distributed.ot_job_panel(fn, JobConfig()),
    }


def test_every_control_of_every_area_panel_has_an_accessible_name():
    """ipywidgets 8 names a dropdown's `<select>` and a number box's `<input>` by their description
    (a `<label for>`); a slider's handle gets no name, so a named number box goes with it (see
    `workbench.ui.controls`, checked in headless Chromium)."""
    panels = _area_panels()
    modules = [ui, *(importlib.import_module(f"workbench.ui.{m.name}") for m in pkgutil.iter_modules(ui.__path__))]
    defined = {name for module in modules for name, obj in inspect.getmembers(module, inspect.isfunction)
               if name.endswith("_panel")}
    assert defined == set(panels), "a panel is missing from this test"
    for panel_name, p in panels.items():
        assert p.controls, panel_name
        for name, field in p.fields.items():
            where = f"{panel_name}: {name}"
            assert field.label.strip() and field.control.tooltip == field.label, where
            for named in field.inputs_named():  # a <label for> each: the name a screen reader says
                assert named.description == field.label and "wb-named" in named._dom_classes, where
            if type(field.control).__name__ in ("IntSlider", "FloatSlider", "FloatLogSlider"):
                assert field.inputs_named() == [field.number], where  # the handle itself gets no name


# --- typed numbers ------------------------------------------------------------------------------

def test_out_of_range_typed_numbers_are_refused_visibly_not_clamped():
    p = _slider_panel()
    probes, lr = p.fields["num_probes"], p.fields["learning_rate"]
    assert probes.number.value == 4 and lr.number.value == pytest.approx(0.01)  # the number box is the readout
    probes.number.value = 10**9
    assert p.controls["num_probes"].value == 4 and probes.number.value == 4
    assert "1e+09 is above the maximum 64: not applied" in probes.message.value
    probes.number.value = 0
    assert p.controls["num_probes"].value == 4 and "0 is below the minimum 1: not applied" in probes.message.value
    probes.number.value = 2.5
    assert p.controls["num_probes"].value == 4 and "2.5 is not a whole number: not applied" in probes.message.value
    probes.number.value = 30  # in range: applied, the message goes
    assert p.controls["num_probes"].value == 30 and type(p.controls["num_probes"].value) is int
    assert probes.message.value == ""
    p.controls["num_probes"].value = 12  # a slider move shows in the box (notebooks and tests set it so)
    assert probes.number.value == 12

    lr.number.value = 5.0  # FloatLogSlider: min and max are exponents; 10**0 = 1 is the largest value
    assert p.controls["learning_rate"].value == pytest.approx(0.01) and "above the maximum 1:" in lr.message.value
    lr.number.value = 1e-5
    assert "below the minimum 0.0001" in lr.message.value
    lr.number.value = float("nan")
    assert "nan is not a number: not applied" in lr.message.value and p.controls["learning_rate"].value == 0.01
    lr.number.value = 0.5
    assert p.controls["learning_rate"].value == 0.5 and lr.message.value == ""
    assert p.run() == 6.0  # 12 * 0.5


def test_a_refused_number_does_not_rerun_a_live_panel():
    calls = []
    slider = w.IntSlider(value=2, min=0, max=5, continuous_update=False, description="k (examples)")
    p = ui.panel(lambda k: calls.append(k), {"k": slider}, lambda r: None, live=True)
    p.fields["k"].number.value = 9
    assert calls == [] and "above the maximum 5" in p.fields["k"].message.value
    p.fields["k"].number.value = 3
    assert calls == [3]


# --- flagged runs -------------------------------------------------------------------------------

def test_a_diverged_or_broken_run_is_flagged_not_done():
    def fn(loss, accuracy):
        return loss, accuracy

    controls = {"loss": w.FloatText(value=0.5, description="loss"), "accuracy": w.FloatText(value=0.9)}
    verdict = lambda r: ui.chance_verdict(r[1])  # noqa: E731
    p = ui.panel(fn, controls, lambda r: None, summary=lambda r: {"final loss": r[0]}, verdict=verdict)
    p.run()
    assert p.status.value.startswith("done") and p.history[0]["problem"] is None
    assert "⚠" not in p.history_view.value

    p.controls["loss"].value = float("nan")
    p.run()
    assert "<b>diverged</b>: the final loss is not finite" in p.status.value and "done" not in p.status.value
    assert p.history[0]["problem"] == "the final loss is not finite"
    first_row = p.history_view.value.split("<tr")[2]
    assert "⚠" in first_row and "wb-flagged" in first_row

    p.controls["loss"].value, p.controls["accuracy"].value = 0.5, 0.1
    p.run()
    assert ("<b>finished, but</b>: test accuracy 0.10 is chance level (0.10): the model did not learn; "
            "try a smaller learning rate") in p.status.value
    assert [h["problem"] is not None for h in p.history] == [True, True, False]


def test_area_verdicts_flag_chance_accuracy_and_a_lost_retain_accuracy():
    from workbench.experiments.unlearning_sweeps import Explored
    from workbench.ui.unlearning import unlearning_panel
    from workbench.unlearning.metrics import Scores

    fit = types.SimpleNamespace(test_accuracy=0.1, result=types.SimpleNamespace(
        history={"step": np.arange(3), "loss": np.array([2.3, 2.3, 2.3])}))
    p = ui.training_panel(lambda **kw: fit)
    p.run()
    assert "chance level" in p.status.value and "smaller learning rate" in p.status.value

    oracle = Scores(0.0, 0.96, 0.91, 3.0, 0.1, 0.3)
    scores = {"fine": Scores(0.1, 0.95, 0.9, 2.0, 0.1, 0.3), "broken": Scores(0.1, 0.11, 0.1, 9.0, 9.0, 9.0)}
    p = unlearning_panel(lambda method, kind, strength, num_steps: Explored(
        method, scores["broken" if strength > 10 else "fine"], 0.5, 0.01, oracle))
    p.run()
    assert p.status.value.startswith("done")
    p.controls["strength"].value = 31.6
    p.run()
    assert ("retain accuracy 0.11 is below half the oracle's (0.96): the model lost its accuracy on the retained "
            "data; try a smaller strength") in p.status.value


# --- while running ------------------------------------------------------------------------------

def test_previous_output_is_dimmed_while_running_and_restored_after():
    seen = []

    def fn(a):
        seen.append("wb-busy" in p.output._dom_classes)
        if a < 0:
            raise ValueError("negative")
        return a

    p = ui.panel(fn, {"a": w.IntText(value=1)}, lambda r: None)
    assert any(".wb-busy" in c.value for c in p.widget.children if isinstance(c, w.HTML))  # the style is there
    p.run()
    p.controls["a"].value = -1
    p.run()
    assert seen == [True, True] and "wb-busy" not in p.output._dom_classes


def test_warnings_are_shown_once_in_plain_words():
    def fn(a):
        warnings.warn("the step size is large", UserWarning, stacklevel=1)
        warnings.warn("the step size is large", UserWarning, stacklevel=1)
        warnings.warn("cache at /abs/path/x.py is stale", RuntimeWarning, stacklevel=1)
        return a

    p = ui.panel(fn, {"a": w.IntText(value=1)}, lambda r: None)
    p.run()
    notes = re.findall(r"note: ([^<]*)<", p.notes.value)
    assert notes == ["the step size is large", "cache at x.py is stale"]
    assert "Warning" not in p.notes.value and "/abs" not in p.notes.value and __file__ not in p.notes.value
    assert p.status.value.startswith("done")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a filter set outside (pytest, a notebook) does not hide them
        p.run()  # a second run shows its own warnings again, not twice as many
    assert len(re.findall("note:", p.notes.value)) == 2


# --- history ------------------------------------------------------------------------------------

def test_history_columns_are_the_controls_labels():
    p = _slider_panel()
    p.run()
    head = p.history_view.value.split("</tr>")[0]
    assert "probe vectors" in head and "learning rate (Adam)" in head
    assert "num_probes" not in head and "learning_rate" not in head
    assert p.history[0]["values"] == {"num_probes": 4, "learning_rate": 0.01}  # still keyed by argument


def test_first_thumbnail_is_drawn_before_the_display_and_keeps_the_aspect_ratio(monkeypatch):
    """The inline backend redraws a displayed figure with a tight box and may close it: here a
    display that shrinks and empties the figure must not reach the thumbnail."""
    import IPython.display

    def inline_like_display(fig, **kw):
        fig.set_size_inches(2, 2)
        fig.clf()

    monkeypatch.setattr(IPython.display, "display", inline_like_display)
    p = ui.panel(lambda a: a, {"a": w.FloatText(value=1.0)}, lambda r: _figure(r, size=(6, 3)))
    p.run()
    png = mpimg.imread(io.BytesIO(base64.b64decode(p.history[0]["figure"])))
    height, width = png.shape[:2]
    assert height == 2 * ui.history.THUMBNAIL_HEIGHT and width / height == pytest.approx(2.0, abs=0.02)
    assert png[..., :3].std() > 0.01, "blank thumbnail"
    assert "width:auto" in p.history_view.value


def test_history_downloads_as_csv_with_one_row_per_run():
    p = _slider_panel(title="Lanczos: a test")
    for probes in (4, 8):
        p.controls["num_probes"].value = probes
        p.run()
    link = re.search(r"<a download='([^']+)' href='data:text/csv;base64,([^']+)'", p.download.value)
    assert link and link.group(1) == "lanczos-a-test-results.csv"
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(link.group(2)).decode("utf-8"))))
    assert len(rows) == len(p.history) == 2
    assert [r["probe vectors"] for r in rows] == ["8", "4"] and rows[0]["product"] == "0.08"
    assert {"learning rate (Adam)", "finished at", "time (s)", "problem"} <= set(rows[0])
    assert rows[0]["problem"] == ""
    p.clear()
    assert p.download.value == ""
