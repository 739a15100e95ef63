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
    (NaN where the objective diverged)."""

    learning_rates: np.ndarray
    steps: np.ndarray
    forget_accuracy: np.ndarray
    retain_accuracy: np.ndarray
    test_accuracy: np.ndarray


def ascent_cliff(kind: str = "class", learning_rates: Sequence[float] = (0.01, 0.03, 0.1, 0.3),
                 steps: Sequence[int] = (10, 30, 100), seed: int = 0, setup: Setup | None = None,
                 method: str = "gradient_ascent", fraction: float = 0.05) -> Cliff:
    """Gradient ascent (or NegGrad+) on one model over learning rates x step counts.

    Args:
      kind: the forget set, "class", "random" or "skewed" (see `forget_indices`).
      learning_rates: the learning rates of the grid's rows.
      steps: the step counts of the grid's columns.
      seed: the digits split, forget set, model and batch orders.
      setup: the digits setup; None means `digits_setup(seed=seed)`.
      method: "gradient_ascent" or "neggrad_plus" (its other options from `default_options`).
      fraction: the forget set's share of the training set (random and skewed kinds).

    Returns:
      `Cliff` with the accuracies of every cell (NaN where the objective diverged).
    """
    setup = setup or digits_setup(seed=seed)
    k_set, k_model, k_u = jax.random.split(jax.random.key(seed), 3)
    s, model = _split_and_model(setup, kind, k_set, k_model, fraction)
    shape = (len(learning_rates), len(steps))
    fa, ra, ta = (np.full(shape, np.nan) for _ in range(3))
    base = default_options(setup)[method]
    pbar = bar(total=fa.size, desc=f"{method} grid", unit="runs")
    for i, lr in enumerate(learning_rates):
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
    return Cliff(np.asarray(learning_rates), np.asarray(steps), fa, ra, ta)


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
    good = (cliff.forget_accuracy <= forget_at_most) & (cliff.retain_accuracy >= oracle_retain_accuracy - retain_within)
    return int(good.sum())


class AlphaSweep(NamedTuple):
    """SSD over alpha x lambda: the fraction of weights dampened and the accuracies [alphas, lams]
    (NaN where alpha selected nothing), the bound |D|/|D_f| above which nothing can be selected,
    one warm SSD call's time and one warm retraining's time (same model, single call), and the
    oracles' mean retain/forget/held-out accuracy."""

    alphas: np.ndarray
    lams: np.ndarray
    selected: np.ndarray
    forget_accuracy: np.ndarray
    retain_accuracy: np.ndarray
    test_accuracy: np.ndarray
    bound: float
    seconds: float
    retrain_seconds: float
    oracle: metrics.Scores


def ssd_sweep(kind: str = "class", alphas: Sequence[float] = (1, 2, 5, 10, 20), lams: Sequence[float] = (0.1, 1.0),
              seed: int = 0, setup: Setup | None = None, fraction: float = 0.05, num_oracles: int = 4) -> AlphaSweep:
    """SSD on one model for each (alpha, lambda), beside `num_oracles` retrained oracles.

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
    shape = (len(alphas), len(lams))
    sel, fa, ra, ta = (np.full(shape, np.nan) for _ in range(4))
    secs = np.nan
    for i, a in enumerate(alphas):
        for j, lam in enumerate(lams):
            try:
                out = unlearning.ssd(setup.loss_fn, model, s.forget, s.retain, alpha=a, lam=lam)
            except ValueError:
                sel[i, j] = 0.0
                continue
            if np.isnan(secs):
                secs = best_time(lambda: unlearning.ssd(setup.loss_fn, model, s.forget, s.retain, alpha=a, lam=lam).params)[1]  # noqa: B023 (called inside the loop)
            sc = metrics.scores(setup.predict_fn, out.params, s.forget, s.retain, setup.test_data)
            sel[i, j], fa[i, j], ra[i, j], ta[i, j] = (float(out.selected), sc.forget_accuracy, sc.retain_accuracy,
                                                       sc.test_accuracy)
    bound = setup.train_data.y.shape[0] / s.forget_indices.size
    run = lambda: unlearning.retrain(setup.loss_fn, model, s.forget, s.retain, k_o, init_fn=setup.init_fn,
                                     learning_rate=setup.learning_rate, num_steps=setup.num_steps,
                                     batch_size=setup.batch_size).params
    jax.block_until_ready(run())
    retrain_secs = best_time(run)[1]
    oracles = train_models(setup, s.retain, jax.random.split(k_o, num_oracles))
    oracle = _mean_scores(metrics.stacked_scores(setup.predict_fn, oracles, s.forget, s.retain, setup.test_data))
    return AlphaSweep(np.asarray(alphas, float), np.asarray(lams, float), sel, fa, ra, ta, float(bound), float(secs),
                      float(retrain_secs), oracle)


# ----------------------------------------------------------------------------- headline numbers


class Headline(NamedTuple):
    """The unlearning paper's headline numbers (the claims' metrics): SSD at the claimed setting
    (forget accuracy, |retain accuracy - the oracles'|, retraining time / SSD time, the largest
    dampened fraction at alpha >= |D|/|D_f| and that bound), the count of good gradient-ascent
    settings, and KLoM95 on forget points of oracle over datamodel matching and of datamodel
    matching over the better of gradient ascent and NegGrad+ (random forget set)."""

    ssd_forget_accuracy: float
    ssd_retain_gap: float
    ssd_speedup: float
    ssd_selected_above_bound: float
    ssd_bound: float
    ascent_good_settings: int
    klom_om_over_dmm: float
    klom_dmm_over_ascent: float


def headline(sweep: AlphaSweep, cliff: Cliff, random_benchmark: Benchmark, ssd_alpha: float,
             ssd_lam: float) -> Headline:
    """The paper's headline numbers from its three experiments.

    Args:
      sweep: the SSD sweep on a class (`ssd_sweep`); must contain `ssd_alpha` and `ssd_lam`.
      cliff: the gradient-ascent grid (`ascent_cliff`), judged against the sweep's oracles.
      random_benchmark: the KLoM benchmark on a random forget set (`benchmark("random")`) with
        oracle matching, datamodel matching, gradient ascent and NegGrad+.
      ssd_alpha: the SSD threshold the claims are checked at.
      ssd_lam: the SSD dampening strength the claims are checked at.

    Returns:
      `Headline`.

    Raises:
      ValueError: when the sweep lacks the claimed setting.
    """
    alphas, lams = list(sweep.alphas), list(sweep.lams)
    if ssd_alpha not in alphas or ssd_lam not in lams:
        raise ValueError(f"the SSD sweep has no cell alpha={ssd_alpha}, lambda={ssd_lam}: alphas {alphas}, lams {lams}")
    i, j = alphas.index(ssd_alpha), lams.index(ssd_lam)
    above = sweep.selected[sweep.alphas >= sweep.bound]
    klom = {r.method: r.klom_forget_p95 for r in random_benchmark.rows}
    return Headline(
        ssd_forget_accuracy=float(sweep.forget_accuracy[i, j]),
        ssd_retain_gap=float(abs(sweep.retain_accuracy[i, j] - sweep.oracle.retain_accuracy)),
        ssd_speedup=float(sweep.retrain_seconds / sweep.seconds),
        ssd_selected_above_bound=float(np.max(above)) if above.size else 0.0,
        ssd_bound=sweep.bound,
        ascent_good_settings=good_ascent_settings(cliff, sweep.oracle.retain_accuracy),
        klom_om_over_dmm=klom["oracle_matching"] / klom["datamodel_matching"],
        klom_dmm_over_ascent=klom["datamodel_matching"] / min(klom["gradient_ascent"], klom["neggrad_plus"]),
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
