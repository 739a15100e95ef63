"""Sweeps for the unlearning paper on digits: gradient ascent's cliff over learning rates and
steps, SSD over its threshold alpha and strength lambda, one method at one strength for the
exploration panel, and the paper's headline numbers computed from them (`headline`). The
digits setup, the model stacks and the KLoM benchmark are `workbench.experiments.unlearning`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from workbench import train, unlearning
from workbench.core.progress import bar
from workbench.experiments.timing import best_time
from workbench.experiments.unlearning import (
    Benchmark,
    Setup,
    default_options,
    digits_setup,
    forget_indices,
    train_models,
)
from workbench.unlearning import metrics


def _split_and_model(setup: Setup, kind: str, k_set: jax.Array, k_model: jax.Array, fraction: float = 0.05):
    """The forget/retain split of `kind` drawn by `k_set`, and one model trained on all data from `k_model`."""
    s = unlearning.split(setup.train_data, forget_indices(setup.train_data, kind, k_set, fraction))
    model = jax.tree.map(lambda a: a[0], train_models(setup, setup.train_data, k_model[None]))
    return s, model


def _mean_scores(scores: metrics.Scores) -> metrics.Scores:
    return metrics.Scores(*[float(np.mean(v)) for v in scores])


class Cliff(NamedTuple):
    """Gradient ascent over a grid: forget and retain accuracy [len(learning_rates), len(steps)]
    (NaN where the objective diverged), and the untouched model's scores (None when not given)."""

    learning_rates: np.ndarray
    steps: np.ndarray
    forget_accuracy: np.ndarray
    retain_accuracy: np.ndarray
    test_accuracy: np.ndarray
    original: metrics.Scores | None = None
    control: Cliff | None = None


def ascent_cliff(kind: str = "class", learning_rates: Sequence[float] = (0.01, 0.03, 0.1, 0.3),
                 steps: Sequence[int] = (10, 30, 100), seed: int = 0, setup: Setup | None = None,
                 method: str = "gradient_ascent", fraction: float = 0.05,
                 control_learning_rates: Sequence[float] = ()) -> Cliff:
    """Gradient ascent (or NegGrad+) on one model over learning rates x step counts.

    With `control_learning_rates`, the same model and step counts are also run at those rates
    (chosen too large: an ascent that always diverges or wrecks the model), returned as
    `control`: a negative control of the claim that some settings keep the retain set.

    Args:
      kind: the forget set, "class", "random" or "skewed" (see `forget_indices`).
      learning_rates: the learning rates of the grid's rows.
      steps: the step counts of the grid's columns.
      seed: the digits split, forget set, model and batch orders.
      setup: the digits setup; None means `digits_setup(seed=seed)`.
      method: "gradient_ascent" or "neggrad_plus" (its other options from `default_options`).
      fraction: the forget set's share of the training set (random and skewed kinds).
      control_learning_rates: learning rates of the control grid (empty: no control).

    Returns:
      `Cliff` with the accuracies of every cell (NaN where the objective diverged), the
      untouched model's scores and the control grid (None without control learning rates).
    """
    setup = setup or digits_setup(seed=seed)
    k_set, k_model, k_u = jax.random.split(jax.random.key(seed), 3)
    s, model = _split_and_model(setup, kind, k_set, k_model, fraction)
    rates = [*learning_rates, *control_learning_rates]
    shape = (len(rates), len(steps))
    fa, ra, ta = (np.full(shape, np.nan) for _ in range(3))
    base = default_options(setup)[method]
    pbar = bar(total=fa.size, desc=f"{method} grid", unit="runs")
    for i, lr in enumerate(rates):
        for j, n in enumerate(steps):
            pbar.update(1)
            try:
                out = unlearning.unlearn(method, setup.loss_fn, model, s.forget, s.retain, k_u,
                                         **{**base, "learning_rate": lr, "num_steps": int(n)})
            except train.NonFiniteLossError:
                continue
            sc = metrics.scores(setup.predict_fn, out.params, s.forget, s.retain, setup.test_data)
            fa[i, j], ra[i, j], ta[i, j] = sc.forget_accuracy, sc.retain_accuracy, sc.test_accuracy
    pbar.close()
    original = metrics.scores(setup.predict_fn, model, s.forget, s.retain, setup.test_data)
    m = len(learning_rates)
    control = None
    if len(control_learning_rates):
        control = Cliff(np.asarray(control_learning_rates), np.asarray(steps), fa[m:], ra[m:], ta[m:], original)
    return Cliff(np.asarray(learning_rates), np.asarray(steps), fa[:m], ra[:m], ta[:m], original, control)


def untouched_cliff(cliff: Cliff) -> Cliff:
    """The negative control of the cliff: a no-op unlearning, every cell the untouched model.

    Args:
      cliff: a grid from `ascent_cliff` (its `original` scores fill every cell).

    Returns:
      A `Cliff` of the same shape whose cells all hold the untouched model's accuracies.

    Raises:
      ValueError: when the cliff carries no original scores.
    """
    if cliff.original is None:
        raise ValueError("untouched_cliff needs a cliff with the untouched model's scores (from ascent_cliff)")
    fill = lambda v: np.full(cliff.forget_accuracy.shape, float(v))
    o = cliff.original
    return cliff._replace(forget_accuracy=fill(o.forget_accuracy), retain_accuracy=fill(o.retain_accuracy),
                          test_accuracy=fill(o.test_accuracy))


class CliffCounts(NamedTuple):
    """Cells of a grid that forget (forget accuracy <= the bound), that keep the retain set
    (retain accuracy within the margin of the oracles'), and that do both; diverged cells count
    in none."""

    forgetting: int
    keeping: int
    both: int


def cliff_counts(cliff: Cliff, oracle_retain_accuracy: float, forget_at_most: float = 0.05,
                 retain_within: float = 0.02) -> CliffCounts:
    """Count the cells of a grid that forget, that keep the retain set, and that do both.

    Gradient ascent's cliff is the finding that both of the first two sets are non-empty while
    the third is empty: some settings forget, others keep the retain set, none does both.

    Args:
      cliff: a grid from `ascent_cliff` (or a control of the same form).
      oracle_retain_accuracy: the retrained oracles' mean retain accuracy.
      forget_at_most: the forget accuracy a forgetting cell reaches (at most).
      retain_within: how far below the oracles' retain accuracy a keeping cell may fall.

    Returns:
      `CliffCounts(forgetting, keeping, both)`.
    """
    forgets = np.asarray(cliff.forget_accuracy) <= forget_at_most  # NaN (diverged) compares False
    keeps = np.asarray(cliff.retain_accuracy) >= oracle_retain_accuracy - retain_within
    return CliffCounts(int(forgets.sum()), int(keeps.sum()), int((forgets & keeps).sum()))


def good_ascent_settings(cliff: Cliff, oracle_retain_accuracy: float, forget_at_most: float = 0.05,
                         retain_within: float = 0.02) -> int:
    """How many cells of the cliff both forget and keep the retain set: the cliff's claim.

    Args:
      cliff: the grid from `ascent_cliff`.
      oracle_retain_accuracy: the retrained oracles' mean retain accuracy.
      forget_at_most: the forget accuracy a cell must reach (at most).
      retain_within: how far below the oracles' retain accuracy a cell may fall.

    Returns:
      The number of cells with forget accuracy <= `forget_at_most` and retain accuracy >=
      `oracle_retain_accuracy - retain_within` (diverged cells never count).
    """
    return cliff_counts(cliff, oracle_retain_accuracy, forget_at_most, retain_within).both


class AlphaSweep(NamedTuple):
    """SSD over alpha x lambda: the fraction of weights dampened and the accuracies [alphas, lams]
    (NaN where alpha selected nothing), the bound |D|/|D_f| above which nothing can be selected,
    the largest Fisher ratio F_forget / F_full over the weights, the same two numbers for the
    broken selection that compares with the retain set's Fisher (F_forget / F_retain: no bound, the
    negative control), the work of SSD and of one retraining in per-example gradient evaluations,
    one warm SSD call's wall time, the oracles' mean retain/forget/held-out accuracy and the
    untouched model's scores."""

    alphas: np.ndarray
    lams: np.ndarray
    selected: np.ndarray
    forget_accuracy: np.ndarray
    retain_accuracy: np.ndarray
    test_accuracy: np.ndarray
    bound: float
    max_ratio: float
    retain_fisher_max_ratio: float
    retain_fisher_selected_above_bound: float
    ssd_gradients: int
    retrain_gradients: int
    seconds: float
    oracle: metrics.Scores
    original: metrics.Scores


def _fraction_above(ratio, threshold: float) -> float:
    leaves = [np.asarray(r) for r in jax.tree.leaves(ratio)]
    return float(sum(int(np.sum(r > threshold)) for r in leaves) / sum(r.size for r in leaves))


def ssd_sweep(kind: str = "class", alphas: Sequence[float] = (1, 2, 5, 10, 20), lams: Sequence[float] = (0.1, 1.0),
              seed: int = 0, setup: Setup | None = None, fraction: float = 0.05, num_oracles: int = 4) -> AlphaSweep:
    """SSD on one model for each (alpha, lambda), beside `num_oracles` retrained oracles.

    The dampened fraction of every alpha is read off the Fisher ratios (`unlearning.fisher_ratio`),
    so an alpha at or above the bound |D|/|D_f| reports the fraction it selects (none), computed,
    where `unlearning.ssd` refuses it. Work is counted in per-example gradients: SSD takes one per
    training example (the forget and the retain Fisher diagonals), a retraining `num_steps *
    batch_size`.

    Args:
      kind: the forget set, "class", "random" or "skewed" (see `forget_indices`).
      alphas: SSD selection thresholds (rows).
      lams: SSD dampening strengths (columns).
      seed: the digits split, forget set, model and oracles.
      setup: the digits setup; None means `digits_setup(seed=seed)`.
      fraction: the forget set's share of the training set (random and skewed kinds).
      num_oracles: models retrained on the retain set for the reference accuracies.

    Returns:
      `AlphaSweep`; a cell where alpha selects no weight has `selected` 0 and NaN accuracies.
    """
    setup = setup or digits_setup(seed=seed)
    k_set, k_model, _, k_o = jax.random.split(jax.random.key(seed), 4)
    s, model = _split_and_model(setup, kind, k_set, k_model, fraction)
    ratio = unlearning.fisher_ratio(setup.loss_fn, model, s.forget, s.retain)
    bound = setup.train_data.y.shape[0] / s.forget_indices.size
    shape = (len(alphas), len(lams))
    sel, fa, ra, ta = (np.full(shape, np.nan) for _ in range(4))
    secs = np.nan
    for i, a in enumerate(alphas):
        sel[i, :] = _fraction_above(ratio, a)
        if sel[i, 0] == 0:  # selects nothing: `ssd` refuses it, and there is no model to score
            continue
        for j, lam in enumerate(lams):
            out = unlearning.ssd(setup.loss_fn, model, s.forget, s.retain, alpha=a, lam=lam)
            if np.isnan(secs):
                secs = best_time(lambda: unlearning.ssd(setup.loss_fn, model, s.forget, s.retain, alpha=a, lam=lam).params,  # noqa: B023 (called inside the loop)
                                 repeats=1)[1]
            sc = metrics.scores(setup.predict_fn, out.params, s.forget, s.retain, setup.test_data)
            fa[i, j], ra[i, j], ta[i, j] = sc.forget_accuracy, sc.retain_accuracy, sc.test_accuracy
    # the negative control: a selection against the retain set's Fisher has no bound
    broken = unlearning.fisher_ratio(setup.loss_fn, model, s.forget, s.retain, reference="retain")
    oracles = train_models(setup, s.retain, jax.random.split(k_o, num_oracles))
    oracle = _mean_scores(metrics.stacked_scores(setup.predict_fn, oracles, s.forget, s.retain, setup.test_data))
    return AlphaSweep(np.asarray(alphas, float), np.asarray(lams, float), sel, fa, ra, ta, float(bound),
                      float(max(np.max(np.asarray(r)) for r in jax.tree.leaves(ratio))),
                      float(max(np.max(r) for r in jax.tree.leaves(broken))), _fraction_above(broken, bound),
                      int(setup.train_data.y.shape[0]), int(setup.num_steps * setup.batch_size), float(secs), oracle,
                      metrics.scores(setup.predict_fn, model, s.forget, s.retain, setup.test_data))


# ----------------------------------------------------------------------------- headline numbers


class Headline(NamedTuple):
    """The unlearning paper's headline numbers (the claims' metrics) and their negative controls
    (`control_*`: a broken or trivial variant judged by the same number, which must fail the claim).

    SSD at the claimed setting: forget accuracy (control: the untouched model; beside it, reported,
    the paper's lambda = 1 at the same alpha), |retain accuracy - the oracles'| (control: the gradient-ascent cell that forgets with
    the smallest retain gap), retraining's work over SSD's in per-example gradients, the largest
    dampened fraction at alpha >= |D|/|D_f| and the largest Fisher ratio over that bound (control
    for both: the selection against the retain set's Fisher, which has no bound), and the bound.
    Gradient ascent's cliff: cells that forget and keep the retain set (control: SSD's grid judged
    alike), cells that forget (control: a no-op unlearning) and cells that keep the retain set
    (control: ascent at learning rates that diverge). KLoM95 on forget points (random forget set)
    of oracle over datamodel matching and of datamodel matching over the better of gradient ascent
    and NegGrad+ (controls: the untouched model in the numerator's place)."""

    ssd_forget_accuracy: float
    control_noop_forget_accuracy: float
    ssd_lam1_forget_accuracy: float
    ssd_retain_gap: float
    control_ascent_retain_gap: float
    ssd_work_ratio: float
    ssd_selected_above_bound: float
    ssd_max_ratio_over_bound: float
    control_retain_fisher_selected_above_bound: float
    control_retain_fisher_max_ratio_over_bound: float
    ssd_bound: float
    ascent_good_settings: int
    control_ssd_good_settings: int
    ascent_forgetting_settings: int
    control_noop_forgetting_settings: int
    ascent_keeping_settings: int
    control_diverging_keeping_settings: int
    klom_om_over_dmm: float
    control_klom_noop_over_dmm: float
    klom_dmm_over_ascent: float
    control_klom_noop_over_ascent: float


def headline(sweep: AlphaSweep, cliff: Cliff, random_benchmark: Benchmark, ssd_alpha: float,
             ssd_lam: float, control_lam: float = 1.0) -> Headline:
    """The paper's headline numbers and their controls from its three experiments.

    Args:
      sweep: the SSD sweep on a class (`ssd_sweep`); must contain `ssd_alpha`, `ssd_lam` and
        `control_lam`.
      cliff: the gradient-ascent grid (`ascent_cliff` with control learning rates), judged against
        the sweep's oracles.
      random_benchmark: the KLoM benchmark on a random forget set (`benchmark("random")`) with
        the original, oracle matching, datamodel matching, gradient ascent and NegGrad+.
      ssd_alpha: the SSD threshold the claims are checked at.
      ssd_lam: the SSD dampening strength the claims are checked at.
      control_lam: the dampening strength whose forget accuracy is reported beside the claimed
        one (the paper's default).

    Returns:
      `Headline`.

    Raises:
      ValueError: when the sweep lacks a needed setting or the cliff its control grid.
    """
    alphas, lams = list(sweep.alphas), list(sweep.lams)
    if ssd_alpha not in alphas or ssd_lam not in lams or control_lam not in lams:
        raise ValueError(f"the SSD sweep has no cell alpha={ssd_alpha}, lambda={ssd_lam} (and lambda={control_lam} "
                         f"for the control): alphas {alphas}, lams {lams}")
    if cliff.control is None:
        raise ValueError("the cliff has no control grid: call ascent_cliff with control_learning_rates")
    i, j, j_c = alphas.index(ssd_alpha), lams.index(ssd_lam), lams.index(control_lam)
    above = sweep.selected[sweep.alphas >= sweep.bound]
    oracle_retain = sweep.oracle.retain_accuracy
    counts = cliff_counts(cliff, oracle_retain)
    forgets = np.asarray(cliff.forget_accuracy) <= 0.05
    ascent_gaps = np.abs(np.asarray(cliff.retain_accuracy)[forgets] - oracle_retain)
    ssd_grid = Cliff(sweep.alphas, sweep.lams, sweep.forget_accuracy, sweep.retain_accuracy, sweep.test_accuracy)
    klom = {r.method: r.klom_forget_p95 for r in random_benchmark.rows}
    best_ascent = min(klom["gradient_ascent"], klom["neggrad_plus"])
    return Headline(
        ssd_forget_accuracy=float(sweep.forget_accuracy[i, j]),
        control_noop_forget_accuracy=float(sweep.original.forget_accuracy),
        ssd_lam1_forget_accuracy=float(sweep.forget_accuracy[i, j_c]),
        ssd_retain_gap=float(abs(sweep.retain_accuracy[i, j] - oracle_retain)),
        control_ascent_retain_gap=float(ascent_gaps.min()) if ascent_gaps.size else float("nan"),
        ssd_work_ratio=sweep.retrain_gradients / sweep.ssd_gradients,
        ssd_selected_above_bound=float(np.max(above)) if above.size else float("nan"),
        ssd_max_ratio_over_bound=sweep.max_ratio / sweep.bound,
        control_retain_fisher_selected_above_bound=sweep.retain_fisher_selected_above_bound,
        control_retain_fisher_max_ratio_over_bound=sweep.retain_fisher_max_ratio / sweep.bound,
        ssd_bound=sweep.bound,
        ascent_good_settings=counts.both,
        control_ssd_good_settings=cliff_counts(ssd_grid, oracle_retain).both,
        ascent_forgetting_settings=counts.forgetting,
        control_noop_forgetting_settings=cliff_counts(untouched_cliff(cliff), oracle_retain).forgetting,
        ascent_keeping_settings=counts.keeping,
        control_diverging_keeping_settings=cliff_counts(cliff.control, oracle_retain).keeping,
        klom_om_over_dmm=klom["oracle_matching"] / klom["datamodel_matching"],
        control_klom_noop_over_dmm=klom["original"] / klom["datamodel_matching"],
        klom_dmm_over_ascent=klom["datamodel_matching"] / best_ascent,
        control_klom_noop_over_ascent=klom["original"] / best_ascent,
    )


# ----------------------------------------------------------------------------- exploration (panels)


class Explored(NamedTuple):
    """One model unlearned by one method at one strength: its scores, MIA, time, and the mean
    scores of retrained oracles on the same forget set."""

    method: str
    scores: metrics.Scores
    mia_auc: float
    seconds: float
    oracle: metrics.Scores


def explore(method: str = "gradient_ascent", kind: str = "class", strength: float = 0.05, num_steps: int = 40,
            seed: int = 0) -> Explored:
    """Unlearn one digits model by one method at one strength (the exploration panel's function).

    Args:
      method: a name in `unlearning.METHODS` other than "retrain".
      kind: the forget set, "class", "random" or "skewed".
      strength: the learning rate of fine-tuning methods, alpha for SSD (lambda = 0.1).
      num_steps: fine-tuning steps (ignored by SSD).
      seed: the digits split, forget set, model and oracles.

    Returns:
      `Explored` with the model's scores, MIA AUC and time, and two oracles' mean scores.

    Raises:
      ValueError: for an unknown method or "retain" (and the method's own errors).
    """
    if method not in unlearning.METHODS or method == "retrain":
        raise ValueError(f"method must be one of {sorted(set(unlearning.METHODS) - {'retrain'})}, got {method!r}")
    setup = digits_setup(seed=seed)
    k_set, k_model, k_u, k_o = jax.random.split(jax.random.key(seed), 4)
    s, model = _split_and_model(setup, kind, k_set, k_model)
    oracles = train_models(setup, s.retain, jax.random.split(k_o, 2))
    opts = dict(default_options(setup, kind)[method])
    if method == "ssd":
        opts.update(alpha=float(strength), lam=0.1)
    else:
        opts.update(learning_rate=float(strength), num_steps=int(num_steps))
    if method == "oracle_matching":
        opts["oracle_params"] = jax.tree.map(lambda a: a[0], oracles)
    out, secs = best_time(lambda: unlearning.unlearn(method, setup.loss_fn, model, s.forget, s.retain, k_u,
                                                     **opts).params)
    sc = metrics.scores(setup.predict_fn, out, s.forget, s.retain, setup.test_data)
    oracle = _mean_scores(metrics.stacked_scores(setup.predict_fn, oracles, s.forget, s.retain, setup.test_data))
    return Explored(method, sc, metrics.mia(setup.predict_fn, out, s.forget, setup.test_data), secs, oracle)
