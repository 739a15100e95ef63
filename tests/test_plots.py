"""Every figure builder of `workbench.plots` once, on small synthetic inputs: it returns a
figure with the expected panels, lines and labels (the notebooks use the same calls)."""

from types import SimpleNamespace as NS

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from workbench import plots
from workbench.convex import HarveyResult, ScheduleComparison, SGDResult
from workbench.experiments.schedules import RefinementResult, ScheduleRun
from workbench.experiments.spectra import SharpnessRun
from workbench.influence.validation import EvaluationRow
from workbench.spectrum import Density, TraceEstimate

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def labels(ax):
    return ax.get_xlabel(), ax.get_ylabel(), ax.get_title()


def history(n=50):
    return {"step": np.arange(n), "loss": np.exp(-np.arange(n) / 20) + 0.01 * RNG.random(n)}


def test_training_loss_curves_and_plotly():
    fig = plots.training.loss_curves({"a": history(), "b": history()})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 4 and labels(ax)[:2] == ("step", "training loss (minibatch)")
    assert plots.loss_curves is plots.training.loss_curves  # re-exported for workbench.ui
    figly = plots.training.loss_curves_plotly({"a": history()})
    assert len(figly.data) == 1 and figly.layout.xaxis.title.text == "step"
    np.testing.assert_allclose(plots.smooth([1.0, 3.0, 5.0], 2), [1.0, 2.0, 4.0])


def density(n=64):
    grid = np.linspace(-1, 5, n)
    return Density(grid, np.exp(-grid**2), np.zeros((2, 3)), np.ones((2, 3)) / 3)


def test_spectra_densities_top_eigenvalues_traces():
    fig = plots.spectra.spectral_densities({"Hessian": density(), "GGN": density()},
                                           {"Hessian": RNG.normal(size=30), "GGN": None})
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["Hessian", "GGN"]
    assert fig.axes[0].get_ylabel() == "density" and fig.axes[1].get_xlabel() == "eigenvalue"
    assert len(fig.axes[0].patches) == 120 and len(fig.axes[1].patches) == 0  # histogram only with eigenvalues
    assert len(plots.spectra.spectral_densities({"Hessian": density()}).axes) == 1

    fig = plots.spectra.eigenvalues_by_rank({"H": np.arange(5, 0, -1.0), "G": np.arange(5, 0, -1.0) * 0.9},
                                        np.arange(5, 0, -1.0), "Hessian (dense eigh)")
    (ax,) = fig.axes
    assert len(ax.lines) == 3 and labels(ax)[:2] == ("rank", "eigenvalue")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["H", "G", "Hessian (dense eigh)"]

    traces = {m: TraceEstimate(np.float64(10 + i), np.float64(0.5), 100) for i, m in enumerate(("hutchinson", "hutch++", "xtrace"))}
    fig = plots.spectra.trace_estimates(traces, exact=11.0)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == list(traces)
    assert ax.get_ylabel() == "trace (+- 2 standard errors)"
    assert len(ax.lines) >= 2  # the estimates and the exact trace


def sharpness_run(lr):
    h = {"step": np.arange(100), "loss": np.linspace(1, 0.1, 100), "callback_step": np.arange(0, 100, 10),
         "sharpness": np.linspace(1, 2 / lr, 10)}
    return SharpnessRun(lr, h, None, False)


def test_spectra_sharpness():
    fig = plots.spectra.sharpness_vs_threshold([sharpness_run(0.1), sharpness_run(0.05)])
    ax_s, ax_l = fig.axes
    assert len(ax_s.lines) == 4 and len(ax_l.lines) == 2  # a curve and its 2/lr line per run
    assert ax_s.get_ylabel() == "sharpness (top Hessian eigenvalue)" and ax_l.get_ylabel() == "training loss (full batch)"
    assert ax_s.lines[0].get_color() == ax_s.lines[1].get_color()
    np.testing.assert_allclose(ax_s.lines[1].get_ydata(), [20.0, 20.0])
    fig = plots.spectra.sharpness_run(sharpness_run(0.1))
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_title() == "lr=0.1"


def test_influence_predicted_vs_actual_and_proponents():
    actual = RNG.normal(size=(4, 5))
    predicted = {name: actual + 0.1 * RNG.normal(size=actual.shape) for name in ("exact", "cg", "grad_dot")}
    fig = plots.influence.predicted_vs_actual(predicted, actual)
    assert len(fig.axes) == 4 and len(visible_axes(fig)) == 3
    exact_ax, _, dot_ax = visible_axes(fig)
    assert labels(exact_ax) == ("predicted change of test loss", "actual (LOO retraining)", "exact")
    assert len(exact_ax.lines) == 1 and len(dot_ax.lines) == 0  # diagonal only for curvature estimators
    assert len(exact_ax.collections[0].get_offsets()) == actual.size

    removed = np.array([7, 2, 9, 0, 4])  # hover text names the removed example and the test point
    fig = plots.influence.predicted_vs_actual_hover(predicted["exact"], actual, removed, np.arange(10) % 3, np.arange(4))
    points = fig.data[0]
    assert len(points.x) == actual.size and points.y[1 * 5 + 2] == actual[1, 2]
    assert points.text[1 * 5 + 1].startswith("removed training example #2 (label 2)") and "test point #1" in points.text[6]

    ranked = NS(indices=np.array([[0, 1, 2]]), scores=np.array([[0.3, 0.2, 0.1]]))
    fig = plots.influence.proponents_opponents(RNG.random(64), 3, RNG.random((5, 64)), np.arange(5), ranked, ranked)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[0].get_title() == "test: 3"
    assert fig.axes[1].get_title().startswith("proponent") and fig.axes[5].get_title().startswith("opponent")


def test_influence_lds_auc_and_per_test():
    table = [EvaluationRow(model, est, 0.5, None if est == "grad_cos" else 0.8, 1.0)
             for model in ("logistic", "mlp") for est in ("exact", "grad_cos", "tracin")]
    fig = plots.influence.lds_and_auc(table)
    ax1, ax2 = fig.axes
    assert len(ax1.patches) == 6 and len(ax2.patches) == 6
    assert ax1.get_ylabel() == "LDS (Spearman)" and ax2.get_ylabel() == "ROC AUC"
    assert [t.get_text() for t in ax1.get_xticklabels()] == ["exact", "grad_cos", "tracin"]
    assert np.isnan(ax2.patches[1].get_height())  # no AUC for grad_cos: no bar
    fig = plots.influence.lds_per_test(RNG.random(30), "exact on logistic")
    assert fig.axes[0].get_xlabel() == "Spearman per test point" and len(fig.axes[0].patches) == 20


def test_influence_concentration_and_lds_bars():
    even, one = np.ones((3, 50)), np.eye(3, 50)
    fig = plots.influence.influence_concentration({"even": even, "one": one, "random": RNG.normal(size=(3, 50))})
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), np.arange(1, 51) / 50)  # an even spread is the diagonal
    np.testing.assert_allclose(lines[1].get_ydata(), 1.0)  # one sequence carries it all
    assert lines[2].get_linestyle() == "--" and fig.axes[0].get_xscale() == "log"
    fig = plots.influence.lds_bars({"ekfac": 0.4, "grad_dot": 0.1, "random": 0.01})
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [0.4, 0.1]  # random is the dashed line, not a bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ekfac", "grad_dot"]
    assert ax.get_lines()[0].get_ydata()[0] == 0.01

def test_influence_fading_removal_fix_rate():
    steps = np.arange(0, 500, 100)
    fig = plots.influence.fading(steps, RNG.random(5), RNG.random(5), RNG.random(5), np.linspace(0, 1, 5))
    ax, ax2 = fig.axes  # the twin axis carries the divergence
    assert len(ax.lines) == 3 and len(ax2.lines) == 1
    assert ax.get_ylabel() == "correlation with the actual effect" and ax2.get_ylabel().startswith("parameter divergence")
    fig = plots.influence.removal_effect(steps, RNG.random(5), 0.3)
    assert len(fig.axes[0].lines) == 2
    results = [NS(fix_rate=0.5, fix_rate_random=0.1, damage=0.01, damage_random=0.0) for _ in range(3)]
    fig = plots.influence.fix_rate([5, 10, 20], results)
    ax1, ax2 = fig.axes
    assert len(ax1.lines) == 2 and len(ax2.lines) == 3 and ax1.get_xscale() == "log"
    assert ax1.get_ylabel() == "fraction of mispredictions fixed"


def test_schedules_figures():
    T = 100
    curves = {"constant": np.ones(T), "linear decay": np.linspace(1, 0, T)}
    fig = plots.schedules.schedule_shapes(curves, "Schedules over T = 100")
    assert len(fig.axes[0].lines) == 2 and labels(fig.axes[0]) == ("step", "learning rate (peak 1)", "Schedules over T = 100")
    horizons = [10, 100, 1000]
    bounds = {"constant": np.array([2.5, 3.0, 3.5]), "linear decay": np.array([2.0, 2.0, 2.0])}
    fig = plots.schedules.bound_curves(horizons, bounds)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 and ax.get_xscale() == "log" and ax.get_ylabel() == "bound x sqrt(T) / (D G)"
    fig = plots.schedules.refined_bound(np.ones(T), np.linspace(0, 1, T), np.linspace(1, 0, T), horizons, bounds)
    ax1, ax2 = fig.axes
    assert len(ax1.lines) == 3 and len(ax2.lines) == 2 and ax1.get_title() == "Norms and the refined schedule (T = 100)"
    fig = plots.schedules.schedule_and_bound(T, np.linspace(1, 0, T), horizons, bounds["linear decay"],
                                             bounds["constant"])
    assert len(fig.axes[1].lines) == 2 and fig.axes[0].get_title() == "your schedule, T = 100"

    runs = {name: ScheduleRun(np.linspace(1, 0, T), {"loss": np.exp(-np.arange(T) / 30)}, 0.1, 0.9)
            for name in ("linear decay", "cosine", "refined")}
    res = RefinementResult(np.ones(T), NS(smoothed_norms=np.ones(T), values=np.linspace(0, 1, T)), runs)
    fig = plots.schedules.norms_and_schedules({"logistic regression": res, "MLP": res}, tau=0.1)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title() == "logistic regression" and len(fig.axes[0].lines) == 2
    assert len(fig.axes[2].lines) == 3 and fig.axes[2].get_ylabel() == "learning rate"
    fig = plots.schedules.schedule_losses({"logistic regression": res}, window=10)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 and len(ax.lines[0].get_ydata()) == T - 9
    assert ax.get_ylabel() == "minibatch loss (smoothed)"


def test_convex_figures():
    steps = np.array([1, 10, 100])
    res = SGDResult(steps, *(RNG.random((20, 3)) for _ in range(3)))
    comparison = ScheduleComparison(("constant", "cosine"), (res, res), np.ones(2))
    results = {"lr x1": comparison, "lr x10": comparison}
    fig = plots.convex.suboptimality_quantiles(results, "lad: 20 seeds")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title() == "constant, lr x1" and fig.axes[0].get_ylabel() == "f(x) - f*"
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].collections) == 6  # median + two bands per iterate
    assert fig._suptitle.get_text() == "lad: 20 seeds"
    harvey = HarveyResult(np.array([16, 64, 256]), *(RNG.random(3) for _ in range(3)))
    fig = plots.convex.harvey(harvey)
    ax1, ax2 = fig.axes
    assert len(ax1.lines) == 3 and len(ax2.lines) == 4  # and the 1/32 lower bound
    assert ax2.get_ylabel() == "(f(x) - f*) sqrt(T) / log T"


def test_mixing_figures():
    from workbench.experiments.mixing import Probes
    from workbench.mixing import MixtureResult
    from workbench.plots import mixing as mixing_plots

    seeds, steps = 2, 200
    probs = np.stack([1 - RNG.random((seeds, steps)), RNG.random((seeds, steps))], -1)
    result = MixtureResult(None, (RNG.random((seeds, steps)) < 0.3).astype(int), probs, None, None,
                           RNG.random((seeds, 11, 3)), np.tile(np.arange(0, 201, 20), (seeds, 1)))
    fig = mixing_plots.loss_curves({"a": result, "b": result}, ["A", "B", "mt"])
    assert len(fig.axes) == 3 and len(fig.axes[1].lines) == 2 and fig.axes[2].get_title() == "mt"
    fig = mixing_plots.learned_ratio({"Exp3.S": result}, [0.1, 0.25], best_static=0.1, window=50)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 + 1 + 1 + 2  # 2 seeds faint, the mean, the moving share, 2 static lines
    np.testing.assert_allclose(ax.lines[2].get_ydata(), probs[..., 1].mean(0))
    fig = mixing_plots.probes({"lm": Probes(0.1, 0.2, 0.1, 0.1, 0.0), "mix": Probes(0.3, 0.4, 0.1, 0.2, 0.0)})
    assert len(fig.axes[0].patches) == 8
    fig = mixing_plots.run_overview(result, ["A", "B", "mt"], "x")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3
