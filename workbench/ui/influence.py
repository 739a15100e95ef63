"""Panels for the influence papers: estimator, damping and k -> scores against the exact ones and
the top proponents / opponents as images; estimator -> LDS per test point; a removal's effect over
training; k, steps and weight -> mispredictions fixed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from workbench.influence import CURVATURE_ESTIMATORS
from workbench.ui import Panel, panel


class EstimatorView(NamedTuple):
    """One estimator's scores of every test point and the ranking for one of them."""

    estimator: str
    scores: np.ndarray  # [n_test, n_train]
    proponents: Any  # influence.Ranked for the chosen test point
    opponents: Any
    test_index: int


def score_estimator(loss_fn, params, train_data, key, test_data, *, estimator: str, damping: float, k: int,
                    test_index: int, arnoldi_k: int = 50) -> EstimatorView:
    """Build `influence.make(estimator, ...)`, score every test point and rank for one of them.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss.
        params: pytree, the trained model.
        train_data: `Dataset` [n_train], the training set.
        key: `jax.random` key of the randomised estimators (lissa, arnoldi).
        test_data: `Dataset` [n_test], the test points.
        estimator: the estimator's name (`influence.ESTIMATORS`).
        damping: added to the curvature of the inverse-curvature estimators (ignored by others).
        k: proponents and opponents ranked.
        test_index: the test point ranked, in [0, n_test).
        arnoldi_k: eigenpairs kept by arnoldi.

    Returns:
        `EstimatorView(estimator, scores [n_test, n_train], proponents, opponents, test_index)`.

    Raises:
        ValueError: if `test_index` is out of range (or the estimator refuses its options).
    """
    from workbench import influence

    if not 0 <= test_index < len(test_data.y):
        raise ValueError(f"test_index must lie in [0, {len(test_data.y)}), got {test_index}")
    opts: dict[str, Any] = {"damping": damping} if estimator in CURVATURE_ESTIMATORS else {}
    if estimator in ("lissa", "arnoldi"):
        opts["key"] = key
    if estimator == "arnoldi":
        opts["k"] = arnoldi_k
    est = influence.make(estimator, loss_fn, params, train_data, **opts)
    z = test_data.take(np.array([test_index]))
    return EstimatorView(estimator, np.asarray(est.scores(test_data)), est.proponents(z, k), est.opponents(z, k),
                         int(test_index))


def estimator_panel(loss_fn, params, train_data, key, test_data, reference: np.ndarray, *,
                    estimators=("exact", "cg", "lissa", "arnoldi", "grad_dot", "grad_cos"), damping: float = 1e-3,
                    k: int = 5, arnoldi_k: int = 50) -> Panel:
    """Estimator, damping (added to the curvature), k (examples shown) and the test point ->
    `score_estimator`, drawn beside `reference` (e.g. the exact scores [n_test, n_train]).

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar`, the per-example data loss.
        params: pytree, the trained model.
        train_data: `Dataset` [n_train] of images and labels.
        key: `jax.random` key of the randomised estimators.
        test_data: `Dataset` [n_test] of images and labels.
        reference: reference scores [n_test, n_train] (e.g. exact influence).
        estimators: the estimators offered.
        damping: initial damping.
        k: initial number of proponents / opponents shown.
        arnoldi_k: eigenpairs kept by arnoldi.

    Returns:
        The `Panel` (`.widget` to display).
    """
    import functools

    import ipywidgets as w

    from workbench.plots.influence import estimator_view as draw

    reference = np.asarray(reference)
    controls = {
        "estimator": w.Dropdown(options=list(estimators), value=estimators[0], description="estimator"),
        "damping": w.FloatLogSlider(value=damping, base=10, min=-6, max=0, step=0.25, readout_format=".1e",
                                    description="damping λ (curvature units)", continuous_update=False),
        "k": w.IntSlider(value=k, min=1, max=10, description="k (examples shown)", continuous_update=False),
        "test_index": w.IntSlider(value=0, min=0, max=len(test_data.y) - 1, description="test point",
                                  continuous_update=False),
    }

    def show(v):
        i = v.test_index
        return draw(v.estimator, v.scores, reference, test_data.x[i], int(test_data.y[i]), np.asarray(train_data.x),
                    np.asarray(train_data.y), v.proponents, v.opponents)

    def summary(v):
        return {"r vs exact": float(np.corrcoef(reference.ravel(), v.scores.ravel())[0, 1]),
                "top proponent": int(np.asarray(v.proponents.indices[0])[0])}

    fn = functools.partial(score_estimator, loss_fn, params, train_data, key, test_data, arnoldi_k=arnoldi_k)
    return panel(fn, controls, show, summary=summary, button_text="Score",
                 title="Influence estimators against the exact influence")


def lds_panel(problems: Mapping[str, tuple[Mapping[str, Callable], Any]], test_data) -> Panel:
    """`problems[model] = (builders, lds_truth)`: estimator and model -> the LDS per test point of
    `builders[estimator]().scores(test_data)` against the subset-retraining truth.

    Args:
        problems: dict model name -> (dict estimator name -> zero-argument builder, the
            `LDSGroundTruth` of that model).
        test_data: the test points the ground truths were measured on.

    Returns:
        The `Panel` (`.widget` to display).
    """
    import ipywidgets as w

    from workbench.influence import validation
    from workbench.plots.influence import lds_per_test

    names = list(problems)
    estimators = list(next(iter(problems.values()))[0])
    controls = {"estimator": w.Dropdown(options=estimators, value=estimators[0], description="estimator"),
                "model": w.Dropdown(options=names, value=names[0], description="model")}

    def fn(estimator, model):
        builders, truth = problems[model]
        return estimator, model, validation.lds(builders[estimator]().scores(test_data), truth)

    def show(r):
        estimator, model, res = r
        return lds_per_test(res.per_test, f"{estimator} on {model}: LDS {np.nanmean(res.per_test):.3f}")

    def summary(r):
        per = r[2].per_test
        return {"LDS (mean)": float(np.nanmean(per)), "share of test points > 0": float(np.nanmean(per > 0))}

    return panel(fn, controls, show, summary=summary, button_text="Score",
                 title="Linear datamodeling score per test point")


def fading_panel(steps: np.ndarray, actual: np.ndarray, predicted: np.ndarray, removed: np.ndarray) -> Panel:
    """Live: a removed training example and a test point -> the actual change of the test loss over
    training (`actual[T, n_test, k]`) against the influence function's prediction
    (`predicted[n_test, k]`); `removed` maps the k removals to training indices.

    Args:
        steps: training steps after the removal [T] (`FadingResult.steps`).
        actual: actual effects [T, n_test, k] (`FadingResult.actual`).
        predicted: predicted effects [n_test, k].
        removed: training indices of the k removals.

    Returns:
        The `Panel` (live: it redraws when a slider is released).
    """
    import ipywidgets as w

    from workbench.plots.influence import removal_effect

    actual, predicted = np.asarray(actual), np.asarray(predicted)
    controls = {
        "removal": w.IntSlider(value=0, min=0, max=actual.shape[2] - 1, description="removed example (#)",
                               continuous_update=False),
        "test_index": w.IntSlider(value=0, min=0, max=actual.shape[1] - 1, description="test point",
                                  continuous_update=False),
    }

    def fn(removal, test_index):
        return actual[:, test_index, removal], float(predicted[test_index, removal])

    def summary(r):
        curve, pred = r
        return {"training index": int(removed[controls["removal"].value]), "predicted": pred,
                "actual at first step": float(curve[0]), "actual at end": float(curve[-1])}

    return panel(fn, controls, lambda r: removal_effect(steps, *r), summary=summary, live=True,
                 title="One removal's effect over training against the influence function")


def correction_panel(fn: Callable, k: int = 10, num_steps: int = 10, weight: float = 0.0) -> Panel:
    """k, fine-tuning steps and new weight -> mispredictions fixed and damage, against random.

    Args:
        fn: `fn(k, num_steps, weight) -> CorrectionResult`, e.g. a partial of
            `validation.correct_mispredictions` with everything but these three bound.
        k: initial number of harmful examples re-weighted.
        num_steps: initial number of fine-tuning steps.
        weight: initial new weight of the re-weighted examples (0 removes, negative unlearns).

    Returns:
        The `Panel` (`.widget` to display).
    """
    import ipywidgets as w

    from workbench.plots.influence import correction

    controls = {
        "k": w.IntSlider(value=k, min=1, max=100, description="k (examples re-weighted)", continuous_update=False),
        "num_steps": w.IntSlider(value=num_steps, min=1, max=100, description="fine-tuning steps",
                                 continuous_update=False),
        "weight": w.FloatSlider(value=weight, min=-5.0, max=1.0, step=0.1, description="new weight (0 removes)",
                                continuous_update=False),
    }

    def summary(r):
        return {"fixed": r.fix_rate, "fixed (random)": r.fix_rate_random, "damage": r.damage,
                "damage (random)": r.damage_random}

    return panel(fn, controls, lambda r: correction(r, controls["k"].value), summary=summary,
                 button_text="Correct", title="Fix mispredictions by re-weighting their opponents")
