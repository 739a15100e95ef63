"""Correcting mispredictions and influence fading (Schioppa et al. 2023) on small problems."""

import numpy as np
import optax
import pytest
from plain_logreg import fitted_digits, plain_logreg

from workbench import influence
from workbench.core import statistics
from workbench.influence import validation as ev

L2 = 1e-3


LogReg = plain_logreg(L2)


@pytest.fixture(scope="module")
def problem():
    params, train, test = fitted_digits(LogReg, 300, 200)
    scores = influence.make("exact", LogReg.loss_fn, params, train).scores(test)
    return params, train, test, scores


def test_removing_the_harmful_examples_fixes_more_than_random(problem, key):
    params, train, test, scores = problem
    r = ev.correct_mispredictions(LogReg.loss_fn, LogReg.predict_fn, params, train, key, test, scores,
                                  k=20, num_steps=30, learning_rate=3.0)
    assert r.mispredicted.size > 0 and r.fixed.shape == r.mispredicted.shape
    assert r.fix_rate > r.fix_rate_random
    assert r.fix_rate > 0.2 and abs(r.damage) < 0.05
    with pytest.raises(ValueError, match="scores must have shape"):
        ev.correct_mispredictions(LogReg.loss_fn, LogReg.predict_fn, params, train, key, test, scores[:, :5])


def test_fading_starts_at_the_prediction_and_tracks_divergence(problem, key):
    """Full-batch GD without example i: after many steps on a convex problem the actual change
    approaches the LOO change the influence function predicts; the divergence grows."""
    params, train, test, scores = problem
    removed = np.arange(0, 300, 15)
    predicted = np.asarray(scores)[:20][:, removed] / 299
    r = ev.fading(LogReg.loss_fn, params, train, key, test.take(np.arange(20)), removed, predicted,
                  optimizer=optax.sgd(2.0), num_steps=200, record_every=50, batch_size=None)
    assert r.pearson.shape == (4,) and r.actual.shape == (4, 20, removed.size)
    assert np.all(np.diff(r.divergence) > 0)
    assert r.pearson[-1] > 0.9 and r.pearson[-1] >= r.pearson[0] - 1e-9
    with pytest.raises(ValueError, match="multiple of record_every"):
        ev.fading(LogReg.loss_fn, params, train, key, test, removed, predicted, optimizer=optax.sgd(1.0),
                  num_steps=7, record_every=5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auc_equals_the_pairwise_count_with_ties(seed):
    """core.statistics.auc = P(positive > negative) + 0.5 P(tie), counted pair by pair."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
    positives = rng.random(n) < 0.4
    positives[:2] = [True, False]
    pos, neg = scores[positives], scores[~positives]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert statistics.auc(scores, positives) == pytest.approx(brute, abs=1e-12)
    assert statistics.auc(-scores, positives) == pytest.approx(1.0 - brute, abs=1e-12)


def test_predicted_loo_effects_divides_the_removed_columns_by_n_minus_one():
    scores = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(ev.predicted_loo_effects(scores, [3, 1]), scores[:, [3, 1]] / 3)
    with pytest.raises(ValueError, match="n_test, n_train"):
        ev.predicted_loo_effects(np.arange(4.0), [1])


def test_fading_correlations_and_peak_read_the_curve():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(5, 8))
    noise = rng.normal(size=(5, 8))
    actual = np.stack([predicted + s * noise for s in (1.0, 0.0, 3.0)])  # exact at the middle step
    curve = ev.fading_correlations(predicted, actual)
    assert curve.pearson.shape == (3,) and curve.spearman.shape == (3,)
    assert curve.pearson[1] == pytest.approx(1.0) and curve.spearman[1] == pytest.approx(1.0)
    assert curve.pearson[0] > curve.pearson[2]
    expected = np.mean([np.corrcoef(p, a)[0, 1] for p, a in zip(predicted, actual[2])])
    assert curve.pearson[2] == pytest.approx(expected, rel=1e-12)
    result = ev.FadingResult(np.array([10, 20, 30]), curve.pearson, curve.spearman, np.zeros(3), actual)
    peak = ev.fading_peak(result)
    assert peak.peak_step == 20 and peak.peak_pearson == pytest.approx(1.0)
    assert peak.final_pearson == curve.pearson[2]
