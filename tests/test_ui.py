"""Widget panels work without a browser: the button's callback is a package function.

Every paper's panel is built here at a small size and its callback run once with its default
controls: no error, a figure, the history grows, the controls are disabled while the function runs
and the function runs inside the panel's output area (so its progress and errors show there)."""

import ast
import functools
from pathlib import Path

import ipywidgets as w
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import ui

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def track_output_context(monkeypatch):
    """Record on each Output widget whether code is running inside `with output:` (outside a
    kernel the real context manager does nothing visible, so the test cannot see it otherwise)."""
    enter, exit_ = w.Output.__enter__, w.Output.__exit__

    def tracked_enter(self):
        self._test_depth = getattr(self, "_test_depth", 0) + 1
        return enter(self)

    def tracked_exit(self, *exc):
        self._test_depth -= 1
        return exit_(self, *exc)

    monkeypatch.setattr(w.Output, "__enter__", tracked_enter)
    monkeypatch.setattr(w.Output, "__exit__", tracked_exit)


def run_and_check(p):
    """Run `p` once as its button would, checking what the user would see during and after."""
    seen = {}
    fn = p.fn

    def spy(**values):
        seen["disabled"] = [name for name, c in p.controls.items() if not c.disabled]
        seen["button disabled"] = p.button is None or p.button.disabled
        seen["inside output"] = getattr(p.output, "_test_depth", 0) > 0
        seen["status"] = p.status.value
        return fn(**values)

    p.fn = spy
    before = len(p.history)
    result = p.run()
    p.fn = fn
    assert p.last_error is None, f"panel raised: {p.last_error!r}"
    assert result is not None
    assert seen == {"disabled": [], "button disabled": True, "inside output": True, "status": "<i>running...</i>"}
    assert not any(c.disabled for c in p.controls.values()), "controls stay disabled after the run"
    assert len(p.history) == before + 1
    entry = p.history[0]
    assert entry["figure"], "no figure"
    assert entry["values"] == p.values() and entry["numbers"]
    assert "<img" in p.history_view.value and "<table" in p.history_view.value
    assert p.status.value.startswith("done")
    return result


# --- the layer itself ---------------------------------------------------------------------------

def _figure(x):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, x])
    return fig


def test_panel_runs_function_with_control_values_and_keeps_history():
    calls = []

    def fn(a, b):
        calls.append((a, b))
        return a + b

    p = ui.panel(fn, {"a": w.IntText(value=2), "b": w.IntText(value=3)}, _figure, summary=lambda r: {"sum": r})
    assert run_and_check(p) == 5
    p.controls["a"].value = 10
    p.button.click()  # as a user would press it
    assert calls == [(2, 3), (10, 3)]
    assert [h["numbers"]["sum"] for h in p.history] == [13, 5]  # newest first, both kept
    assert "13" in p.history_view.value and "5" in p.history_view.value
    p.clear_button.click()
    assert p.history == [] and p.history_view.value == ""


def test_panel_shows_errors_inside_the_panel_and_reenables_controls():
    def fn(a):
        raise ValueError(f"a must be small, got {a}")

    p = ui.panel(fn, {"a": w.IntText(value=7)}, _figure)
    assert p.run() is None  # does not raise into the widget loop
    assert isinstance(p.last_error, ValueError)
    assert "a must be small, got 7" in p.status.value
    assert any("ValueError: a must be small, got 7" in o.get("text", "") for o in p.output.outputs)
    assert not p.controls["a"].disabled and not p.button.disabled
    assert p.history == []


def test_live_panel_reruns_on_control_change():
    p = ui.panel(lambda a: a, {"a": w.IntSlider(value=1, min=0, max=5, continuous_update=False)}, _figure, live=True)
    assert p.button is None
    p.controls["a"].value = 4
    assert [h["values"]["a"] for h in p.history] == [4]


def test_panel_history_keeps_the_newest_runs_and_its_size_is_validated():
    p = ui.Panel(lambda a: a, {"a": w.IntText(value=0)}, lambda r: None, history_size=np.int64(2))
    for value in (1, 2, 3):
        p.controls["a"].value = value
        p.run()
    assert [h["values"]["a"] for h in p.history] == [3, 2]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="history_size must be an int >= 1"):
            ui.Panel(lambda a: a, {"a": w.IntText(value=0)}, lambda r: None, history_size=bad)


def test_widgets_are_built_with_keywords_only():
    """No positional arguments to an ipywidgets constructor anywhere in the panels or notebooks
    (`FloatSlider(0.0, 1.0, 0.1)` breaks with ipywidgets 8; `IntSlider(10, 1, 100)` misreads)."""
    bad = []
    files = sorted((ROOT / "workbench" / "ui").glob("*.py")) + sorted((ROOT / "notebooks").glob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("w", "widgets", "ipywidgets")
                    and node.func.attr[:1].isupper() and node.args):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.attr}")
    assert not bad, f"widgets built with positional arguments: {bad}"


# --- every paper's panel -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits64():
    from workbench import data

    train, test = data.load_digits(seed=0, dtype=jnp.float64)
    return train.take(np.arange(80)), test.take(np.arange(20))


@pytest.fixture(scope="module")
def logistic(digits64):
    from workbench.experiments.influence import fit_digits_logistic

    jax.config.update("jax_enable_x64", True)
    return fit_digits_logistic(80, 20, 1e-2, 0)


@pytest.mark.standard_promotion  # Adam inside fit_digits_mlp
def test_tour_training_panel():
    from workbench.experiments import digits

    fit = run_and_check(ui.training_panel(digits.fit_digits_mlp, hidden_size=8, learning_rate=0.05, num_steps=100))
    assert fit.test_accuracy > 0.7 and len(fit.result.history["loss"]) == 100


def test_edge_of_stability_panel(digits64):
    from workbench import data
    from workbench.experiments.spectra import digits_sharpness_run
    from workbench.ui.spectra import sharpness_panel

    train, _ = digits64
    targets = data.Dataset(train.x.astype(jnp.float32), jax.nn.one_hot(train.y, 10, dtype=jnp.float32))
    fn = functools.partial(digits_sharpness_run, targets, jax.random.key(0), every=20, progress=False)
    p = sharpness_panel(fn, learning_rate=0.05, hidden_size=8, num_steps=100)
    assert p.controls["learning_rate"].value == pytest.approx(0.05)  # the slider shows the learning rate
    assert isinstance(p.controls["learning_rate"], w.FloatLogSlider)
    run = run_and_check(p)
    assert run.learning_rate == pytest.approx(0.05) and len(run.history["sharpness"]) == 6
    assert p.history[0]["numbers"]["2/lr"] == pytest.approx(40.0)


def test_hessian_spectrum_panel(logistic):
    from workbench import curvature, spectrum
    from workbench.ui.spectra import density_panel

    model, params, train, _, _ = logistic
    hessian = curvature.operator(model, params, train, "hessian")
    fn = functools.partial(spectrum.spectral_density, hessian, jax.random.key(0))
    d = run_and_check(density_panel(fn, num_iters=10, num_probes=2))
    assert np.asarray(d.nodes).shape == (2, 10)


def test_influence_panels(logistic):
    from workbench import influence
    from workbench.influence import validation as ev
    from workbench.ui import influence as iu

    model, params, train, test, _ = logistic
    exact = np.asarray(influence.make("exact", model.loss_fn, params, train, damping=1e-3).scores(test))
    p = iu.estimator_panel(model.loss_fn, params, train, jax.random.key(0), test, exact, k=3)
    view = run_and_check(p)
    assert p.history[0]["numbers"]["r vs exact"] == pytest.approx(1.0, abs=1e-9)  # exact against itself
    assert np.asarray(view.proponents.indices).shape == (1, 3)
    p.controls["estimator"].value, p.controls["damping"].value = "grad_dot", 1e-2
    run_and_check(p)
    assert p.history[0]["numbers"]["r vs exact"] < 1.0

    builders = {"exact": lambda: influence.make("exact", model.loss_fn, params, train, damping=1e-3),
                "grad_dot": lambda: influence.make("grad_dot", model.loss_fn, params, train)}
    truth = ev.lds_ground_truth(model.loss_fn, params, train, jax.random.key(1), test, num_subsets=8)
    res = run_and_check(iu.lds_panel({"logistic": (builders, truth)}, test))
    assert res[2].per_test.shape == (20,)

    steps = np.arange(5)
    actual = np.random.default_rng(0).normal(size=(5, 4, 3))
    p = iu.fading_panel(steps, actual, actual[0] * 0.5, removed=np.array([3, 30, 60]))
    curve, predicted = run_and_check(p)
    assert np.array_equal(curve, actual[:, 0, 0]) and predicted == actual[0, 0, 0] * 0.5
    p.controls["removal"].value = 2  # live: a release reruns
    assert p.history[0]["numbers"]["training index"] == 60 and len(p.history) == 2

    fn = functools.partial(ev.correct_mispredictions, model.loss_fn, model.predict_fn, params, train,
                           jax.random.key(0), test, exact, learning_rate=0.5)
    r = run_and_check(iu.correction_panel(fn, k=5, num_steps=5))
    assert 0 <= r.fix_rate <= 1


@pytest.mark.standard_promotion  # Adam
def test_sketching_panels(logistic):
    import optax

    from workbench import sketch
    from workbench.ui.sketching import intrinsic_panel, sketch_panel

    grads = jax.random.normal(jax.random.key(0), (12, 300))
    r = run_and_check(sketch_panel(grads, jax.random.key(1), sketch.KINDS, log2_dim=8, max_log2_dim=9))
    assert r.dim == 256 and r.exact.shape == (66,)

    model, params, train, test, _ = logistic
    fn = functools.partial(sketch.intrinsic_sweep, model.loss_fn, params, train, test, jax.random.key(0),
                           predict_fn=model.predict_fn, num_steps=30, optimizer=optax.adam(0.05))
    p = intrinsic_panel(fn, dim=20)
    run_and_check(p)
    p.controls["dim"].value = 40
    run_and_check(p)
    assert [h["values"]["dim"] for h in p.history] == [40, 20]


def test_schedule_panels():
    from workbench import schedules
    from workbench.experiments.schedules import digits_refinement
    from workbench.ui.schedules import bound_panel, refinement_panel

    horizons = [10, 100, 1000]
    reference = schedules.bound_curve(schedules.standard_shapes()["linear decay"], horizons)
    p = bound_panel(horizons, reference)
    assert p.button is None  # live
    r = run_and_check(p)
    assert r.T == 1000 and r.curve.shape == (3,)
    # A live panel must stay cheap: once warm, moving a slider compiles no new program (counted,
    # not timed, so a busy machine cannot fail it). The first move may compile the warm-up's ops.
    import logging

    import jax

    p.controls["warmup_fraction"].value = 0.1
    assert len(p.history) == 2
    compiled = []
    handler = logging.Handler()
    handler.emit = lambda record: compiled.append(record.getMessage())
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles():
            p.controls["warmup_fraction"].value = 0.2
            p.controls["cooldown_fraction"].value = 0.3
    finally:
        logging.getLogger("jax").removeHandler(handler)
    assert len(p.history) == 4
    assert not [m for m in compiled if m.startswith("Compiling")], compiled

    res = run_and_check(refinement_panel(functools.partial(digits_refinement, batch_size=32, seed=0), num_steps=100))
    assert set(res.runs) == {"linear decay", "cosine", "refined", "linear decay (same area)"}


def test_last_iterate_panel():
    from workbench import convex, schedules
    from workbench.ui.convex import last_iterate_panel

    problem = convex.make_problem("lad", jax.random.key(0), n=50, dim=4)
    shapes = {n: schedules.standard_shapes()[n] for n in ("constant", "linear decay")}
    fn = lambda num_seeds, num_steps, lr_factor: convex.compare_schedules(  # noqa: E731
        problem, shapes, jax.random.key(0), num_steps=num_steps, num_seeds=num_seeds, lr_factor=lr_factor)
    results = run_and_check(last_iterate_panel(fn, num_seeds=10, num_steps=100))
    assert results.result("constant").last.shape[0] == 10


@pytest.mark.standard_promotion  # Adam
def test_icl_panel():
    from workbench.experiments import icl
    from workbench.ui.icl import icl_panel

    run_and_check(icl_panel(functools.partial(icl.explore, tasks_per_step=32), dim=2, context_length=4,
                            num_layers=1, num_steps=100))


# The unlearning recipes (`explore`: a digits model, two retrained oracles; `explore_diffusion`: a
# trained denoiser) take 15-20 s of CPU each, too much for this file; their panels are checked with
# stand-ins of the same signature returning the recipes' result types.

def test_unlearning_panel():
    from workbench.experiments.unlearning_sweeps import Explored
    from workbench.ui.unlearning import unlearning_panel
    from workbench.unlearning.metrics import Scores

    def explore(method, kind, strength, num_steps):
        return Explored(method, Scores(0.1, 0.95, 0.9, 2.0, 0.1, 0.3), 0.52, 0.01, Scores(0.0, 0.96, 0.91, 3.0, 0.1, 0.3))

    p = unlearning_panel(explore)
    run_and_check(p)
    assert p.history[0]["numbers"]["MIA AUC"] == 0.52


def test_diffusion_panel():
    from workbench.experiments.diffusion_unlearning import DiffusionRow, ExploredDiffusion
    from workbench.ui.unlearning import diffusion_panel

    def explore(method, forget_class, weight, num_steps):
        row = DiffusionRow(method, 0.05, 0.9, 3.0, 0.2, 0.5, 0.1, 0.3, 1.0, 4.0)
        return ExploredDiffusion(row, np.zeros((2, 10, 8, 8)), ["original", method])

    p = diffusion_panel(explore)
    run_and_check(p)
    assert p.history[0]["numbers"]["integrity (pixel)"] == 0.2


def test_distributed_panel():
    """The job itself (real processes, tens of seconds) is tested in test_distributed.py; here a
    stand-in with its signature returns what process 0 writes, to check the panel's wiring."""
    from workbench.experiments import distributed as exp
    from workbench.ui.distributed import ot_job_panel

    calls = []

    def run_job(out_dir, num_processes, config):
        calls.append((num_processes, config.ot_points, config.epsilon))
        rng = np.random.default_rng(0)
        n = config.ot_points
        results = {"ot_x": rng.normal(size=(n, 2)), "ot_y": rng.normal(size=(n, 2)) + 1, "ot_u": np.zeros(n),
                   "ot_v": np.zeros(n), "ot_dual": np.float64(1.5), "ot_steps": np.int64(40), "ot_seconds": 0.2}
        return exp.JobResult(num_processes, 1, results, 1.0)

    p = ot_job_panel(run_job, exp.JobConfig(ot_points=60, epsilon=0.1), num_processes=2)
    job, epsilon = run_and_check(p)
    assert calls == [(2, 60, pytest.approx(0.1))]
    assert p.history[0]["numbers"] == {"dual": 1.5, "steps": 40, "ms / step": pytest.approx(5.0)}


def test_progress_is_quiet_under_the_runner_and_changes_no_result(monkeypatch, capsys):
    import optax

    from workbench import train
    from workbench.core import progress

    data = (jnp.arange(8.0), jnp.arange(8.0) * 2)
    loss = lambda p, b: jnp.mean((p * b[0] - b[1]) ** 2)  # noqa: E731
    run = functools.partial(train.train, loss, jnp.array(0.0), data, None, optimizer=optax.sgd(0.01), num_steps=250)
    quiet = run(progress=False)
    capsys.readouterr()
    monkeypatch.setenv(progress.PROGRESS_ENV, "log")
    logged = run(progress=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train: 250/250 steps in ") and "loss=" in err
    assert np.array_equal(quiet.history["loss"], logged.history["loss"]) and quiet.params == logged.params
    monkeypatch.setenv(progress.PROGRESS_ENV, "off")
    run(progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.PROGRESS_ENV, "loud")
    with pytest.raises(ValueError, match="WORKBENCH_PROGRESS must be one of"):
        progress.bar(total=3)


def test_task_switch_panel():
    import functools

    from workbench import continual
    from workbench.experiments import continual as recipes
    from workbench.ui.continual import stream_panel

    full = recipes.digits_stream("rotated", 2)
    stream = continual.stack_tasks(full.names, [(full.train_x[t][:64], full.train_y[t][:64]) for t in range(2)],
                                   [(full.test_x[t][:32], full.test_y[t][:32]) for t in range(2)])
    fn, params = recipes.mlp_params([0], 8)
    explore = functools.partial(recipes.explore, fn, params, stream, [0], steps_per_task=20, batch_size=8)
    result = run_and_check(stream_panel(explore, 20, stream.names, replay_fraction=0.5))
    assert result.result.accuracy.shape == (1, 41, 2) and 0 <= result.row.old_final <= 1


@pytest.mark.standard_promotion  # Adam
def test_transport_panel():
    from workbench.experiments import transport as recipes
    from workbench.ui.transport import transport_panel

    problems = {"gaussian 2-d": recipes.make_problem("gaussian", 2)}
    explore = functools.partial(recipes.explore, problems, batch_size=32, hidden=8, num_points=64)
    result = run_and_check(transport_panel(explore, list(problems), list(recipes.METHODS), num_steps=50))
    assert result.mapped.shape == (64, 2) and result.row.l2_uvp >= 0


@pytest.mark.standard_promotion  # Adam
def test_objective_mixing_panel():
    from workbench.experiments import mixing as recipes
    from workbench.experiments.mixing_languages import corpus
    from workbench.ui.mixing import mixing_panel

    data = corpus(seq_len=64, num_sequences=64, num_eval=8, b_share=0.25)
    explore = functools.partial(recipes.explore, data, [0], steps=20, batch_size=4, d_model=16, num_layers=1)
    p = mixing_panel(explore, data.eval_names)
    result = run_and_check(p)
    assert result.result.eval_loss.shape == (1, 11, 3) and 0 <= result.row.share <= 1
    assert result.name == "Exp3.S, eta 0.02"
